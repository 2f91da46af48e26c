//! Chat providers for the clouds and OpenAI-compatible servers, one file each, all
//! over [`crate::cloud::CloudEndpoint`] (shared HTTP client, credentials, request
//! signing, one error mapping), built by [`build`] from a `[[provider]]` and the
//! [`ChatTarget`] it serves.
//!
//! Every provider keeps the same streaming contract: `chat_stream` answers `Ok` only
//! once a 2xx status and its headers arrived (any other status is the mapped error,
//! with the body's message); the stream then yields each text delta as it arrives
//! and exactly one `Finish`, or an `Err` and nothing after it. A stream that ends
//! without finishing is an error, never a clean end. The request's only time limit
//! is the caller's deadline: the failover layer above enforces time-to-first-token
//! and inter-chunk timeouts itself.

pub mod anthropic;
pub mod azure_openai;
pub mod bedrock;
pub mod eventstream;
pub mod oci;
pub mod openai_compat;
pub mod sse;
mod stream;
pub mod vertex;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};

use crate::cloud::CloudEndpoint;
use crate::cloud::http::{
    CHAT_BODY_LIMIT, HttpReply, body_error, malformed, read_body_limited, read_error_start,
    status_error, transport_error,
};
use crate::cloud::upstream::{self, UpstreamBody, UpstreamClient, UpstreamResponse};
use crate::config::{ProviderConfig, ProviderSettings};
use crate::error::{Error, Result};
use crate::llm::{ChatProvider, ChatTarget, ProviderInfo};

/// The chat provider a `[[provider]]` describes for one model (`target`), sharing
/// `upstream` (the model calls' pool) and `http` (token endpoints, and the model
/// calls of an endpoint behind a proxy) with every other provider. Reads secret
/// files; sends nothing.
pub fn build(
    config: &ProviderConfig,
    target: &ChatTarget,
    env: &HashMap<String, String>,
    http: reqwest::Client,
    upstream: UpstreamClient,
) -> Result<Arc<dyn ChatProvider>> {
    let in_provider = |error: Error| error.context(format!("provider {:?}", config.id));
    if target.wire_id.trim().is_empty() {
        return Err(in_provider(Error::config(format!(
            "no model to serve for {:?}",
            target.model
        ))));
    }
    let endpoint = CloudEndpoint::from_config(config, env, http).map_err(in_provider)?;
    let connection = Connection::new(endpoint, config, target, upstream);
    Ok(match &config.settings {
        ProviderSettings::OpenaiCompat(_) => {
            Arc::new(openai_compat::OpenAiCompatChat::new(connection))
        }
        ProviderSettings::AzureOpenai(settings) => {
            Arc::new(azure_openai::AzureOpenAiChat::new(connection, settings))
        }
        ProviderSettings::Bedrock(_) => Arc::new(bedrock::BedrockChat::new(connection)),
        ProviderSettings::Vertex(settings) => {
            Arc::new(vertex::VertexChat::new(connection, settings))
        }
        ProviderSettings::Oci(settings) => Arc::new(oci::OciChat::new(connection, settings)),
    })
}

/// One provider's endpoint, its name in messages and what it tells the router.
pub struct Connection {
    pub endpoint: CloudEndpoint,
    /// `"kind provider \"id\""`, the prefix of every message.
    pub service: String,
    pub info: Arc<ProviderInfo>,
    /// The pool requests go out on (a facade thread uses its own).
    upstream: UpstreamClient,
    /// The environment sends this endpoint's requests through a proxy: they go
    /// through reqwest, which speaks to proxies.
    proxied: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Connection")
            .field("endpoint", &self.endpoint)
            .field("service", &self.service)
            .field("proxied", &self.proxied)
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub fn new(
        endpoint: CloudEndpoint,
        config: &ProviderConfig,
        target: &ChatTarget,
        upstream: UpstreamClient,
    ) -> Self {
        Self {
            service: format!("{} provider {:?}", config.kind().as_str(), endpoint.id),
            info: Arc::new(ProviderInfo {
                id: endpoint.id.clone(),
                model: target.model.clone(),
                deployment: target.wire_id.clone(),
                dedicated: target.dedicated,
                cloud: endpoint.cloud.clone(),
                region: endpoint.region.clone(),
                regions: super::regions::regions_used(
                    &endpoint.cloud,
                    &endpoint.region,
                    &target.wire_id,
                    &target.regions,
                ),
                input_per_1m_usd: config.input_per_1m_usd,
                output_per_1m_usd: config.output_per_1m_usd,
            }),
            upstream,
            proxied: upstream::is_proxied(&endpoint.base_url),
            endpoint,
        }
    }

