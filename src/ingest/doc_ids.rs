//! Document ids unique per index.
//!
//! A document named after its object takes the qualified object key (`bucket/key`), so
//! same-named files in two buckets stay two documents. A JSON(L) record's own `_id`/`id`
//! is only unique inside its file, so by default it is qualified too
//! (`bucket/key#record-id`); an index whose record ids are global (a BEIR corpus, whose
//! judgements name raw ids) keeps them as they are, and [`DocumentOwners`] then refuses a
//! second object's reuse of an id instead of letting it overwrite the first one's chunks.

use std::collections::HashMap;

use crate::config::RecordIdScope;
use crate::document::Chunk;
use crate::ingest::extract::ExtractedDoc;
use crate::ingest::manifest::Manifest;

/// The index-wide id of `document`, extracted from `object_key`; `key_prefix` turns the
/// object key into the qualified key the stores know (see `BucketSource::key_prefix`).
pub fn document_id(
    document: &ExtractedDoc,
    object_key: &str,
    key_prefix: &str,
    record_ids: RecordIdScope,
) -> String {
    match (document.id_from_record, record_ids) {
        (true, RecordIdScope::Global) => document.doc_id.clone(),
        (true, RecordIdScope::PerObject) => {
            format!("{key_prefix}{object_key}#{}", document.doc_id)
        }
        // The object key itself, or `key:N` for the N-th record without an id.
        (false, _) => format!("{key_prefix}{}", document.doc_id),
    }
}

/// The document a chunk id belongs to (`{doc_id}#{ordinal}`, see [`Chunk::make_id`]).
fn document_of_chunk(chunk_id: &str) -> &str {
    chunk_id
        .rsplit_once('#')
        .map_or(chunk_id, |(document, _)| document)
}

/// A document id another object already holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    pub doc_id: String,
    /// The manifest key of the object that keeps the id.
    pub owner: String,
}

/// Which object holds each document id of an index with global record ids: the first
/// written keeps it. Built from the manifest, then kept up to date by the run.
#[derive(Debug, Default)]
pub struct DocumentOwners {
    owner_by_document: HashMap<String, String>,
}

impl DocumentOwners {
    pub fn from_manifest(manifest: &Manifest) -> Self {
        let mut owners = Self::default();
        for (object_key, entry) in &manifest.objects {
            for chunk_id in &entry.chunk_ids {
                owners
                    .owner_by_document
                    .entry(document_of_chunk(chunk_id).to_owned())
                    .or_insert_with(|| object_key.clone());
            }
        }
        owners
    }

    /// Holds `doc_id` for `owner`, written outside this manifest (an API document, whose
    /// owner is its own object key): no object of the run may claim it.
    pub fn reserve(&mut self, doc_id: String, owner: String) {
        self.owner_by_document.entry(doc_id).or_insert(owner);
    }

    /// Gives up the documents of `chunk_ids` that `object_key` holds (an old version, or
    /// chunks that were not written after all).
    pub fn release(&mut self, object_key: &str, chunk_ids: &[String]) {
        for chunk_id in chunk_ids {
            let document = document_of_chunk(chunk_id);
            if self.owner_by_document.get(document).map(String::as_str) == Some(object_key) {
                self.owner_by_document.remove(document);
            }
        }
    }

