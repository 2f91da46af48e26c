//! The indexing pipeline: list a bucket, fetch, extract, chunk, embed, write, remember.
//!
//! A producer task lists the bucket (streamed) and fetches, hashes, extracts and chunks objects
//! with bounded concurrency; the caller's task embeds the chunks in batches, writes them to
//! every store, commits, and only then records them in the manifest.
//!
//! Crash safety comes from that order. The manifest never lists an object whose chunks are
//! not committed, and an object missing from the manifest (or listed with another etag and
//! hash) is written again after `delete_objects` removed whatever an interrupted run left of
//! it. So a run killed at any point loses nothing, and the next run converges without
//! duplicates. Deletions of objects gone from the bucket are committed before the manifest
//! forgets them, for the same reason.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, ObjectMeta, ObjectStore};
use tokio::sync::mpsc;

use crate::document::{Chunk, EmbeddedChunk};
use crate::embed::{Embedder, Purpose};
use crate::error::{Error, Result};
use crate::ingest::bucket::{BucketLocation, BucketOptions, KeyFilter, open_cloud_bucket};
use crate::ingest::chunk::{ChunkingConfig, chunk_document};
use crate::ingest::extract::ExtractedDoc;
use crate::ingest::extract::{extract_with_problems, format_of};
use crate::ingest::manifest::{
    Manifest, ManifestEntry, normalize_etag, sha256_hex, temporary_path_for, write_atomically,
};
use crate::stores::{SearchBackend, StoreKind};

pub const DEFAULT_EMBED_BATCH_SIZE: usize = 32;
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_FETCH_CONCURRENCY: usize = 8;
pub const DEFAULT_COMMIT_EVERY_CHUNKS: usize = 4096;

/// Bumped when extraction, chunking or the embedded text change what an object yields, so
/// that the next run re-indexes everything instead of keeping chunks made the old way.
const PIPELINE_VERSION: u32 = 1;

/// How many object keys go into one `delete_objects` call for removed objects.
const DELETE_BATCH_KEYS: usize = 1000;

/// How far the listing may run ahead of the fetches, in objects.
const LISTING_LOOKAHEAD: usize = 10_000;

/// One indexing run: where to read, where to write, how.
pub struct IndexJob {
    /// A local folder or file (relative or absolute), a `file://` URL, or any URL
    /// `object_store::parse_url` understands with the features this build enables.
    pub url: String,
    /// Every store receives every chunk.
    pub stores: Vec<Arc<dyn SearchBackend>>,
    /// Required when a store is dense; unused (and may be `None`) when all are lexical.
    pub embedder: Option<Arc<dyn Embedder>>,
    pub manifest_path: PathBuf,
    pub chunking: ChunkingConfig,
    /// Chunks per embedding call and per upsert.
    pub embed_batch_size: usize,
    /// Larger objects are skipped without being read.
    pub max_object_bytes: u64,
    /// Objects fetched and extracted at the same time.
    pub fetch_concurrency: usize,
    /// Commit the stores and save the manifest after about this many chunks: the most work
    /// a crash can make the next run redo.
    pub commit_every_chunks: usize,
    /// Endpoint, credentials, residency labels, globs and retries for a cloud bucket; the
    /// labels and globs apply to local folders too.
    pub bucket: BucketOptions,
    /// Read from this store instead of opening `url`, which then only names the bucket
    /// (manifest identity, store keys). For embedding and tests.
    pub object_store: Option<Arc<dyn ObjectStore>>,
}

impl IndexJob {
    /// A job with the default chunking, batch size, size limit, concurrency and commit interval.
    pub fn new(
        url: impl Into<String>,
        stores: Vec<Arc<dyn SearchBackend>>,
        embedder: Option<Arc<dyn Embedder>>,
        manifest_path: impl Into<PathBuf>,
    ) -> Self {
        Self {
            url: url.into(),
            stores,
            embedder,
            manifest_path: manifest_path.into(),
            chunking: ChunkingConfig::default(),
            embed_batch_size: DEFAULT_EMBED_BATCH_SIZE,
            max_object_bytes: DEFAULT_MAX_OBJECT_BYTES,
            fetch_concurrency: DEFAULT_FETCH_CONCURRENCY,
            commit_every_chunks: DEFAULT_COMMIT_EVERY_CHUNKS,
            bucket: BucketOptions::default(),
            object_store: None,
        }
    }

