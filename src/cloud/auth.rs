//! How a request to a provider is authorized, decided once from config: the header
//! or signature each kind needs, added to a fully built request just before it is sent.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderName, HeaderValue};

use crate::cloud::aws_credentials::AwsCredentialsProvider;
use crate::cloud::azure_token::AzureTokenSource;
use crate::cloud::gcp_token::{GcpTokenSource, MetadataTokens};
use crate::cloud::oci_instance_principal::InstancePrincipal;
use crate::cloud::oci_signing::OciSigner;
use crate::cloud::rotating_secret::RotatingSecret;
use crate::cloud::rsa_key::RsaPrivateKey;
use crate::cloud::sigv4::SigV4Signer;
use crate::config::{ProviderConfig, ProviderSettings, SecretLocation};
use crate::error::{Error, Result};

#[derive(Debug)]
pub enum RequestAuth {
    None,
    /// `Authorization: Bearer` (OpenAI-compatible keys, Azure Entra tokens).
    Bearer(RotatingSecret),
    /// Azure's `api-key` header.
    AzureApiKey(RotatingSecret),
    SigV4(SigV4Signer),
    Oci(OciSigner),
    /// OCI signatures with an instance principal's session key and security token,
    /// renewed before the token expires.
    OciInstancePrincipal(Box<InstancePrincipal>),
    /// `Authorization: Bearer` with a Google OAuth token, fetched and cached.
    Google(GcpTokenSource),
    /// `Authorization: Bearer` with an Entra token from the managed identity endpoint,
    /// fetched and renewed before it expires.
    Entra(AzureTokenSource),
}

/// The Entra resource Azure OpenAI tokens are issued for.
const COGNITIVE_SERVICES: &str = "https://cognitiveservices.azure.com";

impl RequestAuth {
    /// The credentials `config` names, resolved with `env` (secret files are read
    /// here). `region` is the resolved region (Bedrock may take it from `AWS_REGION`).
    pub fn from_config(
        config: &ProviderConfig,
        region: &str,
        env: &HashMap<String, String>,
        http: &reqwest::Client,
    ) -> Result<Self> {
        let resolve = |location: &Option<SecretLocation>, key: &str| {
            SecretLocation::resolve_optional(location.as_ref(), key, env)
        };
        // Keys and tokens sent as headers follow their file when it is rewritten.
        let rotating = |location: &Option<SecretLocation>, key: &str| {
            location
                .as_ref()
                .map(|location| {
                    RotatingSecret::resolve(location, env, http).map_err(|error| error.context(key))
                })
                .transpose()
        };
        let missing = |what: &str| Error::config(format!("{what} is not set"));
        let timeout = Duration::from_millis(config.timeout_ms);
        Ok(match &config.settings {
            ProviderSettings::OpenaiCompat(settings) => {
                match rotating(&settings.api_key, "api_key")? {
                    Some(key) => Self::Bearer(key),
                    None => Self::None,
                }
            }
            ProviderSettings::AzureOpenai(settings) => {
                if let Some(key) = rotating(&settings.api_key, "api_key")? {
                    Self::AzureApiKey(key)
                } else if let Some(token) = rotating(&settings.access_token, "access_token")? {
                    Self::Bearer(token)
                } else {
                    // Neither configured: VM instance metadata when configured, else the
                    // workload identity (AKS) or managed identity (App Service,
                    // Functions, Container Apps) the environment has.
                    let identity = AzureTokenSource::from_env(
                        None,
                        settings.imds_url.as_deref(),
                        COGNITIVE_SERVICES,
                        env,
                        http,
                    )?
                    .ok_or_else(|| {
                        missing(
                            "api_key, access_token or imds_url (and no workload identity: AZURE_FEDERATED_TOKEN_FILE; nor managed identity: IDENTITY_ENDPOINT and IDENTITY_HEADER)",
                        )
                    })?;
                    Self::Entra(identity)
                }
            }
            ProviderSettings::Bedrock(settings) => Self::SigV4(SigV4Signer {
                credentials: AwsCredentialsProvider::from_env(
                    &settings.aws,
                    "aws_",
                    Some(region),
                    env,
                    http,
                )?,
                region: region.to_string(),
                service: "bedrock".into(),
            }),
            ProviderSettings::Vertex(settings) => {
                if let Some(token) = resolve(&settings.access_token, "access_token")? {
                    Self::Google(GcpTokenSource::Static(token))
                } else if let Some(metadata_url) = &settings.metadata_url {
                    Self::Google(GcpTokenSource::Metadata(Box::new(MetadataTokens::new(
                        metadata_url,
                        http.clone(),
                        timeout,
                    ))))
                } else {
                    let key_json = resolve(&settings.service_account_key, "service_account_key")?
                        .ok_or_else(|| {
                        missing("service_account_key, access_token or metadata_url")
                    })?;
                    // A service-account key, or an external_account file (workload
                    // identity federation).
                    let tokens = GcpTokenSource::from_credentials_json(
                        key_json.expose(),
                        settings.token_url.as_deref(),
                        http.clone(),
                        timeout,
                    )
                    .map_err(|error| error.context("service_account_key"))?;
                    Self::Google(tokens)
                }
            }
            ProviderSettings::Oci(settings) => {
                if let Some(metadata_url) = &settings.metadata_url {
                    return Ok(Self::OciInstancePrincipal(Box::new(
                        InstancePrincipal::new(
                            metadata_url,
                            settings.federation_url.as_deref(),
                            Some(region),
                            Some(&settings.tenancy_id),
                            http,
                        )?,
                    )));
                }
                let (Some(user_id), Some(fingerprint), Some(private_key)) = (
                    &settings.user_id,
                    &settings.key_fingerprint,
                    &settings.private_key,
                ) else {
                    return Err(missing(
                        "user_id, key_fingerprint and private_key, or metadata_url",
                    ));
                };
                let pem = private_key
                    .resolve(env)
                    .map_err(|error| error.context("private_key"))?;
                let key = RsaPrivateKey::from_pem(pem.expose())
                    .map_err(|error| error.context("private_key"))?;
                Self::Oci(OciSigner::new(
                    &settings.tenancy_id,
                    user_id,
                    fingerprint,
                    key,
                ))
            }
        })
    }

