//! Index: sync a bucket or folder into an index's stores, one run per index at a time.

use sha2::{Digest, Sha256};

use super::Service;
use super::bucket_options::bucket_options;
use crate::auth::Principal;
use crate::error::{Error, ErrorKind, Result};
use crate::ingest::{ChunkingConfig, IndexJob, IndexProgress, IndexReport, run_index};

/// Globs a caller adds to a run: `include` replaces the bucket's includes when given,
/// `exclude` adds to its excludes.
#[derive(Debug, Clone, Default)]
pub struct IndexFilters {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl Service {
    /// Runs one incremental sync of `url` into the index `index_id` (empty: the
    /// default index), reporting progress as it goes.
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
        let index = self.index_config_for(principal, index_id, url)?.clone();
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
        let stores = self
            .retriever
            .sources()
            .iter()
            .filter(|source| index.sources.contains(&source.id().to_string()))
            .map(|source| source.backend.clone())
            .collect();
        let embedder = self
            .index_space(&index)
            .and_then(|space| self.embedders.get(&space).cloned());
        let location = canonical_location(url);
        // One manifest per (index, bucket): a run only deletes what it indexed itself.
        let manifest_path = self
            .config
            .manifest_path(&index)
            .with_extension("")
            .join(format!("{}.json", short_hash(&location)));
        let bucket_config = self
            .config
            .bucket_for(&location)
            .cloned()
            .unwrap_or_default();
        let mut job = IndexJob::new(location, stores, embedder, manifest_path);
        job.chunking = ChunkingConfig {
            max_words: index.chunk_max_words,
            overlap_words: index.chunk_overlap_words,
            max_bytes: index.chunk_max_bytes,
        };
        job.max_chunks_per_object = index.max_chunks_per_object;
        job.extractor = self.extractor.clone();
        job.embed_batch_size = index.embed_batch_size;
        job.max_object_bytes = bucket_config
            .max_object_bytes
            .unwrap_or(index.max_object_bytes);
        job.commit_every_chunks = index.commit_every_chunks;
        if let Some(concurrency) = bucket_config.fetch_concurrency {
            job.fetch_concurrency = concurrency;
        }
        job.bucket = bucket_options(&bucket_config, filters, &self.env)
            .map_err(|error| error.context(format!("bucket {:?}", bucket_config.url)))?;
        let report = run_index(job, progress).await?;
        tracing::info!(
            index = %index.id,
            url,
            indexed = report.progress.indexed,
            unchanged = report.progress.unchanged,
            deleted = report.progress.deleted,
            failed = report.progress.failed,
            listing_errors = report.listing_errors.len(),
            chunks = report.progress.chunks_written,
            "index run finished"
        );
        Ok(report)
    }
}

impl Service {
    /// The index a principal's `Index` request names, refused unless it may write
    /// that index from that URL ([`crate::auth::Permissions::may_index`]). A
    /// restricted principal gets the same refusal for an unknown index as for a
    /// forbidden one.
    pub fn index_config_for(
        &self,
        principal: &Principal,
        index_id: &str,
        url: &str,
    ) -> Result<&crate::config::IndexConfig> {
        let permissions = principal.permissions();
        if permissions.is_all() {
            return self.index_config(index_id);
        }
        let index = self
            .index_config(index_id)
            .map_err(|_| Error::forbidden("permission denied: index into the requested index"))?;
        permissions.check_index(&index.id, url)?;
        Ok(index)
    }
}

/// Local paths are made absolute and resolved so that `./docs` and `/srv/docs`
/// share one manifest; URLs are kept as given, without a trailing slash.
fn canonical_location(url: &str) -> String {
    let path = url.strip_prefix("file://").unwrap_or(url);
    if url.contains("://") && !url.starts_with("file://") {
        return url.trim_end_matches('/').to_string();
    }
    std::fs::canonicalize(path).map_or_else(|_| url.to_string(), |path| path.display().to_string())
}

fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}
