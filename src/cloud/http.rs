//! One mapping from what a model endpoint answered to an [`ErrorKind`], for every
//! cloud's error shape: OpenAI/Azure `{"error": {...}}`, Azure's 401
//! `{"statusCode", "message"}`, Bedrock's `x-amzn-ErrorType` + `{"message"}`, Vertex's
//! Google RPC status, OCI's `{"code", "message"}`.

use std::time::{Duration, SystemTime};

use http_body_util::BodyExt;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::cloud::upstream::BoxError;
use crate::error::{Error, ErrorKind};
use crate::time_caps::cap_retry_after;

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

/// The most of a non-2xx body read for its message; the rest is left unread.
pub const ERROR_BODY_LIMIT: usize = 64 << 10;
/// A whole chat answer (non-streaming).
pub const CHAT_BODY_LIMIT: usize = 16 << 20;
/// A whole embeddings answer (a batch of vectors as JSON numbers).
pub const EMBEDDINGS_BODY_LIMIT: usize = 64 << 20;
/// A token endpoint's answer.
pub const TOKEN_BODY_LIMIT: usize = 1 << 20;

/// Reads a success body whole, refusing one longer than `limit` bytes (before
/// reading it when `content-length` says so, else as soon as it passes the limit).
pub async fn read_limited(
    service: &str,
    response: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, Error> {
    read_body_limited(service, reqwest::Body::from(response), limit).await
}

/// [`read_limited`] for any body: the reading is the same whichever client sent it.
pub async fn read_body_limited<B>(
    service: &str,
    body: B,
    limit: usize,
) -> Result<bytes::Bytes, Error>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<BoxError>,
{
    let too_long = || Error::unavailable(format!("{service} sent an answer over {limit} bytes"));
    if body.size_hint().lower() > limit as u64 {
        return Err(too_long());
    }
    let mut body = std::pin::pin!(body);
    let mut whole = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| body_error(service, &error.into()))?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        if whole.len() + chunk.len() > limit {
            return Err(too_long());
        }
        whole.extend_from_slice(&chunk);
    }
    Ok(whole.into())
}

/// A body that broke off: a timeout, or the connection dropped.
pub fn body_error(service: &str, error: &BoxError) -> Error {
    if crate::cloud::upstream::is_timeout(error) {
        Error::timeout(format!(
            "{service}: the deadline passed mid-answer: {error}"
        ))
    } else {
        Error::unavailable(format!("{service}: the answer broke off: {error}"))
    }
}

/// The start of an error body, at most `ERROR_BODY_LIMIT` bytes; a body that
/// cannot be read is empty (the status still says what happened).
pub async fn read_error_body(response: reqwest::Response) -> bytes::Bytes {
    read_error_start(reqwest::Body::from(response)).await
}

/// [`read_error_body`] for any body.
pub async fn read_error_start<B: http_body::Body<Data = bytes::Bytes>>(body: B) -> bytes::Bytes {
    let mut body = std::pin::pin!(body);
    let mut start = Vec::new();
    while start.len() < ERROR_BODY_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(chunk) = frame.into_data() {
                    let room = ERROR_BODY_LIMIT - start.len();
                    start.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
            }
            _ => break,
        }
    }
    start.into()
}

/// How long the server asked us to wait: `retry-after-ms` and `x-ms-retry-after-ms`
/// (Azure, milliseconds) before `retry-after` (seconds or an HTTP date).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(millis) = text(name).and_then(|value| value.trim().parse::<u64>().ok()) {
            return Some(cap_retry_after(Duration::from_millis(millis)));
        }
    }
    let value = text("retry-after")?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(cap_retry_after(Duration::from_secs(seconds)));
    }
    // A number too large for u64 is still a (huge) number of seconds.
    if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) {
        return Some(crate::time_caps::MAX_RETRY_AFTER);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(cap_retry_after(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    ))
}

