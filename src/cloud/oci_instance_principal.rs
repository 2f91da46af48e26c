//! OCI instance principals: a compute instance signs requests as itself, with no API
//! key. The instance metadata service (`GET {metadata}/opc/v2/identity/cert.pem`,
//! `key.pem`, `intermediate.pem`, with `Authorization: Bearer Oracle`) holds a leaf
//! certificate naming the tenancy and its private key, both rotated by OCI. A fresh
//! session key pair is generated; its public half, the leaf and the intermediate are
//! sent to the federation endpoint (`POST https://auth.{region}.oraclecloud.com/v1/x509`,
//! signed with the leaf key under keyId `{tenancy}/fed-x509/{sha1 fingerprint}`), which
//! answers a security token (a JWT). Requests are then signed with the session key
//! under keyId `ST${token}`; the token is renewed before its `exp`, with a new
//! session key and certificates read again.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use serde_json::{Value, json};

use crate::cloud::aws_credentials::Clock;
use crate::cloud::http::{TOKEN_BODY_LIMIT, malformed, send_and_read, status_error};
use crate::cloud::oci_signing::OciSigner;
use crate::cloud::rsa_key::{RsaPrivateKey, pem_block};
use crate::cloud::token_cache::REFRESH_MARGIN;
use crate::error::{Error, ErrorKind, Result};

pub const NAME: &str = "oci instance principal";
/// The conventional metadata address, for `metadata_url = "default"`.
pub const DEFAULT_METADATA_URL: &str = "http://169.254.169.254";
const METADATA: &str = "oci instance metadata";
const FEDERATION: &str = "oci auth federation";
/// Link-local: an answer takes milliseconds or never comes.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
const FEDERATION_TIMEOUT: Duration = Duration::from_secs(30);

pub struct InstancePrincipal {
    metadata_url: String,
    federation_url: String,
    /// The configured tenancy: a leaf certificate naming another is refused.
    tenancy_id: Option<String>,
    http: reqwest::Client,
    clock: Clock,
    /// Held across a renewal so concurrent callers share one federation.
    session: tokio::sync::Mutex<Option<Session>>,
}

impl std::fmt::Debug for InstancePrincipal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("InstancePrincipal")
            .field("metadata_url", &self.metadata_url)
            .field("federation_url", &self.federation_url)
            .finish_non_exhaustive()
    }
}

struct Session {
    signer: OciSigner,
    refresh_at: SystemTime,
    expires_at: SystemTime,
}

impl InstancePrincipal {
    /// `metadata_url` without the path (`"default"` names the usual address);
    /// `federation_url` whole, else `https://auth.{region}.oraclecloud.com/v1/x509`.
    pub fn new(
        metadata_url: &str,
        federation_url: Option<&str>,
        region: Option<&str>,
        tenancy_id: Option<&str>,
        http: &reqwest::Client,
    ) -> Result<Self> {
        let metadata_url = if metadata_url == "default" {
            DEFAULT_METADATA_URL
        } else {
            metadata_url
        };
        let federation_url = match (federation_url, region) {
            (Some(url), _) => url.to_string(),
            (None, Some(region)) if is_region_name(region) => {
                format!("https://auth.{region}.oraclecloud.com/v1/x509")
            }
            (None, _) => {
                return Err(Error::config(
                    "oci instance principal: needs a region (or an explicit federation url)",
                ));
            }
        };
        Ok(Self {
            metadata_url: metadata_url.trim_end_matches('/').to_string(),
            federation_url,
            tenancy_id: tenancy_id.map(str::to_string),
            http: http.clone(),
            clock: Arc::new(SystemTime::now),
            session: tokio::sync::Mutex::new(None),
        })
    }

    /// The same principal reading time from `clock` (tests move it instead of sleeping).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The signer for a request now: the session's while its token has more than the
    /// margin left, else a new session. A failed renewal keeps the current one until
    /// its token expires.
    pub async fn signer(&self) -> Result<OciSigner> {
        let mut session = self.session.lock().await;
        let now = (self.clock)();
        if let Some(current) = session.as_ref()
            && now < current.refresh_at
        {
            return Ok(current.signer.clone());
        }
        match self.federate().await {
            Ok((signer, expires_at)) => {
                let now = (self.clock)();
                let lifetime = expires_at.duration_since(now).unwrap_or(Duration::ZERO);
                let keep = lifetime.saturating_sub(REFRESH_MARGIN).max(lifetime / 2);
                *session = Some(Session {
                    signer: signer.clone(),
                    refresh_at: now.checked_add(keep).unwrap_or(now),
                    expires_at,
                });
                Ok(signer)
            }
            Err(error) => match session.as_mut() {
                Some(current) if now < current.expires_at => {
                    tracing::warn!(%error, "oci security token not renewed; the current one is used until it expires");
                    current.refresh_at = now
                        .checked_add(Duration::from_secs(10))
                        .unwrap_or(now)
                        .min(current.expires_at);
                    Ok(current.signer.clone())
                }
                _ => Err(error),
            },
        }
    }

