//! Azure Key Vault's "Get Secret", for `azure-kv:VAULT/NAME[/VERSION]` locations:
//! `GET https://{vault}.vault.azure.net/secrets/{name}[/{version}]?api-version=7.4` with
//! an Entra bearer token for `https://vault.azure.net`; the value is the answer's
//! `value`.
//!
//! Configured from the environment: the token from `SKYFUSE_AZURE_KEYVAULT_TOKEN` (an
//! `env:` / `file:` location), VM instance metadata at `SKYFUSE_AZURE_IMDS_URL`,
//! workload identity (`AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`,
//! `AZURE_TENANT_ID`, `AZURE_AUTHORITY_HOST`) or the managed identity endpoint
//! (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`, `AZURE_CLIENT_ID` for a user-assigned
//! identity), in that order ([`crate::cloud::azure_token`]); the vault URL
//! from `SKYFUSE_AZURE_KEYVAULT_ENDPOINT` when set (`{vault}` in it is replaced by
//! the vault name: `https://{vault}.vault.azure.cn` for Azure China, a private
//! endpoint, or a loopback server in tests).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::cloud::azure_token::AzureTokenSource;
use crate::cloud::http::{malformed, secret_store_json};
use crate::config::Secret;
use crate::error::{Error, Result};

const SERVICE: &str = "azure key vault";
const API_VERSION: &str = "7.4";
pub const KEY_VAULT_RESOURCE: &str = "https://vault.azure.net";
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct AzureKeyVault {
    /// The vault URL with `{vault}` where the vault name goes.
    endpoint_template: String,
    tokens: AzureTokenSource,
    http: reqwest::Client,
}

impl AzureKeyVault {
    /// The client the environment describes; no way to get a token is a config error.
    pub fn from_env(env: &HashMap<String, String>, http: &reqwest::Client) -> Result<Self> {
        let token_location = env
            .get("SKYFUSE_AZURE_KEYVAULT_TOKEN")
            .filter(|value| !value.is_empty());
        let imds_url = env
            .get("SKYFUSE_AZURE_IMDS_URL")
            .filter(|value| !value.is_empty());
        let tokens = AzureTokenSource::from_env(
            token_location.map(String::as_str),
            imds_url.map(String::as_str),
            KEY_VAULT_RESOURCE,
            env,
            http,
        )
        .map_err(|error| error.context("azure-kv"))?
        .ok_or_else(|| {
            Error::config(
                "azure-kv: secrets need SKYFUSE_AZURE_KEYVAULT_TOKEN (an env: or file: location of an Entra token), SKYFUSE_AZURE_IMDS_URL, a workload identity (AZURE_FEDERATED_TOKEN_FILE) or a managed identity (IDENTITY_ENDPOINT and IDENTITY_HEADER)",
            )
        })?;
        let endpoint_template = env
            .get("SKYFUSE_AZURE_KEYVAULT_ENDPOINT")
            .filter(|value| !value.is_empty())
            .cloned()
            .unwrap_or_else(|| "https://{vault}.vault.azure.net".to_string());
        Ok(Self {
            endpoint_template,
            tokens,
            http: http.clone(),
        })
    }

    /// The current value of secret `name` of `vault` (or that `version` of it).
    pub async fn get(&self, vault: &str, name: &str, version: Option<&str>) -> Result<Secret> {
        let location = match version {
            Some(version) => format!("azure-kv:{vault}/{name}/{version}"),
            None => format!("azure-kv:{vault}/{name}"),
        };
        let base = self.endpoint_template.replace("{vault}", vault);
        let mut url = url::Url::parse(&base)
            .map_err(|error| Error::config(format!("{location}: vault url {base:?}: {error}")))?;
        url.path_segments_mut()
            .map_err(|()| Error::config(format!("{location}: vault url {base:?} has no path")))?
            .pop_if_empty()
            .push("secrets")
            .push(name)
            .extend(version);
        url.query_pairs_mut()
            .append_pair("api-version", API_VERSION);
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
        body.get("value")
            .and_then(Value::as_str)
            .map(Secret::new)
            .ok_or_else(|| {
                malformed(
                    SERVICE,
                    format!("{location}: the answer has no `value` string"),
                )
            })
    }
}
