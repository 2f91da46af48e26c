//! Index: sync a bucket or folder into an index's stores, one run per index at a time
//! in a process, and one replica per (index, bucket) with shared state ([`super::index_lease`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::Service;
use super::bucket_options::bucket_options;
use super::index_target::{self, IndexTarget};
use crate::auth::Principal;
use crate::error::{Error, ErrorKind, Result};
use crate::ingest::{ChunkingConfig, IndexJob, IndexProgress, IndexReport, run_index};
use crate::state::SharedManifest;

/// What a caller adds to a run. Globs only narrow the `[[bucket]]` entry's (an object must
/// match both; `exclude` adds), and `prune` says whether indexed objects the request's
/// globs leave out (or an empty listing) may lose their chunks.
#[derive(Debug, Clone, Default)]
pub struct IndexFilters {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Delete the chunks of indexed objects this request's globs leave out, and let an
    /// empty listing delete what was indexed from the URL. Needs the role's `prune`.
    pub prune: bool,
}

impl Service {
    /// Runs one incremental sync of `url` into the index `index_id` (empty: the
    /// default index), reporting progress as it goes. Dropping the future stops the run
    /// (nothing half-done is committed to the manifest) and releases the index.
    pub async fn index(
        &self,
        principal: &Principal,
        url: &str,
        index_id: &str,
        filters: &IndexFilters,
        progress: impl FnMut(&IndexProgress) + Send,
    ) -> Result<IndexReport> {
        if url.trim().is_empty() {
            return Err(Error::invalid("url must not be empty"));
        }
        self.admit_call(principal).await?;
        let index = self.index_config_for(principal, index_id)?.clone();
        let target = self.index_target(url).await?;
        // Roles grant URL prefixes of the canonical form, so `s3a://`, `../` or a symlink
        // cannot reach around them.
        let permissions = principal.permissions();
        if !permissions.may_index(&index_target::job_url(&target)) {
            tracing::info!(
                url,
                principal = principal.id(),
                "index outside the caller's prefixes refused"
            );
            return Err(index_target::not_found_or_not_allowed());
        }
        if filters.prune && !permissions.may_prune() {
            return Err(Error::forbidden("permission denied: prune"));
        }
        let lock = self.index_locks[&index.id].clone();
        let _running = lock.try_lock_owned().map_err(|_| {
            Error::new(
                ErrorKind::Unavailable,
                format!(
                    "index {:?} is being written by another run; retry when it ends",
                    index.id
                ),
            )
        })?;
        // One manifest per (index, bucket or root): an object has one entry whichever URL
        // reached it, and a run only judges the keys under its own URL.
        let manifest_path = self.manifest_folder(&index).join(format!(
            "{}.json",
            short_hash(&index_target::identity(&target))
        ));
        let bucket_config = match &target {
            IndexTarget::Bucket { entry, .. } => entry.as_ref().clone(),
            IndexTarget::Local { .. } => crate::config::BucketConfig::default(),
        };
        let mut job = self.index_job(&index, index_target::job_url(&target), manifest_path);
        job.local_root = index_target::local_root(&target).map(Path::to_path_buf);
        job.prune = filters.prune;
        job.max_object_bytes = bucket_config
            .max_object_bytes
            .unwrap_or(index.max_object_bytes);
        if let Some(concurrency) = bucket_config.fetch_concurrency {
            job.fetch_concurrency = concurrency;
        }
        job.bucket = bucket_options(&bucket_config, filters, &self.env)
            .map_err(|error| error.context(format!("bucket {:?}", bucket_config.url)))?;
        // Past the in-process lock: with shared state and remote stores, one replica
        // per (index, bucket), and the manifest shared so another one can resume.
        let lease = self.ingest_lease(&index, &target).await?;
        if let Some(lease) = &lease {
            job.shared_manifest = Some(Arc::new(SharedManifest::guarded_by(lease)));
        }
        let run = async {
            let run = run_index(job, progress);
            match &lease {
                // A lost lease stops the run like a crash: nothing more is written.
                Some(lease) => tokio::select! {
                    biased;
                    () = lease.lost() => Err(lease.lost_error()),
                    report = run => report,
                },
                None => run.await,
            }
        };
        let span = crate::telemetry::spans::index_run(&index.id);
        let report = crate::telemetry::trace::run_in(span.as_ref(), run).await;
        if let Some(lease) = lease {
            lease.release().await;
        }
        if let Some(span) = span {
            crate::telemetry::spans::end_index_run(span, &report);
        }
        let outcome = if report.is_ok() { "ok" } else { "error" };
        self.metrics.record_request("index", outcome);
        let report = report?;
        self.metrics.record_index_run(&index.id, &report.progress);
        tracing::info!(
            index = %index.id,
            url,
            indexed = report.progress.indexed,
            unchanged = report.progress.unchanged,
            deleted = report.progress.deleted,
            pruned = report.progress.pruned,
            kept_not_pruned = report.progress.kept_not_pruned,
            failed = report.progress.failed,
            listing_errors = report.listing_errors.len(),
            chunks = report.progress.chunks_written,
            "index run finished"
        );
        Ok(report)
    }

