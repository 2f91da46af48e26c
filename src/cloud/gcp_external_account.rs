//! Google workload identity federation: an `external_account` credentials file
//! (what `gcloud iam workload-identity-pools create-cred-config` writes). The subject
//! token, an OIDC or SAML token another cloud issued, is read from
//! `credential_source.file` (again at every exchange: it rotates) or fetched from
//! `credential_source.url`, exchanged at the STS `token_url` (RFC 8693 token
//! exchange) for a federated access token, and, when the file names
//! `service_account_impersonation_url`, traded for a service account's token with
//! IAM Credentials `generateAccessToken`. Tokens are renewed before they expire.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::cloud::gcp_token::CLOUD_PLATFORM_SCOPE;
use crate::cloud::http::{
    TOKEN_BODY_LIMIT, malformed, send_and_read, status_error, token_endpoint_error,
};
use crate::cloud::token_cache::TokenCache;
use crate::config::Secret;
use crate::error::{Error, ErrorKind, Result};

pub const NAME: &str = "google workload identity federation";
const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const STS: &str = "google sts";
const IMPERSONATION: &str = "iam credentials generateAccessToken";

/// The fields of an `external_account` file this client reads.
#[derive(Deserialize)]
struct ExternalAccountFile {
    #[serde(rename = "type")]
    kind: String,
    audience: String,
    subject_token_type: String,
    token_url: String,
    service_account_impersonation_url: Option<String>,
    service_account_impersonation: Option<Impersonation>,
    credential_source: CredentialSource,
}

#[derive(Deserialize)]
struct Impersonation {
    token_lifetime_seconds: Option<u64>,
}

#[derive(Deserialize)]
struct CredentialSource {
    file: Option<String>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// AWS sources sign a GetCallerIdentity request instead: not supported here.
    environment_id: Option<String>,
    format: Option<SubjectFormat>,
}

#[derive(Deserialize)]
struct SubjectFormat {
    #[serde(rename = "type")]
    kind: String,
    subject_token_field_name: Option<String>,
}

#[derive(Debug)]
enum SubjectSource {
    File(PathBuf),
    Url {
        url: String,
        headers: Vec<(String, String)>,
    },
}

#[derive(Debug)]
pub struct ExternalAccountTokens {
    audience: String,
    subject_token_type: String,
    token_url: String,
    subject: SubjectSource,
    /// The JSON field holding the subject token; plain text when `None`.
    subject_field: Option<String>,
    impersonation_url: Option<String>,
    impersonation_lifetime: Duration,
    http: reqwest::Client,
    timeout: Duration,
    pub(crate) cache: TokenCache,
}

impl ExternalAccountTokens {
    /// Whether a credentials file's `type` says it is one of these.
    pub fn is_external_account(credentials_json: &str) -> bool {
        serde_json::from_str::<Value>(credentials_json)
            .ok()
            .and_then(|value| value.get("type")?.as_str().map(str::to_string))
            .is_some_and(|kind| kind == "external_account")
    }