    /// The model's name on the endpoint.
    pub fn wire_id(&self) -> &str {
        &self.info.deployment
    }

    /// POSTs `body`, authorized, and answers once the status and headers arrived:
    /// `Ok` for a 2xx (its body still to read), else the mapped error. `timeout`
    /// caps the whole exchange, body included.
    pub async fn send(
        &self,
        url: url::Url,
        body: &(impl serde::Serialize + Sync + ?Sized),
        accept: &'static str,
        timeout: Duration,
    ) -> Result<UpstreamResponse> {
        if timeout.is_zero() {
            return Err(Error::timeout(format!(
                "{}: the deadline passed before the request was sent",
                self.service
            )));
        }
        // Sized for a short prompt (serde_json's own start is 128 bytes).
        let mut bytes = Vec::with_capacity(1024);
        serde_json::to_writer(&mut bytes, body)
            .map_err(|error| Error::internal(format!("cannot encode request: {error}")))?;
        let mut headers = http::HeaderMap::with_capacity(6);
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        headers.insert(http::header::ACCEPT, http::HeaderValue::from_static(accept));
        crate::telemetry::trace::inject_traceparent(&mut headers);
        self.endpoint
            .auth
            .authorize_parts(&http::Method::POST, &url, &mut headers, Some(&bytes))
            .await?;
        let response = if self.proxied {
            self.send_proxied(url, headers, bytes, timeout).await?
        } else {
            self.send_direct(url, headers, bytes, timeout).await?
        };
        if response.status().is_success() {
            return Ok(response);
        }
        let (parts, body) = response.into_parts();
        // The body holds the message; a body that cannot be read still has a status.
        let body = read_error_start(body).await;
        Err(status_error(
            &self.service,
            &HttpReply {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            },
        ))
    }

    /// [`Self::send`] on hyper-util's client (the thread's own pool on a facade thread).
    async fn send_direct(
        &self,
        url: url::Url,
        headers: http::HeaderMap,
        bytes: Vec<u8>,
        timeout: Duration,
    ) -> Result<UpstreamResponse> {
        let uri: http::Uri = url
            .as_str()
            .parse()
            .map_err(|error| Error::config(format!("bad request url {url}: {error}")))?;
        let mut request = http::Request::post(uri)
            .body(http_body_util::Full::new(bytes::Bytes::from(bytes)))
            .map_err(|error| Error::internal(format!("cannot build request: {error}")))?;
        *request.headers_mut() = headers;
        let until = tokio::time::Instant::now() + timeout;
        upstream::send(&self.upstream, request, until)
            .await
            .map_err(|error| error.to_error(&self.service))
    }

    /// [`Self::send`] through reqwest, for an endpoint behind a proxy.
    async fn send_proxied(
        &self,
        url: url::Url,
        headers: http::HeaderMap,
        bytes: Vec<u8>,
        timeout: Duration,
    ) -> Result<UpstreamResponse> {
        let http = crate::cloud::http_client::for_this_thread(&self.endpoint.http);
        let response = http
            .post(url)
            .headers(headers)
            .body(bytes)
            .timeout(timeout)
            .send()
            .await
            .map_err(|error| transport_error(&self.service, &error))?;
        let response: http::Response<reqwest::Body> = response.into();
        Ok(response.map(UpstreamBody::Proxied))
    }

    /// Opens a streamed answer: the deadline is the only limit.
    pub async fn open_stream(
        &self,
        url: url::Url,
        body: &(impl serde::Serialize + Sync + ?Sized),
        accept: &'static str,
        deadline: Instant,
    ) -> Result<UpstreamResponse> {
        self.send(url, body, accept, remaining(deadline)).await
    }

