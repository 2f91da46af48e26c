//! `[[bucket]]`: how to reach the buckets under a URL and which of their keys to index.
//!
//! A bucket needs no entry at all when the cloud's standard environment variables say
//! everything (`AWS_ACCESS_KEY_ID`, `AZURE_STORAGE_ACCOUNT_NAME`, `GOOGLE_SERVICE_ACCOUNT`...);
//! an entry adds endpoints, credentials as secret locations, residency labels and filters.

use serde::Deserialize;

use super::{AwsKeyLocations, SecretLocation};
use crate::ingest::canonical::{CanonicalUrl, canonicalize};

/// Settings for every index URL that starts with `url` (the longest match wins). The
/// URL's scheme selects the credential keys the entry takes (`s3://`: an AWS key pair,
/// `az://`: a storage account, `gs://`: a service account); a key of another cloud is
/// refused by serde, naming the key and the entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "toml::Table")]
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
    pub allow_http: bool,
    /// Globs over keys relative to the URL's prefix (`**/*.md`); empty: every key.
    pub include: Vec<String>,
    /// Globs of keys left out even when included; an indexed key that becomes excluded
    /// has its chunks removed on the next run.
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
    pub credentials: BucketCredentialsConfig,
}

/// The credential keys of a bucket, by the cloud its URL names. Unset ones fall back
/// to the cloud's standard environment variables (read by `object_store`).
#[derive(Debug, Clone, Default)]
pub enum BucketCredentialsConfig {
    /// No `[[bucket]]` entry applies.
    #[default]
    None,
    /// S3 and S3-compatible (OCI customer secret keys): `access_key_id`,
    /// `secret_access_key`, `session_token`.
    S3(AwsKeyLocations),
    Azure {
        /// The storage account name and key.
        account: Option<String>,
        access_key: Option<SecretLocation>,
        /// An OAuth bearer token.
        bearer_token: Option<SecretLocation>,
    },
    Gcs {
        /// The service account JSON itself.
        service_account_key: Option<SecretLocation>,
        /// An OAuth bearer token.
        bearer_token: Option<SecretLocation>,
    },
}

/// The schemes `[[bucket]]` and the indexer understand, by cloud.
pub const S3_SCHEMES: &[&str] = &["s3", "s3a", "s3n"];
pub const AZURE_SCHEMES: &[&str] = &["az", "azure", "abfs", "abfss", "adl"];
pub const GCS_SCHEMES: &[&str] = &["gs"];

impl BucketConfig {
    /// The entry's URL in canonical form ([`canonicalize`]), with the storage account it
    /// names for Azure; `None` when the URL is not a bucket URL (a config problem).
    pub fn canonical(&self) -> Option<CanonicalUrl> {
        let mut canonical = canonicalize(&self.url).ok()?;
        if let BucketCredentialsConfig::Azure {
            account: Some(account),
            ..
        } = &self.credentials
        {
            canonical.account = Some(account.to_ascii_lowercase());
        }
        Some(canonical)
    }

    /// Whether this entry applies to `url`, compared in canonical form (so `s3a://` and
    /// the `https://` hosts of a bucket match an `s3://` entry): a prefix ending at a
    /// path boundary.
    pub fn matches(&self, url: &str) -> bool {
        match (self.canonical(), canonicalize(url)) {
            (Some(own), Ok(url)) => url.is_under(&own),
            _ => false,
        }
    }

    /// Pure checks of the values serde cannot judge; every message names the entry
    /// and the key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let name = format!("bucket {:?}", self.url);
        if let Err(error) = canonicalize(&self.url) {
            problems.push(format!("{name}: url: {}", error.message));
        }
        if let BucketCredentialsConfig::S3(keys) = &self.credentials
            && !keys.pair_is_whole()
        {
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

/// Declares one cloud's table: the keys every bucket takes, then the cloud's own,
/// `deny_unknown_fields` over the whole (serde's `flatten` would defeat it).
macro_rules! bucket_table {
    ($name:ident { $($field:ident: $type:ty,)* }) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            url: String,
            cloud: Option<String>,
            region: Option<String>,
            endpoint: Option<String>,
            #[serde(default)]
            allow_http: bool,
            #[serde(default)]
            include: Vec<String>,
            #[serde(default)]
            exclude: Vec<String>,
            max_object_bytes: Option<u64>,
            fetch_concurrency: Option<usize>,
            max_retries: Option<usize>,
            retry_timeout_ms: Option<u64>,
            $($field: $type,)*
        }

        impl $name {
            fn common(self, credentials: BucketCredentialsConfig) -> BucketConfig {
                BucketConfig {
                    url: self.url,
                    cloud: self.cloud,
                    region: self.region,
                    endpoint: self.endpoint,
                    allow_http: self.allow_http,
                    include: self.include,
                    exclude: self.exclude,
                    max_object_bytes: self.max_object_bytes,
                    fetch_concurrency: self.fetch_concurrency,
                    max_retries: self.max_retries,
                    retry_timeout_ms: self.retry_timeout_ms,
                    credentials,
                }
            }
        }
    };
}