    pub fn from_json(
        credentials_json: &str,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Result<Self> {
        // Not serde's message: it may quote the file.
        let file: ExternalAccountFile = serde_json::from_str(credentials_json).map_err(|error| {
            Error::config(format!(
                "not an external_account credentials file (line {}, column {}: a field is missing or mistyped)",
                error.line(),
                error.column()
            ))
        })?;
        if file.kind != "external_account" {
            return Err(Error::config(format!(
                "the credentials file is of type {:?}, not external_account",
                file.kind
            )));
        }
        let source = file.credential_source;
        if source.environment_id.is_some() {
            return Err(Error::config(
                "external_account: credential_source.environment_id (AWS-sourced credentials) is not supported; use a file or url source",
            ));
        }
        let subject = match (source.file, source.url) {
            (Some(file), None) => SubjectSource::File(PathBuf::from(file)),
            (None, Some(url)) => {
                check_http_url("credential_source.url", &url)?;
                SubjectSource::Url {
                    url,
                    headers: source.headers.into_iter().collect(),
                }
            }
            _ => {
                return Err(Error::config(
                    "external_account: credential_source needs exactly one of file and url",
                ));
            }
        };
        let subject_field = match source.format {
            None => None,
            Some(format) if format.kind == "text" => None,
            Some(format) if format.kind == "json" => Some(format.subject_token_field_name.ok_or_else(|| {
                Error::config(
                    "external_account: credential_source.format of type json needs subject_token_field_name",
                )
            })?),
            Some(format) => {
                return Err(Error::config(format!(
                    "external_account: credential_source.format type {:?} is neither text nor json",
                    format.kind
                )));
            }
        };
        check_http_url("token_url", &file.token_url)?;
        if let Some(url) = &file.service_account_impersonation_url {
            check_http_url("service_account_impersonation_url", url)?;
        }
        Ok(Self {
            audience: file.audience,
            subject_token_type: file.subject_token_type,
            token_url: file.token_url,
            subject,
            subject_field,
            impersonation_url: file.service_account_impersonation_url,
            impersonation_lifetime: Duration::from_secs(
                file.service_account_impersonation
                    .and_then(|impersonation| impersonation.token_lifetime_seconds)
                    .unwrap_or(3600),
            ),
            http,
            timeout,
            cache: TokenCache::default(),
        })
    }

    pub async fn access_token(&self) -> Result<Secret> {
        self.cache.get(NAME, || self.fetch()).await
    }

    async fn fetch(&self) -> Result<(Secret, Duration)> {
        let subject_token = self.subject_token().await?;
        let (federated, lifetime) = self.exchange(&subject_token).await?;
        match &self.impersonation_url {
            None => Ok((federated, lifetime)),
            Some(url) => self.impersonate(url, &federated).await,
        }
    }

    async fn subject_token(&self) -> Result<Secret> {
        let raw = match &self.subject {
            SubjectSource::File(path) => std::fs::read_to_string(path).map_err(|error| {
                Error::new(
                    ErrorKind::Auth,
                    format!(
                        "{NAME}: cannot read credential_source.file {}: {error}",
                        path.display()
                    ),
                )
            })?,
            SubjectSource::Url { url, headers } => {
                let mut request = self.http.get(url).timeout(self.timeout);
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                let reply =
                    send_and_read("credential_source.url", request, TOKEN_BODY_LIMIT).await?;
                if !reply.is_success() {
                    let mut error = status_error("credential_source.url", &reply);
                    error.message = format!("{NAME}: {}", error.message);
                    return Err(error);
                }
                String::from_utf8(reply.body.to_vec()).map_err(|_| {
                    malformed(
                        "credential_source.url",
                        "the subject token is not UTF-8 text",
                    )
                })?
            }
        };
        let token = match &self.subject_field {
            None => raw.trim().to_string(),
            Some(field) => serde_json::from_str::<Value>(&raw)
                .ok()
                .and_then(|value| value.get(field)?.as_str().map(str::to_string))
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Auth,
                        format!("{NAME}: the subject token source has no {field:?} string"),
                    )
                })?,
        };
        if token.is_empty() {
            return Err(Error::new(
                ErrorKind::Auth,
                format!("{NAME}: the subject token is empty"),
            ));
        }
        Ok(Secret::new(token))
    }

    /// RFC 8693 token exchange at Google's STS, form fields as its `v1/token` takes.
    async fn exchange(&self, subject_token: &Secret) -> Result<(Secret, Duration)> {
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", TOKEN_EXCHANGE_GRANT)
            .append_pair("audience", &self.audience)
            .append_pair("scope", CLOUD_PLATFORM_SCOPE)
            .append_pair("requested_token_type", ACCESS_TOKEN_TYPE)
            .append_pair("subject_token_type", &self.subject_token_type)
            .append_pair("subject_token", subject_token.expose())
            .finish();
        let request = self
            .http
            .post(&self.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .timeout(self.timeout);
        let reply = send_and_read(STS, request, TOKEN_BODY_LIMIT).await?;
        if !reply.is_success() {
            return Err(token_endpoint_error(STS, &reply));
        }
        #[derive(Deserialize)]
        struct Exchanged {
            access_token: String,
            expires_in: Option<u64>,
        }
        let answer: Exchanged = serde_json::from_slice(&reply.body)
            .map_err(|_| malformed(STS, "the answer has no access_token string"))?;
        Ok((
            Secret::new(answer.access_token),
            Duration::from_secs(answer.expires_in.unwrap_or(3600)),
        ))
    }

    /// `POST ...:generateAccessToken` with the federated token as the bearer.
    async fn impersonate(&self, url: &str, federated: &Secret) -> Result<(Secret, Duration)> {
        let body = json!({
            "scope": [CLOUD_PLATFORM_SCOPE],
            "lifetime": format!("{}s", self.impersonation_lifetime.as_secs()),
        });
        let request = self
            .http
            .post(url)
            .bearer_auth(federated.expose())
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(self.timeout);
        let reply = send_and_read(IMPERSONATION, request, TOKEN_BODY_LIMIT).await?;
        if !reply.is_success() {
            let mut error = status_error(IMPERSONATION, &reply);
            // 403 / 404: the pool's principal may not act as that service account.
            if matches!(error.kind, ErrorKind::NotFound | ErrorKind::InvalidArgument) {
                error.kind = ErrorKind::Auth;
            }
            return Err(error);
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Generated {
            access_token: String,
            expire_time: String,
        }
        let answer: Generated = serde_json::from_slice(&reply.body).map_err(|_| {
            malformed(
                IMPERSONATION,
                "the answer has no accessToken and expireTime",
            )
        })?;
        let expires = crate::cloud::aws_credential_sources::parse_iso8601_utc(&answer.expire_time)
            .ok_or_else(|| malformed(IMPERSONATION, "expireTime is not an RFC 3339 UTC time"))?;
        let lifetime = expires
            .duration_since(self.cache.now())
            .or_else(|_| expires.duration_since(SystemTime::now()))
            .unwrap_or(Duration::ZERO);
        Ok((Secret::new(answer.access_token), lifetime))
    }
}

fn check_http_url(key: &str, url: &str) -> Result<()> {
    match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "https" | "http") => Ok(()),
        _ => Err(Error::config(format!(
            "external_account: {key} {url:?} is not an http(s) URL"
        ))),
    }
}
