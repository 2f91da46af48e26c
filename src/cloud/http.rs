//! One mapping from what a model endpoint answered to an [`ErrorKind`], for every
//! cloud's error shape: OpenAI/Azure `{"error": {...}}`, Azure's 401
//! `{"statusCode", "message"}`, Bedrock's `x-amzn-ErrorType` + `{"message"}`, Vertex's
//! Google RPC status, OCI's `{"code", "message"}`.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::error::{Error, ErrorKind};

/// A finished HTTP exchange, whatever its status.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl HttpReply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A request that never got an answer: a timeout, or anything else (refused,
/// reset, TLS, DNS), which means the endpoint is unavailable from here.
pub fn transport_error(service: &str, error: &reqwest::Error) -> Error {
    if error.is_timeout() {
        return Error::timeout(format!("{service} did not answer in time: {error}"));
    }
    Error::unavailable(format!("cannot reach {service}: {error}"))
}

/// How long the server asked us to wait: `retry-after-ms` and `x-ms-retry-after-ms`
/// (Azure, milliseconds) before `retry-after` (seconds or an HTTP date).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(millis) = text(name).and_then(|value| value.trim().parse::<u64>().ok()) {
            return Some(Duration::from_millis(millis));
        }
    }
    let value = text("retry-after")?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The error for a non-2xx answer. A service's own error code decides when it is
/// known (Bedrock's ModelNotReadyException is a 429 but not a throttle); otherwise
/// the status does.
pub fn status_error(service: &str, reply: &HttpReply) -> Error {
    let (code, message) = code_and_message(reply);
    let kind = code
        .as_deref()
        .and_then(kind_of_code)
        .unwrap_or_else(|| kind_of_status(reply.status));
    let code_text = code.map(|code| format!(" {code}")).unwrap_or_default();
    Error {
        kind,
        message: format!("{service} answered {}{code_text}: {message}", reply.status),
        retry_after: match kind {
            ErrorKind::Throttled | ErrorKind::Unavailable => retry_after(&reply.headers),
            _ => None,
        },
    }
}

/// An answer with a success status whose body is not what the protocol says: the
/// endpoint is misbehaving, another one serving the same model may not be.
pub fn malformed(service: &str, what: impl std::fmt::Display) -> Error {
    Error::unavailable(format!("{service} sent a malformed answer: {what}"))
}

fn kind_of_status(status: u16) -> ErrorKind {
    match status {
        429 => ErrorKind::Throttled,
        401 | 403 => ErrorKind::Auth,
        404 => ErrorKind::NotFound,
        408 | 504 => ErrorKind::Timeout,
        400..=499 => ErrorKind::InvalidArgument,
        _ => ErrorKind::Unavailable,
    }
}

fn kind_of_code(code: &str) -> Option<ErrorKind> {
    Some(match code {
        "ThrottlingException"
        | "ServiceQuotaExceededException"
        | "TooManyRequests"
        | "RESOURCE_EXHAUSTED"
        | "429" => ErrorKind::Throttled,
        "ModelNotReadyException"
        | "ServiceUnavailableException"
        | "InternalServerException"
        | "ModelErrorException"
        | "UNAVAILABLE"
        | "INTERNAL"
        | "InternalServerError" => ErrorKind::Unavailable,
        "ModelTimeoutException" | "DEADLINE_EXCEEDED" => ErrorKind::Timeout,
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException"
        | "UNAUTHENTICATED"
        | "PERMISSION_DENIED"
        | "NotAuthenticated" => ErrorKind::Auth,
        "ValidationException" | "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "InvalidParameter" => {
            ErrorKind::InvalidArgument
        }
        "ResourceNotFoundException" | "NOT_FOUND" | "DeploymentNotFound" => ErrorKind::NotFound,
        _ => return None,
    })
}

