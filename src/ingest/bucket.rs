//! Opening a cloud bucket from its URL: S3 (and S3-compatible endpoints such as OCI's),
//! Azure Blob and GCS through `object_store`, with credentials from explicit settings first
//! and the cloud's standard environment variables second.
//!
//! The environment is passed in as a map (never read here), so tests decide exactly what a
//! client sees and never fall through to a cloud metadata address by accident.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::list::PaginatedListStore;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreScheme, RetryConfig};

use crate::config::Secret;
use crate::error::{Error, Result};

pub const DEFAULT_MAX_RETRIES: usize = 5;
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(60);

/// How to reach a bucket and what to take from it. Everything is optional: an empty value
/// means "the standard environment variables in `env`, then the cloud's default chain".
/// Debug never prints a credential: secrets show redacted, `env` by variable names only
/// (it holds `AWS_SECRET_ACCESS_KEY` and the like).
#[derive(Clone, Default)]
pub struct BucketOptions {
    /// Residency labels stamped on every chunk; inferred when absent.
    pub cloud: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub allow_http: bool,
    pub credentials: BucketCredentials,
    /// The environment the standard variables (`AWS_*`, `AZURE_*`, `GOOGLE_*`) come from.
    pub env: HashMap<String, String>,
    /// Retries of throttled (429, 503 SlowDown) or failed requests, with exponential backoff.
    pub max_retries: Option<usize>,
    pub retry_timeout: Option<Duration>,
    /// First backoff; doubles per retry. Default 100 ms.
    pub initial_backoff: Option<Duration>,
    /// The operator's globs (`[[bucket]]`): an object must match `include` (when given)
    /// and no `exclude`, whatever a request asks.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// The key prefix the operator's globs are relative to (the `[[bucket]]` entry's);
    /// `None`: relative to the URL's prefix.
    pub filter_base: Option<String>,
    /// A request's globs, relative to the URL's prefix: they can only narrow.
    pub request_include: Vec<String>,
    pub request_exclude: Vec<String>,
}

impl std::fmt::Debug for BucketOptions {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut variable_names: Vec<&str> = self.env.keys().map(String::as_str).collect();
        variable_names.sort_unstable();
        formatter
            .debug_struct("BucketOptions")
            .field("cloud", &self.cloud)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("allow_http", &self.allow_http)
            .field("credentials", &self.credentials)
            .field("env", &variable_names)
            .field("max_retries", &self.max_retries)
            .field("retry_timeout", &self.retry_timeout)
            .field("initial_backoff", &self.initial_backoff)
            .field("include", &self.include)
            .field("exclude", &self.exclude)
            .field("filter_base", &self.filter_base)
            .field("request_include", &self.request_include)
            .field("request_exclude", &self.request_exclude)
            .finish()
    }
}

/// Explicit credentials; Debug prints them redacted.
#[derive(Debug, Clone, Default)]
pub struct BucketCredentials {
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    pub azure_account: Option<String>,
    pub azure_access_key: Option<Secret>,
    pub gcs_service_account_key: Option<Secret>,
    pub bearer_token: Option<Secret>,
}

/// Where a bucket's data lives, for residency and egress rules downstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketLocation {
    pub cloud: String,
    pub region: String,
}

/// An opened cloud bucket.
pub struct CloudBucket {
    pub store: Arc<dyn ObjectStore>,
    /// The same client, for page-by-page listing (see [`crate::ingest::listing`]).
    pub pages: Arc<dyn PaginatedListStore>,
    /// The key prefix the URL names ("" for the whole bucket).
    pub prefix: ObjectPath,
    pub location: BucketLocation,
}

/// Opens `url` (`s3://`, `az://`, `abfs://`, `gs://`...). No request is made yet.
pub fn open_cloud_bucket(url: &url::Url, options: &BucketOptions) -> Result<CloudBucket> {
    let (scheme, prefix) = ObjectStoreScheme::parse(url)
        .map_err(|error| Error::invalid(format!("{url} is not a bucket URL: {error}")))?;
    let retry = retry_config(options);
    let fail = |error: object_store::Error| Error::config(format!("cannot open {url}: {error}"));
    let bucket = match scheme {
        ObjectStoreScheme::AmazonS3 => {
            let builder = amazon_builder(url, options).with_retry(retry);
            let location = s3_location(options, &builder);
            opened(Arc::new(builder.build().map_err(fail)?), prefix, location)
        }
        ObjectStoreScheme::MicrosoftAzure => {
            let builder = azure_builder(url, options).with_retry(retry);
            let location = other_location("azure", options);
            opened(Arc::new(builder.build().map_err(fail)?), prefix, location)
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            let builder = google_builder(url, options).with_retry(retry);
            let location = other_location("gcp", options);
            opened(Arc::new(builder.build().map_err(fail)?), prefix, location)
        }
        other => {
            return Err(Error::invalid(format!(
                "{url}: {other:?} URLs cannot be indexed; use s3://, az://, abfs://, gs:// or a local path"
            )));
        }
    };
    Ok(bucket)
}

