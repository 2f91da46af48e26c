//! AWS credentials as a source the signers ask at every request, so temporary keys
//! are renewed before they expire and a rotated identity is used without a restart.
//!
//! Chosen once, in the order the AWS SDKs use when no keys are configured:
//! 1. keys in the config (`aws_access_key_id`...) or `AWS_ACCESS_KEY_ID` /
//!    `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`: fixed, except configured
//!    `file:` locations, read again when the file is rewritten;
//! 2. web identity (EKS IRSA): `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`
//!    [+ `AWS_ROLE_SESSION_NAME`], exchanged at STS (`AWS_ENDPOINT_URL_STS` or
//!    `AWS_ENDPOINT_URL`, else `https://sts.{region}.amazonaws.com`);
//! 3. the container endpoint (ECS, EKS Pod Identity):
//!    `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or `_FULL_URI`, with
//!    `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` or `_TOKEN`;
//! 4. EC2 instance metadata (IMDSv2), only when asked for: `SKYFUSE_AWS_IMDS=1` or
//!    `AWS_EC2_METADATA_SERVICE_ENDPOINT` set (and `AWS_EC2_METADATA_DISABLED` not
//!    `true`). Unlike the SDKs, skyfuse never probes 169.254.169.254 on its own: off
//!    EC2 the probe costs a timeout per startup, and a test must never reach it.
//!
//! Temporary credentials are renewed once less than [`REFRESH_MARGIN`] is left;
//! concurrent callers share one renewal, and a failed renewal keeps the current keys
//! (with a warning) until they expire, then fails the call naming the source.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use crate::cloud::aws_credential_sources::{
    ContainerAuthorization, ContainerEndpoint, Expiring, InstanceMetadata, WebIdentity,
};
use crate::cloud::rotating_secret::RotatingSecret;
use crate::cloud::sigv4::AwsCredentials;
use crate::config::{AwsKeyLocations, Secret, SecretLocation};
use crate::error::{Error, ErrorKind, Result};

/// Temporary credentials are renewed once less than this is left of their life.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// After a failed renewal, the current credentials are used this long before the next try.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);
const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// Where ECS serves `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`.
const ECS_CREDENTIALS_HOST: &str = "http://169.254.170.2";

/// The wall clock, replaceable so tests move time instead of waiting on it.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Keys whose `file:` locations are followed (a Kubernetes secret volume swaps its
/// files together, so the pair changes at once); the others are fixed.
struct KeyFiles {
    access_key_id: KeyPart,
    secret_access_key: KeyPart,
    session_token: Option<KeyPart>,
}

enum KeyPart {
    Fixed(Secret),
    File(RotatingSecret),
}

impl KeyPart {
    fn current(&self) -> Result<Secret> {
        match self {
            Self::Fixed(secret) => Ok(secret.clone()),
            // One stat per signature; a file empty mid-rewrite keeps its last value.
            Self::File(secret) => secret.current_local(),
        }
    }
}

impl KeyFiles {
    fn current(&self) -> Result<AwsCredentials> {
        Ok(AwsCredentials {
            access_key_id: self.access_key_id.current()?,
            secret_access_key: self.secret_access_key.current()?,
            session_token: self
                .session_token
                .as_ref()
                .map(KeyPart::current)
                .transpose()?,
        })
    }
}

