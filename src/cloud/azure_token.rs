//! Microsoft Entra access tokens for one resource (Key Vault's
//! `https://vault.azure.net`, Azure OpenAI's `https://cognitiveservices.azure.com`),
//! from the first of:
//! 1. a token kept at an `env:` / `file:` location (a sidecar running
//!    `az account get-access-token` rewrites the file; it is read again when it
//!    changes);
//! 2. the VM's instance metadata service ([`crate::cloud::azure_imds`]), only when its
//!    URL is configured;
//! 3. workload identity on AKS ([`crate::cloud::azure_workload_identity`]):
//!    `AZURE_FEDERATED_TOKEN_FILE` + `AZURE_CLIENT_ID` + `AZURE_TENANT_ID`;
//! 4. the managed identity endpoint of App Service, Functions and Container Apps
//!    (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`, API version 2019-08-01).
//!
//! Fetched tokens are cached until shortly before they expire
//! ([`crate::cloud::token_cache`]). Only an endpoint the environment or config names
//! is called: never the VM metadata address on its own.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::cloud::aws_credentials::Clock;
use crate::cloud::azure_imds::ImdsTokens;
use crate::cloud::azure_workload_identity::WorkloadIdentityTokens;
use crate::cloud::http::{TOKEN_BODY_LIMIT, malformed, send_and_read, status_error};
use crate::cloud::rotating_secret::RotatingSecret;
use crate::cloud::token_cache::TokenCache;
use crate::config::{Secret, SecretLocation};
use crate::error::{Error, ErrorKind, Result};

const SERVICE: &str = "azure managed identity endpoint";
const MANAGED_IDENTITY_API_VERSION: &str = "2019-08-01";
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum AzureTokenSource {
    /// A token at an `env:` or `file:` location, followed when its file is rewritten.
    Location(Box<RotatingSecret>),
    ManagedIdentity(Box<ManagedIdentityTokens>),
    WorkloadIdentity(Box<WorkloadIdentityTokens>),
    InstanceMetadata(Box<ImdsTokens>),
}

impl AzureTokenSource {
    /// The first source of the module's list that is configured: the token at
    /// `location` (`env:` / `file:` only: a token kept in a secret manager would need
    /// a token to be read), IMDS at `imds_url`, then the environment's workload or
    /// managed identity; `None` when there is none.
    pub fn from_env(
        location: Option<&str>,
        imds_url: Option<&str>,
        resource: &str,
        env: &HashMap<String, String>,
        http: &reqwest::Client,
    ) -> Result<Option<Self>> {
        if let Some(text) = location {
            let location = SecretLocation::try_from(text.to_string()).map_err(Error::config)?;
            if !matches!(location, SecretLocation::Env(_) | SecretLocation::File(_)) {
                return Err(Error::config(format!(
                    "{location}: an Entra token must be at an env: or file: location"
                )));
            }
            let token = RotatingSecret::resolve(&location, env, http)?;
            return Ok(Some(Self::Location(Box::new(token))));
        }
        let client_id = env
            .get("AZURE_CLIENT_ID")
            .map(|value| value.trim())
            .filter(|value| !value.is_empty());
        if let Some(imds_url) = imds_url {
            let tokens = ImdsTokens::new(imds_url, resource, client_id, http)?;
            return Ok(Some(Self::InstanceMetadata(Box::new(tokens))));
        }
        if let Some(tokens) = WorkloadIdentityTokens::from_env(resource, env, http)? {
            return Ok(Some(Self::WorkloadIdentity(Box::new(tokens))));
        }
        let endpoint = env
            .get("IDENTITY_ENDPOINT")
            .filter(|value| !value.is_empty());
        let header = env.get("IDENTITY_HEADER").filter(|value| !value.is_empty());
        let (Some(endpoint), Some(header)) = (endpoint, header) else {
            return Ok(None);
        };
        let mut url = url::Url::parse(endpoint)
            .map_err(|error| Error::config(format!("IDENTITY_ENDPOINT {endpoint:?}: {error}")))?;
        url.query_pairs_mut()
            .append_pair("resource", resource)
            .append_pair("api-version", MANAGED_IDENTITY_API_VERSION);
        // A user-assigned identity is chosen by its client id.
        if let Some(client_id) = client_id {
            url.query_pairs_mut().append_pair("client_id", client_id);
        }
        Ok(Some(Self::ManagedIdentity(Box::new(
            ManagedIdentityTokens {
                url,
                identity_header: Secret::new(header.clone()),
                http: http.clone(),
                cache: TokenCache::default(),
            },
        ))))
    }

