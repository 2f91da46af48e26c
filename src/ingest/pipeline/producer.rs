//! The producer: list the bucket, then fetch, hash, extract and chunk objects with bounded
//! concurrency, handing each result to the writer in the order they finish.
//!
//! An object that failed extraction before, as it is now, is not read again (the manifest
//! remembers it); one that fails now carries the manifest entry that will remember it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, ObjectMeta, ObjectStore};
use tokio::sync::mpsc;

use super::source::BucketSource;
use super::{AbortOnDrop, ObjectIssue};
use crate::config::RecordIdScope;
use crate::document::{Chunk, ChunkMetadata};
use crate::ingest::bucket::BucketLocation;
use crate::ingest::chunk::{ChunkingConfig, chunks_of_document};
use crate::ingest::doc_ids::document_id;
use crate::ingest::extract::{ExtractedDoc, Extraction, MAX_RECORD_FIELD_BYTES, format_of};
use crate::ingest::isolate::Extractor;
use crate::ingest::listing::Listed;
use crate::ingest::manifest::{Manifest, ManifestEntry, normalize_etag, sha256_hex};

/// How far the listing may run ahead of the fetches, in objects.
const LISTING_LOOKAHEAD: usize = 10_000;

/// What the producer tells the writer.
pub(super) enum ProducerEvent {
    Object(Box<ProcessedObject>),
    ListingFailed(String),
    /// The listing reached its end: objects not seen are really gone.
    ListingFinished,
}

pub(super) struct ProcessedObject {
    pub(super) object_key: String,
    /// `None` when the object was not read.
    pub(super) bytes_read: Option<u64>,
    pub(super) result: ObjectResult,
}

pub(super) enum ObjectResult {
    /// `refreshed_entry` carries a new etag when only the etag changed.
    Unchanged {
        refreshed_entry: Option<ManifestEntry>,
    },
    Skipped {
        reason: String,
    },
    /// `content_problem`: the bytes were read and are unusable (as opposed to unreadable);
    /// `record` is then the manifest entry that keeps the next runs from reading it again.
    Failed {
        reason: String,
        content_problem: bool,
        record: Option<Box<ManifestEntry>>,
    },
    /// Failed an earlier run as it is now: not read, not extracted.
    KnownBad {
        reason: String,
    },
    Prepared {
        entry: ManifestEntry,
        chunks: Vec<Chunk>,
        record_problems: Vec<ObjectIssue>,
        /// Bad records beyond those listed.
        record_problems_left_out: u64,
    },
}

pub(super) struct ProducerContext {
    /// See [`BucketSource::key_prefix`].
    pub(super) key_prefix: String,
    pub(super) store: Arc<dyn ObjectStore>,
    /// The manifest as it was when the run started.
    pub(super) previous: Manifest,
    pub(super) settings: String,
    pub(super) chunking: ChunkingConfig,
    pub(super) max_chunks_per_object: usize,
    pub(super) max_object_bytes: u64,
    pub(super) extractor: Extractor,
    /// Stamped on every chunk.
    pub(super) location: BucketLocation,
    /// How far a JSON(L) record's own id reaches (see [`document_id`]).
    pub(super) record_ids: RecordIdScope,
    /// The record fields and object user metadata kept on chunks (`[[index]] metadata_fields`).
    pub(super) metadata_fields: Vec<String>,
    /// Stamped on every chunk (`[[index]] namespace`).
    pub(super) namespace: Option<String>,
}

/// What the lister counts for the progress report.
#[derive(Clone, Default)]
pub(super) struct ListingCounters {
    pub(super) listed: Arc<AtomicU64>,
    pub(super) excluded: Arc<AtomicU64>,
}

/// What the lister hands to the fetchers.
enum ListedEntry {
    Object(ObjectMeta),
    /// A key `object_store` cannot name: reported as a failed object, never fetched.
    UnreadableKey {
        key: String,
        reason: String,
    },
    Failed(String),
    Finished,
}

pub(super) async fn produce_events(
    source: BucketSource,
    context: Arc<ProducerContext>,
    fetch_concurrency: usize,
    counters: ListingCounters,
    sender: mpsc::Sender<ProducerEvent>,
) {
    // The listing runs ahead of the fetches (bounded) so that `listed` soon approaches the
    // total a progress bar needs, without holding a huge bucket's listing in memory.
    let (listing_sender, listing_receiver) = mpsc::channel(LISTING_LOOKAHEAD);
    let _lister = AbortOnDrop(tokio::spawn(list_objects(source, counters, listing_sender)));
    let events = tokio_stream::wrappers::ReceiverStream::new(listing_receiver)
        .map(|entry| {
            let context = Arc::clone(&context);
            async move {
                match entry {
                    ListedEntry::Object(meta) => {
                        ProducerEvent::Object(Box::new(process_object(context, meta).await))
                    }
                    ListedEntry::UnreadableKey { key, reason } => {
                        ProducerEvent::Object(Box::new(ProcessedObject {
                            object_key: key,
                            bytes_read: None,
                            result: ObjectResult::Failed {
                                reason,
                                content_problem: false,
                                record: None,
                            },
                        }))
                    }
                    ListedEntry::Failed(reason) => ProducerEvent::ListingFailed(reason),
                    ListedEntry::Finished => ProducerEvent::ListingFinished,
                }
            }
        })
        .buffer_unordered(fetch_concurrency);
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        if sender.send(event).await.is_err() {
            // The writer stopped: nothing more is wanted.
            break;
        }
    }
}

