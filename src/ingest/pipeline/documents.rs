//! Documents sent over the API (`UpsertDocuments`, `DeleteDocuments`) rather than read from
//! a bucket: chunked, embedded and written by the bucket sync's own code, and remembered
//! in a manifest of their own beside the index's bucket manifests.
//!
//! They have their own key namespace: a document `<id>` of the index `<index>` is the
//! object `api/<index>/<id>`, and that is also its document id (the index is part of it
//! because two indexes may share a store). Bucket keys are qualified by their bucket (`s3://bucket/...`)
//! or their root (`/srv/docs/...`), so no bucket object has such a key, and a bucket sync
//! only judges the keys of its own manifest: it never deletes an API document as a removed
//! object. The one overlap is an index with `record_ids = "global"`, whose record ids are
//! kept raw: [`bucket_held_document_ids`] finds them, and an upsert refuses those ids.
//!
//! A namespace (tenant) has its own prefix and manifest: the document `<id>` of the
//! namespace `<ns>` is `api/<index>@<ns>/<id>`, listed in `api-documents@<ns>.json`, so
//! two tenants may use the same ids and never replace each other's documents (index ids
//! cannot hold `@`, namespaces are plain words).
//!
//! Crash safety follows the bucket sync's order. Before a document's old chunks are
//! deleted the manifest forgets it (saved atomically), its new chunks are written and
//! committed on every store, and only then the manifest records it. So the manifest never
//! lists a document whose chunks may be missing: a crash or a failed call at any point
//! leaves the documents it was writing unlisted, a retry writes them again, and chunk ids
//! are `api/<index>/<id>#<n>`, so nothing is duplicated.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::IndexJob;
use super::writer::{embed_texts, embedding_text, on_every_store, save_unless_dropped};
use crate::document::{Chunk, ChunkMetadata, EmbeddedChunk};
use crate::error::{Error, Result};
use crate::ingest::bucket::BucketLocation;
use crate::ingest::chunk::{ChunkingConfig, chunks_of_document};
use crate::ingest::extract::ExtractedDoc;
use crate::ingest::manifest::{Manifest, sha256_hex};
use crate::stores::filter::Filter;

/// The object key (and document id) prefix of every API document: `api/<index>/<id>`.
pub const API_KEY_PREFIX: &str = "api/";
/// The API documents' manifest, in the folder of the index's bucket manifests.
pub const DOCUMENTS_MANIFEST_FILE: &str = "api-documents.json";
/// What every API documents' manifest name starts with (`api-documents@<ns>.json`).
const DOCUMENTS_MANIFEST_STEM: &str = "api-documents";
/// Bumped when the file layout changes incompatibly.
const DOCUMENTS_MANIFEST_VERSION: u32 = 1;
/// Object keys per `delete_objects` call.
const DELETE_BATCH_KEYS: usize = 1000;

/// Separates an index id from a namespace in keys and manifest names.
pub const NAMESPACE_SEPARATOR: char = '@';

/// The key prefix of the API documents of the index `index_id`: `api/<index>/`, or
/// `api/<index>@<namespace>/` for those of a namespace.
pub fn key_prefix_of(index_id: &str, namespace: Option<&str>) -> String {
    match namespace {
        None => format!("{API_KEY_PREFIX}{index_id}/"),
        Some(namespace) => format!("{API_KEY_PREFIX}{index_id}{NAMESPACE_SEPARATOR}{namespace}/"),
    }
}

/// The object key (and document id) of the API document `id` under `key_prefix`.
pub fn object_key_of(key_prefix: &str, id: &str) -> String {
    format!("{key_prefix}{id}")
}

/// Where API documents live, for residency and egress rules: on this server, like a
/// local folder.
fn api_location() -> BucketLocation {
    BucketLocation {
        cloud: "local".to_owned(),
        region: "local".to_owned(),
    }
}

/// A document as a caller sends it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewDocument {
    /// Unique in the index; the document is `api/<index>/<id>`.
    pub id: String,
    pub title: String,
    pub text: String,
    /// User metadata for filters (`metadata.<name>`); the caller checks the names.
    pub metadata: BTreeMap<String, String>,
}

/// What an upsert did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpsertReport {
    /// Documents written (new, or replacing their previous chunks).
    pub written: u64,
    /// Documents already indexed with the same title, text and metadata: not rewritten.
    pub unchanged: u64,
    pub chunks_written: u64,
}

