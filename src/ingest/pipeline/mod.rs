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
//!
//! Dropping the [`run_index`] future is a crash too, and it must stop like one: the manifest
//! must not change after the drop, or the next run would read one that is still changing
//! under it. The producer and its lister are aborted on drop, and a manifest save in flight
//! on a blocking thread is called off ([`crate::ingest::manifest::WriteCancel`]): it lands
//! before the drop or never. Store calls are awaited by the run and stop with it, except
//! work a store hands to a thread of its own (the local stores' commits), which finishes:
//! at worst the stores are then ahead of the manifest, which a crash may always leave.
//!
//! [`source`] opens what a run reads, [`producer`] lists and prepares objects, [`writer`]
//! embeds, writes, commits and keeps the manifest; [`documents`] writes documents sent over
//! the API with the same chunking, embedding and store writes.

pub mod documents;
mod producer;
mod scope;
mod source;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use tokio::sync::mpsc;

use crate::config::RecordIdScope;
use crate::embed::Embedder;
use crate::error::{Error, Result};
use crate::ingest::bucket::{BucketLocation, BucketOptions};
use crate::ingest::chunk::ChunkingConfig;
use crate::ingest::isolate::Extractor;
use crate::ingest::manifest::{Manifest, ManifestHome, sha256_hex};
use crate::stores::{SearchBackend, StoreKind};
use producer::{ListingCounters, ProducerContext, produce_events};
pub(crate) use source::local_identity;
use source::{BucketSource, SourceSpec};
use writer::IndexRun;

pub const DEFAULT_EMBED_BATCH_SIZE: usize = 32;
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_FETCH_CONCURRENCY: usize = 8;
pub const DEFAULT_COMMIT_EVERY_CHUNKS: usize = 4096;
/// Generous for any real document (100k chunks of 200 words is 20M words), small enough
/// that a tiny `.gz` cannot expand into a million chunks held in memory at once.
pub const DEFAULT_MAX_CHUNKS_PER_OBJECT: usize = 100_000;
/// Each issue list of a report keeps at most this many entries; the rest are counted.
pub const MAX_REPORTED_ISSUES: usize = 1000;

