//! Google OAuth access tokens for Vertex AI: a static token from a secret location,
//! or a service-account key whose signed JWT (RS256) is exchanged at the key's
//! `token_uri` (or a configured one) and cached until shortly before it expires.
//! On GCE / GKE / Cloud Run, the metadata server's token for the attached service
//! account, at the configured `metadata_url` only: nothing here reaches an address
//! it was not given. Workload identity federation (an `external_account` file in
//! place of the key) is [`crate::cloud::gcp_external_account`].

use std::time::{Duration, SystemTime};

use base64::Engine;
use serde::Deserialize;
use serde_json::json;

use crate::cloud::aws_credentials::Clock;
use crate::cloud::gcp_external_account::ExternalAccountTokens;
use crate::cloud::http::{
    TOKEN_BODY_LIMIT, read_error_body, read_limited, retry_after, transport_error,
};
use crate::cloud::rsa_key::RsaPrivateKey;
use crate::cloud::token_cache::TokenCache;
use crate::config::Secret;
use crate::error::{Error, ErrorKind, Result};

pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
pub const DEFAULT_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

#[derive(Debug)]
pub enum GcpTokenSource {
    Static(Secret),
    ServiceAccount(Box<ServiceAccountTokens>),
    Metadata(Box<MetadataTokens>),
    ExternalAccount(Box<ExternalAccountTokens>),
}

impl GcpTokenSource {
    /// The source a credentials file describes: a service-account key, or an
    /// `external_account` (workload identity federation). `token_url` overrides a
    /// key's `token_uri`; an external account names its own STS.
    pub fn from_credentials_json(
        credentials_json: &str,
        token_url: Option<&str>,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Result<Self> {
        if ExternalAccountTokens::is_external_account(credentials_json) {
            let tokens = ExternalAccountTokens::from_json(credentials_json, http, timeout)?;
            return Ok(Self::ExternalAccount(Box::new(tokens)));
        }
        let tokens =
            ServiceAccountTokens::from_key_json(credentials_json, token_url, http, timeout)?;
        Ok(Self::ServiceAccount(Box::new(tokens)))
    }

    pub async fn access_token(&self) -> Result<Secret> {
        match self {
            Self::Static(token) => Ok(token.clone()),
            Self::ServiceAccount(tokens) => tokens.access_token().await,
            Self::Metadata(tokens) => tokens.access_token().await,
            Self::ExternalAccount(tokens) => tokens.access_token().await,
        }
    }

    /// The same source reading time from `clock` where it renews through
    /// [`TokenCache`] (tests move it instead of sleeping).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        match &mut self {
            Self::Static(_) => {}
            Self::ServiceAccount(tokens) => tokens.cached = TokenCache::new(clock),
            Self::Metadata(tokens) => tokens.cached = TokenCache::new(clock),
            Self::ExternalAccount(tokens) => tokens.cache = TokenCache::new(clock),
        }
        self
    }
}

/// The conventional metadata server address, for `metadata_url = "default"`.
pub const DEFAULT_METADATA_URL: &str = "http://metadata.google.internal";
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// Tokens of the attached service account from the metadata server
/// (`GET {metadata_url}/computeMetadata/v1/instance/service-accounts/default/token`
/// with `Metadata-Flavor: Google`), cached like the service-account ones.
#[derive(Debug)]
pub struct MetadataTokens {
    token_url: String,
    http: reqwest::Client,
    timeout: Duration,
    cached: TokenCache,
}

impl MetadataTokens {
    /// `metadata_url` without the path (`"default"` names the usual address).
    pub fn new(metadata_url: &str, http: reqwest::Client, timeout: Duration) -> Self {
        let base = if metadata_url == "default" {
            DEFAULT_METADATA_URL
        } else {
            metadata_url
        };
        Self {
            token_url: format!("{}{METADATA_TOKEN_PATH}", base.trim_end_matches('/')),
            http,
            timeout,
            cached: TokenCache::default(),
        }
    }

    pub async fn access_token(&self) -> Result<Secret> {
        self.cached
            .get("gce metadata server", || async {
                let response = self
                    .http
                    .get(&self.token_url)
                    .header("metadata-flavor", "Google")
                    .timeout(self.timeout)
                    .send()
                    .await
                    .map_err(|error| transport_error("gce metadata server", &error))?;
                read_token("gce metadata server", response).await
            })
            .await
    }
}