    /// A whole JSON answer, within the deadline and `timeout_ms`.
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        url: url::Url,
        body: &(impl serde::Serialize + Sync + ?Sized),
        deadline: Instant,
    ) -> Result<T> {
        let timeout = remaining(deadline).min(self.endpoint.timeout);
        let response = self.send(url, body, "application/json", timeout).await?;
        let bytes = read_body_limited(&self.service, response.into_body(), CHAT_BODY_LIMIT).await?;
        serde_json::from_slice(&bytes).map_err(|error| malformed(&self.service, error))
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// A response body as a stream of byte chunks; a connection that drops or times
/// out mid-body becomes `Unavailable` / `Timeout`.
pub fn body_stream(
    service: &str,
    response: UpstreamResponse,
) -> impl Stream<Item = Result<bytes::Bytes>> + Send + Unpin + use<> {
    let service = service.to_string();
    http_body_util::BodyDataStream::new(response.into_body())
        .map(move |chunk| chunk.map_err(|error| body_error(&service, &error)))
}

/// The server-sent events of a response body (our own bounded parser, [`sse`]).
pub fn sse_events(
    service: &str,
    response: UpstreamResponse,
) -> impl Stream<Item = Result<sse::SseEvent>> + Send + Unpin + use<> {
    sse::events(service, body_stream(service, response))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use serde_json::{Value, json};

    use super::*;
    use crate::error::ErrorKind;

    /// `/events`: two SSE events; `/whole`: a JSON answer; `/busy`: a throttle with
    /// `retry-after`; `/stall`: one event, then nothing.
    async fn endpoint() -> String {
        let app = axum::Router::new()
            .route(
                "/events",
                axum::routing::post(|| async {
                    (
                        [("content-type", "text/event-stream")],
                        "data: one\n\ndata: two\n\n",
                    )
                }),
            )
            .route(
                "/whole",
                axum::routing::post(|| async { axum::Json(json!({"answer": 42})) }),
            )
            .route(
                "/busy",
                axum::routing::post(|| async {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "3")],
                        r#"{"error": {"code": "429", "message": "slow down"}}"#,
                    )
                        .into_response()
                }),
            )
            .route(
                "/stall",
                axum::routing::post(|| async {
                    let first = futures::stream::iter([Ok::<_, std::io::Error>(
                        bytes::Bytes::from_static(b"data: one\n\n"),
                    )]);
                    let body =
                        axum::body::Body::from_stream(first.chain(futures::stream::pending()));
                    ([("content-type", "text/event-stream")], body).into_response()
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    fn connection(base_url: &str, proxied: bool) -> Connection {
        let toml = format!(
            "[[provider]]\nid = \"local\"\nkind = \"openai_compat\"\nbase_url = \"{base_url}\"\n"
        );
        let config = crate::config::Config::parse(&toml, std::path::Path::new("/"))
            .unwrap()
            .providers
            .remove(0);
        let endpoint =
            CloudEndpoint::from_config(&config, &HashMap::new(), reqwest::Client::new()).unwrap();
        let target = ChatTarget {
            model: "m".into(),
            wire_id: "m".into(),
            dedicated: false,
            regions: Vec::new(),
        };
        let mut connection =
            Connection::new(endpoint, &config, &target, upstream::client().unwrap());
        connection.proxied = proxied;
        connection
    }

    async fn events(connection: &Connection, path: &str, deadline: Instant) -> Result<Vec<String>> {
        let url = connection.endpoint.url(path)?;
        let response = connection
            .open_stream(url, &json!({}), "text/event-stream", deadline)
            .await?;
        let mut events = sse_events(&connection.service, response);
        let mut data = Vec::new();
        while let Some(event) = events.next().await {
            data.push(event?.data);
        }
        Ok(data)
    }

    /// An endpoint behind a proxy is called through reqwest, every other one through
    /// hyper's client: callers cannot tell the two apart.
    #[tokio::test]
    async fn answers_read_the_same_through_either_client() {
        let base_url = endpoint().await;
        let later = Instant::now() + Duration::from_secs(60);
        for proxied in [false, true] {
            let connection = connection(&base_url, proxied);
            assert_eq!(
                events(&connection, "/events", later).await.unwrap(),
                ["one", "two"],
                "proxied: {proxied}"
            );
            let whole: Value = connection
                .call(
                    connection.endpoint.url("/whole").unwrap(),
                    &json!({}),
                    later,
                )
                .await
                .unwrap();
            assert_eq!(whole, json!({"answer": 42}), "proxied: {proxied}");
            let refused = events(&connection, "/busy", later).await.unwrap_err();
            assert_eq!(refused.kind, ErrorKind::Throttled, "proxied: {proxied}");
            assert_eq!(refused.retry_after, Some(Duration::from_secs(3)));
            assert!(refused.message.contains("slow down"), "{}", refused.message);
        }
    }

    /// A body that stalls ends in a timeout at the deadline, whichever client reads it
    /// (or the request itself times out, on a machine too busy to see the headers first).
    #[tokio::test]
    async fn a_stalled_answer_ends_at_the_deadline() {
        let base_url = endpoint().await;
        for proxied in [false, true] {
            let connection = connection(&base_url, proxied);
            let deadline = Instant::now() + Duration::from_millis(300);
            let error = events(&connection, "/stall", deadline).await.unwrap_err();
            assert_eq!(
                error.kind,
                ErrorKind::Timeout,
                "proxied: {proxied}: {error:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_endpoint_that_refuses_connections_is_unavailable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let connection = connection(&base_url, false);
        let later = Instant::now() + Duration::from_secs(60);
        let error = events(&connection, "/events", later).await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::Unavailable);
        assert!(
            error.message.contains("cannot reach") && error.message.contains("refused"),
            "{}",
            error.message
        );
    }
}