    async fn federate(&self) -> Result<(OciSigner, SystemTime)> {
        let leaf_pem = self.metadata("cert.pem").await?;
        let leaf_key_pem = self.metadata("key.pem").await?;
        let intermediate_pem = self.metadata("intermediate.pem").await?;
        let leaf = certificate_der(&leaf_pem, "the leaf certificate")?;
        let intermediate = certificate_der(&intermediate_pem, "the intermediate certificate")?;
        let tenancy = tenancy_of(&leaf)?;
        if let Some(configured) = &self.tenancy_id
            && *configured != tenancy
        {
            return Err(Error::new(
                ErrorKind::Auth,
                format!(
                    "{NAME}: the instance certificate names tenancy {tenancy}, not the configured {configured}"
                ),
            ));
        }
        let leaf_key = RsaPrivateKey::from_pem(&leaf_key_pem).map_err(|error| {
            Error::unavailable(format!("{METADATA}: key.pem: {}", error.message))
        })?;
        let (session_key, session_public) = RsaPrivateKey::generate()?;
        let standard = base64::engine::general_purpose::STANDARD;
        let body = json!({
            "certificate": standard.encode(&leaf),
            "publicKey": standard.encode(&session_public),
            "intermediateCertificates": [standard.encode(&intermediate)],
        })
        .to_string();
        let federation_signer = OciSigner::with_key_id(
            format!("{tenancy}/fed-x509/{}", sha1_fingerprint(&leaf)),
            Arc::new(leaf_key),
            false,
        );
        let url = url::Url::parse(&self.federation_url).map_err(|error| {
            Error::config(format!(
                "{NAME}: federation url {:?}: {error}",
                self.federation_url
            ))
        })?;
        let signed = federation_signer.sign(
            "POST",
            &url,
            Some("application/json"),
            Some(body.as_bytes()),
            (self.clock)(),
        )?;
        let mut request = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .timeout(FEDERATION_TIMEOUT);
        for (name, value) in signed {
            request = request.header(name, value);
        }
        let reply = send_and_read(FEDERATION, request, TOKEN_BODY_LIMIT).await?;
        if !reply.is_success() {
            let mut error = status_error(FEDERATION, &reply);
            // 401 NotAuthenticated: the certificate or signature was refused.
            if reply.status == 400 || reply.status == 401 {
                error.kind = ErrorKind::Auth;
            }
            return Err(error);
        }
        let answer: Value = serde_json::from_slice(&reply.body)
            .map_err(|_| malformed(FEDERATION, "the answer is not JSON"))?;
        let token = answer
            .get("token")
            .and_then(Value::as_str)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| malformed(FEDERATION, "the answer has no token"))?;
        let expires_at = jwt_expiry(token)
            .ok_or_else(|| malformed(FEDERATION, "the token is not a JWT with an exp claim"))?;
        let signer = OciSigner::with_key_id(format!("ST${token}"), Arc::new(session_key), true);
        Ok((signer, expires_at))
    }

    async fn metadata(&self, name: &str) -> Result<String> {
        let request = self
            .http
            .get(format!("{}/opc/v2/identity/{name}", self.metadata_url))
            .header("authorization", "Bearer Oracle")
            .timeout(METADATA_TIMEOUT);
        let reply = send_and_read(METADATA, request, TOKEN_BODY_LIMIT).await?;
        if !reply.is_success() {
            let mut error = status_error(METADATA, &reply);
            error.message = format!("{NAME}: {name}: {}", error.message);
            return Err(error);
        }
        String::from_utf8(reply.body.to_vec())
            .map_err(|_| malformed(METADATA, format!("{name} is not PEM text")))
    }
}

/// The region names OCI's hostnames take (`us-ashburn-1`): nothing that could change
/// the host.
fn is_region_name(region: &str) -> bool {
    !region.is_empty()
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn certificate_der(pem: &str, what: &str) -> Result<Vec<u8>> {
    match pem_block(pem) {
        Ok((label, der)) if label == "CERTIFICATE" => Ok(der),
        _ => Err(malformed(
            METADATA,
            format!("{what} is not a PEM certificate"),
        )),
    }
}

/// The tenancy OCID the leaf certificate's subject carries, as
/// `OU=opc-tenant:{ocid}` (or `O=opc-identity:{ocid}` on older certificates).
pub fn tenancy_of(leaf_der: &[u8]) -> Result<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(leaf_der)
        .map_err(|_| malformed(METADATA, "the leaf certificate is not X.509 DER"))?;
    for attribute in certificate.subject().iter_attributes() {
        let Ok(value) = attribute.as_str() else {
            continue;
        };
        for prefix in ["opc-tenant:", "opc-identity:"] {
            if let Some(tenancy) = value.strip_prefix(prefix) {
                return Ok(tenancy.to_string());
            }
        }
    }
    Err(malformed(
        METADATA,
        "the leaf certificate names no tenancy (opc-tenant:)",
    ))
}

/// SHA-1 of the DER, as upper-case hex pairs joined by colons.
pub fn sha1_fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
    digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The `exp` claim of a JWT (unverified: it is our own token, used only to know
/// when to renew it).
fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}