/// The error for a non-2xx answer. A service's own error code decides when it is
/// known (Bedrock's ModelNotReadyException is a 429 but not a throttle); otherwise
/// the status does.
pub fn status_error(service: &str, reply: &HttpReply) -> Error {
    let (code, message) = code_and_message(reply);
    let kind = refine(
        code.as_deref()
            .and_then(kind_of_code)
            .unwrap_or_else(|| kind_of_status(reply.status)),
        code.as_deref(),
        &message,
    );
    let code_text = code.map(|code| format!(" {code}")).unwrap_or_default();
    Error {
        kind,
        message: format!("{service} answered {}{code_text}: {message}", reply.status),
        retry_after: match kind {
            ErrorKind::Throttled | ErrorKind::Unavailable => retry_after(&reply.headers),
            _ => None,
        },
        local_refusal: false,
    }
}

/// The error a service reported inside an answer that had already started (an
/// exception frame of a Bedrock event stream, an `error` event of an SSE stream):
/// its code decides when known; an unknown or missing one means the stream broke,
/// which another endpoint may not do.
pub fn stream_error(service: &str, code: Option<&str>, message: &str) -> Error {
    let kind = refine(
        code.and_then(kind_of_code)
            .unwrap_or(ErrorKind::Unavailable),
        code,
        message,
    );
    let code_text = code.map(|code| format!(" {code}")).unwrap_or_default();
    Error::new(
        kind,
        format!("{service} failed inside its stream{code_text}: {message}"),
    )
}

/// A refused request whose code or message says the prompt does not fit the
/// model's context window is `ContextLength`: the same model will refuse it again,
/// one with a longer context may not.
fn refine(kind: ErrorKind, code: Option<&str>, message: &str) -> ErrorKind {
    if kind == ErrorKind::InvalidArgument && is_context_overflow(code, message) {
        ErrorKind::ContextLength
    } else {
        kind
    }
}

/// How each service words a context-window overflow: OpenAI/Azure's
/// `context_length_exceeded` code, vLLM "maximum context length", llama.cpp
/// "exceeds the available context size", Bedrock "Input is too long" / "too many
/// input tokens", Vertex "exceeds the maximum number of tokens", Anthropic "prompt
/// is too long", OCI token-limit messages.
fn is_context_overflow(code: Option<&str>, message: &str) -> bool {
    if code.is_some_and(|code| {
        matches!(
            code,
            "context_length_exceeded"
                | "exceed_context_size_error"
                | "model_context_window_exceeded"
        )
    }) {
        return true;
    }
    let message = message.to_ascii_lowercase();
    [
        "context_length_exceeded",
        "maximum context length",
        "context length",
        "context window",
        "context size",
        "input is too long",
        "prompt is too long",
        "too many input tokens",
        "input token count",
        "exceeds the maximum number of tokens",
        "maximum number of tokens",
        "token limit",
        "too many tokens",
    ]
    .iter()
    .any(|phrase| message.contains(phrase))
}

/// Sends a request and reads its answer whatever the status: a success body whole
/// (at most `limit` bytes), an error body's start.
pub async fn send_and_read(
    service: &str,
    request: reqwest::RequestBuilder,
    limit: usize,
) -> Result<HttpReply, Error> {
    let response = request
        .send()
        .await
        .map_err(|error| transport_error(service, &error))?;
    read_reply(service, response, limit).await
}

/// An answer whatever its status: a success body whole (at most `limit` bytes), an
/// error body's start.
pub async fn read_reply(
    service: &str,
    response: reqwest::Response,
    limit: usize,
) -> Result<HttpReply, Error> {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = if response.status().is_success() {
        read_limited(service, response, limit).await?
    } else {
        read_error_body(response).await
    };
    Ok(HttpReply {
        status,
        headers,
        body,
    })
}