/// The service's error code, if any, and a message (the body's, else its start).
fn code_and_message(reply: &HttpReply) -> (Option<String>, String) {
    let header_code = reply
        .headers
        .get("x-amzn-errortype")
        .and_then(|value| value.to_str().ok())
        .map(|value| value.split(':').next().unwrap_or(value).to_string());
    let body: Option<Value> = serde_json::from_slice(&reply.body).ok();
    let text = |value: Option<&Value>| -> Option<String> {
        match value? {
            Value::String(text) => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            _ => None,
        }
    };
    let (body_code, body_message) = match &body {
        Some(Value::Object(object)) => match object.get("error") {
            // OpenAI, Azure, Vertex: {"error": {"code", "message", "status"}}
            Some(Value::Object(error)) => (
                text(error.get("status")).or_else(|| text(error.get("code"))),
                text(error.get("message")),
            ),
            // Ollama: {"error": "..."}
            Some(Value::String(message)) => (None, Some(message.clone())),
            // OCI {"code", "message"}, Bedrock {"message"}, Azure 401 {"statusCode", "message"}
            _ => (
                text(object.get("code")).or_else(|| text(object.get("__type"))),
                text(object.get("message")).or_else(|| text(object.get("Message"))),
            ),
        },
        _ => (None, None),
    };
    let message = body_message.unwrap_or_else(|| {
        String::from_utf8_lossy(&reply.body)
            .chars()
            .take(300)
            .collect()
    });
    (header_code.or(body_code), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, headers: &[(&'static str, &str)], body: &str) -> HttpReply {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, value.parse().unwrap());
        }
        HttpReply {
            status,
            headers: map,
            body: bytes::Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn azure_throttle_prefers_milliseconds() {
        let error = status_error(
            "azure openai",
            &reply(
                429,
                &[("retry-after", "7"), ("retry-after-ms", "6850")],
                r#"{"error": {"code": "429", "message": "exceeded token rate limit"}}"#,
            ),
        );
        assert_eq!(error.kind, ErrorKind::Throttled);
        assert_eq!(error.retry_after, Some(Duration::from_millis(6850)));
        assert!(error.message.contains("exceeded token rate limit"));
    }

    #[test]
    fn bedrock_codes_decide_over_statuses() {
        let not_ready = status_error(
            "bedrock",
            &reply(
                429,
                &[(
                    "x-amzn-errortype",
                    "ModelNotReadyException:http://internal.amazon.com/coral/com.amazon.bedrock/",
                )],
                r#"{"message": "model is loading"}"#,
            ),
        );
        assert_eq!(not_ready.kind, ErrorKind::Unavailable);
        let quota = status_error(
            "bedrock",
            &reply(
                400,
                &[("x-amzn-errortype", "ServiceQuotaExceededException")],
                "{}",
            ),
        );
        assert_eq!(quota.kind, ErrorKind::Throttled);
        let denied = status_error(
            "bedrock",
            &reply(403, &[], r#"{"message": "no access to model"}"#),
        );
        assert_eq!(denied.kind, ErrorKind::Auth);
        assert!(denied.message.contains("no access to model"));
    }

    #[test]
    fn vertex_and_oci_shapes() {
        let exhausted = status_error(
            "vertex",
            &reply(
                429,
                &[],
                r#"{"error": {"code": 429, "message": "Resource exhausted.", "status": "RESOURCE_EXHAUSTED"}}"#,
            ),
        );
        assert_eq!(exhausted.kind, ErrorKind::Throttled);
        assert!(exhausted.message.contains("RESOURCE_EXHAUSTED"));
        let oci = status_error(
            "oci",
            &reply(
                401,
                &[],
                r#"{"code": "NotAuthenticated", "message": "bad signature"}"#,
            ),
        );
        assert_eq!(oci.kind, ErrorKind::Auth);
        let azure_401 = status_error(
            "azure openai",
            &reply(
                401,
                &[],
                r#"{"statusCode": 401, "message": "Unauthorized. Access token is missing"}"#,
            ),
        );
        assert_eq!(azure_401.kind, ErrorKind::Auth);
        assert!(azure_401.message.contains("Access token is missing"));
    }

    #[test]
    fn statuses_without_codes() {
        let kinds: Vec<ErrorKind> = [500, 502, 503, 504, 408, 400, 404, 422]
            .into_iter()
            .map(|status| status_error("x", &reply(status, &[], "<html>oops</html>")).kind)
            .collect();
        use ErrorKind::*;
        assert_eq!(
            kinds,
            [
                Unavailable,
                Unavailable,
                Unavailable,
                Timeout,
                Timeout,
                InvalidArgument,
                NotFound,
                InvalidArgument
            ]
        );
        let error = status_error("x", &reply(503, &[("retry-after", "3")], "busy"));
        assert_eq!(error.retry_after, Some(Duration::from_secs(3)));
        assert!(error.message.contains("busy"));
    }

    #[test]
    fn retry_after_as_an_http_date() {
        let later = SystemTime::now() + Duration::from_secs(120);
        let mut headers = HeaderMap::new();
        headers.insert(
            "retry-after",
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
    }
}