/// Streams the listing into `sender`, ending with [`ListedEntry::Finished`] only when the
/// listing itself reached its end.
async fn list_objects(
    source: BucketSource,
    counters: ListingCounters,
    sender: mpsc::Sender<ListedEntry>,
) {
    let mut listing = source.list();
    while let Some(entry) = listing.next().await {
        let entry = match entry {
            Ok(listed) => {
                let key = match &listed {
                    Listed::Object(meta) => meta.location.as_ref(),
                    Listed::UnreadableKey { key, .. } => key.as_str(),
                };
                if source.ignored_keys.contains(key) {
                    continue;
                }
                if !source.accepts(key) {
                    // Left out like a deleted object: if it was indexed, its chunks go.
                    counters.excluded.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                counters.listed.fetch_add(1, Ordering::Relaxed);
                match listed {
                    Listed::Object(meta) => ListedEntry::Object(meta),
                    Listed::UnreadableKey { key, reason } => {
                        ListedEntry::UnreadableKey { key, reason }
                    }
                }
            }
            Err(reason) => ListedEntry::Failed(reason),
        };
        if sender.send(entry).await.is_err() {
            return;
        }
    }
    let _ = sender.send(ListedEntry::Finished).await;
}

pub(super) async fn process_object(
    context: Arc<ProducerContext>,
    meta: ObjectMeta,
) -> ProcessedObject {
    let object_key = meta.location.to_string();
    let not_read = |result| ProcessedObject {
        object_key: object_key.clone(),
        bytes_read: None,
        result,
    };
    if let Err(error) = format_of(&object_key) {
        return not_read(ObjectResult::Skipped {
            reason: error.to_string(),
        });
    }
    if meta.size > context.max_object_bytes {
        return not_read(too_large(meta.size, context.max_object_bytes));
    }
    let etag = meta.e_tag.as_deref().map(normalize_etag);
    if context.previous.is_unchanged_by_etag(
        &object_key,
        etag.as_deref(),
        meta.size,
        &context.settings,
    ) {
        return not_read(ObjectResult::Unchanged {
            refreshed_entry: None,
        });
    }
    if let Some(reason) = context.previous.known_failure_by_etag(
        &object_key,
        etag.as_deref(),
        meta.size,
        &context.settings,
    ) {
        return not_read(ObjectResult::KnownBad {
            reason: reason.to_owned(),
        });
    }
    let (bytes, revision) = match fetch_bytes(
        context.store.as_ref(),
        &meta.location,
        context.max_object_bytes,
        &context.metadata_fields,
    )
    .await
    {
        Ok(Fetched::Bytes { bytes, revision }) => (bytes, revision),
        Ok(Fetched::TooLarge(size)) => {
            return not_read(too_large(size, context.max_object_bytes));
        }
        Err(reason) => {
            return not_read(ObjectResult::Failed {
                reason,
                content_problem: false,
                record: None,
            });
        }
    };
    let bytes_read = bytes.len() as u64;
    // The read's own etag names the bytes read, should the object have changed since the
    // listing; the listing's is the fallback for stores whose reads carry none.
    let revision = Revision {
        etag: revision.etag.or(etag),
        ..revision
    };
    let result = prepare_object(context, &object_key, revision, bytes).await;
    ProcessedObject {
        object_key,
        bytes_read: Some(bytes_read),
        result,
    }
}

fn too_large(size: u64, max_object_bytes: u64) -> ObjectResult {
    ObjectResult::Skipped {
        reason: format!("too large: {size} bytes, the limit is {max_object_bytes}"),
    }
}

/// Which version of an object was read.
struct Revision {
    /// Normalized with [`normalize_etag`].
    etag: Option<String>,
    /// The store's object version (S3 `x-amz-version-id`), when versioning is on.
    version: Option<String>,
    /// Unix seconds, as the store says.
    last_modified: Option<i64>,
    /// The store's `Content-Type`, when it keeps one.
    content_type: Option<String>,
    /// The object's user metadata the index keeps ([`kept_user_metadata`]).
    user_metadata: BTreeMap<String, String>,
}

enum Fetched {
    Bytes {
        bytes: bytes::Bytes,
        revision: Revision,
    },
    /// The object grew past the limit between listing and reading.
    TooLarge(u64),
}

async fn fetch_bytes(
    store: &dyn ObjectStore,
    location: &ObjectPath,
    max_object_bytes: u64,
    metadata_fields: &[String],
) -> std::result::Result<Fetched, String> {
    let response = store
        .get_opts(location, GetOptions::default())
        .await
        .map_err(describe_read_error)?;
    if response.meta.size > max_object_bytes {
        return Ok(Fetched::TooLarge(response.meta.size));
    }
    let revision = Revision {
        etag: response.meta.e_tag.as_deref().map(normalize_etag),
        version: response.meta.version.clone(),
        last_modified: Some(response.meta.last_modified.timestamp()),
        content_type: response
            .attributes
            .get(&object_store::Attribute::ContentType)
            .map(|value| value.to_string()),
        user_metadata: kept_user_metadata(&response.attributes, metadata_fields),
    };
    let bytes = response.bytes().await.map_err(describe_read_error)?;
    Ok(Fetched::Bytes { bytes, revision })
}

/// The object's user metadata (S3 `x-amz-meta-*`, Azure `x-ms-meta-*`, GCS
/// `x-goog-meta-*`, which `object_store` gives as [`Attribute::Metadata`]) that the
/// index names in `metadata_fields`, under the configured name. Only those are kept, and
/// only values a record field could have too (at most [`MAX_RECORD_FIELD_BYTES`]), so a
/// bucket cannot grow the chunks' payload. Names match without regard to case: S3 and
/// Azure send them as HTTP headers, which arrive lowercased.
///
/// [`Attribute::Metadata`]: object_store::Attribute::Metadata
fn kept_user_metadata(
    attributes: &object_store::Attributes,
    metadata_fields: &[String],
) -> BTreeMap<String, String> {
    if metadata_fields.is_empty() {
        return BTreeMap::new();
    }
    let mut kept = BTreeMap::new();
    for (attribute, value) in attributes {
        let object_store::Attribute::Metadata(name) = attribute else {
            continue;
        };
        let Some(field) = metadata_fields
            .iter()
            .find(|field| field.eq_ignore_ascii_case(name))
        else {
            continue;
        };
        if value.len() <= MAX_RECORD_FIELD_BYTES {
            kept.insert(field.clone(), value.to_string());
        }
    }
    kept
}

fn describe_read_error(error: object_store::Error) -> String {
    match error {
        object_store::Error::NotFound { .. } => {
            "object vanished between listing and reading".to_owned()
        }
        other => format!("read failed: {other}"),
    }
}

/// Hash, extract (where the extractor says) and chunk one object's bytes. Hashing and
/// chunking are CPU work: they run on the blocking pool, off the async workers.
async fn prepare_object(
    context: Arc<ProducerContext>,
    object_key: &str,
    revision: Revision,
    bytes: bytes::Bytes,
) -> ObjectResult {
    let size = bytes.len() as u64;
    let hashed = bytes.clone();
    let Ok(sha256) = tokio::task::spawn_blocking(move || sha256_hex(&hashed)).await else {
        return ObjectResult::Failed {
            reason: "hashing the object failed".to_owned(),
            content_problem: false,
            record: None,
        };
    };
    if context
        .previous
        .is_unchanged_by_content(object_key, &sha256, &context.settings)
    {
        return unchanged_content(&context, object_key, revision, size);
    }
    if let Some(reason) =
        context
            .previous
            .known_failure_by_content(object_key, &sha256, &context.settings)
    {
        return ObjectResult::KnownBad {
            reason: reason.to_owned(),
        };
    }
    let failed = |reason: String| ObjectResult::Failed {
        record: Some(Box::new(ManifestEntry::failed(
            revision.etag.clone(),
            size,
            sha256.clone(),
            context.settings.clone(),
            reason.clone(),
        ))),
        reason,
        content_problem: true,
    };
    let extraction = match context.extractor.extract(object_key, bytes).await {
        Ok(extraction) => extraction,
        Err(error) if error.is_skip() => {
            return ObjectResult::Skipped {
                reason: error.to_string(),
            };
        }
        Err(error) if !error.blames_content() => {
            return ObjectResult::Failed {
                reason: error.to_string(),
                content_problem: false,
                record: None,
            };
        }
        Err(error) => return failed(error.to_string()),
    };
    let chunking_context = Arc::clone(&context);
    let chunking_key = object_key.to_owned();
    let object_metadata = ChunkMetadata {
        content_type: revision
            .content_type
            .clone()
            .or_else(|| content_type_of(object_key).map(str::to_owned)),
        size_bytes: Some(size),
        last_modified: revision.last_modified,
        etag: revision.etag.clone(),
        namespace: context.namespace.clone(),
        fields: revision.user_metadata.clone(),
    };
    let chunked = tokio::task::spawn_blocking(move || {
        chunk_extraction(
            &chunking_context,
            &chunking_key,
            &object_metadata,
            extraction,
        )
    })
    .await;
    let (chunks, extraction) = match chunked {
        Ok(Ok(chunked)) => chunked,
        Ok(Err(reason)) => return failed(reason),
        Err(join_error) => return failed(format!("chunking crashed: {join_error}")),
    };
    if chunks.is_empty() {
        return ObjectResult::Skipped {
            reason: "no text to index".to_owned(),
        };
    }
    let record_problems = extraction
        .problems
        .into_iter()
        .map(|problem| ObjectIssue {
            object_key: problem.location,
            reason: problem.reason,
        })
        .collect();
    let entry = ManifestEntry {
        etag: revision.etag,
        version: revision.version,
        size,
        sha256,
        settings: context.settings.clone(),
        chunk_ids: chunks.iter().map(|chunk| chunk.chunk_id.clone()).collect(),
        failure: None,
    };
    ObjectResult::Prepared {
        entry,
        chunks,
        record_problems,
        record_problems_left_out: extraction.problems_left_out,
    }
}

/// The object's chunks, at most `max_chunks_per_object` of them (else why it failed); the
/// extraction comes back without its documents, for its record problems.
fn chunk_extraction(
    context: &ProducerContext,
    object_key: &str,
    object_metadata: &ChunkMetadata,
    mut extraction: Extraction,
) -> Result<(Vec<Chunk>, Extraction), String> {
    let qualified_key = format!("{}{object_key}", context.key_prefix);
    let limit = context.max_chunks_per_object;
    let mut chunks = Vec::new();
    for mut document in std::mem::take(&mut extraction.documents) {
        let mut metadata = object_metadata.clone();
        // A record's own field wins over the object's user metadata of the same name.
        metadata.fields.extend(
            std::mem::take(&mut document.fields)
                .into_iter()
                .filter(|(name, _)| context.metadata_fields.contains(name)),
        );
        let document = ExtractedDoc {
            doc_id: document_id(
                &document,
                object_key,
                &context.key_prefix,
                context.record_ids,
            ),
            ..document
        };
        for chunk in chunks_of_document(&qualified_key, &document, &context.chunking) {
            if chunks.len() == limit {
                return Err(format!(
                    "yields more than {limit} chunks (the index's max_chunks_per_object)"
                ));
            }
            chunks.push(Chunk {
                cloud: context.location.cloud.clone(),
                region: context.location.region.clone(),
                metadata: metadata.clone(),
                ..chunk
            });
        }
    }
    Ok((chunks, extraction))
}

/// The content type an object's name says, for stores that keep none (local folders).
fn content_type_of(object_key: &str) -> Option<&'static str> {
    let name = object_key.rsplit('/').next().unwrap_or(object_key);
    let name = name.strip_suffix(".gz").unwrap_or(name);
    let extension = name.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match extension.as_str() {
        "txt" => "text/plain",
        "md" | "markdown" => "text/markdown",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "jsonl" | "ndjson" => "application/x-ndjson",
        "pdf" => "application/pdf",
        _ => return None,
    })
}

