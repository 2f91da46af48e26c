//! Embedding providers for the clouds and OpenAI-compatible servers, one file each,
//! all over [`crate::cloud::CloudEndpoint`] (shared HTTP client, credentials,
//! request signing, one error mapping), built by [`build`] from a `[[provider]]`.

pub mod azure_openai;
pub mod bedrock;
pub mod oci;
pub mod openai_compat;
mod openai_shape;
pub mod vertex;

use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::cloud::CloudEndpoint;
use crate::cloud::http::{HttpReply, malformed, status_error};
use crate::config::{ProviderConfig, ProviderSettings};
use crate::embed::{EmbedRequest, EmbeddingProvider};
use crate::error::{Error, Result};

/// The embedding provider a `[[provider]]` describes, sharing `http` (one
/// connection pool for the process). Reads secret files; sends nothing.
pub fn build(
    config: &ProviderConfig,
    env: &HashMap<String, String>,
    http: reqwest::Client,
) -> Result<Arc<dyn EmbeddingProvider>> {
    let endpoint = CloudEndpoint::from_config(config, env, http)
        .map_err(|error| error.context(format!("provider {:?}", config.id)))?;
    let configured_max_batch = config.max_batch;
    Ok(match &config.settings {
        ProviderSettings::OpenaiCompat(_) => Arc::new(openai_compat::OpenAiCompatEmbeddings::new(
            endpoint,
            configured_max_batch,
        )),
        ProviderSettings::AzureOpenai(settings) => Arc::new(
            azure_openai::AzureOpenAiEmbeddings::new(endpoint, settings, configured_max_batch),
        ),
        ProviderSettings::Bedrock(_) => Arc::new(bedrock::BedrockEmbeddings::new(
            endpoint,
            configured_max_batch,
        )),
        ProviderSettings::Vertex(settings) => Arc::new(vertex::VertexEmbeddings::new(
            endpoint,
            settings,
            configured_max_batch,
        )),
        ProviderSettings::Oci(settings) => Arc::new(oci::OciEmbeddings::new(
            endpoint,
            settings,
            configured_max_batch,
        )),
    })
}

/// The batch limit: the configured one, never above the service's.
fn max_batch(configured: Option<usize>, service_limit: usize) -> usize {
    configured.unwrap_or(service_limit).min(service_limit)
}

/// One service's wire format over a [`CloudEndpoint`]. Every such provider is an
/// [`EmbeddingProvider`] through the impl below, which refuses what the service would
/// refuse and skips empty calls before `send` runs.
#[async_trait::async_trait]
trait WireFormat: Send + Sync {
    fn endpoint(&self) -> &CloudEndpoint;
    /// `"kind provider \"id\""`, the prefix of every message.
    fn service(&self) -> &str;
    fn batch_limit(&self) -> usize;
    /// Embeds a non-empty batch that passed [`check_request`].
    async fn send(&self, request: EmbedRequest<'_>) -> Result<Vec<Vec<f32>>>;
}

#[async_trait::async_trait]
impl<T: WireFormat> EmbeddingProvider for T {
    fn id(&self) -> &str {
        &self.endpoint().id
    }

    fn location(&self) -> (&str, &str) {
        let endpoint = self.endpoint();
        (&endpoint.cloud, &endpoint.region)
    }

    fn max_batch(&self) -> usize {
        self.batch_limit()
    }

    async fn embed(&self, request: EmbedRequest<'_>) -> Result<Vec<Vec<f32>>> {
        check_request(self.service(), &request, self.batch_limit())?;
        if request.texts.is_empty() {
            return Ok(Vec::new());
        }
        self.send(request).await
    }
}

/// Refuses calls the service would refuse: over the batch limit, no model.
fn check_request(service: &str, request: &EmbedRequest<'_>, max_batch: usize) -> Result<()> {
    if request.texts.len() > max_batch {
        return Err(Error::invalid(format!(
            "{service} takes at most {max_batch} texts a call, got {}",
            request.texts.len()
        )));
    }
    if request.model.trim().is_empty() {
        return Err(Error::invalid(format!("{service}: no model given")));
    }
    if request.dims == Some(0) {
        return Err(Error::invalid(format!(
            "{service}: dims must be at least 1"
        )));
    }
    Ok(())
}

/// One vector per text, each of the asked dimension: a service that answers
/// otherwise is broken (count) or is serving another model than the space's (dims).
fn checked(
    service: &str,
    request: &EmbedRequest<'_>,
    vectors: Vec<Vec<f32>>,
) -> Result<Vec<Vec<f32>>> {
    if vectors.len() != request.texts.len() {
        return Err(malformed(
            service,
            format!(
                "{} vectors for {} texts",
                vectors.len(),
                request.texts.len()
            ),
        ));
    }
    for vector in &vectors {
        if vector.is_empty() {
            return Err(malformed(service, "an empty vector"));
        }
        if let Some(dims) = request.dims
            && vector.len() != dims
        {
            return Err(Error::invalid(format!(
                "{service}: model {:?} returned {}-dimensional vectors, {dims} were asked for",
                request.model,
                vector.len()
            )));
        }
    }
    Ok(vectors)
}

/// POSTs `body` and decodes a success answer as `T`; any other status is mapped
/// to its error kind.
async fn post<T: DeserializeOwned>(
    endpoint: &CloudEndpoint,
    service: &str,
    url: url::Url,
    body: &serde_json::Value,
) -> Result<T> {
    let reply: HttpReply = endpoint.post_json(service, url, body).await?;
    if !reply.is_success() {
        return Err(status_error(service, &reply));
    }
    serde_json::from_slice(&reply.body).map_err(|error| malformed(service, error))
}

/// `"kind provider \"id\""`, the prefix of every message.
fn service_name(kind: &str, id: &str) -> String {
    format!("{kind} provider {id:?}")
}
