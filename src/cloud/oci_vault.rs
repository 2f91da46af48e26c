//! OCI Vault's `GetSecretBundle`, for `oci-vault:OCID` locations:
//! `GET https://secrets.vaults.{region}.oci.oraclecloud.com/20190301/secretbundles/{secretId}`
//! signed with an API key; the value is `secretBundleContent.content`, base64.
//!
//! Configured from the environment the OCI CLI reads: `OCI_CLI_TENANCY`,
//! `OCI_CLI_USER`, `OCI_CLI_FINGERPRINT`, `OCI_CLI_KEY_FILE` (an unencrypted PEM) and
//! `OCI_CLI_REGION`; the API at `SKYFUSE_OCI_SECRETS_ENDPOINT` when set (a private
//! endpoint, or a loopback server in tests; no region needed then).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::cloud::http::{malformed, secret_store_json};
use crate::cloud::managed_secret::decode_base64_text;
use crate::cloud::oci_signing::OciSigner;
use crate::cloud::rsa_key::RsaPrivateKey;
use crate::config::Secret;
use crate::error::{Error, Result};

const SERVICE: &str = "oci vault secrets";
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct OciVault {
    endpoint: url::Url,
    signer: OciSigner,
    http: reqwest::Client,
}

impl OciVault {
    /// The client the environment describes; a missing variable is a config error.
    pub fn from_env(env: &HashMap<String, String>, http: &reqwest::Client) -> Result<Self> {
        let get = |name: &str| env.get(name).filter(|value| !value.is_empty());
        let required = |name: &str| {
            get(name).ok_or_else(|| {
                Error::config(format!(
                    "oci-vault: secrets need OCI_CLI_TENANCY, OCI_CLI_USER, OCI_CLI_FINGERPRINT and OCI_CLI_KEY_FILE; {name} is not set"
                ))
            })
        };
        let tenancy = required("OCI_CLI_TENANCY")?;
        let user = required("OCI_CLI_USER")?;
        let fingerprint = required("OCI_CLI_FINGERPRINT")?;
        let key_file = required("OCI_CLI_KEY_FILE")?;
        let pem = std::fs::read_to_string(key_file).map_err(|error| {
            Error::config(format!(
                "oci-vault: cannot read OCI_CLI_KEY_FILE {key_file}: {error}"
            ))
        })?;
        let key = RsaPrivateKey::from_pem(&pem)
            .map_err(|error| error.context("oci-vault: OCI_CLI_KEY_FILE"))?;
        let endpoint = match get("SKYFUSE_OCI_SECRETS_ENDPOINT") {
            Some(endpoint) => endpoint.clone(),
            None => {
                let region = get("OCI_CLI_REGION").ok_or_else(|| {
                    Error::config(
                        "oci-vault: secrets need OCI_CLI_REGION (or SKYFUSE_OCI_SECRETS_ENDPOINT)",
                    )
                })?;
                format!("https://secrets.vaults.{region}.oci.oraclecloud.com")
            }
        };
        let endpoint = url::Url::parse(&endpoint)
            .map_err(|error| Error::config(format!("oci-vault: endpoint {endpoint:?}: {error}")))?;
        Ok(Self {
            endpoint,
            signer: OciSigner::new(tenancy, user, fingerprint, key),
            http: http.clone(),
        })
    }

    /// The current version's content of the secret `ocid`.
    pub async fn get(&self, ocid: &str) -> Result<Secret> {
        let location = format!("oci-vault:{ocid}");
        let mut url = self.endpoint.clone();
        url.path_segments_mut()
            .map_err(|()| Error::config(format!("{location}: the endpoint has no path")))?
            .pop_if_empty()
            .extend(["20190301", "secretbundles", ocid]);
        let signed = self
            .signer
            .sign("GET", &url, None, None, SystemTime::now())
            .map_err(|error| error.context(&location))?;
        let mut request = self.http.get(url).timeout(TIMEOUT);
        for (name, value) in signed {
            request = request.header(name, value);
        }
        // Messages here never quote the body or a decoder's error: they hold the value.
        let body = secret_store_json(SERVICE, &location, request).await?;
        let content = body.get("secretBundleContent");
        if let Some(content_type) = content
            .and_then(|content| content.get("contentType"))
            .and_then(Value::as_str)
            .filter(|content_type| *content_type != "BASE64")
        {
            return Err(malformed(
                SERVICE,
                format!("{location}: content type {content_type:?}, expected BASE64"),
            ));
        }
        let data = content
            .and_then(|content| content.get("content"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                malformed(
                    SERVICE,
                    format!("{location}: the answer has no `secretBundleContent.content` string"),
                )
            })?;
        decode_base64_text(data).map(Secret::new).ok_or_else(|| {
            malformed(
                SERVICE,
                format!("{location}: the content is not base64 of UTF-8 text"),
            )
        })
    }
}