bucket_table!(S3Table {
    access_key_id: Option<SecretLocation>,
    secret_access_key: Option<SecretLocation>,
    session_token: Option<SecretLocation>,
});

bucket_table!(AzureTable {
    account: Option<String>,
    access_key: Option<SecretLocation>,
    bearer_token: Option<SecretLocation>,
});

bucket_table!(GcsTable {
    service_account_key: Option<SecretLocation>,
    bearer_token: Option<SecretLocation>,
});

impl TryFrom<toml::Table> for BucketConfig {
    type Error = String;

    /// The scheme of `url` picks the table; serde's message names the key, this adds
    /// the entry.
    fn try_from(table: toml::Table) -> Result<Self, String> {
        let url = table
            .get("url")
            .and_then(|value| value.as_str())
            .ok_or("[[bucket]]: missing field `url`")?
            .to_owned();
        let name = format!("bucket {url:?}");
        let scheme = url::Url::parse(&url)
            .map_err(|error| format!("{name}: url is not a URL ({error})"))?
            .scheme()
            .to_owned();
        let in_entry = |error: toml::de::Error| format!("{name}: {}", error.message().trim_end());
        if S3_SCHEMES.contains(&scheme.as_str()) {
            let table: S3Table = table.try_into().map_err(in_entry)?;
            let keys = AwsKeyLocations {
                access_key_id: table.access_key_id.clone(),
                secret_access_key: table.secret_access_key.clone(),
                session_token: table.session_token.clone(),
            };
            return Ok(table.common(BucketCredentialsConfig::S3(keys)));
        }
        if AZURE_SCHEMES.contains(&scheme.as_str()) {
            let mut table: AzureTable = table.try_into().map_err(in_entry)?;
            let credentials = BucketCredentialsConfig::Azure {
                account: table.account.take(),
                access_key: table.access_key.take(),
                bearer_token: table.bearer_token.take(),
            };
            return Ok(table.common(credentials));
        }
        if GCS_SCHEMES.contains(&scheme.as_str()) {
            let mut table: GcsTable = table.try_into().map_err(in_entry)?;
            let credentials = BucketCredentialsConfig::Gcs {
                service_account_key: table.service_account_key.take(),
                bearer_token: table.bearer_token.take(),
            };
            return Ok(table.common(credentials));
        }
        Err(format!(
            "{name}: url scheme {scheme:?} is not one of s3, az, abfs, gs"
        ))
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
        // Aliases reach the same entry.
        assert!(entry.matches("s3a://docs/team/x"));
        assert!(entry.matches("https://docs.s3.eu-west-1.amazonaws.com/team"));
        assert!(entry.matches("https://s3.amazonaws.com/docs/team/y"));
        let azure = bucket("url = \"az://c/f\"\naccount = \"acct\"");
        assert!(azure.matches("abfss://c@acct.dfs.core.windows.net/f/x"));
        assert!(azure.matches("az://c/f"));
        assert!(!azure.matches("https://other.blob.core.windows.net/c/f"));
    }

    #[test]
    fn keys_of_another_cloud_are_refused_naming_the_key_and_entry() {
        let error =
            toml::from_str::<BucketConfig>("url = \"gs://docs\"\naccess_key_id = \"env:KEY\"")
                .unwrap_err()
                .to_string();
        assert!(
            error.contains("bucket \"gs://docs\": unknown field `access_key_id`"),
            "{error}"
        );
        let error = toml::from_str::<BucketConfig>("url = \"ftp://docs\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("url scheme \"ftp\""), "{error}");
    }

    #[test]
    fn bad_values_are_named() {
        let entry = bucket(
            r#"
            url = "s3://docs"
            access_key_id = "env:KEY"
            endpoint = "http://127.0.0.1:4443"
            include = ["a/[b"]
            fetch_concurrency = 0
            "#,
        );
        let problems = entry.problems().join("\n");
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
