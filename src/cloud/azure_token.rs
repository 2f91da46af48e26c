//! Microsoft Entra access tokens for one resource (Key Vault's
//! `https://vault.azure.net`): a token kept at an `env:` / `file:` location (a sidecar
//! running `az account get-access-token` rewrites the file; it is read again when it
//! changes), or the managed identity endpoint of App Service, Functions and Container
//! Apps (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`, API version 2019-08-01), cached until
//! shortly before the token expires. Only the endpoint the environment names is
//! called: never the VM metadata address.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::cloud::http::{TOKEN_BODY_LIMIT, malformed, send_and_read, status_error};
use crate::cloud::rotating_secret::RotatingSecret;
use crate::config::{Secret, SecretLocation};
use crate::error::{Error, ErrorKind, Result};

const SERVICE: &str = "azure managed identity endpoint";
const MANAGED_IDENTITY_API_VERSION: &str = "2019-08-01";
/// A token is replaced once less than this is left of its life.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum AzureTokenSource {
    /// A token at an `env:` or `file:` location, followed when its file is rewritten.
    Location(Box<RotatingSecret>),
    ManagedIdentity(ManagedIdentityTokens),
}

impl AzureTokenSource {
    /// The token at `location` when given (`env:` / `file:` only: a token kept in a
    /// secret manager would need a token to be read), else the managed identity
    /// endpoint when the environment has one; `None` when neither is there.
    pub fn from_env(
        location: Option<&str>,
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
        if let Some(client_id) = env.get("AZURE_CLIENT_ID").filter(|value| !value.is_empty()) {
            url.query_pairs_mut().append_pair("client_id", client_id);
        }
        Ok(Some(Self::ManagedIdentity(ManagedIdentityTokens {
            url,
            identity_header: Secret::new(header.clone()),
            http: http.clone(),
            cached: tokio::sync::Mutex::new(None),
        })))
    }

    pub async fn access_token(&self) -> Result<Secret> {
        match self {
            Self::Location(token) => token.current_local(),
            Self::ManagedIdentity(tokens) => tokens.access_token().await,
        }
    }
}

#[derive(Debug)]
pub struct ManagedIdentityTokens {
    url: url::Url,
    identity_header: Secret,
    http: reqwest::Client,
    /// Held across a refresh so concurrent callers wait for one request.
    cached: tokio::sync::Mutex<Option<(Secret, Instant)>>,
}

impl ManagedIdentityTokens {
    pub async fn access_token(&self) -> Result<Secret> {
        let mut cached = self.cached.lock().await;
        if let Some((token, refresh_at)) = cached.as_ref()
            && Instant::now() < *refresh_at
        {
            return Ok(token.clone());
        }
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
        let body: Value = serde_json::from_slice(&reply.body)
            .map_err(|_| malformed(SERVICE, "the answer is not JSON"))?;
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed(SERVICE, "the answer has no access_token"))?;
        // `expires_on` is epoch seconds, sent as a string by this API version.
        let expires_on = match body.get("expires_on") {
            Some(Value::String(text)) => text.parse::<u64>().ok(),
            Some(Value::Number(number)) => number.as_u64(),
            _ => None,
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        let lifetime = crate::time_caps::cap_token_lifetime(Duration::from_secs(
            expires_on.map_or(3600, |at| at.saturating_sub(now)),
        ));
        let keep = lifetime.saturating_sub(REFRESH_MARGIN).max(lifetime / 2);
        let token = Secret::new(token);
        *cached = Some((token.clone(), crate::time_caps::later(Instant::now(), keep)));
        Ok(token)
    }
}
