//! `[[bucket]]`: how to reach the buckets under a URL and which of their keys to index.
//!
//! A bucket needs no entry at all when the cloud's standard environment variables say
//! everything (`AWS_ACCESS_KEY_ID`, `AZURE_STORAGE_ACCOUNT_NAME`, `GOOGLE_SERVICE_ACCOUNT`...);
//! an entry adds endpoints, credentials as secret locations, residency labels and filters.

use serde::Deserialize;

use super::SecretLocation;

/// Settings for every index URL that starts with `url` (the longest match wins).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// `s3://bucket`, `s3://bucket/prefix`, `az://container`, `gs://bucket`...
    pub url: String,
    /// Where the data lives, stamped on every chunk: `aws`, `azure`, `gcp`, `oci`...
    /// Default: from the scheme, or `oci` for an OCI compatibility endpoint.
    pub cloud: Option<String>,
    /// Default: `AWS_REGION` for S3, the region in an OCI endpoint, else `unknown`.
    pub region: Option<String>,
    /// S3-compatible endpoint (OCI: `https://<namespace>.compat.objectstorage.<region>.oraclecloud.com`),
    /// Azure account URL, or GCS base URL.
    pub endpoint: Option<String>,
    /// Allow a plain-http endpoint (emulators only).
    #[serde(default)]
    pub allow_http: bool,
    /// S3 and S3-compatible (OCI customer secret keys).
    pub access_key_id: Option<SecretLocation>,
    pub secret_access_key: Option<SecretLocation>,
    pub session_token: Option<SecretLocation>,
    /// Azure storage account name and key.
    pub account: Option<String>,
    pub access_key: Option<SecretLocation>,
    /// GCS: the service account JSON itself.
    pub service_account_key: Option<SecretLocation>,
    /// Azure or GCS OAuth bearer token.
    pub bearer_token: Option<SecretLocation>,
    /// Globs over keys relative to the URL's prefix (`**/*.md`); empty: every key.
    #[serde(default)]
    pub include: Vec<String>,
    /// Globs of keys left out even when included; an indexed key that becomes excluded
    /// has its chunks removed on the next run.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Overrides the index's `max_object_bytes`.
    pub max_object_bytes: Option<u64>,
    /// Objects fetched at once.
    pub fetch_concurrency: Option<usize>,
    /// Retries of a throttled or failing request (with exponential backoff) before the
    /// object or the listing is reported as failed.
    pub max_retries: Option<usize>,
    /// No retry starts later than this after the first attempt.
    pub retry_timeout_ms: Option<u64>,
}

/// The schemes `[[bucket]]` and the indexer understand, by cloud.
pub const S3_SCHEMES: &[&str] = &["s3", "s3a"];
pub const AZURE_SCHEMES: &[&str] = &["az", "azure", "abfs", "abfss", "adl"];
pub const GCS_SCHEMES: &[&str] = &["gs"];

impl BucketConfig {
    /// Whether this entry applies to `url`: a prefix ending at a path boundary.
    pub fn matches(&self, url: &str) -> bool {
        let own = self.url.trim_end_matches('/');
        match url.strip_prefix(own) {
            Some(rest) => rest.is_empty() || rest.starts_with('/') || own.ends_with("://"),
            None => false,
        }
    }