/// Bumped when extraction, chunking or the embedded text change what an object yields, so
/// that the next run re-indexes everything instead of keeping chunks made the old way.
/// 2: chunks carry their bucket's cloud and region.
/// 3: chunks are bounded in bytes; the manifest remembers objects that failed.
/// 4: record ids are qualified by their object (unless `record_ids = "global"`), and
///    records without an id by their bucket.
/// 5: chunks carry object metadata (content type, size, last modified, etag) and the
///    record fields the index names, for filters.
/// 6: chunks carry their char span within their document, for citations.
/// 7: chunks carry the object's user metadata (`x-amz-meta-*`...) the index names in
///    `metadata_fields`.
const PIPELINE_VERSION: u32 = 7;

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
    /// Keep the manifest in the shared state instead of at `manifest_path` (an index
    /// whose stores are remote, synced under an ingestion lease).
    pub shared_manifest: Option<Arc<dyn ManifestHome>>,
    pub chunking: ChunkingConfig,
    /// An object that yields more chunks fails.
    pub max_chunks_per_object: usize,
    /// Where untrusted formats are parsed: in this process, or in a worker process that
    /// may crash or run out of memory without taking the server along.
    pub extractor: Extractor,
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
    /// For a local path: the indexing root it lies under. Keys are then relative to the
    /// root, so a file has one manifest entry whether its own path or a folder above it
    /// was indexed, and entries that escape the root (symlinks) are reported, not read.
    /// `None`: the folder itself (or a file's folder) is the root.
    pub local_root: Option<PathBuf>,
    /// Whether objects that only the request's globs leave out may lose their chunks, and
    /// whether an empty listing may delete what was indexed from the URL.
    pub prune: bool,
    /// Whether JSON(L) record ids name documents per object (the default) or index-wide.
    pub record_ids: RecordIdScope,
    /// JSON(L) record fields kept on chunks as user metadata, for filters.
    pub metadata_fields: Vec<String>,
    /// The tenant every chunk written is stamped with (`[[index]] namespace`, or an
    /// upsert's); searches bound to another namespace never see them.
    pub namespace: Option<String>,
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
            shared_manifest: None,
            chunking: ChunkingConfig::default(),
            max_chunks_per_object: DEFAULT_MAX_CHUNKS_PER_OBJECT,
            extractor: Extractor::default(),
            embed_batch_size: DEFAULT_EMBED_BATCH_SIZE,
            max_object_bytes: DEFAULT_MAX_OBJECT_BYTES,
            fetch_concurrency: DEFAULT_FETCH_CONCURRENCY,
            commit_every_chunks: DEFAULT_COMMIT_EVERY_CHUNKS,
            bucket: BucketOptions::default(),
            object_store: None,
            local_root: None,
            prune: false,
            record_ids: RecordIdScope::default(),
            metadata_fields: Vec::new(),
            namespace: None,
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
            ("max_chunks_per_object", self.max_chunks_per_object),
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
    ///
    /// The bucket's location is part of it too: chunks carry it, so relabelling a bucket's
    /// cloud or region rewrites its chunks rather than leaving them with the old labels.
    fn settings_fingerprint(&self, location: &BucketLocation) -> String {
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
            "pipeline={PIPELINE_VERSION};stores={};space={space};max_words={};overlap_words={};max_bytes={};cloud={};region={};record_ids={};metadata_fields={}",
            store_ids.join(","),
            self.chunking.max_words,
            self.chunking.overlap_words,
            self.chunking.max_bytes,
            location.cloud,
            location.region,
            self.record_ids.as_str(),
            self.metadata_fields.join(",")
        );
        // Only when set, so indexes without tenants keep their fingerprints.
        let description = match &self.namespace {
            Some(namespace) => format!("{description};namespace={namespace}"),
            None => description,
        };
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
    /// Indexed objects that the request's globs left out, removed because it said `prune`.
    pub pruned: u64,
    /// Indexed objects left out of this run (by the request's globs, or by an empty
    /// listing) and kept because the request did not say `prune`.
    pub kept_not_pruned: u64,
    /// Objects not indexed by design: unsupported type, too large, empty.
    pub skipped: u64,
    /// Objects that could not be read or extracted.
    pub failed: u64,
    /// Objects that failed an earlier run as they are now (same etag and size, or same
    /// content): not read again, reported, retried once they change.
    pub known_bad: u64,
    /// Bad records inside otherwise indexed multi-record files.
    pub record_problems: u64,
    pub chunks_written: u64,
    pub bytes_read: u64,
    pub elapsed: Duration,
}

impl IndexProgress {
    pub fn processed(&self) -> u64 {
        self.indexed + self.unchanged + self.skipped + self.failed + self.known_bad
    }

    /// Chunks written per second of the run so far (0 before the first millisecond).
    pub fn chunks_per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds < 1e-3 {
            return 0.0;
        }
        self.chunks_written as f64 / seconds
    }
}

/// Something that went wrong with (or was left out of) one object or record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectIssue {
    /// The object key, or `key:line` for a record inside one.
    pub object_key: String,
    pub reason: String,
}

/// At most [`MAX_REPORTED_ISSUES`] entries, and how many more there were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueList<T> {
    pub entries: Vec<T>,
    pub left_out: u64,
}

impl<T> Default for IssueList<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            left_out: 0,
        }
    }
}

impl<T> IssueList<T> {
    /// Keeps `issue` while there is room, else counts it.
    pub fn push(&mut self, issue: T) {
        if self.entries.len() < MAX_REPORTED_ISSUES {
            self.entries.push(issue);
        } else {
            self.left_out += 1;
        }
    }

    pub fn extend(&mut self, issues: impl IntoIterator<Item = T>) {
        for issue in issues {
            self.push(issue);
        }
    }