/// Reads a secret manager's JSON answer for `location`: a refusal becomes
/// [`secret_store_error`], and no message quotes the body (it holds the value).
pub async fn secret_store_json(
    service: &str,
    location: &str,
    request: reqwest::RequestBuilder,
) -> Result<serde_json::Value, Error> {
    // The manager's own traces join the call that needed the secret.
    let request = crate::telemetry::trace::with_traceparent(request);
    let reply = send_and_read(service, request, TOKEN_BODY_LIMIT)
        .await
        .map_err(|error| error.context(location))?;
    if !reply.is_success() {
        return Err(secret_store_error(service, location, &reply));
    }
    serde_json::from_slice(&reply.body)
        .map_err(|_| malformed(service, format!("{location}: the answer is not JSON")))
}

/// A secret manager's refusal, led by the location (never a value) and what it
/// means for the operator: not found, or refused to this identity.
pub fn secret_store_error(
    service: &str,
    location: impl std::fmt::Display,
    reply: &HttpReply,
) -> Error {
    let error = status_error(service, reply);
    let what = match error.kind {
        ErrorKind::NotFound => "secret not found",
        ErrorKind::Auth => "access refused (check the identity's permission to read it)",
        _ => "cannot be read",
    };
    Error {
        message: format!("{location}: {what}: {}", error.message),
        ..error
    }
}

