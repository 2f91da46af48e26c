//! OpenAI-compatible `POST {base_url}/v1/embeddings`: llama.cpp `llama-server
//! --embeddings`, vLLM pooling models, Ollama. Bearer key when configured.

use async_trait::async_trait;

use super::openai_shape::{EmbeddingsAnswer, body};
use super::{WireFormat, checked, post, service_name};
use crate::cloud::CloudEndpoint;
use crate::embed::EmbedRequest;
use crate::error::Result;

/// Servers differ (llama.cpp is bound by its batch size); OpenAI's own limit is 2048.
pub const DEFAULT_MAX_BATCH: usize = 64;
const SERVICE_LIMIT: usize = 2048;

pub struct OpenAiCompatEmbeddings {
    endpoint: CloudEndpoint,
    service: String,
    max_batch: usize,
}

impl OpenAiCompatEmbeddings {
    pub fn new(endpoint: CloudEndpoint, max_batch: Option<usize>) -> Self {
        Self {
            service: service_name("openai_compat", &endpoint.id),
            max_batch: max_batch.unwrap_or(DEFAULT_MAX_BATCH).min(SERVICE_LIMIT),
            endpoint,
        }
    }
}

#[async_trait]
impl WireFormat for OpenAiCompatEmbeddings {
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
        let url = self.endpoint.url("/v1/embeddings")?;
        let answer: EmbeddingsAnswer = post(
            &self.endpoint,
            &self.service,
            url,
            &body(Some(request.model), &request),
        )
        .await?;
        let vectors = answer.into_vectors(&self.service, request.texts.len())?;
        checked(&self.service, &request, vectors)
    }
}