/// Which API documents a delete removes.
#[derive(Debug, Clone, PartialEq)]
pub enum DocumentSelection {
    Ids(Vec<String>),
    /// Over object keys, so it starts with the index's [`key_prefix_of`] to match anything.
    ObjectKeyPrefix(String),
    Filter(Filter),
}

/// What a delete removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteReport {
    pub documents: u64,
    pub chunks: u64,
}

/// The API documents of one index, by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentsManifest {
    pub format_version: u32,
    /// `api/<index>/`: with an id, a document's object key.
    #[serde(default)]
    pub key_prefix: String,
    pub documents: BTreeMap<String, DocumentEntry>,
}

impl Default for DocumentsManifest {
    fn default() -> Self {
        Self {
            format_version: DOCUMENTS_MANIFEST_VERSION,
            key_prefix: String::new(),
            documents: BTreeMap::new(),
        }
    }
}

/// One API document whose chunks every store holds, committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentEntry {
    /// Of the title, text and metadata: an identical upsert is not rewritten.
    pub sha256: String,
    /// What the chunks depend on besides the content, as for a bucket object: chunking,
    /// stores, embedding space; a change rewrites the document on its next upsert.
    pub settings: String,
    pub chunk_ids: Vec<String>,
    /// What its chunks carry, so a delete by filter can match without the stores.
    #[serde(default, skip_serializing_if = "ChunkMetadata::is_empty")]
    pub metadata: ChunkMetadata,
}

impl DocumentsManifest {
    /// The manifest at `path`, or an empty one when there is no file yet (blocking).
    pub fn load_or_new(path: &Path) -> Result<Self> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default());
            }
            Err(error) => {
                return Err(
                    Error::from(error).context(format!("reading manifest {}", path.display()))
                );
            }
        };
        let manifest: Self = serde_json::from_slice(&bytes).map_err(|error| {
            Error::config(format!(
                "manifest {} is not readable ({error}); restore it, or delete it and upsert \
                 the API documents again",
                path.display()
            ))
        })?;
        if manifest.format_version != DOCUMENTS_MANIFEST_VERSION {
            return Err(Error::config(format!(
                "manifest {} has format version {}, this build reads {DOCUMENTS_MANIFEST_VERSION}",
                path.display(),
                manifest.format_version
            )));
        }
        Ok(manifest)
    }
}

impl DocumentsManifest {
    /// The object keys (and document ids) of the listed documents.
    pub fn object_keys(&self) -> Vec<String> {
        self.documents
            .keys()
            .map(|id| object_key_of(&self.key_prefix, id))
            .collect()
    }
}

async fn load(path: &Path) -> Result<DocumentsManifest> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || DocumentsManifest::load_or_new(&path))
        .await
        .map_err(|error| Error::internal(format!("reading the manifest: {error}")))?
}

async fn save(path: &Path, manifest: &DocumentsManifest) -> Result<()> {
    let contents = serde_json::to_vec(manifest)
        .map_err(|error| Error::internal(format!("serializing manifest: {error}")))?;
    save_unless_dropped(path.to_path_buf(), contents).await
}

/// Document ids under [`API_KEY_PREFIX`] that the bucket manifests in `folder` hold, with
/// the object holding each: only raw record ids (`record_ids = "global"`) can be such ids.
/// Blocking: it reads every manifest of the index.
pub fn bucket_held_document_ids(folder: &Path) -> Result<HashMap<String, String>> {
    let mut held = HashMap::new();
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(held),
        Err(error) => {
            return Err(Error::from(error).context(format!("listing {}", folder.display())));
        }
    };
    for entry in entries {
        let path = entry.map_err(Error::from)?.path();
        let is_bucket_manifest = path
            .extension()
            .is_some_and(|extension| extension == "json")
            && path
                .file_name()
                .is_some_and(|name| !is_documents_manifest(name));
        if !is_bucket_manifest {
            continue;
        }
        let bytes = std::fs::read(&path)
            .map_err(|error| Error::from(error).context(format!("reading {}", path.display())))?;
        // An unreadable bucket manifest is its own sync's problem, reported there.
        let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes) else {
            continue;
        };
        for (object_key, object) in &manifest.objects {
            for chunk_id in &object.chunk_ids {
                let document = chunk_id
                    .rsplit_once('#')
                    .map_or(chunk_id.as_str(), |(d, _)| d);
                if document.starts_with(API_KEY_PREFIX) {
                    held.insert(document.to_owned(), object_key.clone());
                }
            }
        }
    }
    Ok(held)
}