    pub async fn access_token(&self) -> Result<Secret> {
        match self {
            Self::Location(token) => token.current_local(),
            Self::ManagedIdentity(tokens) => tokens.access_token().await,
            Self::WorkloadIdentity(tokens) => tokens.access_token().await,
            Self::InstanceMetadata(tokens) => tokens.access_token().await,
        }
    }

    /// Which kind of source this is, for logs and tests (never a token).
    pub fn source_name(&self) -> &'static str {
        match self {
            Self::Location(_) => "token location",
            Self::ManagedIdentity(_) => SERVICE,
            Self::WorkloadIdentity(_) => crate::cloud::azure_workload_identity::NAME,
            Self::InstanceMetadata(_) => crate::cloud::azure_imds::NAME,
        }
    }

    /// The same source reading time from `clock` (tests move it instead of sleeping).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        match &mut self {
            Self::Location(_) => {}
            Self::ManagedIdentity(tokens) => tokens.cache = TokenCache::new(clock),
            Self::WorkloadIdentity(tokens) => tokens.cache = TokenCache::new(clock),
            Self::InstanceMetadata(tokens) => tokens.cache = TokenCache::new(clock),
        }
        self
    }
}

#[derive(Debug)]
pub struct ManagedIdentityTokens {
    url: url::Url,
    identity_header: Secret,
    http: reqwest::Client,
    cache: TokenCache,
}

impl ManagedIdentityTokens {
    pub async fn access_token(&self) -> Result<Secret> {
        self.cache.get(SERVICE, || self.fetch()).await
    }

    async fn fetch(&self) -> Result<(Secret, Duration)> {
        let mut header = reqwest::header::HeaderValue::from_str(self.identity_header.expose())
            .map_err(|_| {
                Error::config("IDENTITY_HEADER holds characters not allowed in a header")
            })?;
        header.set_sensitive(true);
        let request = self
            .http
            .get(self.url.clone())
            .header("x-identity-header", header)
            .timeout(TIMEOUT);
        let reply = send_and_read(SERVICE, request, TOKEN_BODY_LIMIT).await?;
        if !reply.is_success() {
            let mut error = status_error(SERVICE, &reply);
            // 400 (no identity assigned, unknown client_id) to 404: retrying will not help.
            if (400..=404).contains(&reply.status) {
                error.kind = ErrorKind::Auth;
            }
            return Err(error);
        }
        read_entra_token(SERVICE, &reply.body)
    }
}

/// An Entra token answer: `access_token` and its life, as `expires_in` seconds (the
/// v2.0 endpoint sends a number, IMDS a string) or else `expires_on` epoch seconds.
pub fn read_entra_token(service: &str, body: &[u8]) -> Result<(Secret, Duration)> {
    let body: Value =
        serde_json::from_slice(body).map_err(|_| malformed(service, "the answer is not JSON"))?;
    let token = body
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| malformed(service, "the answer has no access_token"))?;
    let seconds = |name: &str| match body.get(name) {
        Some(Value::String(text)) => text.trim().parse::<u64>().ok(),
        Some(Value::Number(number)) => number.as_u64(),
        _ => None,
    };
    let lifetime = match (seconds("expires_in"), seconds("expires_on")) {
        (Some(expires_in), _) => expires_in,
        (None, Some(expires_on)) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs());
            expires_on.saturating_sub(now)
        }
        (None, None) => 3600,
    };
    Ok((Secret::new(token), Duration::from_secs(lifetime)))
}