    /// Adds the credentials to a built request; signatures cover its method, URL,
    /// headers and body bytes, so nothing may change the request afterwards.
    pub async fn authorize(&self, request: &mut reqwest::Request) -> Result<()> {
        if matches!(self, Self::None) {
            return Ok(());
        }
        let (method, url) = (request.method().clone(), request.url().clone());
        // Only signatures cover the body: a bearer token needs no copy of it.
        let signs_body = matches!(
            self,
            Self::SigV4(_) | Self::Oci(_) | Self::OciInstancePrincipal(_)
        );
        let body = if signs_body {
            body_bytes(request)?
        } else {
            None
        };
        self.authorize_parts(&method, &url, request.headers_mut(), body.as_deref())
            .await
    }

    /// [`Self::authorize`] for a request in parts: `headers` are those it will be
    /// sent with (signatures cover them), `body` its bytes.
    pub async fn authorize_parts(
        &self,
        method: &http::Method,
        url: &url::Url,
        headers: &mut http::HeaderMap,
        body: Option<&[u8]>,
    ) -> Result<()> {
        let added: Vec<(&'static str, String)> = match self {
            Self::None => return Ok(()),
            Self::Bearer(token) => vec![(
                "authorization",
                format!("Bearer {}", token.current().await?.expose()),
            )],
            Self::AzureApiKey(key) => vec![("api-key", key.current().await?.expose().to_string())],
            Self::Google(tokens) => {
                let token = tokens.access_token().await?;
                vec![("authorization", format!("Bearer {}", token.expose()))]
            }
            Self::Entra(tokens) => {
                let token = tokens.access_token().await?;
                vec![("authorization", format!("Bearer {}", token.expose()))]
            }
            Self::SigV4(signer) => {
                let signed: Vec<(String, String)> = headers
                    .iter()
                    .filter_map(|(name, value)| {
                        Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))
                    })
                    .collect();
                signer
                    .sign(
                        method.as_str(),
                        url,
                        &signed,
                        body.unwrap_or_default(),
                        SystemTime::now(),
                    )
                    .await?
            }
            Self::Oci(signer) => oci_headers(signer, method, url, headers, body)?,
            Self::OciInstancePrincipal(principal) => {
                oci_headers(&principal.signer().await?, method, url, headers, body)?
            }
        };
        for (name, value) in added {
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                Error::config(format!(
                    "a credential holds characters not allowed in the {name} header"
                ))
            })?;
            if matches!(name, "authorization" | "api-key" | "x-amz-security-token") {
                value.set_sensitive(true);
            }
            headers.insert(HeaderName::from_static(name), value);
        }
        Ok(())
    }
}

/// The OCI signature headers of a request.
fn oci_headers(
    signer: &OciSigner,
    method: &http::Method,
    url: &url::Url,
    headers: &http::HeaderMap,
    body: Option<&[u8]>,
) -> Result<Vec<(&'static str, String)>> {
    let content_type = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok());
    signer.sign(method.as_str(), url, content_type, body, SystemTime::now())
}

/// The body to sign: requests here are built from bytes, never streamed.
fn body_bytes(request: &reqwest::Request) -> Result<Option<Vec<u8>>> {
    match request.body() {
        None => Ok(None),
        Some(body) => body
            .as_bytes()
            .map(|bytes| Some(bytes.to_vec()))
            .ok_or_else(|| Error::internal("a signed request needs its body in memory")),
    }
}