/// Writes `documents` into `job.stores` under `key_prefix` ([`key_prefix_of`]), replacing
/// each one's previous chunks, and records them in the manifest at `job.manifest_path`.
/// `held_by_buckets` maps document ids bucket objects hold to those objects: such an id
/// is refused, never overwritten.
pub async fn upsert_documents(
    job: &IndexJob,
    key_prefix: &str,
    documents: Vec<NewDocument>,
    held_by_buckets: &HashMap<String, String>,
) -> Result<UpsertReport> {
    job.validate()?;
    let location = api_location();
    let settings = job.settings_fingerprint(&location);
    let mut manifest = load(&job.manifest_path).await?;
    manifest.key_prefix = key_prefix.to_owned();
    let namespace = job.namespace.clone();
    // Hashing and chunking megabytes of text is blocking work.
    let preparation = Preparation {
        key_prefix: key_prefix.to_owned(),
        settings,
        location,
        chunking: job.chunking,
        max_chunks: job.max_chunks_per_object,
        known: manifest
            .documents
            .iter()
            .map(|(id, entry)| (id.clone(), (entry.sha256.clone(), entry.settings.clone())))
            .collect(),
        held_by_buckets: held_by_buckets.clone(),
        namespace,
    };
    let (prepared, mut report) = tokio::task::spawn_blocking(move || preparation.run(documents))
        .await
        .map_err(|error| Error::internal(format!("preparing the documents: {error}")))??;
    if prepared.is_empty() {
        return Ok(report);
    }
    // Forget before deleting: from here until the commit, the stores may hold none, part
    // or all of each document's chunks, and the manifest must not claim any of them.
    let mut forgotten = false;
    for (id, _, _) in &prepared {
        forgotten |= manifest.documents.remove(id).is_some();
    }
    if forgotten {
        save(&job.manifest_path, &manifest).await?;
    }
    let keys: Vec<String> = prepared
        .iter()
        .map(|(id, _, _)| object_key_of(key_prefix, id))
        .collect();
    delete_keys(job, &keys, "removing previous chunks").await?;
    let embedder = job.embedder_in_use();
    let mut entries = Vec::with_capacity(prepared.len());
    let mut chunks = Vec::new();
    for (id, entry, document_chunks) in prepared {
        entries.push((id, entry));
        chunks.extend(document_chunks);
    }
    for group in chunks.chunks(job.embed_batch_size) {
        let texts: Vec<String> = group.iter().map(embedding_text).collect();
        let vectors = embed_texts(embedder.as_ref(), &texts).await?;
        let embedded: Vec<EmbeddedChunk> = group
            .iter()
            .cloned()
            .zip(vectors)
            .map(|(chunk, vector)| EmbeddedChunk { chunk, vector })
            .collect();
        on_every_store(&job.stores, "writing chunks", |store| {
            store.upsert(&embedded)
        })
        .await?;
    }
    on_every_store(&job.stores, "committing", |store| store.commit()).await?;
    report.written = entries.len() as u64;
    report.chunks_written = chunks.len() as u64;
    manifest.documents.extend(entries);
    save(&job.manifest_path, &manifest).await?;
    Ok(report)
}

/// What [`upsert_documents`] needs to turn documents into chunks off the async workers.
struct Preparation {
    key_prefix: String,
    settings: String,
    location: BucketLocation,
    chunking: ChunkingConfig,
    max_chunks: usize,
    /// The content hash and settings of each listed document, by id.
    known: HashMap<String, (String, String)>,
    held_by_buckets: HashMap<String, String>,
    /// Stamped on every chunk.
    namespace: Option<String>,
}

/// A document to write: its id, its manifest entry once written, its chunks.
type PreparedDocument = (String, DocumentEntry, Vec<Chunk>);