fn opened<Store: ObjectStore + PaginatedListStore>(
    store: Arc<Store>,
    prefix: ObjectPath,
    location: BucketLocation,
) -> CloudBucket {
    CloudBucket {
        store: Arc::clone(&store) as Arc<dyn ObjectStore>,
        pages: store,
        prefix,
        location,
    }
}

fn retry_config(options: &BucketOptions) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: options
                .initial_backoff
                .unwrap_or(Duration::from_millis(100)),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        max_retries: options.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
        retry_timeout: options.retry_timeout.unwrap_or(DEFAULT_RETRY_TIMEOUT),
    }
}

/// The variables of `env` starting with `prefix` that parse as config keys, as
/// `object_store`'s own `from_env` would take them from the process.
fn standard_variables<'a, Key: std::str::FromStr>(
    env: &'a HashMap<String, String>,
    prefix: &'a str,
) -> impl Iterator<Item = (Key, &'a str)> + 'a {
    env.iter()
        .filter(move |(name, _)| name.starts_with(prefix))
        .filter_map(|(name, value)| {
            let key = name.to_ascii_lowercase().parse().ok()?;
            Some((key, value.as_str()))
        })
}

fn amazon_builder(url: &url::Url, options: &BucketOptions) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::new();
    for (key, value) in standard_variables::<AmazonS3ConfigKey>(&options.env, "AWS_") {
        builder = builder.with_config(key, value);
    }
    builder = builder.with_url(url.as_str());
    let credentials = &options.credentials;
    if let Some(endpoint) = &options.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            // Path-style: OCI's compatibility endpoint and most S3-compatible servers need it.
            .with_virtual_hosted_style_request(false);
    }
    if options.allow_http {
        builder = builder.with_allow_http(true);
    }
    // OCI's region is in its endpoint's host name; signing needs it.
    let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
    if let Some(region) = options
        .region
        .clone()
        .or_else(|| oci_region(endpoint.as_deref()))
    {
        builder = builder.with_region(region);
    }
    if let Some(key) = &credentials.access_key_id {
        builder = builder.with_access_key_id(key.expose());
    }
    if let Some(secret) = &credentials.secret_access_key {
        builder = builder.with_secret_access_key(secret.expose());
    }
    if let Some(token) = &credentials.session_token {
        builder = builder.with_token(token.expose());
    }
    builder
}

fn azure_builder(url: &url::Url, options: &BucketOptions) -> MicrosoftAzureBuilder {
    let mut builder = MicrosoftAzureBuilder::new();
    for (key, value) in standard_variables::<AzureConfigKey>(&options.env, "AZURE_") {
        builder = builder.with_config(key, value);
    }
    builder = builder.with_url(url.as_str());
    let credentials = &options.credentials;
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    if options.allow_http {
        builder = builder.with_allow_http(true);
    }
    if let Some(account) = &credentials.azure_account {
        builder = builder.with_account(account);
    }
    if let Some(key) = &credentials.azure_access_key {
        builder = builder.with_access_key(key.expose());
    }
    if let Some(token) = &credentials.bearer_token {
        builder = builder.with_bearer_token_authorization(token.expose());
    }
    builder
}

fn google_builder(url: &url::Url, options: &BucketOptions) -> GoogleCloudStorageBuilder {
    let mut builder = GoogleCloudStorageBuilder::new();
    for (key, value) in standard_variables::<GoogleConfigKey>(&options.env, "GOOGLE_") {
        builder = builder.with_config(key, value);
    }
    builder = builder.with_url(url.as_str());
    let credentials = &options.credentials;
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_base_url(endpoint);
    }
    if let Some(key) = &credentials.gcs_service_account_key {
        builder = builder.with_service_account_key(key.expose());
    }
    if let Some(token) = &credentials.bearer_token {
        builder = builder.with_bearer_token(token.expose());
    }
    builder
}

/// OCI's S3 compatibility host is `<namespace>.compat.objectstorage.<region>.oraclecloud.com`.
fn oci_region(endpoint: Option<&str>) -> Option<String> {
    let endpoint = url::Url::parse(endpoint?).ok()?;
    let host = endpoint.host_str()?;
    let rest = host.split_once(".compat.objectstorage.")?.1;
    let region = rest.strip_suffix(".oraclecloud.com")?;
    (!region.is_empty()).then(|| region.to_owned())
}