/// A token endpoint's refusal (OAuth 2.0 `{"error", "error_description"}`, RFC 6749
/// 5.2, which Entra, Google STS and the metadata servers share): a refused identity or
/// assertion is `Auth` (retrying sends the same one), 429 a throttle, the rest the
/// endpoint's own trouble. The description names the problem, never a token.
pub fn token_endpoint_error(service: &str, reply: &HttpReply) -> Error {
    let body: Option<Value> = serde_json::from_slice(&reply.body).ok();
    let field = |name: &str| {
        body.as_ref()
            .and_then(|body| body.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let code = field("error")
        .map(|code| format!(" {code}"))
        .unwrap_or_default();
    let description: String = field("error_description")
        .or_else(|| field("message"))
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    let kind = match reply.status {
        429 => ErrorKind::Throttled,
        400..=404 => ErrorKind::Auth,
        408 | 504 => ErrorKind::Timeout,
        _ => ErrorKind::Unavailable,
    };
    Error {
        kind,
        message: format!("{service} answered {}{code}: {description}", reply.status),
        retry_after: match kind {
            ErrorKind::Throttled | ErrorKind::Unavailable => retry_after(&reply.headers),
            _ => None,
        },
        local_refusal: false,
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
        // Bedrock stream exception frames name the same exceptions in lower camel case.
        "throttlingException" => ErrorKind::Throttled,
        "serviceUnavailableException" | "internalServerException" | "modelStreamErrorException" => {
            ErrorKind::Unavailable
        }
        "validationException" => ErrorKind::InvalidArgument,
        "modelTimeoutException" => ErrorKind::Timeout,
        "accessDeniedException" => ErrorKind::Auth,
        // Anthropic (Claude on Vertex): `{"type": "error", "error": {"type": ...}}`.
        "rate_limit_error" => ErrorKind::Throttled,
        "overloaded_error" | "api_error" => ErrorKind::Unavailable,
        "invalid_request_error" | "request_too_large" => ErrorKind::InvalidArgument,
        "authentication_error" | "permission_error" => ErrorKind::Auth,
        "not_found_error" => ErrorKind::NotFound,
        "timeout_error" => ErrorKind::Timeout,
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
        "context_length_exceeded" => ErrorKind::ContextLength,
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
            // Anthropic: {"type": "error", "error": {"type", "message"}}
            Some(Value::Object(error)) if object.get("type") == Some(&Value::from("error")) => {
                (text(error.get("type")), text(error.get("message")))
            }
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

    #[test]
    fn context_window_overflows_are_their_own_kind() {
        let cases = [
            (
                "azure/openai code",
                reply(
                    400,
                    &[],
                    r#"{"error": {"code": "context_length_exceeded", "message": "This model's maximum context length is 128000 tokens.", "type": "invalid_request_error"}}"#,
                ),
            ),
            (
                "bedrock input is too long",
                reply(
                    400,
                    &[("x-amzn-errortype", "ValidationException")],
                    r#"{"message": "Input is too long for requested model."}"#,
                ),
            ),
            (
                "bedrock too many input tokens",
                reply(
                    400,
                    &[("x-amzn-errortype", "ValidationException")],
                    r#"{"message": "The model returned the following errors: too many input tokens: 210000 > 200000"}"#,
                ),
            ),
            (
                "vertex",
                reply(
                    400,
                    &[],
                    r#"{"error": {"code": 400, "message": "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).", "status": "INVALID_ARGUMENT"}}"#,
                ),
            ),
            (
                "anthropic",
                reply(
                    400,
                    &[],
                    r#"{"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"}}"#,
                ),
            ),
            (
                "oci",
                reply(
                    400,
                    &[],
                    r#"{"code": "InvalidParameter", "message": "The input exceeds the model's token limit of 128000 tokens. Please reduce the length of the messages."}"#,
                ),
            ),
            (
                "vllm",
                reply(
                    400,
                    &[],
                    r#"{"object": "error", "message": "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.", "type": "BadRequestError", "code": 400}"#,
                ),
            ),
        ];
        for (name, answer) in cases {
            let error = status_error("x", &answer);
            assert_eq!(
                error.kind,
                ErrorKind::ContextLength,
                "{name}: {}",
                error.message
            );
            assert!(!error.is_retryable(), "{name}");
        }
    }

    #[test]
    fn other_refusals_stay_invalid_and_throttles_stay_throttles() {
        let bad = status_error(
            "x",
            &reply(
                400,
                &[],
                r#"{"error": {"code": "invalid_value", "message": "temperature must be at most 2"}}"#,
            ),
        );
        assert_eq!(bad.kind, ErrorKind::InvalidArgument);
        assert!(!bad.is_retryable());
        // Bedrock words its token-rate throttle like an overflow; the 429 decides.
        let throttled = status_error(
            "bedrock",
            &reply(
                429,
                &[("x-amzn-errortype", "ThrottlingException")],
                r#"{"message": "Too many tokens, please wait before trying again."}"#,
            ),
        );
        assert_eq!(throttled.kind, ErrorKind::Throttled);
        assert_eq!(throttled.retry_after, None);
        for status in [401, 403] {
            let error = status_error("x", &reply(status, &[], "{}"));
            assert_eq!(error.kind, ErrorKind::Auth);
            assert!(!error.is_retryable());
        }
        let overloaded = status_error(
            "claude",
            &reply(
                529,
                &[],
                r#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}"#,
            ),
        );
        assert_eq!(overloaded.kind, ErrorKind::Unavailable);
        assert!(overloaded.message.contains("overloaded_error"));
    }

    #[test]
    fn errors_inside_a_stream() {
        let kind = |code: Option<&str>, message: &str| stream_error("s", code, message).kind;
        assert_eq!(
            kind(Some("throttlingException"), "slow down"),
            ErrorKind::Throttled
        );
        assert_eq!(
            kind(Some("modelStreamErrorException"), "model crashed"),
            ErrorKind::Unavailable
        );
        assert_eq!(
            kind(Some("internalServerException"), "oops"),
            ErrorKind::Unavailable
        );
        assert_eq!(
            kind(Some("serviceUnavailableException"), "down"),
            ErrorKind::Unavailable
        );
        assert_eq!(
            kind(Some("validationException"), "bad temperature"),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(
                Some("validationException"),
                "Input is too long for requested model."
            ),
            ErrorKind::ContextLength
        );
        assert_eq!(
            kind(Some("overloaded_error"), "Overloaded"),
            ErrorKind::Unavailable
        );
        assert_eq!(kind(Some("rate_limit_error"), "slow"), ErrorKind::Throttled);
        assert_eq!(kind(None, "engine died"), ErrorKind::Unavailable);
        assert!(
            stream_error("s", Some("x"), "engine died")
                .message
                .contains("engine died")
        );
    }
}