    /// Checks that need no I/O: limits, chunk sizes, and that dense stores share the
    /// embedder's space.
    pub fn validate(&self) -> Result<()> {
        if self.url.trim().is_empty() {
            return Err(Error::invalid("index url is empty"));
        }
        if self.stores.is_empty() {
            return Err(Error::config("an index job needs at least one store"));
        }
        for (name, value) in [
            ("embed_batch_size", self.embed_batch_size),
            ("fetch_concurrency", self.fetch_concurrency),
            ("commit_every_chunks", self.commit_every_chunks),
        ] {
            if value == 0 {
                return Err(Error::config(format!("{name} must be at least 1")));
            }
        }
        if self.max_object_bytes == 0 {
            return Err(Error::config("max_object_bytes must be at least 1"));
        }
        self.chunking.validate()?;
        for store in &self.stores {
            self.validate_store_space(store.as_ref())?;
        }
        Ok(())
    }

    fn validate_store_space(&self, store: &dyn SearchBackend) -> Result<()> {
        let info = store.describe();
        if info.kind != StoreKind::Dense {
            return Ok(());
        }
        let Some(embedder) = &self.embedder else {
            return Err(Error::config(format!(
                "store {} is dense but the index job has no embedder",
                info.id
            )));
        };
        let space = embedder.space();
        if let Some(store_space) = &info.space
            && store_space != &space.id
        {
            return Err(Error::config(format!(
                "store {} is in embedding space {store_space}, the embedder in {}",
                info.id, space.id
            )));
        }
        if let Some(store_dims) = info.dims
            && store_dims != space.dims
        {
            return Err(Error::config(format!(
                "store {} expects {store_dims} dimensions, the embedder gives {}",
                info.id, space.dims
            )));
        }
        Ok(())
    }

    /// The embedder, only when some store needs vectors.
    fn embedder_in_use(&self) -> Option<Arc<dyn Embedder>> {
        let needs_vectors = self
            .stores
            .iter()
            .any(|store| store.describe().kind == StoreKind::Dense);
        if !needs_vectors {
            return None;
        }
        self.embedder.clone()
    }

    /// What an object's chunks depend on besides its content. Stores are part of it so
    /// that a store added to the job gets every object, not only the changed ones.
    fn settings_fingerprint(&self) -> String {
        let mut store_ids: Vec<&str> = self
            .stores
            .iter()
            .map(|store| store.describe().id.as_str())
            .collect();
        store_ids.sort_unstable();
        let space = match self.embedder_in_use() {
            Some(embedder) => format!("{}/{}", embedder.space().id, embedder.space().dims),
            None => "none".to_owned(),
        };
        let description = format!(
            "pipeline={PIPELINE_VERSION};stores={};space={space};max_words={};overlap_words={}",
            store_ids.join(","),
            self.chunking.max_words,
            self.chunking.overlap_words
        );
        sha256_hex(description.as_bytes())[..16].to_owned()
    }
}

/// Counters for a progress bar; `processed()` out of `listed` is the fraction done so far
/// (the total grows while the listing streams in).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexProgress {
    pub listed: u64,
    /// Objects left out by the include/exclude globs (not counted in `listed`).
    pub excluded: u64,
    /// Objects read from the bucket.
    pub fetched: u64,
    /// Objects whose chunks were written to every store.
    pub indexed: u64,
    /// Objects already indexed as they are (same etag, or same content hash).
    pub unchanged: u64,
    /// Objects gone from the bucket whose chunks were removed.
    pub deleted: u64,
    /// Objects not indexed by design: unsupported type, too large, empty.
    pub skipped: u64,
    /// Objects that could not be read or extracted.
    pub failed: u64,
    /// Bad records inside otherwise indexed multi-record files.
    pub record_problems: u64,
    pub chunks_written: u64,
    pub bytes_read: u64,
    pub elapsed: Duration,
}

impl IndexProgress {
    pub fn processed(&self) -> u64 {
        self.indexed + self.unchanged + self.skipped + self.failed
    }
}

/// Something that went wrong with (or was left out of) one object or record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectIssue {
    /// The object key, or `key:line` for a record inside one.
    pub object_key: String,
    pub reason: String,
}

/// The outcome of a run that reached its end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexReport {
    pub progress: IndexProgress,
    pub failures: Vec<ObjectIssue>,
    pub skips: Vec<ObjectIssue>,
    pub record_problems: Vec<ObjectIssue>,
    /// Errors while listing. When there are any, objects missing from the listing were
    /// not deleted: they may only have been missed.
    pub listing_errors: Vec<String>,
    /// Where the bucket's data lives; also recorded in the manifest. Store keys start with
    /// the bucket (`s3://bucket/...`), which maps every chunk to this location.
    pub location: BucketLocation,
}

