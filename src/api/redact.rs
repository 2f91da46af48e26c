//! What a client may read of an error: upstream detail stays in our logs.
//!
//! Upstream error bodies, reqwest's transport errors (which name the URL) and
//! remote store errors can carry our endpoints' URLs and, when an upstream echoes
//! the request, our own provider key. At the edge every error of an upstream-ish
//! kind (Unavailable, Timeout, Throttled, Auth, Internal, Config) is replaced by a
//! fixed message per kind plus the request id; the original is logged once at
//! warn with that id. Errors the service writes about the caller's own request
//! (InvalidArgument, NotFound, ContextLength, Unauthenticated, Forbidden) keep
//! their text, minus any URL or absolute path, which are scrubbed from every
//! client-visible message.
//!
//! Each call gets a request id: the caller's `x-request-id` when it is short and
//! plain, else a fresh one. [`RequestIdLayer`] scopes it over the handler and
//! returns it as the `x-request-id` response header (gRPC metadata too).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::{Error, ErrorKind};
use crate::route::AttemptOutcome;
#[cfg(test)]
use std::time::Duration;

tokio::task_local! {
    /// Kept as the header value it goes out as: the response and the scopes share it.
    static REQUEST_ID: http::HeaderValue;
}

/// The header (and gRPC metadata key) carrying the request id.
pub const HEADER: &str = "x-request-id";
const HEADER_NAME: http::HeaderName = http::HeaderName::from_static(HEADER);

/// The longest caller-chosen request id we keep.
const MAX_ID_LEN: usize = 64;

/// The request id of the call being served, if any.
pub fn current() -> Option<String> {
    let id = REQUEST_ID.try_with(|id| id.to_str().map(str::to_owned));
    id.ok().and_then(Result::ok)
}

/// Runs `f` with `id` as the current request id (for work polled outside the
/// call, such as a response stream).
pub fn with_id<T>(id: &str, f: impl FnOnce() -> T) -> T {
    match http::HeaderValue::from_str(id) {
        Ok(id) => REQUEST_ID.sync_scope(id, f),
        Err(_) => f(),
    }
}

/// An attempt's message in a route summary: a failed attempt's upstream detail
/// is replaced ([`client_message`]), naming the deployment.
pub fn attempt_message(outcome: &AttemptOutcome, message: &str, deployment: &str) -> String {
    match outcome {
        // Every attempt's failure came from (or about) an upstream.
        AttemptOutcome::Failed(kind) => withheld(*kind, message, Some(deployment)),
        AttemptOutcome::Ok | AttemptOutcome::Skipped => scrub(message),
    }
}

/// The caller's id when it is at most 64 of `[A-Za-z0-9._-]`, else a fresh one.
pub fn accept_or_generate(incoming: Option<&str>) -> String {
    match incoming {
        Some(id) if acceptable(id.as_bytes()) => id.to_string(),
        _ => generate(),
    }
}

fn acceptable(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// 16 random bytes, hex.
pub fn generate() -> String {
    crate::ids::random_id()
}

/// Whether errors of `kind` may carry upstream detail, so clients get a fixed text.
pub fn is_upstream_kind(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Unavailable
            | ErrorKind::Timeout
            | ErrorKind::Throttled
            | ErrorKind::Auth
            | ErrorKind::Internal
            | ErrorKind::Config
    )
}

fn fixed_text(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Unavailable => "upstream unavailable",
        ErrorKind::Timeout => "upstream timed out",
        ErrorKind::Throttled => "upstream throttled the request",
        ErrorKind::Auth => "upstream refused the service's credentials",
        ErrorKind::Config => "service misconfigured",
        ErrorKind::InvalidArgument => "upstream rejected the request",
        ErrorKind::ContextLength => "prompt exceeds the model's context window",
        ErrorKind::NotFound => "upstream does not know the model or index",
        ErrorKind::AlreadyExists => "upstream says it exists already",
        ErrorKind::Unauthenticated | ErrorKind::Forbidden => "upstream refused the request",
        ErrorKind::Internal => "internal error",
    }
}

/// The text a client may read for an error of `kind` with `message`, about
/// `subject` (a deployment or source id) when known. Logs the original once
/// when it is replaced.
pub fn client_message(kind: ErrorKind, message: &str, subject: Option<&str>) -> String {
    if is_upstream_kind(kind) {
        withheld(kind, message, subject)
    } else {
        scrub(message)
    }
}

/// What a client may read of `error`: [`client_message`], except that skyfuse's own
/// refusals (a rate limit: [`Error::local_refusal`]) keep their text, which tells the
/// caller when to retry.
pub fn error_text(error: &Error) -> String {
    if error.local_refusal {
        scrub(&error.message)
    } else {
        client_message(error.kind, &error.message, None)
    }
}

/// The fixed text for `kind`, naming `subject` and the request id; logs `message`.
fn withheld(kind: ErrorKind, message: &str, subject: Option<&str>) -> String {
    let id = current().unwrap_or_else(|| "none".to_string());
    tracing::warn!(request_id = %id, kind = kind.as_str(), subject, error = %message, "upstream error (detail withheld from the client)");
    match subject {
        Some(subject) => format!("{}: {subject} (request id: {id})", fixed_text(kind)),
        None => format!("{} (request id: {id})", fixed_text(kind)),
    }
}

/// `error` with its message made client-safe ([`client_message`]).
pub fn for_client(mut error: Error) -> Error {
    error.message = error_text(&error);
    error
}

