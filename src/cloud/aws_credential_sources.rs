//! Where temporary AWS credentials come from, one request each, on the documented
//! wire formats: STS `AssumeRoleWithWebIdentity` (EKS IRSA and any OIDC issuer), the
//! container credentials endpoint (ECS task roles, EKS Pod Identity) and EC2 instance
//! metadata with IMDSv2 session tokens. Caching and refresh live in
//! [`crate::cloud::aws_credentials`]; this module only fetches.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::cloud::http::{TOKEN_BODY_LIMIT, read_error_body, read_limited, transport_error};
use crate::cloud::sigv4::{AwsCredentials, days_from_civil};
use crate::config::Secret;
use crate::error::{Error, ErrorKind, Result};

/// STS and the container endpoint may take this long per request.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);
/// Instance metadata is link-local: an answer takes milliseconds or never comes.
const IMDS_TIMEOUT: Duration = Duration::from_secs(5);
/// The IMDSv2 session token is asked for six hours, the longest allowed.
const IMDS_TOKEN_TTL_SECONDS: &str = "21600";

/// What a role name may hold (`[\w+=,.@-]`) stays as is in the URL; anything else
/// (a hostile answer) is escaped so it cannot change the path.
const ROLE_NAME: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'+')
    .remove(b'=')
    .remove(b',')
    .remove(b'.')
    .remove(b'@')
    .remove(b'-');

/// Credentials and when they stop working (`None`: they do not expire).
#[derive(Debug, Clone)]
pub struct Expiring {
    pub credentials: AwsCredentials,
    pub expiration: Option<SystemTime>,
}

/// EKS IRSA: a projected service-account token exchanged at STS for a role's keys.
#[derive(Debug)]
pub struct WebIdentity {
    /// Re-read at every exchange: the kubelet rotates the token in place.
    pub token_file: PathBuf,
    pub role_arn: String,
    pub session_name: String,
    /// `https://sts.{region}.amazonaws.com`, or a test or VPC endpoint.
    pub endpoint: String,
    pub http: reqwest::Client,
}

/// ECS task roles (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`) and EKS Pod Identity
/// (`AWS_CONTAINER_CREDENTIALS_FULL_URI` with an authorization token file).
#[derive(Debug)]
pub struct ContainerEndpoint {
    pub url: String,
    pub authorization: Option<ContainerAuthorization>,
    pub http: reqwest::Client,
}

#[derive(Debug)]
pub enum ContainerAuthorization {
    Fixed(Secret),
    /// Re-read at every fetch: EKS Pod Identity rotates it.
    File(PathBuf),
}

/// EC2 instance metadata, IMDSv2 only: a v1 GET without a session token is never sent.
#[derive(Debug)]
pub struct InstanceMetadata {
    /// `http://169.254.169.254` unless `AWS_EC2_METADATA_SERVICE_ENDPOINT` says otherwise.
    pub endpoint: String,
    pub http: reqwest::Client,
}

impl WebIdentity {
    pub const NAME: &'static str = "web identity (sts AssumeRoleWithWebIdentity)";

