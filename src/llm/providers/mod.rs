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
    CHAT_BODY_LIMIT, HttpReply, malformed, read_error_body, read_limited, status_error,
    transport_error,
};
use crate::config::{ProviderConfig, ProviderSettings};
use crate::error::{Error, Result};
use crate::llm::{ChatProvider, ChatTarget, ProviderInfo};

/// The chat provider a `[[provider]]` describes for one model (`target`), sharing
/// `http` (one connection pool for the process). Reads secret files; sends nothing.
pub fn build(
    config: &ProviderConfig,
    target: &ChatTarget,
    env: &HashMap<String, String>,
    http: reqwest::Client,
) -> Result<Arc<dyn ChatProvider>> {
    let in_provider = |error: Error| error.context(format!("provider {:?}", config.id));
    if target.wire_id.trim().is_empty() {
        return Err(in_provider(Error::config(format!(
            "no model to serve for {:?}",
            target.model
        ))));
    }
    let endpoint = CloudEndpoint::from_config(config, env, http).map_err(in_provider)?;
    let connection = Connection::new(endpoint, config, target);
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
#[derive(Debug)]
pub struct Connection {
    pub endpoint: CloudEndpoint,
    /// `"kind provider \"id\""`, the prefix of every message.
    pub service: String,
    pub info: ProviderInfo,
}

impl Connection {
    pub fn new(endpoint: CloudEndpoint, config: &ProviderConfig, target: &ChatTarget) -> Self {
        Self {
            service: format!("{} provider {:?}", config.kind().as_str(), endpoint.id),
            info: ProviderInfo {
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
            },
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
        accept: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response> {
        if timeout.is_zero() {
            return Err(Error::timeout(format!(
                "{}: the deadline passed before the request was sent",
                self.service
            )));
        }
        let bytes = serde_json::to_vec(body)
            .map_err(|error| Error::internal(format!("cannot encode request: {error}")))?;
        // On a facade thread, its own pool: the connection is driven where the call waits.
        let http = crate::cloud::http_client::for_this_thread(&self.endpoint.http);
        let mut request = http
            .post(url)
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(bytes)
            .timeout(timeout)
            .build()
            .map_err(|error| Error::internal(format!("cannot build request: {error}")))?;
        crate::telemetry::trace::inject_traceparent(request.headers_mut());
        self.endpoint.auth.authorize(&mut request).await?;
        let response = http
            .execute(request)
            .await
            .map_err(|error| transport_error(&self.service, &error))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        // The body holds the message; a body that cannot be read still has a status.
        let body = read_error_body(response).await;
        Err(status_error(
            &self.service,
            &HttpReply {
                status,
                headers,
                body,
            },
        ))
    }

    /// Opens a streamed answer: the deadline is the only limit.
    pub async fn open_stream(
        &self,
        url: url::Url,
        body: &(impl serde::Serialize + Sync + ?Sized),
        accept: &str,
        deadline: Instant,
    ) -> Result<reqwest::Response> {
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
        let bytes = read_limited(&self.service, response, CHAT_BODY_LIMIT).await?;
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
    response: reqwest::Response,
) -> impl Stream<Item = Result<bytes::Bytes>> + Send + Unpin + use<> {
    let service = service.to_string();
    response.bytes_stream().map(move |chunk| {
        chunk.map_err(|error| {
            if error.is_timeout() {
                Error::timeout(format!(
                    "{service}: the deadline passed mid-stream: {error}"
                ))
            } else {
                Error::unavailable(format!("{service}: the stream broke: {error}"))
            }
        })
    })
}

/// The server-sent events of a response body (our own bounded parser, [`sse`]).
pub fn sse_events(
    service: &str,
    response: reqwest::Response,
) -> impl Stream<Item = Result<sse::SseEvent>> + Send + Unpin + use<> {
    sse::events(service, body_stream(service, response))
}