/// The endpoint may come from the config or from `AWS_ENDPOINT_URL`: the builder has both.
fn s3_location(options: &BucketOptions, builder: &AmazonS3Builder) -> BucketLocation {
    let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
    let oci_region = oci_region(endpoint.as_deref());
    let cloud = options.cloud.clone().unwrap_or_else(|| {
        if oci_region.is_some() {
            "oci".to_owned()
        } else if endpoint.is_some() {
            // Someone's S3-compatible server: only the config can say whose.
            "s3-compatible".to_owned()
        } else {
            "aws".to_owned()
        }
    });
    // object_store's own default region, when nothing names one.
    let region = builder
        .get_config_value(&AmazonS3ConfigKey::Region)
        .or(oci_region)
        .unwrap_or_else(|| "us-east-1".to_owned());
    BucketLocation { cloud, region }
}

fn other_location(default_cloud: &str, options: &BucketOptions) -> BucketLocation {
    BucketLocation {
        cloud: options
            .cloud
            .clone()
            .unwrap_or_else(|| default_cloud.to_owned()),
        region: options
            .region
            .clone()
            .unwrap_or_else(|| "unknown".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> BucketOptions {
        BucketOptions::default()
    }

    #[test]
    fn cloud_and_region_are_inferred_from_scheme_endpoint_and_env() {
        let aws = open_cloud_bucket(
            &url::Url::parse("s3://docs/team").unwrap(),
            &BucketOptions {
                env: HashMap::from([("AWS_REGION".to_owned(), "eu-west-3".to_owned())]),
                ..options()
            },
        )
        .unwrap();
        assert_eq!(aws.location.cloud, "aws");
        assert_eq!(aws.location.region, "eu-west-3");
        assert_eq!(aws.prefix.as_ref(), "team");

        let oci = open_cloud_bucket(
            &url::Url::parse("s3://reports").unwrap(),
            &BucketOptions {
                endpoint: Some(
                    "https://ns1.compat.objectstorage.eu-frankfurt-1.oraclecloud.com".into(),
                ),
                ..options()
            },
        )
        .unwrap();
        assert_eq!(
            oci.location,
            BucketLocation {
                cloud: "oci".into(),
                region: "eu-frankfurt-1".into()
            }
        );

        // The same, from the standard variables alone.
        let from_env = |variables: &[(&str, &str)]| {
            let env = variables
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect();
            let url = url::Url::parse("s3://reports").unwrap();
            open_cloud_bucket(&url, &BucketOptions { env, ..options() })
                .unwrap()
                .location
        };
        assert_eq!(
            from_env(&[(
                "AWS_ENDPOINT_URL",
                "https://ns1.compat.objectstorage.ap-tokyo-1.oraclecloud.com"
            )]),
            BucketLocation {
                cloud: "oci".into(),
                region: "ap-tokyo-1".into()
            }
        );
        assert_eq!(
            from_env(&[
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
                ("AWS_DEFAULT_REGION", "eu-north-1")
            ]),
            BucketLocation {
                cloud: "s3-compatible".into(),
                region: "eu-north-1".into()
            }
        );

        let azure = open_cloud_bucket(
            &url::Url::parse("az://container/folder").unwrap(),
            &BucketOptions {
                region: Some("westeurope".into()),
                credentials: BucketCredentials {
                    azure_account: Some("acct".into()),
                    ..Default::default()
                },
                ..options()
            },
        )
        .unwrap();
        assert_eq!(azure.location.cloud, "azure");
        assert_eq!(azure.location.region, "westeurope");
        assert_eq!(azure.prefix.as_ref(), "folder");

        let gcs = open_cloud_bucket(
            &url::Url::parse("gs://bucket").unwrap(),
            &BucketOptions {
                cloud: Some("gcp".into()),
                ..options()
            },
        )
        .unwrap();
        assert_eq!(gcs.location.region, "unknown");
    }

    #[test]
    fn debug_output_names_variables_but_never_prints_a_credential() {
        let options = BucketOptions {
            env: HashMap::from([(
                "AWS_SECRET_ACCESS_KEY".to_owned(),
                "wJalrXUtnFEMI-secret".to_owned(),
            )]),
            credentials: BucketCredentials {
                secret_access_key: Some(Secret::new("another-secret")),
                ..Default::default()
            },
            ..options()
        };
        let printed = format!("{options:?}");
        assert!(printed.contains("AWS_SECRET_ACCESS_KEY"), "{printed}");
        assert!(!printed.contains("wJalrXUtnFEMI") && !printed.contains("another-secret"));
    }

    #[test]
    fn other_url_kinds_are_refused_clearly() {
        let error = open_cloud_bucket(&url::Url::parse("memory:///").unwrap(), &options())
            .err()
            .unwrap();
        assert!(error.message.contains("cannot be indexed"), "{error}");
    }
}
