//! Index: sync a bucket or folder into an index's stores, one run per index at a time.

use std::collections::HashMap;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::Service;
use crate::config::{BucketConfig, SecretLocation};
use crate::error::{Error, ErrorKind, Result};
use crate::ingest::{
    BucketCredentials, BucketOptions, ChunkingConfig, IndexJob, IndexProgress, IndexReport,
    run_index,
};

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
        url: &str,
        index_id: &str,
        filters: &IndexFilters,
        progress: impl FnMut(&IndexProgress) + Send,
    ) -> Result<IndexReport> {
        if url.trim().is_empty() {
            return Err(Error::invalid("url must not be empty"));
        }
        let index = self.index_config(index_id)?.clone();
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
        };
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
            chunks = report.progress.chunks_written,
            "index run finished"
        );
        Ok(report)
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

/// A `[[bucket]]` entry (or none: all defaults) with its secrets resolved, plus the
/// caller's globs and the standard cloud variables of the environment.
fn bucket_options(
    bucket: &BucketConfig,
    filters: &IndexFilters,
    env: &HashMap<String, String>,
) -> Result<BucketOptions> {
    let resolve = |location: &Option<SecretLocation>| {
        location
            .as_ref()
            .map(|location| location.resolve(env))
            .transpose()
    };
    let credentials = BucketCredentials {
        access_key_id: resolve(&bucket.access_key_id)?,
        secret_access_key: resolve(&bucket.secret_access_key)?,
        session_token: resolve(&bucket.session_token)?,
        azure_account: bucket.account.clone(),
        azure_access_key: resolve(&bucket.access_key)?,
        gcs_service_account_key: resolve(&bucket.service_account_key)?,
        bearer_token: resolve(&bucket.bearer_token)?,
    };
    let include = if filters.include.is_empty() {
        bucket.include.clone()
    } else {
        filters.include.clone()
    };
    let exclude = bucket
        .exclude
        .iter()
        .chain(&filters.exclude)
        .cloned()
        .collect();
    Ok(BucketOptions {
        cloud: bucket.cloud.clone(),
        region: bucket.region.clone(),
        endpoint: bucket.endpoint.clone(),
        allow_http: bucket.allow_http,
        credentials,
        env: storage_env(env),
        max_retries: bucket.max_retries,
        retry_timeout: bucket.retry_timeout_ms.map(Duration::from_millis),
        initial_backoff: None,
        include,
        exclude,
    })
}

/// The variables `object_store` reads for each cloud; the rest of the environment stays out.
fn storage_env(env: &HashMap<String, String>) -> HashMap<String, String> {
    env.iter()
        .filter(|(name, _)| {
            ["AWS_", "AZURE_", "GOOGLE_"]
                .iter()
                .any(|prefix| name.starts_with(prefix))
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_secrets_resolve_from_env_and_request_globs_combine() {
        let bucket: BucketConfig = toml::from_str(
            r#"
            url = "s3://docs"
            access_key_id = "env:DOCS_KEY"
            secret_access_key = "env:DOCS_SECRET"
            include = ["**/*.md"]
            exclude = ["drafts/**"]
            "#,
        )
        .unwrap();
        let env = HashMap::from([
            ("DOCS_KEY".to_owned(), "AKIA1".to_owned()),
            ("DOCS_SECRET".to_owned(), "very-secret".to_owned()),
        ]);
        let filters = IndexFilters {
            include: vec!["**/*.pdf".into()],
            exclude: vec!["old/**".into()],
        };
        let options = bucket_options(&bucket, &filters, &env).unwrap();
        assert_eq!(
            options
                .credentials
                .secret_access_key
                .as_ref()
                .unwrap()
                .expose(),
            "very-secret"
        );
        assert!(!format!("{options:?}").contains("very-secret"));
        assert_eq!(options.include, ["**/*.pdf"]);
        assert_eq!(options.exclude, ["drafts/**", "old/**"]);

        let error = bucket_options(&bucket, &IndexFilters::default(), &HashMap::new()).unwrap_err();
        assert!(error.message.contains("DOCS_KEY"), "{error}");
    }

    #[test]
    fn only_cloud_variables_are_kept() {
        let env = HashMap::from([
            ("AWS_REGION".to_owned(), "eu-west-1".to_owned()),
            ("AZURE_STORAGE_ACCOUNT_NAME".to_owned(), "acct".to_owned()),
            ("OPENAI_API_KEY".to_owned(), "sk".to_owned()),
        ]);
        let kept = storage_env(&env);
        assert_eq!(kept.len(), 2);
        assert!(!kept.contains_key("OPENAI_API_KEY"));
    }
}