    /// A job writing into `index`'s stores with its chunking, embedding and batch sizes:
    /// what a bucket sync and an API document upsert share.
    pub(super) fn index_job(
        &self,
        index: &crate::config::IndexConfig,
        url: String,
        manifest_path: PathBuf,
    ) -> IndexJob {
        let stores = self
            .retriever
            .sources()
            .iter()
            .filter(|source| index.sources.contains(&source.id().to_string()))
            .map(|source| source.backend.clone())
            .collect();
        let embedder = self
            .index_space(index)
            .and_then(|space| self.embedders.get(&space).cloned());
        let mut job = IndexJob::new(url, stores, embedder, manifest_path);
        job.chunking = ChunkingConfig {
            max_words: index.chunk_max_words,
            overlap_words: index.chunk_overlap_words,
            max_bytes: index.chunk_max_bytes,
        };
        job.max_chunks_per_object = index.max_chunks_per_object;
        job.record_ids = index.record_ids;
        job.metadata_fields = index.metadata_fields.clone();
        job.namespace = index.namespace.clone();
        job.extractor = self.extractor.clone();
        job.embed_batch_size = index.embed_batch_size;
        job.commit_every_chunks = index.commit_every_chunks;
        job
    }

    /// The folder of an index's manifests: one per bucket or root, and the API documents'.
    pub(super) fn manifest_folder(&self, index: &crate::config::IndexConfig) -> PathBuf {
        self.config.manifest_path(index).with_extension("")
    }

    /// The index a principal's `Index` request names, refused unless it may write
    /// into it. A restricted principal gets the same refusal for an unknown index as
    /// for a forbidden one. (The URL is checked once resolved, in [`Self::index`].)
    pub fn index_config_for(
        &self,
        principal: &Principal,
        index_id: &str,
    ) -> Result<&crate::config::IndexConfig> {
        let permissions = principal.permissions();
        if permissions.is_all() {
            return self.index_config(index_id);
        }
        let forbidden = || Error::forbidden("permission denied: index into the requested index");
        let index = self.index_config(index_id).map_err(|_| forbidden())?;
        if !permissions.may_index_into(&index.id) {
            return Err(forbidden());
        }
        Ok(index)
    }

    /// Where `url` may be read from, or the one refusal (see [`index_target`]). Local
    /// paths are resolved on a blocking thread: the disk may hang (NFS).
    async fn index_target(&self, url: &str) -> Result<IndexTarget> {
        if !index_target::is_local(url) {
            return index_target::resolve_bucket(url, &self.config.buckets);
        }
        let (url, roots) = (url.to_owned(), self.ingest_roots.clone());
        tokio::task::spawn_blocking(move || index_target::resolve_local(&url, &roots))
            .await
            .map_err(|error| Error::internal(format!("resolving the path: {error}")))?
    }
}

pub(super) fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}
