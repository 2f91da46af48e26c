//! The server-wide limit on calls in flight, as a tower layer both edges share.
//!
//! tower's `ConcurrencyLimit` (what `concurrency_limit_per_connection` installs)
//! keeps its permit in the response future, so a streamed response (`Answer`,
//! `Index`, the facade's SSE) stops being counted once its headers are out. Here
//! the permit moves into the response body and is released when the body ends or
//! is dropped (the client went away), so a call counts for as long as it streams.
//!
//! Over the limit a call is refused at once, not queued: gRPC gets a trailers-only
//! `RESOURCE_EXHAUSTED` with `retry-after` metadata, HTTP a 429 with `retry-after`.
//! Health checks and reflection are never counted or refused: a load balancer must
//! see a busy server as alive.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

/// Seconds a refused caller is told to wait: calls end all the time, so soon.
const RETRY_AFTER_SECONDS: &str = "1";

/// gRPC paths that are never counted: `grpc.health.v1` and server reflection.
const UNCOUNTED_PATH_PREFIXES: &[&str] = &["/grpc.health.v1.", "/grpc.reflection."];

/// How a refusal is spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Trailers-only `RESOURCE_EXHAUSTED`.
    Grpc,
    /// 429 with OpenAI's error body.
    Http,
}

/// The server's calls in flight, shared by every edge it serves.
#[derive(Debug, Clone)]
pub struct CallLimit {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl CallLimit {
    /// At most `limit` calls at once (`server.max_concurrent_calls`).
    pub fn new(limit: usize) -> Self {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// The layer for one edge; every layer of one `CallLimit` counts together.
    pub fn layer(&self, protocol: Protocol) -> CallLimitLayer {
        CallLimitLayer {
            limit: self.clone(),
            protocol,
        }
    }

    /// Calls counted right now.
    pub fn in_flight(&self) -> usize {
        self.limit - self.permits.available_permits()
    }

    fn refusal<B>(&self, protocol: Protocol) -> Response<CountedBody<B>> {
        let message = format!(
            "the server is busy: {} calls in flight, its limit (server.max_concurrent_calls); retry shortly",
            self.limit
        );
        let (status, content_type, body) = match protocol {
            Protocol::Grpc => (StatusCode::OK, "application/grpc", None),
            Protocol::Http => (
                StatusCode::TOO_MANY_REQUESTS,
                "application/json",
                Some(Bytes::from(
                    serde_json::json!({"error": {
                        "message": message,
                        "type": "rate_limit_error",
                        "code": "server_busy",
                    }})
                    .to_string(),
                )),
            ),
        };
        let mut response = Response::new(CountedBody::Refused { data: body });
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        headers.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECONDS),
        );
        if protocol == Protocol::Grpc {
            // A trailers-only response: the status travels in the headers.
            headers.insert("grpc-status", HeaderValue::from_static("8"));
            if let Ok(value) = HeaderValue::from_str(&message) {
                headers.insert("grpc-message", value);
            }
        }
        response
    }
}

/// Counts each call through it against a [`CallLimit`].
#[derive(Debug, Clone)]
pub struct CallLimitLayer {
    limit: CallLimit,
    protocol: Protocol,
}

impl<S> Layer<S> for CallLimitLayer {
    type Service = CallLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallLimitService {
            inner,
            limit: self.limit.clone(),
            protocol: self.protocol,
        }
    }
}

/// The service [`CallLimitLayer`] wraps around an edge.
#[derive(Debug, Clone)]
pub struct CallLimitService<S> {
    inner: S,
    limit: CallLimit,
    protocol: Protocol,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, RequestBody, ResponseBody> Service<Request<RequestBody>> for CallLimitService<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResponseBody: Send + 'static,
{
    type Response = Response<CountedBody<ResponseBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        let path = request.uri().path();
        let permit = if UNCOUNTED_PATH_PREFIXES
            .iter()
            .any(|prefix| path.starts_with(prefix))
        {
            None
        } else {
            match self.limit.permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let refusal = self.limit.refusal(self.protocol);
                    return Box::pin(std::future::ready(Ok(refusal)));
                }
            }
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            // Held while the handler runs; an error drops it here.
            let response = response.await?;
            Ok(response.map(|body| CountedBody::Served { body, permit }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its call's permit until it ends or is dropped.
    #[project = CountedBodyProjection]
    pub enum CountedBody<B> {
        /// The edge's own response.
        Served {
            #[pin]
            body: B,
            permit: Option<OwnedSemaphorePermit>,
        },
        /// A refusal: no body (gRPC) or its error JSON (HTTP).
        Refused { data: Option<Bytes> },
    }
}

impl<B> Body for CountedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            CountedBodyProjection::Served { body, permit } => {
                let frame = body.poll_frame(cx);
                if let Poll::Ready(None) = frame {
                    // Ended: free the slot even if the body itself lingers.
                    permit.take();
                }
                frame
            }
            CountedBodyProjection::Refused { data } => {
                Poll::Ready(data.take().map(|data| Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            CountedBody::Served { body, .. } => body.is_end_stream(),
            CountedBody::Refused { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            CountedBody::Served { body, .. } => body.size_hint(),
            CountedBody::Refused { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    /// Answers every call with a body of its path.
    #[derive(Clone)]
    struct Echo;

    impl Service<Request<()>> for Echo {
        type Response = Response<String>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<String>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<()>) -> Self::Future {
            std::future::ready(Ok(Response::new(request.uri().path().to_string())))
        }
    }

    async fn call(
        service: &mut CallLimitService<Echo>,
        path: &str,
    ) -> Response<CountedBody<String>> {
        let request = Request::builder().uri(path).body(()).unwrap();
        service.call(request).await.unwrap()
    }

    async fn drain(body: CountedBody<String>) -> Vec<u8> {
        let mut body = std::pin::pin!(body);
        let mut bytes = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            if let Ok(data) = frame.unwrap().into_data() {
                bytes.extend_from_slice(&data);
            }
        }
        bytes
    }

    #[tokio::test]
    async fn a_call_counts_until_its_body_ends_and_the_next_is_refused_meanwhile() {
        let limit = CallLimit::new(1);
        let mut grpc = limit.layer(Protocol::Grpc).layer(Echo);
        let mut http = limit.layer(Protocol::Http).layer(Echo);
        let held = call(&mut grpc, "/skyfuse.v1.GenerationService/Answer").await;
        assert_eq!(limit.in_flight(), 1, "the response is out, its body is not");

        let refused = call(&mut grpc, "/skyfuse.v1.RetrievalService/Search").await;
        assert_eq!(refused.headers()["grpc-status"], "8");
        assert_eq!(refused.headers()["retry-after"], "1");
        assert!(
            refused.headers()["grpc-message"]
                .to_str()
                .unwrap()
                .contains("server.max_concurrent_calls")
        );
        let refused = call(&mut http, "/v1/chat/completions").await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let body = drain(refused.into_body()).await;
        assert!(String::from_utf8(body).unwrap().contains("server_busy"));

        // Health and reflection pass even now, uncounted.
        let health = call(&mut grpc, "/grpc.health.v1.Health/Check").await;
        assert_eq!(
            drain(health.into_body()).await,
            b"/grpc.health.v1.Health/Check"
        );

        assert_eq!(
            drain(held.into_body()).await,
            b"/skyfuse.v1.GenerationService/Answer"
        );
        assert_eq!(limit.in_flight(), 0, "the body ended");
        let served = call(&mut http, "/v1/models").await;
        assert_eq!(served.status(), StatusCode::OK);
        drop(served);
        assert_eq!(limit.in_flight(), 0, "a dropped body frees its slot");
    }
}