/// Index the bucket at `job.url` into `job.stores`, incrementally against `job.manifest_path`.
///
/// Per-object problems are recorded in the report and the run goes on. A failing store or
/// embedder stops the run with an error; the manifest then lists only what was committed
/// before, so the next run redoes the rest.
pub async fn run_index(
    job: IndexJob,
    progress: impl FnMut(&IndexProgress) + Send,
) -> Result<IndexReport> {
    let started = Instant::now();
    job.validate()?;
    let source = BucketSource::open(&job)?;
    let mut manifest = Manifest::load_or_new(&job.manifest_path, &source.identity)?;
    manifest.cloud = Some(source.location.cloud.clone());
    manifest.region = Some(source.location.region.clone());
    let location = source.location.clone();
    let listed = Arc::new(AtomicU64::new(0));
    let key_prefix = source.key_prefix.clone();
    let context = Arc::new(ProducerContext {
        key_prefix: key_prefix.clone(),
        store: Arc::clone(&source.store),
        previous: manifest.clone(),
        settings: job.settings_fingerprint(),
        chunking: job.chunking,
        max_object_bytes: job.max_object_bytes,
    });
    let (sender, receiver) = mpsc::channel(job.fetch_concurrency);
    let excluded = Arc::new(AtomicU64::new(0));
    let counters = ListingCounters {
        listed: Arc::clone(&listed),
        excluded: Arc::clone(&excluded),
    };
    let producer = tokio::spawn(produce_events(
        source,
        context,
        job.fetch_concurrency,
        counters,
        sender,
    ));
    let mut run = IndexRun::new(&job, manifest, listed, started, progress);
    run.excluded = excluded;
    run.report.location = location;
    run.key_prefix = key_prefix;
    let outcome = run.consume(receiver).await;
    // On the error path the producer may still be fetching; its results are no longer wanted.
    producer.abort();
    match outcome {
        Ok(()) => Ok(run.into_report()),
        Err(error) => {
            run.forget_unconfirmed_objects().await;
            Err(error)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The bucket

/// Where objects are listed and read from.
struct BucketSource {
    store: Arc<dyn ObjectStore>,
    list_prefix: Option<ObjectPath>,
    /// Set when the URL names one file rather than a folder or prefix.
    single_object: Option<ObjectPath>,
    /// Names the bucket in the manifest.
    identity: String,
    /// The manifest and its temporary file, when they live inside the indexed folder.
    ignored_keys: HashSet<String>,
    /// Makes keys unique across buckets in the stores: the absolute folder path, or
    /// `scheme://bucket/`. Stores see `key_prefix + key` as the object key (and as the
    /// document id of files without record ids), so two folders that both hold a
    /// `README.md` never overwrite or delete each other's chunks. The manifest keeps
    /// the short keys, since it belongs to one bucket.
    key_prefix: String,
    /// Stamped on every chunk.
    location: BucketLocation,
    /// Include/exclude globs, matched against keys relative to `list_prefix`.
    filter: KeyFilter,
}

impl BucketSource {
    fn open(job: &IndexJob) -> Result<Self> {
        let url = job.url.as_str();
        let filter = KeyFilter::new(&job.bucket.include, &job.bucket.exclude)?;
        if let Some(local_path) = local_path_of(url)? {
            let mut source = Self::open_local(&local_path, &job.manifest_path, filter)?;
            source.location = BucketLocation {
                cloud: job
                    .bucket
                    .cloud
                    .clone()
                    .unwrap_or_else(|| "local".to_owned()),
                region: job
                    .bucket
                    .region
                    .clone()
                    .unwrap_or_else(|| "local".to_owned()),
            };
            if let Some(store) = &job.object_store {
                source.store = Arc::clone(store);
            }
            return Ok(source);
        }
        let parsed = url::Url::parse(url)
            .map_err(|error| Error::invalid(format!("index url {url:?} is not valid: {error}")))?;
        let mut bucket = open_cloud_bucket(&parsed, &job.bucket)?;
        if let Some(store) = &job.object_store {
            bucket.store = Arc::clone(store);
        }
        let list_prefix = (!bucket.prefix.as_ref().is_empty()).then_some(bucket.prefix);
        Ok(Self {
            store: bucket.store,
            list_prefix,
            single_object: None,
            identity: url.trim_end_matches('/').to_owned(),
            ignored_keys: HashSet::new(),
            key_prefix: format!(
                "{}://{}/",
                parsed.scheme(),
                parsed.host_str().unwrap_or_default()
            ),
            location: bucket.location,
            filter,
        })
    }

    /// Whether the globs let a listed key in; they see it relative to the listed prefix.
    fn accepts(&self, object_key: &str) -> bool {
        let relative = match &self.list_prefix {
            Some(prefix) => object_key
                .strip_prefix(prefix.as_ref())
                .map_or(object_key, |rest| rest.trim_start_matches('/')),
            None => object_key,
        };
        self.filter.accepts(relative)
    }

    /// Keys are paths relative to the folder (or the file name, for a single file), so the
    /// manifest does not depend on where the folder is mounted.
    fn open_local(path: &Path, manifest_path: &Path, filter: KeyFilter) -> Result<Self> {
        let canonical = std::fs::canonicalize(path)
            .map_err(|error| Error::from(error).context(format!("opening {}", path.display())))?;
        let (root, single_object) = if canonical.is_dir() {
            (canonical.clone(), None)
        } else {
            let file_name = canonical
                .file_name()
                .and_then(|name| name.to_str())
                .ok_or_else(|| {
                    Error::invalid(format!("{} has no utf-8 file name", canonical.display()))
                })?;
            let parent = canonical.parent().unwrap_or(Path::new("/")).to_path_buf();
            (parent, Some(ObjectPath::from(file_name)))
        };
        let store = LocalFileSystem::new_with_prefix(&root).map_err(|error| {
            Error::config(format!("cannot open folder {}: {error}", root.display()))
        })?;
        Ok(Self {
            store: Arc::new(store),
            list_prefix: None,
            single_object,
            identity: format!("file://{}", canonical.display()),
            ignored_keys: manifest_keys_inside(&root, manifest_path),
            key_prefix: format!("{}/", root.display()).replace("//", "/"),
            location: BucketLocation {
                cloud: "local".to_owned(),
                region: "local".to_owned(),
            },
            filter,
        })
    }

    fn list(&self) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let Some(location) = self.single_object.clone() else {
            return self.store.list(self.list_prefix.as_ref());
        };
        let store = Arc::clone(&self.store);
        let head = async move {
            let options = GetOptions {
                head: true,
                ..GetOptions::default()
            };
            store
                .get_opts(&location, options)
                .await
                .map(|result| result.meta)
        };
        futures::stream::once(head).boxed()
    }
}

/// `Some(path)` for a plain path or a `file://` URL, `None` for other URLs.
fn local_path_of(url: &str) -> Result<Option<PathBuf>> {
    if !url.contains("://") {
        return Ok(Some(PathBuf::from(url)));
    }
    if !url.starts_with("file://") {
        return Ok(None);
    }
    let parsed = url::Url::parse(url)
        .map_err(|error| Error::invalid(format!("index url {url:?} is not valid: {error}")))?;
    let path = parsed
        .to_file_path()
        .map_err(|()| Error::invalid(format!("{url} is not an absolute local path")))?;
    Ok(Some(path))
}

/// The object keys of the manifest and its temporary file when they sit inside `root`:
/// indexing them would change them on every run.
fn manifest_keys_inside(root: &Path, manifest_path: &Path) -> HashSet<String> {
    let mut keys = HashSet::new();
    let (Some(parent), Some(file_name)) = (manifest_path.parent(), manifest_path.file_name())
    else {
        return keys;
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let Ok(parent) = std::fs::canonicalize(parent) else {
        return keys;
    };
    for path in [
        parent.join(file_name),
        temporary_path_for(&parent.join(file_name)),
    ] {
        let Ok(relative) = path.strip_prefix(root) else {
            continue;
        };
        let parts: Option<Vec<&str>> = relative.iter().map(|part| part.to_str()).collect();
        if let Some(parts) = parts {
            keys.insert(ObjectPath::from_iter(parts).to_string());
        }
    }
    keys
}

// ---------------------------------------------------------------------------------------------
// The producer: list, fetch, hash, extract, chunk

/// What the producer tells the writer.
enum ProducerEvent {
    Object(ProcessedObject),
    ListingFailed(String),
    /// The listing reached its end: objects not seen are really gone.
    ListingFinished,
}

struct ProcessedObject {
    object_key: String,
    /// `None` when the object was not read.
    bytes_read: Option<u64>,
    result: ObjectResult,
}

enum ObjectResult {
    /// `refreshed_entry` carries a new etag when only the etag changed.
    Unchanged {
        refreshed_entry: Option<ManifestEntry>,
    },
    Skipped {
        reason: String,
    },
    /// `content_problem`: the bytes were read and are unusable (as opposed to unreadable).
    Failed {
        reason: String,
        content_problem: bool,
    },
    Prepared {
        entry: ManifestEntry,
        chunks: Vec<Chunk>,
        record_problems: Vec<ObjectIssue>,
    },
}

/// A document named after its object (no record id of its own) takes the qualified
/// key as its id, so same-named files in two buckets stay two documents.
fn qualify_document_id(
    document: &ExtractedDoc,
    object_key: &str,
    qualified_key: &str,
) -> ExtractedDoc {
    let mut document = document.clone();
    if document.doc_id == object_key {
        document.doc_id = qualified_key.to_owned();
    }
    document
}

struct ProducerContext {
    /// See [`BucketSource::key_prefix`].
    key_prefix: String,
    store: Arc<dyn ObjectStore>,
    /// The manifest as it was when the run started.
    previous: Manifest,
    settings: String,
    chunking: ChunkingConfig,
    max_object_bytes: u64,
}

/// What the lister counts for the progress report.
struct ListingCounters {
    listed: Arc<AtomicU64>,
    excluded: Arc<AtomicU64>,
}

/// What the lister hands to the fetchers.
enum ListedEntry {
    Object(ObjectMeta),
    Failed(String),
    Finished,
}

async fn produce_events(
    source: BucketSource,
    context: Arc<ProducerContext>,
    fetch_concurrency: usize,
    counters: ListingCounters,
    sender: mpsc::Sender<ProducerEvent>,
) {
    // The listing runs ahead of the fetches (bounded) so that `listed` soon approaches the
    // total a progress bar needs, without holding a huge bucket's listing in memory.
    let (listing_sender, listing_receiver) = mpsc::channel(LISTING_LOOKAHEAD);
    let lister = tokio::spawn(list_objects(source, counters, listing_sender));
    let events = tokio_stream::wrappers::ReceiverStream::new(listing_receiver)
        .map(|entry| {
            let context = Arc::clone(&context);
            async move {
                match entry {
                    ListedEntry::Object(meta) => {
                        ProducerEvent::Object(process_object(context, meta).await)
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
    lister.abort();
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
            Ok(meta) if source.ignored_keys.contains(meta.location.as_ref()) => continue,
            Ok(meta) if !source.accepts(meta.location.as_ref()) => {
                // Left out like a deleted object: if it was indexed, its chunks go.
                counters.excluded.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Ok(meta) => {
                counters.listed.fetch_add(1, Ordering::Relaxed);
                ListedEntry::Object(meta)
            }
            Err(error) => ListedEntry::Failed(error.to_string()),
        };
        if sender.send(entry).await.is_err() {
            return;
        }
    }
    let _ = sender.send(ListedEntry::Finished).await;
}

async fn process_object(context: Arc<ProducerContext>, meta: ObjectMeta) -> ProcessedObject {
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
    let bytes = match fetch_bytes(
        context.store.as_ref(),
        &meta.location,
        context.max_object_bytes,
    )
    .await
    {
        Ok(Fetched::Bytes(bytes)) => bytes,
        Ok(Fetched::TooLarge(size)) => {
            return not_read(too_large(size, context.max_object_bytes));
        }
        Err(reason) => {
            return not_read(ObjectResult::Failed {
                reason,
                content_problem: false,
            });
        }
    };
    let bytes_read = bytes.len() as u64;
    // Hashing, parsing and chunking a large object is CPU work: keep it off the async workers.
    let blocking_context = Arc::clone(&context);
    let blocking_key = object_key.clone();
    let result = tokio::task::spawn_blocking(move || {
        prepare_object(&blocking_context, &blocking_key, etag, &bytes)
    })
    .await
    .unwrap_or_else(|join_error| ObjectResult::Failed {
        reason: format!("extraction crashed: {join_error}"),
        content_problem: false,
    });
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

enum Fetched {
    Bytes(bytes::Bytes),
    /// The object grew past the limit between listing and reading.
    TooLarge(u64),
}

async fn fetch_bytes(
    store: &dyn ObjectStore,
    location: &ObjectPath,
    max_object_bytes: u64,
) -> std::result::Result<Fetched, String> {
    let response = store
        .get_opts(location, GetOptions::default())
        .await
        .map_err(describe_read_error)?;
    if response.meta.size > max_object_bytes {
        return Ok(Fetched::TooLarge(response.meta.size));
    }
    let bytes = response.bytes().await.map_err(describe_read_error)?;
    Ok(Fetched::Bytes(bytes))
}

fn describe_read_error(error: object_store::Error) -> String {
    match error {
        object_store::Error::NotFound { .. } => {
            "object vanished between listing and reading".to_owned()
        }
        other => format!("read failed: {other}"),
    }
}

fn prepare_object(
    context: &ProducerContext,
    object_key: &str,
    etag: Option<String>,
    bytes: &[u8],
) -> ObjectResult {
    let sha256 = sha256_hex(bytes);
    let size = bytes.len() as u64;
    if context
        .previous
        .is_unchanged_by_content(object_key, &sha256, &context.settings)
    {
        return unchanged_content(context, object_key, etag, size);
    }
    let extraction = match extract_with_problems(object_key, bytes) {
        Ok(extraction) => extraction,
        Err(error) if error.is_skip() => {
            return ObjectResult::Skipped {
                reason: error.to_string(),
            };
        }
        Err(error) => {
            return ObjectResult::Failed {
                reason: error.to_string(),
                content_problem: true,
            };
        }
    };
    let qualified_key = format!("{}{object_key}", context.key_prefix);
    let chunks: Vec<Chunk> = extraction
        .documents
        .iter()
        .map(|document| qualify_document_id(document, object_key, &qualified_key))
        .flat_map(|document| chunk_document(&qualified_key, &document, &context.chunking))
        .collect();
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
        etag,
        size,
        sha256,
        settings: context.settings.clone(),
        chunk_ids: chunks.iter().map(|chunk| chunk.chunk_id.clone()).collect(),
    };
    ObjectResult::Prepared {
        entry,
        chunks,
        record_problems,
    }
}

/// Same content under a new etag (a touched file, a re-upload): only the manifest learns it.
fn unchanged_content(
    context: &ProducerContext,
    object_key: &str,
    etag: Option<String>,
    size: u64,
) -> ObjectResult {
    let refreshed_entry = context
        .previous
        .objects
        .get(object_key)
        .filter(|previous| previous.etag != etag || previous.size != size)
        .map(|previous| ManifestEntry {
            etag,
            size,
            ..previous.clone()
        });
    ObjectResult::Unchanged { refreshed_entry }
}

// ---------------------------------------------------------------------------------------------
// The writer: embed, write, commit, remember

struct PreparedObject {
    object_key: String,
    entry: ManifestEntry,
    chunks: Vec<Chunk>,
}

struct IndexRun<P> {
    stores: Vec<Arc<dyn SearchBackend>>,
    embedder: Option<Arc<dyn Embedder>>,
    manifest_path: PathBuf,
    embed_batch_size: usize,
    commit_every_chunks: usize,
    /// The manifest as committed: it never lists more than the stores durably hold.
    manifest: Manifest,
    /// Prepared objects waiting for a full embedding batch.
    batch: Vec<PreparedObject>,
    batch_chunk_count: usize,
    /// Objects whose store writes are under way; dropped from the manifest if they fail.
    writing_keys: Vec<String>,
    /// Written to the stores, waiting for the commit that lets the manifest record them.
    unconfirmed: Vec<(String, ManifestEntry)>,
    unconfirmed_chunk_count: usize,
    /// Deleted from the stores, waiting for the commit that lets the manifest forget them.
    unconfirmed_removals: Vec<String>,
    /// New etags over unchanged content: no store write needed.
    etag_refreshes: Vec<(String, ManifestEntry)>,
    stores_need_commit: bool,
    seen_keys: HashSet<String>,
    /// Indexed before, unusable now (too large, broken): their old chunks must go.
    stale_keys: Vec<String>,
    listing_finished: bool,
    /// See [`BucketSource::key_prefix`]; the manifest's keys are short, the stores' qualified.
    key_prefix: String,
    listed: Arc<AtomicU64>,
    excluded: Arc<AtomicU64>,
    started: Instant,
    report: IndexReport,
    on_progress: P,
}

impl<P: FnMut(&IndexProgress) + Send> IndexRun<P> {
    /// Manifest keys as the stores know them.
    fn qualified(&self, keys: &[String]) -> Vec<String> {
        keys.iter()
            .map(|key| format!("{}{key}", self.key_prefix))
            .collect()
    }

    fn new(
        job: &IndexJob,
        manifest: Manifest,
        listed: Arc<AtomicU64>,
        started: Instant,
        on_progress: P,
    ) -> Self {
        Self {
            stores: job.stores.clone(),
            embedder: job.embedder_in_use(),
            manifest_path: job.manifest_path.clone(),
            embed_batch_size: job.embed_batch_size,
            commit_every_chunks: job.commit_every_chunks,
            manifest,
            batch: Vec::new(),
            batch_chunk_count: 0,
            writing_keys: Vec::new(),
            unconfirmed: Vec::new(),
            unconfirmed_chunk_count: 0,
            unconfirmed_removals: Vec::new(),
            etag_refreshes: Vec::new(),
            stores_need_commit: false,
            seen_keys: HashSet::new(),
            stale_keys: Vec::new(),
            listing_finished: false,
            key_prefix: String::new(),
            listed,
            excluded: Arc::new(AtomicU64::new(0)),
            started,
            report: IndexReport::default(),
            on_progress,
        }
    }

    async fn consume(&mut self, mut receiver: mpsc::Receiver<ProducerEvent>) -> Result<()> {
        while let Some(event) = receiver.recv().await {
            match event {
                ProducerEvent::Object(object) => self.handle_object(object).await?,
                ProducerEvent::ListingFailed(reason) => {
                    tracing::warn!(%reason, "listing the bucket failed");
                    self.report.listing_errors.push(reason);
                }
                ProducerEvent::ListingFinished => self.listing_finished = true,
            }
            self.report_progress();
        }
        self.finish().await
    }

    async fn handle_object(&mut self, object: ProcessedObject) -> Result<()> {
        let ProcessedObject {
            object_key,
            bytes_read,
            result,
        } = object;
        self.seen_keys.insert(object_key.clone());
        if let Some(bytes_read) = bytes_read {
            self.report.progress.fetched += 1;
            self.report.progress.bytes_read += bytes_read;
        }
        let was_indexed = self.manifest.objects.contains_key(&object_key);
        match result {
            ObjectResult::Unchanged { refreshed_entry } => {
                self.report.progress.unchanged += 1;
                if let Some(entry) = refreshed_entry {
                    self.etag_refreshes.push((object_key, entry));
                }
            }
            ObjectResult::Skipped { reason } => {
                self.report.progress.skipped += 1;
                self.report.skips.push(ObjectIssue {
                    object_key: object_key.clone(),
                    reason,
                });
                if was_indexed {
                    self.stale_keys.push(object_key);
                }
            }
            ObjectResult::Failed {
                reason,
                content_problem,
            } => {
                tracing::warn!(%object_key, %reason, "object not indexed");
                self.report.progress.failed += 1;
                self.report.failures.push(ObjectIssue {
                    object_key: object_key.clone(),
                    reason,
                });
                // Unreadable now is not gone: keep the old chunks until the content is known.
                if content_problem && was_indexed {
                    self.stale_keys.push(object_key);
                }
            }
            ObjectResult::Prepared {
                entry,
                chunks,
                record_problems,
            } => {
                self.report.progress.record_problems += record_problems.len() as u64;
                self.report.record_problems.extend(record_problems);
                self.batch_chunk_count += chunks.len();
                self.batch.push(PreparedObject {
                    object_key,
                    entry,
                    chunks,
                });
                if self.batch_chunk_count >= self.embed_batch_size {
                    self.flush_batch().await?;
                }
            }
        }
        Ok(())
    }

    /// Delete the batch's objects from every store (whatever an earlier or interrupted run
    /// left), then embed and upsert their chunks.
    async fn flush_batch(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let objects = std::mem::take(&mut self.batch);
        self.batch_chunk_count = 0;
        self.writing_keys = objects
            .iter()
            .map(|object| object.object_key.clone())
            .collect();
        self.stores_need_commit = true;
        let writing_keys = self.qualified(&self.writing_keys);
        on_every_store(&self.stores, "removing previous chunks", |store| {
            store.delete_objects(&writing_keys)
        })
        .await?;
        let mut entries = Vec::with_capacity(objects.len());
        let mut chunks = Vec::new();
        for object in objects {
            entries.push((object.object_key, object.entry));
            chunks.extend(object.chunks);
        }
        let chunk_count = chunks.len();
        let mut remaining = chunks.into_iter();
        loop {
            let group: Vec<Chunk> = remaining.by_ref().take(self.embed_batch_size).collect();
            if group.is_empty() {
                break;
            }
            let group_size = group.len() as u64;
            self.write_group(group).await?;
            self.report.progress.chunks_written += group_size;
            self.report_progress();
        }
        self.report.progress.indexed += entries.len() as u64;
        self.unconfirmed.extend(entries);
        self.unconfirmed_chunk_count += chunk_count;
        self.writing_keys.clear();
        if self.unconfirmed_chunk_count >= self.commit_every_chunks {
            self.commit_and_save().await?;
        }
        Ok(())
    }

    async fn write_group(&self, group: Vec<Chunk>) -> Result<()> {
        let vectors = self.embed_group(&group).await?;
        let embedded: Vec<EmbeddedChunk> = group
            .into_iter()
            .zip(vectors)
            .map(|(chunk, vector)| EmbeddedChunk { chunk, vector })
            .collect();
        on_every_store(&self.stores, "writing chunks", |store| {
            store.upsert(&embedded)
        })
        .await
    }

    /// One vector per chunk; empty vectors when only lexical stores are written.
    async fn embed_group(&self, group: &[Chunk]) -> Result<Vec<Vec<f32>>> {
        let Some(embedder) = &self.embedder else {
            return Ok(vec![Vec::new(); group.len()]);
        };
        let texts: Vec<String> = group.iter().map(embedding_text).collect();
        let vectors = embedder
            .embed(&texts, Purpose::Document)
            .await
            .map_err(|error| error.context("embedding chunks"))?;
        if vectors.len() != group.len() {
            return Err(Error::internal(format!(
                "embedder returned {} vectors for {} chunks",
                vectors.len(),
                group.len()
            )));
        }
        Ok(vectors)
    }

    /// Commit every store, then let the manifest record what the commit made durable.
    async fn commit_and_save(&mut self) -> Result<()> {
        if self.stores_need_commit {
            on_every_store(&self.stores, "committing", |store| store.commit()).await?;
            self.stores_need_commit = false;
        }
        let manifest_changed = !self.unconfirmed.is_empty()
            || !self.unconfirmed_removals.is_empty()
            || !self.etag_refreshes.is_empty();
        for (object_key, entry) in self.unconfirmed.drain(..) {
            self.manifest.objects.insert(object_key, entry);
        }
        for object_key in self.unconfirmed_removals.drain(..) {
            self.manifest.objects.remove(&object_key);
        }
        for (object_key, entry) in self.etag_refreshes.drain(..) {
            self.manifest.objects.insert(object_key, entry);
        }
        self.unconfirmed_chunk_count = 0;
        if !manifest_changed {
            return Ok(());
        }
        self.save_manifest().await
    }

    async fn save_manifest(&self) -> Result<()> {
        let contents = self.manifest.to_json()?;
        let path = self.manifest_path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &contents))
            .await
            .map_err(|error| Error::internal(format!("saving the manifest: {error}")))?
    }

    /// Flush the last batch, remove objects gone from the bucket (only when the listing is
    /// known complete), commit and save.
    async fn finish(&mut self) -> Result<()> {
        self.flush_batch().await?;
        let listing_complete = self.listing_finished && self.report.listing_errors.is_empty();
        if !self.listing_finished {
            self.report
                .listing_errors
                .push("the listing stopped before its end".to_owned());
        }
        let absent_keys: Vec<String> = if listing_complete {
            self.manifest
                .objects
                .keys()
                .filter(|object_key| !self.seen_keys.contains(*object_key))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let mut removals = std::mem::take(&mut self.stale_keys);
        removals.extend(absent_keys.iter().cloned());
        for keys in removals.chunks(DELETE_BATCH_KEYS) {
            self.stores_need_commit = true;
            let keys = &self.qualified(keys);
            on_every_store(&self.stores, "removing deleted objects", |store| {
                store.delete_objects(keys)
            })
            .await?;
        }
        self.unconfirmed_removals.extend(removals);
        self.commit_and_save().await?;
        self.report.progress.deleted += absent_keys.len() as u64;
        self.report_progress();
        Ok(())
    }

    /// After a failed write: the objects being written or written but not committed must be
    /// redone by the next run, so the manifest must not claim their old content either.
    async fn forget_unconfirmed_objects(&mut self) {
        let mut forgotten = false;
        let unconfirmed_keys = self.unconfirmed.drain(..).map(|(object_key, _)| object_key);
        for object_key in self.writing_keys.drain(..).chain(unconfirmed_keys) {
            forgotten |= self.manifest.objects.remove(&object_key).is_some();
        }
        if !forgotten {
            return;
        }
        if let Err(error) = self.save_manifest().await {
            tracing::warn!(%error, "could not save the manifest after a failed write");
        }
    }

    fn report_progress(&mut self) {
        self.report.progress.listed = self.listed.load(Ordering::Relaxed);
        self.report.progress.excluded = self.excluded.load(Ordering::Relaxed);
        self.report.progress.elapsed = self.started.elapsed();
        (self.on_progress)(&self.report.progress);
    }

    fn into_report(self) -> IndexReport {
        self.report
    }
}

/// Run one operation on every store at once; an error names the store and what failed.
async fn on_every_store<'a, Operation, Call>(
    stores: &'a [Arc<dyn SearchBackend>],
    what: &str,
    operation: Operation,
) -> Result<()>
where
    Operation: Fn(&'a dyn SearchBackend) -> Call,
    Call: std::future::Future<Output = Result<()>> + 'a,
{
    let calls = stores.iter().map(|store| {
        let call = operation(store.as_ref());
        async move {
            call.await
                .map_err(|error| error.context(format!("store {}: {what}", store.describe().id)))
        }
    });
    futures::future::try_join_all(calls).await.map(|_| ())
}

/// The text a chunk is embedded from: its title gives later chunks of a document the
/// context their own words may lack.
fn embedding_text(chunk: &Chunk) -> String {
    if chunk.title.is_empty() || chunk.text.starts_with(&chunk.title) {
        return chunk.text.clone();
    }
    format!("{}\n{}", chunk.title, chunk.text)
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
