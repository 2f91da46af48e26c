//! Google Secret Manager's `versions.access`, for `gcp-sm:PROJECT/NAME[/VERSION]`
//! locations: `GET https://secretmanager.googleapis.com/v1/projects/{project}/secrets/
//! {name}/versions/{version}:access` (version `latest` when left out) with a Google
//! OAuth token; the value is `payload.data`, base64.
//!
//! Configured from the environment: the token from the credentials file at
//! `GOOGLE_APPLICATION_CREDENTIALS`, a service-account key (its `token_uri`, or
//! `SKYFUSE_GCP_TOKEN_URL`) or an `external_account` (workload identity federation), else
//! from the metadata server at `SKYFUSE_GCP_METADATA_URL` (`default` for GCE, GKE and
//! Cloud Run: only an address given is called); the API at
//! `SKYFUSE_GCP_SECRET_MANAGER_ENDPOINT` when set (a private endpoint, or a loopback
//! server in tests).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::cloud::gcp_token::{GcpTokenSource, MetadataTokens};
use crate::cloud::http::{malformed, secret_store_json};
use crate::cloud::managed_secret::decode_base64_text;
use crate::config::Secret;
use crate::error::{Error, Result};

const SERVICE: &str = "google secret manager";
const DEFAULT_ENDPOINT: &str = "https://secretmanager.googleapis.com";
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct GcpSecretManager {
    endpoint: url::Url,
    tokens: GcpTokenSource,
    http: reqwest::Client,
}

impl GcpSecretManager {
    /// The client the environment describes; no way to get a token is a config error.
    pub fn from_env(env: &HashMap<String, String>, http: &reqwest::Client) -> Result<Self> {
        let get = |name: &str| env.get(name).filter(|value| !value.is_empty());
        let tokens = if let Some(path) = get("GOOGLE_APPLICATION_CREDENTIALS") {
            let key_json = std::fs::read_to_string(path).map_err(|error| {
                Error::config(format!(
                    "gcp-sm: cannot read GOOGLE_APPLICATION_CREDENTIALS file {path}: {error}"
                ))
            })?;
            GcpTokenSource::from_credentials_json(
                &key_json,
                get("SKYFUSE_GCP_TOKEN_URL").map(String::as_str),
                http.clone(),
                TIMEOUT,
            )
            .map_err(|error| error.context("gcp-sm: GOOGLE_APPLICATION_CREDENTIALS"))?
        } else if let Some(metadata_url) = get("SKYFUSE_GCP_METADATA_URL") {
            GcpTokenSource::Metadata(Box::new(MetadataTokens::new(
                metadata_url,
                http.clone(),
                TIMEOUT,
            )))
        } else {
            return Err(Error::config(
                "gcp-sm: secrets need GOOGLE_APPLICATION_CREDENTIALS (a service-account key file) or SKYFUSE_GCP_METADATA_URL (`default` on GCE, GKE and Cloud Run)",
            ));
        };
        let endpoint =
            get("SKYFUSE_GCP_SECRET_MANAGER_ENDPOINT").map_or(DEFAULT_ENDPOINT, String::as_str);
        let endpoint = url::Url::parse(endpoint)
            .map_err(|error| Error::config(format!("gcp-sm: endpoint {endpoint:?}: {error}")))?;
        Ok(Self {
            endpoint,
            tokens,
            http: http.clone(),
        })
    }

    /// The payload of `version` (else `latest`) of secret `name` in `project`.
    pub async fn get(&self, project: &str, name: &str, version: Option<&str>) -> Result<Secret> {
        let location = match version {
            Some(version) => format!("gcp-sm:{project}/{name}/{version}"),
            None => format!("gcp-sm:{project}/{name}"),
        };
        let mut url = self.endpoint.clone();
        url.path_segments_mut()
            .map_err(|()| Error::config(format!("{location}: the endpoint has no path")))?
            .pop_if_empty()
            .extend([
                "v1",
                "projects",
                project,
                "secrets",
                name,
                "versions",
                format!("{}:access", version.unwrap_or("latest")).as_str(),
            ]);
        let token = self
            .tokens
            .access_token()
            .await
            .map_err(|error| error.context(&location))?;
        let request = self
            .http
            .get(url)
            .bearer_auth(token.expose())
            .timeout(TIMEOUT);
        // Messages here never quote the body or a decoder's error: they hold the value.
        let body = secret_store_json(SERVICE, &location, request).await?;
        let data = body
            .pointer("/payload/data")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                malformed(
                    SERVICE,
                    format!("{location}: the answer has no `payload.data` string"),
                )
            })?;
        decode_base64_text(data).map(Secret::new).ok_or_else(|| {
            malformed(
                SERVICE,
                format!("{location}: `payload.data` is not base64 of UTF-8 text"),
            )
        })
    }
}
