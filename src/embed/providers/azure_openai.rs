//! Azure OpenAI embeddings. With `api_version`, the classic deployment URL
//! `POST /openai/deployments/{deployment}/embeddings?api-version=...` (no model in the
//! body); without, the v1 path `POST /openai/v1/embeddings` with the deployment as
//! `model`. `dimensions` (text-embedding-3 only) when asked. `api-key` or Entra bearer.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::openai_shape::{EmbeddingsAnswer, body};
use super::{WireFormat, checked, max_batch, post, service_name};
use crate::cloud::CloudEndpoint;
use crate::cloud::sigv4::uri_encode;
use crate::config::AzureOpenAiConfig;
use crate::embed::EmbedRequest;
use crate::error::Result;

/// Azure OpenAI takes at most 2048 inputs per embeddings call.
pub const SERVICE_LIMIT: usize = 2048;

pub struct AzureOpenAiEmbeddings {
    endpoint: CloudEndpoint,
    service: String,
    api_version: Option<String>,
    deployments: BTreeMap<String, String>,
    max_batch: usize,
}

impl AzureOpenAiEmbeddings {
    pub fn new(
        endpoint: CloudEndpoint,
        config: &AzureOpenAiConfig,
        configured_max_batch: Option<usize>,
    ) -> Self {
        Self {
            service: service_name("azure_openai", &endpoint.id),
            api_version: config.api_version.clone(),
            deployments: config.deployments.clone(),
            max_batch: max_batch(configured_max_batch, SERVICE_LIMIT),
            endpoint,
        }
    }

    /// The deployment serving `model`: the configured one, else the model's name.
    fn deployment<'a>(&'a self, model: &'a str) -> &'a str {
        self.deployments.get(model).map_or(model, String::as_str)
    }
}

#[async_trait]
impl WireFormat for AzureOpenAiEmbeddings {
    fn endpoint(&self) -> &CloudEndpoint {
        &self.endpoint
    }

    fn service(&self) -> &str {
        &self.service
    }

    fn batch_limit(&self) -> usize {
        self.max_batch
    }

    async fn send(&self, request: EmbedRequest<'_>) -> Result<Vec<Vec<f32>>> {
        let deployment = self.deployment(request.model);
        let (url, body) = match &self.api_version {
            Some(version) => (
                self.endpoint.url(&format!(
                    "/openai/deployments/{}/embeddings?api-version={}",
                    uri_encode(deployment),
                    uri_encode(version)
                ))?,
                body(None, &request),
            ),
            None => (
                self.endpoint.url("/openai/v1/embeddings")?,
                body(Some(deployment), &request),
            ),
        };
        let answer: EmbeddingsAnswer = post(&self.endpoint, &self.service, url, &body).await?;
        let vectors = answer.into_vectors(&self.service, request.texts.len())?;
        checked(&self.service, &request, vectors)
    }
}