/// The resolved keys as a source: fixed, or following the configured `file:` ones.
fn keys_source(
    locations: &AwsKeyLocations,
    prefix: &str,
    resolved: AwsCredentials,
    env: &HashMap<String, String>,
    http: &reqwest::Client,
) -> Result<Source> {
    let is_file =
        |location: &Option<SecretLocation>| matches!(location, Some(SecretLocation::File(_)));
    if !(is_file(&locations.access_key_id)
        || is_file(&locations.secret_access_key)
        || is_file(&locations.session_token))
    {
        return Ok(Source::Fixed(resolved));
    }
    let part = |location: &Option<SecretLocation>, value: Secret, key: &str| -> Result<KeyPart> {
        match location {
            Some(location @ SecretLocation::File(_)) => {
                RotatingSecret::resolve(location, env, http)
                    .map(KeyPart::File)
                    .map_err(|error| error.context(format!("{prefix}{key}")))
            }
            _ => Ok(KeyPart::Fixed(value)),
        }
    };
    Ok(Source::KeyFiles(Box::new(KeyFiles {
        access_key_id: part(
            &locations.access_key_id,
            resolved.access_key_id,
            "access_key_id",
        )?,
        secret_access_key: part(
            &locations.secret_access_key,
            resolved.secret_access_key,
            "secret_access_key",
        )?,
        session_token: resolved
            .session_token
            .map(|token| part(&locations.session_token, token, "session_token"))
            .transpose()?,
    })))
}

/// Shared by every signer built from it (cloning shares the cache).
#[derive(Clone)]
pub struct AwsCredentialsProvider {
    inner: Arc<Inner>,
}

struct Inner {
    source: Source,
    cached: RwLock<Cache>,
    /// Held during a renewal so concurrent callers wait for the one in flight.
    renewing: tokio::sync::Mutex<()>,
    clock: Clock,
}

#[derive(Default)]
struct Cache {
    current: Option<Expiring>,
    /// No renewal is tried before this, after one failed.
    next_try: Option<SystemTime>,
}

enum Source {
    Fixed(AwsCredentials),
    /// Configured keys of which at least one is a `file:` location.
    KeyFiles(Box<KeyFiles>),
    WebIdentity(WebIdentity),
    Container(ContainerEndpoint),
    InstanceMetadata(InstanceMetadata),
}

impl Source {
    fn name(&self) -> &'static str {
        match self {
            Self::Fixed(_) => "static keys",
            Self::KeyFiles(_) => "key files",
            Self::WebIdentity(_) => WebIdentity::NAME,
            Self::Container(_) => ContainerEndpoint::NAME,
            Self::InstanceMetadata(_) => InstanceMetadata::NAME,
        }
    }

    async fn fetch(&self) -> Result<Expiring> {
        match self {
            Self::Fixed(credentials) => Ok(Expiring {
                credentials: credentials.clone(),
                expiration: None,
            }),
            Self::KeyFiles(files) => Ok(Expiring {
                credentials: files.current()?,
                expiration: None,
            }),
            Self::WebIdentity(source) => source.fetch().await,
            Self::Container(source) => source.fetch().await,
            Self::InstanceMetadata(source) => source.fetch().await,
        }
    }
}

impl std::fmt::Debug for AwsCredentialsProvider {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AwsCredentialsProvider")
            .field("source", &self.source_name())
            .finish_non_exhaustive()
    }
}

impl From<AwsCredentials> for AwsCredentialsProvider {
    fn from(credentials: AwsCredentials) -> Self {
        Self::new(Source::Fixed(credentials))
    }
}

fn non_empty<'a>(env: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    env.get(name)
        .map(|value| value.trim())
        .filter(|value| !value.is_empty())
}

fn is_true(value: Option<&str>) -> bool {
    value.is_some_and(|value| matches!(value.to_ascii_lowercase().as_str(), "1" | "true"))
}