impl Preparation {
    /// The documents to write (the others are counted unchanged), or the first refusal.
    fn run(self, documents: Vec<NewDocument>) -> Result<(Vec<PreparedDocument>, UpsertReport)> {
        let mut report = UpsertReport::default();
        let mut seen_ids = HashSet::new();
        let mut prepared = Vec::new();
        let upserted_at = unix_now();
        for document in documents {
            if !seen_ids.insert(document.id.clone()) {
                return Err(Error::invalid(format!(
                    "document id {:?} appears twice in the request",
                    document.id
                )));
            }
            let object_key = object_key_of(&self.key_prefix, &document.id);
            if let Some(owner) = self.held_by_buckets.get(&object_key) {
                return Err(Error::already_exists(format!(
                    "document id {:?} already exists: the bucket object {owner:?} holds a record \
                     with the document id {object_key:?}; choose another id",
                    document.id
                )));
            }
            let sha256 = content_hash(&document);
            let unchanged = self
                .known
                .get(&document.id)
                .is_some_and(|(hash, settings)| *hash == sha256 && *settings == self.settings);
            if unchanged {
                report.unchanged += 1;
                continue;
            }
            let metadata = ChunkMetadata {
                content_type: Some("text/plain".to_owned()),
                size_bytes: Some(document.text.len() as u64),
                last_modified: Some(upserted_at),
                etag: None,
                namespace: self.namespace.clone(),
                fields: document.metadata.clone(),
            };
            let chunks = chunk(&self, &document, &object_key, &metadata)?;
            let entry = DocumentEntry {
                sha256,
                settings: self.settings.clone(),
                chunk_ids: chunks.iter().map(|chunk| chunk.chunk_id.clone()).collect(),
                metadata,
            };
            prepared.push((document.id, entry, chunks));
        }
        Ok((prepared, report))
    }
}

/// Deletes the API documents `selection` picks from `job.stores`, then from the manifest.
/// Ids are deleted from the stores whether the manifest lists them or not, so a retry
/// also clears what a failed upsert left; only listed documents are counted.
pub async fn delete_documents(
    job: &IndexJob,
    key_prefix: &str,
    selection: &DocumentSelection,
) -> Result<DeleteReport> {
    job.validate()?;
    let mut manifest = load(&job.manifest_path).await?;
    let location = api_location();
    let (listed, mut keys): (Vec<String>, Vec<String>) = match selection {
        DocumentSelection::Ids(ids) => (
            ids.iter()
                .filter(|id| manifest.documents.contains_key(*id))
                .cloned()
                .collect(),
            ids.iter().map(|id| object_key_of(key_prefix, id)).collect(),
        ),
        DocumentSelection::ObjectKeyPrefix(prefix) => {
            let listed: Vec<String> = manifest
                .documents
                .keys()
                .filter(|id| object_key_of(key_prefix, id).starts_with(prefix.as_str()))
                .cloned()
                .collect();
            let keys = listed
                .iter()
                .map(|id| object_key_of(key_prefix, id))
                .collect();
            (listed, keys)
        }
        DocumentSelection::Filter(filter) => {
            let listed: Vec<String> = manifest
                .documents
                .iter()
                .filter(|(id, entry)| {
                    filter.matches(&representative_chunk(key_prefix, id, entry, &location))
                })
                .map(|(id, _)| id.clone())
                .collect();
            let keys = listed
                .iter()
                .map(|id| object_key_of(key_prefix, id))
                .collect();
            (listed, keys)
        }
    };
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        return Ok(DeleteReport::default());
    }
    delete_keys(job, &keys, "deleting documents").await?;
    on_every_store(&job.stores, "committing", |store| store.commit()).await?;
    let mut report = DeleteReport::default();
    for id in listed {
        if let Some(entry) = manifest.documents.remove(&id) {
            report.documents += 1;
            report.chunks += entry.chunk_ids.len() as u64;
        }
    }
    if report.documents > 0 {
        save(&job.manifest_path, &manifest).await?;
    }
    Ok(report)
}

/// Where the API documents' manifest of an index (and namespace) lives, given a bucket
/// manifest's folder.
pub fn documents_manifest_path(manifest_folder: &Path, namespace: Option<&str>) -> PathBuf {
    match namespace {
        None => manifest_folder.join(DOCUMENTS_MANIFEST_FILE),
        Some(namespace) => manifest_folder.join(format!(
            "{DOCUMENTS_MANIFEST_STEM}{NAMESPACE_SEPARATOR}{namespace}.json"
        )),
    }
}

/// Whether `file_name` is an API documents' manifest (of no namespace or of one).
fn is_documents_manifest(file_name: &std::ffi::OsStr) -> bool {
    file_name
        .to_str()
        .is_some_and(|name| name.starts_with(DOCUMENTS_MANIFEST_STEM) && name.ends_with(".json"))
}