/// Same content under a new etag (a touched file, a re-upload): only the manifest learns it.
fn unchanged_content(
    context: &ProducerContext,
    object_key: &str,
    revision: Revision,
    size: u64,
) -> ObjectResult {
    let refreshed_entry = context
        .previous
        .objects
        .get(object_key)
        .filter(|previous| {
            previous.etag != revision.etag
                || previous.version != revision.version
                || previous.size != size
        })
        .map(|previous| ManifestEntry {
            etag: revision.etag,
            version: revision.version,
            size,
            ..previous.clone()
        });
    ObjectResult::Unchanged { refreshed_entry }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::{Attribute, Attributes};

    #[test]
    fn only_named_user_metadata_of_a_record_field_s_size_is_kept() {
        let attributes = Attributes::from_iter([
            (Attribute::Metadata("team".into()), "harbour".to_owned()),
            (Attribute::Metadata("owner".into()), "someone".to_owned()),
            (
                Attribute::Metadata("notes".into()),
                "x".repeat(MAX_RECORD_FIELD_BYTES + 1),
            ),
            (Attribute::ContentType, "text/plain".to_owned()),
        ]);
        let fields = ["Team".to_owned(), "notes".to_owned(), "stage".to_owned()];
        assert_eq!(
            kept_user_metadata(&attributes, &fields),
            BTreeMap::from([("Team".to_owned(), "harbour".to_owned())])
        );
        assert!(kept_user_metadata(&attributes, &[]).is_empty());
    }
}