impl AwsCredentialsProvider {
    fn new(source: Source) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                cached: RwLock::new(Cache::default()),
                renewing: tokio::sync::Mutex::new(()),
                clock: Arc::new(SystemTime::now),
            }),
        }
    }

    /// The first source of the chain (module docs) that `locations` and `env`
    /// configure; nothing is fetched until the first signature. `region` picks the
    /// regional STS endpoint (else `AWS_REGION` / `AWS_DEFAULT_REGION`); `prefix`
    /// spells the configured keys in messages.
    pub fn from_env(
        locations: &AwsKeyLocations,
        prefix: &str,
        region: Option<&str>,
        env: &HashMap<String, String>,
        http: &reqwest::Client,
    ) -> Result<Self> {
        let keys_configured = !locations.set_keys(prefix).is_empty();
        if keys_configured || non_empty(env, "AWS_ACCESS_KEY_ID").is_some() {
            let resolved = AwsCredentials::resolve(locations, prefix, env)?;
            return keys_source(locations, prefix, resolved, env, http).map(Self::new);
        }
        if let Some(source) = web_identity(region, env, http)? {
            return Ok(Self::new(Source::WebIdentity(source)));
        }
        if let Some(source) = container_endpoint(env, http)? {
            return Ok(Self::new(Source::Container(source)));
        }
        let imds_disabled = is_true(non_empty(env, "AWS_EC2_METADATA_DISABLED"));
        let imds_endpoint = non_empty(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT");
        if !imds_disabled
            && (imds_endpoint.is_some() || is_true(non_empty(env, "SKYFUSE_AWS_IMDS")))
        {
            return Ok(Self::new(Source::InstanceMetadata(InstanceMetadata {
                endpoint: imds_endpoint.unwrap_or(DEFAULT_IMDS_ENDPOINT).to_string(),
                http: http.clone(),
            })));
        }
        Err(Error::config(format!(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or \
             {prefix}access_key_id and {prefix}secret_access_key), AWS_WEB_IDENTITY_TOKEN_FILE \
             and AWS_ROLE_ARN, AWS_CONTAINER_CREDENTIALS_FULL_URI (or _RELATIVE_URI), or \
             SKYFUSE_AWS_IMDS=1 on EC2"
        )))
    }

    /// The same provider reading time from `clock` (tests move it instead of
    /// sleeping). Call it on a new provider: clones made before keep the wall clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.clock = clock,
            None => tracing::warn!("a shared aws credentials provider keeps its clock"),
        }
        self
    }

    /// Which kind of source this is, for logs and errors (never a key).
    pub fn source_name(&self) -> &'static str {
        self.inner.source.name()
    }

    /// The credentials to sign with now: the cached ones while they have more than
    /// [`REFRESH_MARGIN`] left, else renewed (once for every concurrent caller).
    pub async fn current(&self) -> Result<AwsCredentials> {
        match &self.inner.source {
            Source::Fixed(credentials) => return Ok(credentials.clone()),
            Source::KeyFiles(files) => return files.current(),
            _ => {}
        }
        if let Some(credentials) = self.usable_without_renewal() {
            return Ok(credentials);
        }
        let _renewing = self.inner.renewing.lock().await;
        // Another caller may have renewed while this one waited.
        if let Some(credentials) = self.usable_without_renewal() {
            return Ok(credentials);
        }
        let outcome = self.inner.source.fetch().await;
        let now = (self.inner.clock)();
        let mut cache = self
            .inner
            .cached
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(fresh) => {
                tracing::debug!(source = self.source_name(), "aws credentials renewed");
                let credentials = fresh.credentials.clone();
                cache.current = Some(fresh);
                cache.next_try = None;
                Ok(credentials)
            }
            Err(error) => match cache.current.as_ref() {
                Some(old) if old.expiration.is_none_or(|expiration| now < expiration) => {
                    tracing::warn!(
                        source = self.source_name(),
                        %error,
                        "aws credentials not renewed; the current ones are used until they expire"
                    );
                    let credentials = old.credentials.clone();
                    cache.next_try = now.checked_add(RETRY_AFTER_FAILURE);
                    Ok(credentials)
                }
                _ => Err(Error {
                    message: format!(
                        "aws credentials from {}: {}",
                        self.source_name(),
                        error.message
                    ),
                    // Whatever the source said, no request can be signed: a caller
                    // may fail over, but retrying here would not help.
                    kind: match error.kind {
                        ErrorKind::Throttled | ErrorKind::Timeout | ErrorKind::Unavailable => {
                            ErrorKind::Unavailable
                        }
                        _ => ErrorKind::Auth,
                    },
                    retry_after: None,
                    local_refusal: false,
                }),
            },
        }
    }

    /// The cached credentials if no renewal is due: more than the margin left, or a
    /// renewal failed recently and they have not expired.
    fn usable_without_renewal(&self) -> Option<AwsCredentials> {
        let now = (self.inner.clock)();
        let cache = self
            .inner
            .cached
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let current = cache.current.as_ref()?;
        let Some(expiration) = current.expiration else {
            return Some(current.credentials.clone());
        };
        let fresh = now
            .checked_add(REFRESH_MARGIN)
            .is_some_and(|renew_at| renew_at < expiration);
        let waiting_after_failure =
            cache.next_try.is_some_and(|next| now < next) && now < expiration;
        (fresh || waiting_after_failure).then(|| current.credentials.clone())
    }
}

