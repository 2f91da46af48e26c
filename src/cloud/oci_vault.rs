//! OCI Vault's `GetSecretBundle`, for `oci-vault:OCID` locations:
//! `GET https://secrets.vaults.{region}.oci.oraclecloud.com/20190301/secretbundles/{secretId}`
//! signed with an API key; the value is `secretBundleContent.content`, base64.
//!
//! Configured from the environment the OCI CLI reads: `OCI_CLI_TENANCY`,
//! `OCI_CLI_USER`, `OCI_CLI_FINGERPRINT`, `OCI_CLI_KEY_FILE` (an unencrypted PEM) and
//! `OCI_CLI_REGION`; or, without `OCI_CLI_USER`, instance principals with the
//! instance metadata service at `SKYFUSE_OCI_METADATA_URL` (`default` on OCI compute;
//! the federation endpoint from `OCI_CLI_REGION` or `SKYFUSE_OCI_FEDERATION_URL`);
//! the API at `SKYFUSE_OCI_SECRETS_ENDPOINT` when set (a private endpoint, or a
//! loopback server in tests; no region needed then).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::cloud::http::{malformed, secret_store_json};
use crate::cloud::managed_secret::decode_base64_text;
use crate::cloud::oci_instance_principal::InstancePrincipal;
use crate::cloud::oci_signing::OciSigner;
use crate::cloud::rsa_key::RsaPrivateKey;
use crate::config::Secret;
use crate::error::{Error, Result};

const SERVICE: &str = "oci vault secrets";
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct OciVault {
    endpoint: url::Url,
    signer: VaultSigner,
    http: reqwest::Client,
}

#[derive(Debug)]
enum VaultSigner {
    ApiKey(OciSigner),
    InstancePrincipal(Box<InstancePrincipal>),
}

impl OciVault {
    /// The client the environment describes; a missing variable is a config error.
    pub fn from_env(env: &HashMap<String, String>, http: &reqwest::Client) -> Result<Self> {
        let get = |name: &str| env.get(name).filter(|value| !value.is_empty());
        let signer = match (get("OCI_CLI_USER"), get("SKYFUSE_OCI_METADATA_URL")) {
            (None, Some(metadata_url)) => VaultSigner::InstancePrincipal(Box::new(
                InstancePrincipal::new(
                    metadata_url,
                    get("SKYFUSE_OCI_FEDERATION_URL").map(String::as_str),
                    get("OCI_CLI_REGION").map(String::as_str),
                    get("OCI_CLI_TENANCY").map(String::as_str),
                    http,
                )
                .map_err(|error| error.context("oci-vault"))?,
            )),
            _ => VaultSigner::ApiKey(Self::api_key_signer(env)?),
        };
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
            signer,
            http: http.clone(),
        })
    }

    fn api_key_signer(env: &HashMap<String, String>) -> Result<OciSigner> {
        let get = |name: &str| env.get(name).filter(|value| !value.is_empty());
        let required = |name: &str| {
            get(name).ok_or_else(|| {
                Error::config(format!(
                    "oci-vault: secrets need OCI_CLI_TENANCY, OCI_CLI_USER, OCI_CLI_FINGERPRINT and OCI_CLI_KEY_FILE (or SKYFUSE_OCI_METADATA_URL for instance principals); {name} is not set"
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
        Ok(OciSigner::new(tenancy, user, fingerprint, key))
    }

    /// The current version's content of the secret `ocid`.
    pub async fn get(&self, ocid: &str) -> Result<Secret> {
        let location = format!("oci-vault:{ocid}");
        let mut url = self.endpoint.clone();
        url.path_segments_mut()
            .map_err(|()| Error::config(format!("{location}: the endpoint has no path")))?
            .pop_if_empty()
            .extend(["20190301", "secretbundles", ocid]);
        let signer = match &self.signer {
            VaultSigner::ApiKey(signer) => signer.clone(),
            VaultSigner::InstancePrincipal(principal) => principal
                .signer()
                .await
                .map_err(|error| error.context(&location))?,
        };
        let signed = signer
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