    pub async fn fetch(&self) -> Result<Expiring> {
        let token = std::fs::read_to_string(&self.token_file).map_err(|error| {
            Error::new(
                ErrorKind::Auth,
                format!(
                    "cannot read the web identity token file {}: {error}",
                    self.token_file.display()
                ),
            )
        })?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", "AssumeRoleWithWebIdentity")
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", &self.role_arn)
            .append_pair("RoleSessionName", &self.session_name)
            .append_pair("WebIdentityToken", token.trim())
            .finish();
        // Unsigned by design: the token is the credential.
        let response = self
            .http
            .post(&self.endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/xml")
            .timeout(REMOTE_TIMEOUT)
            .body(form)
            .send()
            .await
            .map_err(|error| transport_error("sts", &error))?;
        let status = response.status();
        if !status.is_success() {
            let body = read_error_body(response).await;
            return Err(sts_error(status.as_u16(), &body));
        }
        let body = read_limited("sts", response, TOKEN_BODY_LIMIT).await?;
        let body = String::from_utf8_lossy(&body);
        let field = |name: &str| {
            xml_text(&body, name).ok_or_else(|| {
                Error::unavailable(format!(
                    "sts answered AssumeRoleWithWebIdentity without {name}"
                ))
            })
        };
        let expiration = field("Expiration")?;
        Ok(Expiring {
            credentials: AwsCredentials {
                access_key_id: Secret::new(field("AccessKeyId")?),
                secret_access_key: Secret::new(field("SecretAccessKey")?),
                session_token: Some(Secret::new(field("SessionToken")?)),
            },
            expiration: Some(parse_expiration("sts", &expiration)?),
        })
    }
}

/// STS's `<ErrorResponse><Error><Code>..</Code><Message>..</Message>`: a refused
/// token or role is an auth error, throttling and STS's own trouble are not.
fn sts_error(status: u16, body: &[u8]) -> Error {
    let body = String::from_utf8_lossy(body);
    let code = xml_text(&body, "Code").unwrap_or_default();
    let message: String = xml_text(&body, "Message")
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    let kind = match (status, code.as_str()) {
        (_, "Throttling" | "ThrottlingException") | (429, _) => ErrorKind::Throttled,
        (_, "IDPCommunicationError") => ErrorKind::Unavailable,
        (400..=499, _) => ErrorKind::Auth,
        _ => ErrorKind::Unavailable,
    };
    Error::new(
        kind,
        format!("sts refused AssumeRoleWithWebIdentity ({status} {code}): {message}"),
    )
}

/// The answer of both the container endpoint and instance metadata.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JsonCredentials {
    /// Instance metadata says `Success`, or why not.
    code: Option<String>,
    access_key_id: String,
    secret_access_key: String,
    token: Option<String>,
    expiration: Option<String>,
}

async fn read_json_credentials(service: &str, response: reqwest::Response) -> Result<Expiring> {
    let body = read_limited(service, response, TOKEN_BODY_LIMIT).await?;
    // Not the decoder's message: it may quote a key.
    let answer: JsonCredentials = serde_json::from_slice(&body).map_err(|error| {
        Error::unavailable(format!(
            "{service} sent credentials that are not the expected JSON (line {}, column {})",
            error.line(),
            error.column()
        ))
    })?;
    if let Some(code) = answer.code.filter(|code| code != "Success") {
        return Err(Error::unavailable(format!(
            "{service} has no usable credentials: {code}"
        )));
    }
    let expiration = match answer.expiration {
        Some(text) => Some(parse_expiration(service, &text)?),
        None => None,
    };
    Ok(Expiring {
        credentials: AwsCredentials {
            access_key_id: Secret::new(answer.access_key_id),
            secret_access_key: Secret::new(answer.secret_access_key),
            session_token: answer.token.map(Secret::new),
        },
        expiration,
    })
}

/// Sends `request` to a credentials endpoint; a non-2xx answer to `what` is an error
/// (a 4xx says this identity gets nothing here).
async fn send_to_endpoint(
    service: &str,
    what: &str,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response> {
    let response = request
        .send()
        .await
        .map_err(|error| transport_error(service, &error))?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(response);
    }
    let body = read_error_body(response).await;
    let text: String = String::from_utf8_lossy(&body).chars().take(300).collect();
    let kind = match status {
        429 => ErrorKind::Throttled,
        400..=499 => ErrorKind::Auth,
        _ => ErrorKind::Unavailable,
    };
    Err(Error::new(
        kind,
        format!("{service} answered {status} to {what}: {text}"),
    ))
}

impl ContainerEndpoint {
    pub const NAME: &'static str = "container credentials endpoint";

    pub async fn fetch(&self) -> Result<Expiring> {
        let mut request = self.http.get(&self.url).timeout(REMOTE_TIMEOUT);
        match &self.authorization {
            None => {}
            Some(ContainerAuthorization::Fixed(token)) => {
                request = request.header("authorization", token.expose());
            }
            Some(ContainerAuthorization::File(path)) => {
                let token = std::fs::read_to_string(path).map_err(|error| {
                    Error::new(
                        ErrorKind::Auth,
                        format!(
                            "cannot read the container authorization token file {}: {error}",
                            path.display()
                        ),
                    )
                })?;
                request = request.header("authorization", token.trim());
            }
        }
        let response = send_to_endpoint(Self::NAME, "the credentials request", request).await?;
        read_json_credentials(Self::NAME, response).await
    }
}

impl InstanceMetadata {
    pub const NAME: &'static str = "ec2 instance metadata (imdsv2)";