fn sts_endpoint(region: Option<&str>, env: &HashMap<String, String>) -> String {
    if let Some(endpoint) =
        non_empty(env, "AWS_ENDPOINT_URL_STS").or_else(|| non_empty(env, "AWS_ENDPOINT_URL"))
    {
        return endpoint.to_string();
    }
    let region = region
        .filter(|region| !region.is_empty())
        .or_else(|| non_empty(env, "AWS_REGION"))
        .or_else(|| non_empty(env, "AWS_DEFAULT_REGION"));
    match region {
        Some(region) => format!("https://sts.{region}.amazonaws.com"),
        None => "https://sts.amazonaws.com".to_string(),
    }
}

fn web_identity(
    region: Option<&str>,
    env: &HashMap<String, String>,
    http: &reqwest::Client,
) -> Result<Option<WebIdentity>> {
    let token_file = non_empty(env, "AWS_WEB_IDENTITY_TOKEN_FILE");
    let role_arn = non_empty(env, "AWS_ROLE_ARN");
    let (token_file, role_arn) = match (token_file, role_arn) {
        (None, None) => return Ok(None),
        (Some(token_file), Some(role_arn)) => (token_file, role_arn),
        (Some(_), None) => {
            return Err(Error::config(
                "AWS_WEB_IDENTITY_TOKEN_FILE is set without AWS_ROLE_ARN",
            ));
        }
        (None, Some(_)) => {
            return Err(Error::config(
                "AWS_ROLE_ARN is set without AWS_WEB_IDENTITY_TOKEN_FILE",
            ));
        }
    };
    let session_name = non_empty(env, "AWS_ROLE_SESSION_NAME")
        .map(str::to_string)
        .unwrap_or_else(|| {
            let seconds = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs());
            format!("skyfuse-{seconds}")
        });
    Ok(Some(WebIdentity {
        token_file: PathBuf::from(token_file),
        role_arn: role_arn.to_string(),
        session_name,
        endpoint: sts_endpoint(region, env),
        http: http.clone(),
    }))
}