    /// Entries kept plus those left out.
    pub fn total(&self) -> u64 {
        self.entries.len() as u64 + self.left_out
    }
}

/// Reads as the entries kept (`len`, `iter`, indexing).
impl<T> std::ops::Deref for IssueList<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.entries
    }
}

/// The outcome of a run that reached its end. Each issue list is capped
/// ([`MAX_REPORTED_ISSUES`]) so the final message always fits; the rest are counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexReport {
    pub progress: IndexProgress,
    pub failures: IssueList<ObjectIssue>,
    /// Objects not read because they failed before as they are now.
    pub known_bad: IssueList<ObjectIssue>,
    pub skips: IssueList<ObjectIssue>,
    pub record_problems: IssueList<ObjectIssue>,
    /// Errors while listing. When there are any, objects missing from the listing were
    /// not deleted: they may only have been missed.
    pub listing_errors: IssueList<String>,
    /// Each object pruned (see [`IndexProgress::pruned`]).
    pub pruned: IssueList<ObjectIssue>,
    /// Deletions held back for want of `prune` (an empty listing of an indexed URL).
    pub not_pruned: IssueList<String>,
    /// Where the bucket's data lives: stamped on every chunk, recorded in the manifest.
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
    let source = BucketSource::open(SourceSpec::of(&job)).await?;
    let (manifest_path, identity) = (job.manifest_path.clone(), source.identity.clone());
    let api_documents_paths =
        (job.record_ids == RecordIdScope::Global).then(|| job.manifest_path.clone());
    let shared_manifest = job.shared_manifest.clone();
    let shared = match &shared_manifest {
        Some(shared) => Some(shared.load(&identity).await?),
        None => None,
    };
    let (mut manifest, api_documents) = tokio::task::spawn_blocking(move || {
        let manifest = match shared {
            Some(manifest) => manifest,
            None => Manifest::load_or_new(&manifest_path, &identity)?,
        };
        let mut api_documents = Vec::new();
        if let Some(bucket_manifest) = api_documents_paths {
            for path in documents::documents_manifest_paths_beside(&bucket_manifest)? {
                api_documents
                    .extend(documents::DocumentsManifest::load_or_new(&path)?.object_keys());
            }
        }
        Ok::<_, Error>((manifest, api_documents))
    })
    .await
    .map_err(|error| Error::internal(format!("reading the manifest: {error}")))??;
    manifest.cloud = Some(source.location.cloud.clone());
    manifest.region = Some(source.location.region.clone());
    let context = Arc::new(ProducerContext {
        key_prefix: source.key_prefix.clone(),
        store: Arc::clone(&source.store),
        previous: manifest.clone(),
        settings: job.settings_fingerprint(&source.location),
        location: source.location.clone(),
        chunking: job.chunking,
        max_chunks_per_object: job.max_chunks_per_object,
        max_object_bytes: job.max_object_bytes,
        extractor: job.extractor.clone(),
        record_ids: job.record_ids,
        metadata_fields: job.metadata_fields.clone(),
        namespace: job.namespace.clone(),
    });
    let (sender, receiver) = mpsc::channel(job.fetch_concurrency);
    let counters = ListingCounters::default();
    let mut run = IndexRun::new(&job, manifest, &source, counters.clone(), started, progress);
    run.reserve_api_documents(api_documents);
    // On the error path, or when this future is dropped, the producer may still be fetching;
    // its results are no longer wanted.
    let producer = AbortOnDrop(tokio::spawn(produce_events(
        source,
        context,
        job.fetch_concurrency,
        counters,
        sender,
    )));
    let outcome = run.consume(receiver).await;
    drop(producer);
    match outcome {
        Ok(()) => Ok(run.into_report()),
        Err(error) => {
            run.forget_unconfirmed_objects().await;
            Err(error)
        }
    }
}

/// Aborts its task when dropped, so that a dropped run leaves no task of its own behind.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests;
