//! What a browser page must not be able to do with the facade: send a cross-site
//! "simple request" (a form or `fetch` with `text/plain` needs no CORS preflight),
//! or read responses through DNS rebinding (a page on `evil.example` whose name
//! then resolves to 127.0.0.1). POST bodies must be declared JSON, and an anonymous
//! server answers only to loopback names and `facade.allowed_hosts`. No CORS
//! headers are sent, so other origins cannot read responses either.

use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::future::{Either, Ready, ready};
use serde_json::json;

use crate::config::Config;

/// The facade's browser-facing checks, from the config.
#[derive(Debug, Clone)]
pub(super) struct BrowserGuard {
    /// Anonymous server: the `Host` must be loopback or allowed.
    check_host: bool,
    allowed_hosts: Arc<[String]>,
}

impl BrowserGuard {
    pub fn new(config: &Config) -> Self {
        Self {
            check_host: !config.has_identities(),
            allowed_hosts: config
                .facade
                .allowed_hosts
                .iter()
                .map(|host| normalize(host).to_string())
                .collect(),
        }
    }

    fn allows_host(&self, host: &str) -> bool {
        let host = normalize(host);
        is_loopback_name(host)
            || self
                .allowed_hosts
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(host))
    }

    /// Why `request` is refused before any handler (or key check) runs, if it is.
    fn refusal<B>(&self, request: &Request<B>) -> Option<Response> {
        if self.check_host && !request_host(request).is_some_and(|host| self.allows_host(host)) {
            return Some(refuse(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                "the Host header names a host this server does not answer to (facade.allowed_hosts)",
            ));
        }
        if request.method() == Method::POST && !declares_json(request) {
            return Some(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the request body must be sent with Content-Type: application/json",
            ));
        }
        None
    }
}

/// The guard as a tower layer over the facade's routes: a plain service rather than
/// axum's `from_fn`, which boxes the rest of the stack and a future per request.
impl<S> tower::Layer<S> for BrowserGuard {
    type Service = Guarded<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Guarded {
            guard: self.clone(),
            inner,
        }
    }
}

/// A service behind the [`BrowserGuard`].
#[derive(Debug, Clone)]
pub(super) struct Guarded<S> {
    guard: BrowserGuard,
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for Guarded<S>
where
    S: tower::Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.guard.refusal(&request) {
            Some(refusal) => Either::Left(ready(Ok(refusal))),
            None => Either::Right(self.inner.call(request)),
        }
    }
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}});
    (status, axum::Json(body)).into_response()
}

fn declares_json<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// The host the client addressed, without the port: the URI's authority (HTTP/2,
/// absolute form) or the `Host` header.
fn request_host<B>(request: &Request<B>) -> Option<&str> {
    let authority = match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => request.headers().get(header::HOST)?.to_str().ok()?,
    };
    let authority = authority.rsplit('@').next()?;
    if let Some(bracketed) = authority.strip_prefix('[') {
        return bracketed.split(']').next();
    }
    authority.split(':').next()
}

/// `host` without brackets or a trailing dot; compared without regard to case.
fn normalize(host: &str) -> &str {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
}

fn is_loopback_name(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(uri: &str, host: Option<&str>) -> Option<String> {
        let mut request = Request::builder().uri(uri);
        if let Some(host) = host {
            request = request.header(header::HOST, host);
        }
        let request = request.body(axum::body::Body::empty()).unwrap();
        request_host(&request).map(str::to_string)
    }

    #[test]
    fn the_host_comes_without_its_port_from_the_uri_or_the_header() {
        assert_eq!(
            host_of("/v1/models", Some("127.0.0.1:8080")).as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            host_of("/v1/models", Some("[::1]:8080")).as_deref(),
            Some("::1")
        );
        assert_eq!(
            host_of("/v1/models", Some("LocalHost")).as_deref(),
            Some("LocalHost")
        );
        assert_eq!(
            host_of("http://evil.example:80/v1/models", Some("127.0.0.1")).as_deref(),
            Some("evil.example")
        );
        assert_eq!(host_of("/v1/models", None), None);
    }

    #[test]
    fn loopback_names_and_listed_hosts_are_allowed_and_others_not() {
        let guard = BrowserGuard {
            check_host: true,
            allowed_hosts: vec!["rag.internal".to_string()].into(),
        };
        for host in [
            "localhost",
            "LOCALHOST.",
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "rag.internal",
            "RAG.internal",
        ] {
            assert!(guard.allows_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "0.0.0.0",
            "10.0.0.1",
            "localhost.evil.example",
            "",
        ] {
            assert!(!guard.allows_host(host), "{host}");
        }
    }
}