    /// Pure checks; every message names the entry and the key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let name = format!("bucket {:?}", self.url);
        let scheme = match url::Url::parse(&self.url) {
            Ok(url) => url.scheme().to_owned(),
            Err(error) => {
                problems.push(format!("{name}: url is not a URL ({error})"));
                return problems;
            }
        };
        let is_s3 = S3_SCHEMES.contains(&scheme.as_str());
        let is_azure = AZURE_SCHEMES.contains(&scheme.as_str());
        let is_gcs = GCS_SCHEMES.contains(&scheme.as_str());
        if !(is_s3 || is_azure || is_gcs) {
            problems.push(format!(
                "{name}: url scheme {scheme:?} is not one of s3, az, abfs, gs"
            ));
        }
        let only_for = |key: &str, set: bool, allowed: bool, which: &str| {
            (set && !allowed).then(|| format!("{name}: {key} applies to {which} buckets only"))
        };
        problems.extend(
            [
                only_for(
                    "access_key_id",
                    self.access_key_id.is_some(),
                    is_s3,
                    "s3://",
                ),
                only_for(
                    "secret_access_key",
                    self.secret_access_key.is_some(),
                    is_s3,
                    "s3://",
                ),
                only_for(
                    "session_token",
                    self.session_token.is_some(),
                    is_s3,
                    "s3://",
                ),
                only_for("account", self.account.is_some(), is_azure, "az://"),
                only_for("access_key", self.access_key.is_some(), is_azure, "az://"),
                only_for(
                    "service_account_key",
                    self.service_account_key.is_some(),
                    is_gcs,
                    "gs://",
                ),
                only_for(
                    "bearer_token",
                    self.bearer_token.is_some(),
                    is_azure || is_gcs,
                    "az:// and gs://",
                ),
            ]
            .into_iter()
            .flatten(),
        );
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            problems.push(format!(
                "{name}: access_key_id and secret_access_key go together"
            ));
        }
        if let Some(endpoint) = &self.endpoint {
            match url::Url::parse(endpoint) {
                Ok(url) if url.scheme() == "https" => {}
                Ok(url) if url.scheme() == "http" && self.allow_http => {}
                Ok(url) if url.scheme() == "http" => problems.push(format!(
                    "{name}: endpoint {endpoint:?} is plain http; set allow_http = true to allow it"
                )),
                _ => problems.push(format!(
                    "{name}: endpoint {endpoint:?} is not an http(s) URL"
                )),
            }
        }
        for (key, patterns) in [("include", &self.include), ("exclude", &self.exclude)] {
            for pattern in patterns {
                if let Err(error) = globset::Glob::new(pattern) {
                    problems.push(format!(
                        "{name}: {key} glob {pattern:?} is invalid: {error}"
                    ));
                }
            }
        }
        for (key, value) in [
            ("max_object_bytes", self.max_object_bytes),
            (
                "fetch_concurrency",
                self.fetch_concurrency.map(|v| v as u64),
            ),
            ("retry_timeout_ms", self.retry_timeout_ms),
        ] {
            if value == Some(0) {
                problems.push(format!("{name}: {key} must be at least 1"));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(text: &str) -> BucketConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn matches_whole_path_segments_only() {
        let entry = bucket("url = \"s3://docs/team\"");
        assert!(entry.matches("s3://docs/team"));
        assert!(entry.matches("s3://docs/team/2024"));
        assert!(!entry.matches("s3://docs/teammates"));
        assert!(!entry.matches("s3://docsx/team"));
        let whole_bucket = bucket("url = \"s3://docs/\"");
        assert!(whole_bucket.matches("s3://docs/team"));
        assert!(!whole_bucket.matches("s3://docs2"));
    }

    #[test]
    fn keys_of_another_cloud_and_bad_values_are_named() {
        let entry = bucket(
            r#"
            url = "gs://docs"
            access_key_id = "env:KEY"
            endpoint = "http://127.0.0.1:4443"
            include = ["a/[b"]
            fetch_concurrency = 0
            "#,
        );
        let problems = entry.problems().join("\n");
        assert!(
            problems.contains("access_key_id applies to s3://"),
            "{problems}"
        );
        assert!(problems.contains("go together"), "{problems}");
        assert!(problems.contains("allow_http"), "{problems}");
        assert!(problems.contains("include glob \"a/[b\""), "{problems}");
        assert!(problems.contains("fetch_concurrency"), "{problems}");
    }

    #[test]
    fn a_complete_oci_entry_is_valid() {
        let entry = bucket(
            r#"
            url = "s3://reports"
            endpoint = "https://ns.compat.objectstorage.eu-frankfurt-1.oraclecloud.com"
            access_key_id = "env:OCI_KEY"
            secret_access_key = "file:/run/secrets/oci"
            include = ["**/*.pdf"]
            "#,
        );
        assert_eq!(entry.problems(), Vec::<String>::new());
    }

    #[test]
    fn literal_keys_and_unknown_fields_are_refused() {
        assert!(
            toml::from_str::<BucketConfig>("url = \"s3://a\"\nsecret_access_key = \"AKIA\"")
                .is_err()
        );
        assert!(toml::from_str::<BucketConfig>("url = \"s3://a\"\nregoin = \"x\"").is_err());
    }
}