    pub async fn fetch(&self) -> Result<Expiring> {
        let base = self.endpoint.trim_end_matches('/');
        let token_request = self
            .http
            .put(format!("{base}/latest/api/token"))
            .header(
                "x-aws-ec2-metadata-token-ttl-seconds",
                IMDS_TOKEN_TTL_SECONDS,
            )
            .timeout(IMDS_TIMEOUT);
        let response = send_to_endpoint(
            Self::NAME,
            "the session token request (PUT /latest/api/token; IMDSv1 is never used)",
            token_request,
        )
        .await?;
        let token = read_limited(Self::NAME, response, TOKEN_BODY_LIMIT).await?;
        let token = String::from_utf8_lossy(&token).trim().to_string();
        let roles_url = format!("{base}/latest/meta-data/iam/security-credentials/");
        let roles = self.get(&roles_url, &token, "the role list").await?;
        let roles = read_limited(Self::NAME, roles, TOKEN_BODY_LIMIT).await?;
        let role = String::from_utf8_lossy(&roles)
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Auth,
                    format!("{}: the instance has no IAM role attached", Self::NAME),
                )
            })?;
        let encoded_role = percent_encoding::utf8_percent_encode(&role, ROLE_NAME);
        let credentials = self
            .get(
                &format!("{roles_url}{encoded_role}"),
                &token,
                "the role's credentials",
            )
            .await?;
        read_json_credentials(Self::NAME, credentials).await
    }

    async fn get(&self, url: &str, token: &str, what: &str) -> Result<reqwest::Response> {
        let request = self
            .http
            .get(url)
            .header("x-aws-ec2-metadata-token", token)
            .timeout(IMDS_TIMEOUT);
        send_to_endpoint(Self::NAME, what, request).await
    }
}

fn parse_expiration(service: &str, text: &str) -> Result<SystemTime> {
    parse_iso8601_utc(text).ok_or_else(|| {
        Error::unavailable(format!("{service} sent an unreadable Expiration {text:?}"))
    })
}

/// `2026-12-03T02:07:02Z`, with optional fractional seconds (STS sends microseconds)
/// and `Z` or `+00:00`: the only forms the credential endpoints send.
pub fn parse_iso8601_utc(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let (stamp, rest) = (text.get(..19)?, text.get(19..)?);
    let bytes = stamp.as_bytes();
    if bytes[4] != b'-' || bytes[7] != b'-' || bytes[10] != b'T' || bytes[13] != b':' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = stamp.get(range)?;
        part.bytes()
            .all(|byte| byte.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let rest = match rest.strip_prefix('.') {
        Some(fraction) => fraction.trim_start_matches(|c: char| c.is_ascii_digit()),
        None => rest,
    };
    if !matches!(rest, "Z" | "+00:00") {
        return None;
    }
    let (month, day) = (number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let days = days_from_civil(number(0..4)?, month, day);
    let seconds = u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

/// The text of the first `<name>...</name>` element, entities decoded: STS answers
/// are flat enough that a parser would add a dependency and nothing else.
pub fn xml_text(document: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = document.find(&open)? + open.len();
    let length = document[start..].find(&close)?;
    let raw = &document[start..start + length];
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::sigv4::parse_amz_date;

    #[test]
    fn expirations_in_the_forms_aws_sends() {
        let at = parse_amz_date("20261203T020702Z").unwrap();
        assert_eq!(parse_iso8601_utc("2026-12-03T02:07:02Z"), Some(at));
        assert_eq!(parse_iso8601_utc("2026-12-03T02:07:02.162221Z"), Some(at));
        assert_eq!(parse_iso8601_utc("2026-12-03T02:07:02+00:00"), Some(at));
        for bad in [
            "",
            "2026-12-03",
            "2026-12-03T02:07:02+02:00",
            "2026-13-03T02:07:02Z",
        ] {
            assert_eq!(parse_iso8601_utc(bad), None, "{bad}");
        }
    }

    #[test]
    fn sts_errors_read_their_code_and_never_panic_on_junk() {
        let body = br#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Couldn&apos;t retrieve verification key</Message></Error></ErrorResponse>"#;
        let error = sts_error(400, body);
        assert_eq!(error.kind, ErrorKind::Auth);
        assert!(
            error.message.contains("InvalidIdentityToken")
                && error.message.contains("Couldn't retrieve"),
            "{}",
            error.message
        );
        assert_eq!(
            sts_error(400, b"<Code>Throttling</Code>").kind,
            ErrorKind::Throttled
        );
        assert_eq!(sts_error(503, b"\xff<Code>").kind, ErrorKind::Unavailable);
    }
}