fn container_endpoint(
    env: &HashMap<String, String>,
    http: &reqwest::Client,
) -> Result<Option<ContainerEndpoint>> {
    let url = if let Some(relative) = non_empty(env, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        format!("{ECS_CREDENTIALS_HOST}{relative}")
    } else if let Some(full) = non_empty(env, "AWS_CONTAINER_CREDENTIALS_FULL_URI") {
        check_full_uri(full)?;
        full.to_string()
    } else {
        return Ok(None);
    };
    let authorization = if let Some(path) = non_empty(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
    {
        Some(ContainerAuthorization::File(PathBuf::from(path)))
    } else {
        non_empty(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN")
            .map(|token| ContainerAuthorization::Fixed(Secret::new(token)))
    };
    Ok(Some(ContainerEndpoint {
        url,
        authorization,
        http: http.clone(),
    }))
}

/// As the SDKs require: a full URI over plain http only to loopback or the ECS and
/// EKS Pod Identity link-local addresses, so the token is not sent elsewhere in clear.
fn check_full_uri(full: &str) -> Result<()> {
    let url = url::Url::parse(full).map_err(|error| {
        Error::config(format!(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI {full:?}: {error}"
        ))
    })?;
    if url.scheme() == "https" {
        return Ok(());
    }
    let allowed = match url.host() {
        Some(url::Host::Ipv4(address)) => {
            address.is_loopback()
                || [[169, 254, 170, 2], [169, 254, 170, 23]].contains(&address.octets())
        }
        Some(url::Host::Ipv6(address)) => {
            address.is_loopback()
                || address == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)
        }
        Some(url::Host::Domain(domain)) => domain == "localhost",
        None => false,
    };
    if url.scheme() == "http" && allowed {
        return Ok(());
    }
    Err(Error::config(format!(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI {full:?} must be https, or http to a loopback \
         or the ECS / EKS Pod Identity address"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn chosen(pairs: &[(&str, &str)]) -> Result<&'static str> {
        AwsCredentialsProvider::from_env(
            &AwsKeyLocations::default(),
            "aws_",
            Some("eu-west-3"),
            &env(pairs),
            &reqwest::Client::new(),
        )
        .map(|provider| provider.source_name())
    }

    #[test]
    fn the_chain_prefers_keys_then_web_identity_then_container_then_opt_in_imds() {
        let web = [
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
        ];
        let container = (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://127.0.0.1:1/creds",
        );
        let keys = [
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ];
        let all: Vec<_> = keys
            .iter()
            .chain(&web)
            .chain([&container])
            .copied()
            .collect();
        assert_eq!(chosen(&all).unwrap(), "static keys");
        let no_keys: Vec<_> = web.iter().chain([&container]).copied().collect();
        assert_eq!(chosen(&no_keys).unwrap(), WebIdentity::NAME);
        assert_eq!(chosen(&[container]).unwrap(), ContainerEndpoint::NAME);
        assert_eq!(
            chosen(&[("SKYFUSE_AWS_IMDS", "1")]).unwrap(),
            InstanceMetadata::NAME
        );
        assert_eq!(
            chosen(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")]).unwrap(),
            InstanceMetadata::NAME
        );
        // Never probed unasked, nor when disabled.
        let none = chosen(&[]).unwrap_err();
        assert!(
            none.message.contains("AWS_ACCESS_KEY_ID"),
            "{}",
            none.message
        );
        assert!(
            chosen(&[
                ("SKYFUSE_AWS_IMDS", "1"),
                ("AWS_EC2_METADATA_DISABLED", "true")
            ])
            .is_err()
        );
    }

    #[test]
    fn half_configured_sources_are_config_errors() {
        let error = chosen(&[("AWS_ROLE_ARN", "arn:aws:iam::1:role/r")]).unwrap_err();
        assert!(
            error.message.contains("AWS_WEB_IDENTITY_TOKEN_FILE"),
            "{}",
            error.message
        );
        let error = chosen(&[(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://example.com/creds",
        )])
        .unwrap_err();
        assert!(error.message.contains("must be https"), "{}", error.message);
        let error = chosen(&[("AWS_ACCESS_KEY_ID", "AKID")]).unwrap_err();
        assert!(
            error.message.contains("AWS_SECRET_ACCESS_KEY"),
            "{}",
            error.message
        );
    }

    #[test]
    fn sts_endpoint_overrides_then_region() {
        assert_eq!(
            sts_endpoint(Some("eu-west-3"), &env(&[])),
            "https://sts.eu-west-3.amazonaws.com"
        );
        assert_eq!(
            sts_endpoint(None, &env(&[("AWS_REGION", "us-west-2")])),
            "https://sts.us-west-2.amazonaws.com"
        );
        assert_eq!(sts_endpoint(None, &env(&[])), "https://sts.amazonaws.com");
        assert_eq!(
            sts_endpoint(
                Some("eu-west-3"),
                &env(&[
                    ("AWS_ENDPOINT_URL", "http://a"),
                    ("AWS_ENDPOINT_URL_STS", "http://b")
                ])
            ),
            "http://b"
        );
    }
}
