//! From a `[[bucket]]` entry and the caller's globs to the options the indexer opens a
//! bucket with: secrets resolved, and only the cloud variables of the environment passed on.

use std::collections::HashMap;
use std::time::Duration;

use super::IndexFilters;
use crate::config::{BucketConfig, BucketCredentialsConfig, SecretLocation};
use crate::error::Result;
use crate::ingest::{BucketCredentials, BucketOptions};

/// A `[[bucket]]` entry (or none: all defaults) with its secrets resolved, plus the
/// caller's globs (kept apart from the entry's: they only narrow) and the standard cloud
/// variables of the environment.
pub(super) fn bucket_options(
    bucket: &BucketConfig,
    filters: &IndexFilters,
    env: &HashMap<String, String>,
) -> Result<BucketOptions> {
    let resolve = |location: &Option<SecretLocation>, key: &str| {
        SecretLocation::resolve_optional(location.as_ref(), key, env)
    };
    // Unset keys stay unset: object_store reads the standard variables (and the
    // instance's role) itself.
    let mut credentials = BucketCredentials::default();
    match &bucket.credentials {
        BucketCredentialsConfig::None => {}
        BucketCredentialsConfig::S3(keys) => {
            let keys = keys.resolve("", env)?;
            credentials.access_key_id = keys.access_key_id;
            credentials.secret_access_key = keys.secret_access_key;
            credentials.session_token = keys.session_token;
        }
        BucketCredentialsConfig::Azure {
            account,
            access_key,
            bearer_token,
        } => {
            credentials.azure_account = account.clone();
            credentials.azure_access_key = resolve(access_key, "access_key")?;
            credentials.bearer_token = resolve(bearer_token, "bearer_token")?;
        }
        BucketCredentialsConfig::Gcs {
            service_account_key,
            bearer_token,
        } => {
            credentials.gcs_service_account_key =
                resolve(service_account_key, "service_account_key")?;
            credentials.bearer_token = resolve(bearer_token, "bearer_token")?;
        }
    }
    // The operator's globs stay whole and relative to the entry's own prefix; the
    // request's are matched on their own, so they can only narrow (see `RunScope`).
    let filter_base = bucket.canonical().map(|canonical| canonical.prefix);
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
        include: bucket.include.clone(),
        exclude: bucket.exclude.clone(),
        filter_base,
        request_include: filters.include.clone(),
        request_exclude: filters.exclude.clone(),
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
            ..IndexFilters::default()
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
        // The entry's globs stay whole; the request's are kept apart to narrow them.
        assert_eq!(options.include, ["**/*.md"]);
        assert_eq!(options.exclude, ["drafts/**"]);
        assert_eq!(options.request_include, ["**/*.pdf"]);
        assert_eq!(options.request_exclude, ["old/**"]);
        assert_eq!(options.filter_base.as_deref(), Some(""));

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
