//! How model endpoints are called: hyper-util's pooled client over hyper-rustls, the
//! parts reqwest is built from, without reqwest's layers around them (its redirect
//! and retry policies, a URL-to-URI round trip, a boxed future per layer). Those cost
//! a facade request about 9 µs of CPU and 20 µs of latency on the benchmark machine
//! (`benches/proxy_floor.rs`, docs/benchmarks.md), and the facade pays them on every
//! call.
//!
//! The client keeps reqwest's behaviour where it matters: no redirect is followed
//! (requests carry credentials), TCP_NODELAY, a 5 s connect timeout, the platform's
//! certificate roots, HTTP/2 when the endpoint offers it. An endpoint that the
//! environment sends through a proxy (`HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`, ...)
//! is called through reqwest, which speaks to proxies ([`is_proxied`]).

use std::cell::OnceCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::{Instant, Sleep};

use crate::error::{Error, Result};

/// A pooled HTTP/1.1 and HTTP/2 client for model endpoints.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An answer from a model endpoint, whose body ends with an error at the deadline.
pub type UpstreamResponse = http::Response<UpstreamBody>;

/// Any error a body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A new client with its own pool. Its connections are driven by the runtime that
/// opened them, so a client serves one runtime (or, unshared, one thread).
pub fn client() -> Result<UpstreamClient> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config()?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    // The timers reap idle pooled connections and drive HTTP/2 keepalives, as reqwest's.
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https))
}

/// One TLS configuration for every client: the platform verifier loads the roots
/// once, and all pools share it.
fn tls_config() -> Result<rustls::ClientConfig> {
    static CONFIG: OnceLock<std::result::Result<rustls::ClientConfig, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
                .map_err(|error| error.to_string())?;
            Ok(rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|error| error.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth())
        })
        .clone()
        .map_err(|error| Error::config(format!("cannot set up TLS for model endpoints: {error}")))
}

thread_local! {
    static THREAD_CLIENT: OnceCell<UpstreamClient> = const { OnceCell::new() };
}

/// Gives the calling thread a client of its own: a facade thread's upstream
/// connections are then driven by the thread that serves the request.
pub fn own_client_for_this_thread() -> Result<()> {
    let own = client()?;
    THREAD_CLIENT.with(|slot| {
        let _ = slot.set(own);
    });
    Ok(())
}

/// Whether the environment sends requests to `url` through a proxy.
pub fn is_proxied(url: &str) -> bool {
    static PROXIES: OnceLock<hyper_util::client::proxy::matcher::Matcher> = OnceLock::new();
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    PROXIES
        .get_or_init(hyper_util::client::proxy::matcher::Matcher::from_system)
        .intercept(&uri)
        .is_some()
}

/// Sends `request` with the thread's own client, else `shared`, and answers once
/// the status and headers arrived. `until` bounds the whole exchange: the wait for
/// the headers here, the body's reads after.
pub async fn send(
    shared: &UpstreamClient,
    request: http::Request<Full<Bytes>>,
    until: Instant,
) -> std::result::Result<UpstreamResponse, SendError> {
    let sent = THREAD_CLIENT.with(|own| own.get().unwrap_or(shared).request(request));
    let response = tokio::time::timeout_at(until, sent)
        .await
        .map_err(|_| SendError::Timeout)?
        .map_err(SendError::Failed)?;
    Ok(response.map(|body| UpstreamBody::direct(body, until)))
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum SendError {
    Timeout,
    Failed(hyper_util::client::legacy::Error),
}

impl SendError {
    /// The error for `service`: a timeout, or the endpoint unavailable from here
    /// (refused, reset, TLS, DNS), with every cause in the message.
    pub fn to_error(&self, service: &str) -> Error {
        match self {
            Self::Timeout => Error::timeout(format!("{service} did not answer in time")),
            Self::Failed(error) => {
                Error::unavailable(format!("cannot reach {service}: {}", causes(error)))
            }
        }
    }
}

/// An error and its sources, `outer: inner: ...` (hyper-util's own message is
/// only `client error (Connect)`).
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The body of an answer: read straight from hyper's connection, or through
/// reqwest for an endpoint behind a proxy.
pub enum UpstreamBody {
    Direct {
        body: Incoming,
        deadline: Pin<Box<Sleep>>,
    },
    Proxied(reqwest::Body),
}

impl UpstreamBody {
    fn direct(body: Incoming, until: Instant) -> Self {
        Self::Direct {
            body,
            deadline: Box::pin(tokio::time::sleep_until(until)),
        }
    }
}

/// The deadline passed while a body was being read.
#[derive(Debug)]
pub struct DeadlinePassed;

impl std::fmt::Display for DeadlinePassed {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("the deadline passed")
    }
}

impl std::error::Error for DeadlinePassed {}

/// Whether a body error is a timeout (ours, hyper's or reqwest's).
pub fn is_timeout(error: &BoxError) -> bool {
    error.is::<DeadlinePassed>()
        || error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
        || error
            .downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_timeout)
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Direct { body, deadline } => match Pin::new(body).poll_frame(context) {
                Poll::Ready(frame) => Poll::Ready(frame.map(|frame| frame.map_err(Into::into))),
                Poll::Pending => match deadline.as_mut().poll(context) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(DeadlinePassed.into()))),
                    Poll::Pending => Poll::Pending,
                },
            },
            Self::Proxied(body) => Pin::new(body)
                .poll_frame(context)
                .map(|frame| frame.map(|frame| frame.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Direct { body, .. } => body.is_end_stream(),
            Self::Proxied(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Direct { body, .. } => body.size_hint(),
            Self::Proxied(body) => body.size_hint(),
        }
    }
}