/// A token endpoint's answer: `{"access_token", "expires_in"}`, or its error.
async fn read_token(service: &str, response: reqwest::Response) -> Result<(Secret, Duration)> {
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = if status.is_success() {
        read_limited(service, response, TOKEN_BODY_LIMIT).await?
    } else {
        read_error_body(response).await
    };
    if !status.is_success() {
        // 400 invalid_grant / 401 invalid_client: the key is wrong or revoked;
        // 403 / 404 from a metadata server: no account attached or no scope.
        let kind = match status.as_u16() {
            400..=404 => ErrorKind::Auth,
            429 => ErrorKind::Throttled,
            _ => ErrorKind::Unavailable,
        };
        let text: String = String::from_utf8_lossy(&body).chars().take(300).collect();
        return Err(Error {
            kind,
            message: format!("{service} answered {status}: {text}"),
            retry_after,
            local_refusal: false,
        });
    }
    #[derive(Deserialize)]
    struct TokenResponse {
        access_token: String,
        expires_in: Option<u64>,
    }
    let token: TokenResponse = serde_json::from_slice(&body).map_err(|error| {
        Error::unavailable(format!("{service} sent an unreadable answer: {error}"))
    })?;
    let lifetime =
        crate::time_caps::cap_token_lifetime(Duration::from_secs(token.expires_in.unwrap_or(3600)));
    Ok((Secret::new(token.access_token), lifetime))
}

/// The fields of a service-account key file that signing needs.
#[derive(Deserialize)]
struct ServiceAccountKey {
    #[serde(rename = "type")]
    key_type: Option<String>,
    client_email: String,
    private_key: String,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

#[derive(Debug)]
pub struct ServiceAccountTokens {
    client_email: String,
    private_key_id: Option<String>,
    key: RsaPrivateKey,
    token_url: String,
    scope: String,
    http: reqwest::Client,
    timeout: Duration,
    cached: TokenCache,
}

impl ServiceAccountTokens {
    /// `key_json` is the key file's text; `token_url` overrides its `token_uri`.
    pub fn from_key_json(
        key_json: &str,
        token_url: Option<&str>,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Result<Self> {
        let key: ServiceAccountKey = serde_json::from_str(key_json)
            .map_err(|error| Error::config(format!("not a service-account key file: {error}")))?;
        if key
            .key_type
            .as_deref()
            .is_some_and(|kind| kind != "service_account")
        {
            return Err(Error::config(format!(
                "the key file is of type {:?}, not service_account",
                key.key_type.unwrap_or_default()
            )));
        }
        Ok(Self {
            client_email: key.client_email,
            private_key_id: key.private_key_id,
            key: RsaPrivateKey::from_pem(&key.private_key)?,
            token_url: token_url
                .map(str::to_string)
                .or(key.token_uri)
                .unwrap_or_else(|| DEFAULT_TOKEN_URL.to_string()),
            scope: CLOUD_PLATFORM_SCOPE.to_string(),
            http,
            timeout,
            cached: TokenCache::default(),
        })
    }

    pub async fn access_token(&self) -> Result<Secret> {
        self.cached
            .get("google service account", || self.exchange())
            .await
    }

    /// The signed assertion: `base64url(header).base64url(claims).base64url(signature)`.
    pub fn assertion(&self, now: SystemTime) -> Result<String> {
        let issued_at = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(key_id) = &self.private_key_id {
            header["kid"] = json!(key_id);
        }
        let claims = json!({
            "iss": self.client_email,
            "scope": self.scope,
            "aud": self.token_url,
            "iat": issued_at,
            "exp": issued_at + 3600,
        });
        let encode = |value: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
        };
        let signing_input = format!("{}.{}", encode(&header), encode(&claims));
        let signature = self.key.sign_sha256(signing_input.as_bytes())?;
        Ok(format!(
            "{signing_input}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature)
        ))
    }

    async fn exchange(&self) -> Result<(Secret, Duration)> {
        let assertion = self.assertion(SystemTime::now())?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", JWT_BEARER_GRANT)
            .append_pair("assertion", &assertion)
            .finish();
        let response = self
            .http
            .post(&self.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|error| transport_error("google token endpoint", &error))?;
        read_token("google token endpoint", response).await
    }
}