    /// Gives `object_key` the documents of `chunks` that no other object holds, after
    /// releasing those of its previous version (`previous_chunk_ids`). Returns the chunks
    /// it may write and the ids it may not, each once.
    pub fn claim(
        &mut self,
        object_key: &str,
        previous_chunk_ids: &[String],
        chunks: Vec<Chunk>,
    ) -> (Vec<Chunk>, Vec<Collision>) {
        self.release(object_key, previous_chunk_ids);
        let mut collisions: Vec<Collision> = Vec::new();
        let mut kept = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let owner = self
                .owner_by_document
                .entry(chunk.doc_id.clone())
                .or_insert_with(|| object_key.to_owned());
            if owner == object_key {
                kept.push(chunk);
                continue;
            }
            if collisions
                .last()
                .is_none_or(|last| last.doc_id != chunk.doc_id)
            {
                collisions.push(Collision {
                    doc_id: chunk.doc_id,
                    owner: owner.clone(),
                });
            }
        }
        (kept, collisions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::manifest::ManifestEntry;

    fn record(doc_id: &str, id_from_record: bool) -> ExtractedDoc {
        ExtractedDoc {
            doc_id: doc_id.to_owned(),
            title: String::new(),
            text: "text".to_owned(),
            id_from_record,
            fields: Default::default(),
        }
    }

    fn chunk(doc_id: &str, ordinal: u32) -> Chunk {
        Chunk {
            chunk_id: Chunk::make_id(doc_id, ordinal),
            doc_id: doc_id.to_owned(),
            object_key: String::new(),
            title: "".into(),
            text: "".into(),
            ordinal,
            span: None,
            cloud: String::new(),
            region: String::new(),
            metadata: Default::default(),
        }
    }

    #[test]
    fn record_ids_are_qualified_by_their_object_unless_global() {
        let own_id = record("7", true);
        let per_object = RecordIdScope::PerObject;
        assert_eq!(
            document_id(&own_id, "a.jsonl", "bucket/", per_object),
            "bucket/a.jsonl#7"
        );
        assert_eq!(
            document_id(&own_id, "a.jsonl", "bucket/", RecordIdScope::Global),
            "7"
        );
        for scope in [per_object, RecordIdScope::Global] {
            let file = record("notes/a.txt", false);
            assert_eq!(
                document_id(&file, "notes/a.txt", "bucket/", scope),
                "bucket/notes/a.txt"
            );
            let position = record("a.jsonl:3", false);
            assert_eq!(
                document_id(&position, "a.jsonl", "bucket/", scope),
                "bucket/a.jsonl:3"
            );
        }
    }

    #[test]
    fn the_first_object_keeps_a_global_id_and_the_second_is_told_who_has_it() {
        let mut owners = DocumentOwners::default();
        let (kept, collisions) = owners.claim("a.jsonl", &[], vec![chunk("7", 0), chunk("8", 0)]);
        assert_eq!((kept.len(), collisions.len()), (2, 0));
        let (kept, collisions) = owners.claim(
            "b.jsonl",
            &[],
            vec![chunk("7", 0), chunk("7", 1), chunk("9", 0)],
        );
        assert_eq!(kept, vec![chunk("9", 0)]);
        assert_eq!(
            collisions,
            vec![Collision {
                doc_id: "7".to_owned(),
                owner: "a.jsonl".to_owned()
            }]
        );
        // A new version of the owner releases what it no longer has.
        let previous = vec!["7#0".to_owned(), "8#0".to_owned()];
        let (kept, _) = owners.claim("a.jsonl", &previous, vec![chunk("8", 0)]);
        assert_eq!(kept.len(), 1);
        let (kept, collisions) = owners.claim("b.jsonl", &["9#0".to_owned()], vec![chunk("7", 0)]);
        assert_eq!((kept.len(), collisions.len()), (1, 0));
    }

    #[test]
    fn owners_come_from_the_manifest() {
        let mut manifest = Manifest::new("file:///data");
        manifest.objects.insert(
            "a.jsonl".to_owned(),
            ManifestEntry {
                etag: None,
                version: None,
                size: 1,
                sha256: String::new(),
                settings: String::new(),
                chunk_ids: vec!["7#0".to_owned(), "7#1".to_owned()],
                failure: None,
            },
        );
        let mut owners = DocumentOwners::from_manifest(&manifest);
        let (kept, collisions) = owners.claim("b.jsonl", &[], vec![chunk("7", 0)]);
        assert!(kept.is_empty());
        assert_eq!(collisions[0].owner, "a.jsonl");
        let (kept, _) = owners.claim("a.jsonl", &[], vec![chunk("7", 0)]);
        assert_eq!(kept.len(), 1);
    }
}