/// Replaces URLs and absolute paths in `text` by placeholders.
pub fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_inclusive(char::is_whitespace) {
        let trimmed = word.trim_end();
        let trailing = &word[trimmed.len()..];
        let core = trimmed.trim_start_matches(['"', '\'', '(', '[', '<', '`']);
        let lead = &trimmed[..trimmed.len() - core.len()];
        let lower = core.to_ascii_lowercase();
        if lower.contains("://") {
            out.push_str(lead);
            out.push_str("<url>");
        } else if core.starts_with('/') && core.len() > 1 {
            out.push_str(lead);
            out.push_str("<path>");
        } else {
            out.push_str(trimmed);
        }
        out.push_str(trailing);
    }
    out
}

/// A tower layer giving each call a request id ([`accept_or_generate`]), scoping
/// it over the inner service and returning it as `x-request-id`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestId { inner }
    }
}

/// The service [`RequestIdLayer`] wraps.
#[derive(Clone, Debug)]
pub struct RequestId<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for RequestId<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let incoming = request.headers().get(&HEADER_NAME);
        // A header value shares its bytes: the copies below cost no allocation.
        let id = match incoming.filter(|id| acceptable(id.as_bytes())) {
            Some(id) => id.clone(),
            None => {
                let id = http::HeaderValue::from_maybe_shared(bytes::Bytes::from(generate()))
                    .unwrap_or_else(|_| http::HeaderValue::from_static("none"));
                request.headers_mut().insert(HEADER_NAME, id.clone());
                id
            }
        };
        let future = REQUEST_ID.sync_scope(id.clone(), || self.inner.call(request));
        Box::pin(REQUEST_ID.scope(id.clone(), async move {
            let mut response = future.await?;
            response.headers_mut().insert(HEADER_NAME, id);
            Ok(response)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_detail_with_a_url_and_a_key_never_reaches_the_client() {
        let message = "chat: status 401 from https://api.example.test/v1/chat/completions: \
                       Incorrect API key provided: sk-secret-123";
        for kind in [ErrorKind::Auth, ErrorKind::Unavailable, ErrorKind::Internal] {
            let text = client_message(kind, message, Some("gpt-east"));
            assert!(!text.contains("sk-secret"), "{text}");
            assert!(!text.contains("https://"), "{text}");
            assert!(text.contains("gpt-east"), "{text}");
            assert!(text.contains("request id: none"), "{text}");
        }
    }

    #[test]
    fn caller_errors_keep_their_text_without_urls_or_paths() {
        let text = client_message(
            ErrorKind::InvalidArgument,
            "top_k 0 out of range; see http://x.test/doc and (/etc/skyfuse/key.pem)",
            None,
        );
        assert_eq!(text, "top_k 0 out of range; see <url> and (<path>");
        assert_eq!(
            client_message(ErrorKind::NotFound, "unknown model \"x\"", None),
            "unknown model \"x\""
        );
    }

    #[test]
    fn request_ids_are_accepted_only_when_plain_and_short() {
        assert_eq!(accept_or_generate(Some("abc-1.2_3")), "abc-1.2_3");
        for bad in ["", "a b", "x\ny", &"a".repeat(65)] {
            let id = accept_or_generate(Some(bad));
            assert_ne!(id, bad);
            assert_eq!(id.len(), 32);
        }
    }

    /// Sends `incoming` (as `x-request-id`, if any) through the layer; returns the id
    /// the handler saw in the request, the one it saw in scope, and the response's.
    async fn through_layer(incoming: Option<&'static str>) -> (String, String, String) {
        use tower::{Layer, ServiceExt};
        let handler = tower::service_fn(|request: http::Request<()>| async move {
            let seen = request.headers()[HEADER].to_str().unwrap().to_owned();
            let scoped = current().unwrap();
            Ok::<_, std::convert::Infallible>(http::Response::new((seen, scoped)))
        });
        let mut request = http::Request::new(());
        if let Some(id) = incoming {
            request
                .headers_mut()
                .insert(HEADER, http::HeaderValue::from_static(id));
        }
        let response = RequestIdLayer
            .layer(handler)
            .oneshot(request)
            .await
            .unwrap();
        let sent = response.headers()[HEADER].to_str().unwrap().to_owned();
        let (seen, scoped) = response.into_body();
        (seen, scoped, sent)
    }

    #[tokio::test]
    async fn every_http_call_carries_one_request_id_in_and_out() {
        let (seen, scoped, sent) = through_layer(Some("caller-id.1")).await;
        assert_eq!(
            (seen.as_str(), scoped.as_str(), sent.as_str()),
            ("caller-id.1", "caller-id.1", "caller-id.1")
        );
        for incoming in [None, Some("no spaces allowed"), Some("")] {
            let (seen, scoped, sent) = through_layer(incoming).await;
            assert_eq!(sent.len(), 32, "{incoming:?}");
            assert!(sent.bytes().all(|byte| byte.is_ascii_hexdigit()));
            assert_eq!((&seen, &scoped), (&sent, &sent));
        }
        let (first, second) = (through_layer(None).await.2, through_layer(None).await.2);
        assert_ne!(first, second);
    }

    #[test]
    fn the_scoped_id_appears_in_client_messages() {
        let text = with_id("rid-7", || {
            client_message(
                ErrorKind::Timeout,
                "read timed out from http://10.0.0.1",
                None,
            )
        });
        assert_eq!(text, "upstream timed out (request id: rid-7)");
    }

    #[test]
    fn only_our_own_refusals_keep_their_throttled_text() {
        let ours = Error::rate_limited(
            "rate limit: over 2 requests per minute",
            Duration::from_secs(3),
        );
        assert_eq!(error_text(&ours), "rate limit: over 2 requests per minute");
        // An upstream 429 whose text merely looks like ours is still withheld.
        let theirs = Error::throttled("rate limit: sk-secret-123", None);
        assert!(!error_text(&theirs).contains("sk-secret"));
    }
}
