//! The managed identity of an Azure VM or scale set, from the instance metadata
//! service: `GET {imds}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=..`
//! with `Metadata: true` (which a request forwarded by a proxy cannot carry, so
//! IMDS refuses anything else). Opt-in with an explicit URL (`default` names
//! `http://169.254.169.254`): off Azure the address would cost a timeout per
//! startup, and tests must never reach it.

use std::time::Duration;

use crate::cloud::http::{TOKEN_BODY_LIMIT, send_and_read, token_endpoint_error};
use crate::cloud::token_cache::TokenCache;
use crate::config::Secret;
use crate::error::{Error, Result};

pub const NAME: &str = "azure instance metadata (managed identity)";
pub const DEFAULT_IMDS_URL: &str = "http://169.254.169.254";
const API_VERSION: &str = "2018-02-01";
/// Link-local: an answer takes milliseconds or never comes.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct ImdsTokens {
    url: url::Url,
    http: reqwest::Client,
    pub(crate) cache: TokenCache,
}

impl ImdsTokens {
    /// `imds_url` without the path; `client_id` picks a user-assigned identity.
    pub fn new(
        imds_url: &str,
        resource: &str,
        client_id: Option<&str>,
        http: &reqwest::Client,
    ) -> Result<Self> {
        let base = if imds_url == "default" {
            DEFAULT_IMDS_URL
        } else {
            imds_url
        };
        let mut url = url::Url::parse(base)
            .map_err(|error| Error::config(format!("azure imds url {imds_url:?}: {error}")))?;
        url.set_path("/metadata/identity/oauth2/token");
        url.query_pairs_mut()
            .append_pair("api-version", API_VERSION)
            .append_pair("resource", resource);
        if let Some(client_id) = client_id {
            url.query_pairs_mut().append_pair("client_id", client_id);
        }
        Ok(Self {
            url,
            http: http.clone(),
            cache: TokenCache::default(),
        })
    }

    pub async fn access_token(&self) -> Result<Secret> {
        self.cache.get(NAME, || self.fetch()).await
    }

    async fn fetch(&self) -> Result<(Secret, Duration)> {
        let request = self
            .http
            .get(self.url.clone())
            .header("metadata", "true")
            .timeout(TIMEOUT);
        let reply = send_and_read(NAME, request, TOKEN_BODY_LIMIT).await?;
        if !reply.is_success() {
            return Err(token_endpoint_error(NAME, &reply));
        }
        crate::cloud::azure_token::read_entra_token(NAME, &reply.body)
    }
}