/// Every API documents' manifest (all namespaces) beside the bucket manifest at
/// `bucket_manifest` (blocking).
pub fn documents_manifest_paths_beside(bucket_manifest: &Path) -> Result<Vec<PathBuf>> {
    let Some(folder) = bucket_manifest.parent() else {
        return Ok(Vec::new());
    };
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(Error::from(error).context(format!("listing {}", folder.display())));
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(Error::from)?.path();
        if path.file_name().is_some_and(is_documents_manifest) {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

async fn delete_keys(job: &IndexJob, keys: &[String], what: &str) -> Result<()> {
    for batch in keys.chunks(DELETE_BATCH_KEYS) {
        on_every_store(&job.stores, what, |store| store.delete_objects(batch)).await?;
    }
    Ok(())
}

/// The document's chunks as a bucket object's would be, stamped with its location and
/// metadata; more than the index's `max_chunks_per_object` is refused.
fn chunk(
    preparation: &Preparation,
    document: &NewDocument,
    object_key: &str,
    metadata: &ChunkMetadata,
) -> Result<Vec<Chunk>> {
    let (location, max_chunks) = (&preparation.location, preparation.max_chunks);
    let extracted = ExtractedDoc {
        doc_id: object_key.to_owned(),
        title: document.title.clone(),
        text: document.text.clone(),
        id_from_record: false,
        fields: BTreeMap::new(),
    };
    let mut chunks = Vec::new();
    for chunk in chunks_of_document(object_key, &extracted, &preparation.chunking) {
        if chunks.len() == max_chunks {
            return Err(Error::invalid(format!(
                "document {:?} yields more than {max_chunks} chunks (the index's max_chunks_per_object)",
                document.id
            )));
        }
        chunks.push(Chunk {
            cloud: location.cloud.clone(),
            region: location.region.clone(),
            metadata: metadata.clone(),
            ..chunk
        });
    }
    if chunks.is_empty() {
        return Err(Error::invalid(format!(
            "document {:?} has no text to index",
            document.id
        )));
    }
    Ok(chunks)
}

/// What every chunk of a listed document carries, for a filter to test.
fn representative_chunk(
    key_prefix: &str,
    id: &str,
    entry: &DocumentEntry,
    location: &BucketLocation,
) -> Chunk {
    let object_key = object_key_of(key_prefix, id);
    Chunk {
        chunk_id: Chunk::make_id(&object_key, 0),
        doc_id: object_key.clone(),
        object_key,
        title: "".into(),
        text: "".into(),
        ordinal: 0,
        cloud: location.cloud.clone(),
        region: location.region.clone(),
        metadata: entry.metadata.clone(),
        span: None,
    }
}

/// Hex SHA-256 of what the chunks are made of; length-prefixed so fields cannot run
/// into each other.
fn content_hash(document: &NewDocument) -> String {
    let mut bytes = Vec::new();
    let mut push = |part: &str| {
        bytes.extend_from_slice(&(part.len() as u64).to_le_bytes());
        bytes.extend_from_slice(part.as_bytes());
    };
    push(&document.title);
    push(&document.text);
    for (name, value) in &document.metadata {
        push(name);
        push(value);
    }
    sha256_hex(&bytes)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_hash_tells_fields_apart() {
        let document = |title: &str, text: &str| NewDocument {
            id: "a".into(),
            title: title.into(),
            text: text.into(),
            metadata: BTreeMap::new(),
        };
        assert_ne!(
            content_hash(&document("ab", "c")),
            content_hash(&document("a", "bc"))
        );
        assert_eq!(
            content_hash(&document("a", "b")),
            content_hash(&document("a", "b"))
        );
    }

    #[test]
    fn bucket_manifests_give_only_ids_in_the_api_namespace() {
        let folder = tempfile::tempdir().unwrap();
        let mut manifest = Manifest::new("s3://b");
        manifest.objects.insert(
            "corpus.jsonl".into(),
            crate::ingest::manifest::ManifestEntry {
                etag: None,
                version: None,
                size: 1,
                sha256: "h".into(),
                settings: "s".into(),
                chunk_ids: vec!["api/x#0".into(), "plain#0".into()],
                failure: None,
            },
        );
        manifest.save(&folder.path().join("0123.json")).unwrap();
        std::fs::write(folder.path().join(DOCUMENTS_MANIFEST_FILE), b"{}").unwrap();
        let held = bucket_held_document_ids(folder.path()).unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held["api/x"], "corpus.jsonl");
        assert!(
            bucket_held_document_ids(&folder.path().join("none"))
                .unwrap()
                .is_empty()
        );
    }
}
