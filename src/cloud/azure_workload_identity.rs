//! Microsoft Entra workload identity (AKS): the projected service-account token at
//! `AZURE_FEDERATED_TOKEN_FILE` is sent as a client assertion to
//! `POST {AZURE_AUTHORITY_HOST}/{AZURE_TENANT_ID}/oauth2/v2.0/token`
//! (`grant_type=client_credentials`, `client_assertion_type=...:jwt-bearer`,
//! `client_id=AZURE_CLIENT_ID`, `scope={resource}/.default`). The file is read again
//! at every exchange: the kubelet rotates it in place.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::cloud::http::{TOKEN_BODY_LIMIT, send_and_read, token_endpoint_error};
use crate::cloud::token_cache::TokenCache;
use crate::config::Secret;
use crate::error::{Error, ErrorKind, Result};

pub const NAME: &str = "azure workload identity";
const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct WorkloadIdentityTokens {
    token_file: PathBuf,
    client_id: String,
    token_url: String,
    scope: String,
    http: reqwest::Client,
    pub(crate) cache: TokenCache,
}

impl WorkloadIdentityTokens {
    /// The source when `AZURE_FEDERATED_TOKEN_FILE` is set; the client and tenant
    /// ids must be set with it.
    pub fn from_env(
        resource: &str,
        env: &HashMap<String, String>,
        http: &reqwest::Client,
    ) -> Result<Option<Self>> {
        let get = |name: &str| {
            env.get(name)
                .map(|value| value.trim())
                .filter(|value| !value.is_empty())
        };
        let Some(token_file) = get("AZURE_FEDERATED_TOKEN_FILE") else {
            return Ok(None);
        };
        let required = |name: &str| {
            get(name).ok_or_else(|| {
                Error::config(format!(
                    "AZURE_FEDERATED_TOKEN_FILE is set without {name} (workload identity needs AZURE_CLIENT_ID and AZURE_TENANT_ID)"
                ))
            })
        };
        let client_id = required("AZURE_CLIENT_ID")?;
        let tenant_id = required("AZURE_TENANT_ID")?;
        // The tenant becomes a path segment: anything but an id or a domain name
        // could walk the URL elsewhere.
        if !tenant_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(Error::config(format!(
                "AZURE_TENANT_ID {tenant_id:?} is not a tenant id or domain"
            )));
        }
        let authority = get("AZURE_AUTHORITY_HOST").unwrap_or(DEFAULT_AUTHORITY_HOST);
        let parsed = url::Url::parse(authority).map_err(|error| {
            Error::config(format!("AZURE_AUTHORITY_HOST {authority:?}: {error}"))
        })?;
        if !matches!(parsed.scheme(), "https" | "http") {
            return Err(Error::config(format!(
                "AZURE_AUTHORITY_HOST {authority:?} is not an http(s) URL"
            )));
        }
        Ok(Some(Self {
            token_file: PathBuf::from(token_file),
            client_id: client_id.to_string(),
            token_url: format!(
                "{}/{tenant_id}/oauth2/v2.0/token",
                authority.trim_end_matches('/')
            ),
            scope: format!("{}/.default", resource.trim_end_matches('/')),
            http: http.clone(),
            cache: TokenCache::default(),
        }))
    }

    pub async fn access_token(&self) -> Result<Secret> {
        self.cache.get(NAME, || self.exchange()).await
    }

    async fn exchange(&self) -> Result<(Secret, Duration)> {
        let assertion = std::fs::read_to_string(&self.token_file).map_err(|error| {
            Error::new(
                ErrorKind::Auth,
                format!(
                    "{NAME}: cannot read AZURE_FEDERATED_TOKEN_FILE {}: {error}",
                    self.token_file.display()
                ),
            )
        })?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", &self.client_id)
            .append_pair("scope", &self.scope)
            .append_pair("client_assertion_type", JWT_BEARER_ASSERTION)
            .append_pair("client_assertion", assertion.trim())
            .finish();
        let request = self
            .http
            .post(&self.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(form)
            .timeout(TIMEOUT);
        let reply = send_and_read(NAME, request, TOKEN_BODY_LIMIT).await?;
        if !reply.is_success() {
            return Err(token_endpoint_error(NAME, &reply));
        }
        crate::cloud::azure_token::read_entra_token(NAME, &reply.body)
    }
}
