//! Vertex AI text embeddings: `POST /{version}/projects/{project}/locations/{region}/
//! publishers/google/models/{model}:predict` with a Google OAuth bearer token;
//! `task_type` RETRIEVAL_QUERY / RETRIEVAL_DOCUMENT, `outputDimensionality` when asked.

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::json;

use super::{WireFormat, checked, post, service_name};
use crate::cloud::CloudEndpoint;
use crate::cloud::sigv4::uri_encode;
use crate::config::VertexConfig;
use crate::embed::{EmbedRequest, Purpose};
use crate::error::Result;

/// text-embedding-005 takes up to 250 instances but 20,000 tokens a request: 32
/// chunks of up to ~600 tokens stay under it. Raise `max_batch` for short texts.
pub const DEFAULT_MAX_BATCH: usize = 32;
const SERVICE_LIMIT: usize = 250;
/// Requests in flight at once for models that take one instance per request.
const SINGLE_INSTANCE_CONCURRENCY: usize = 8;

pub struct VertexEmbeddings {
    endpoint: CloudEndpoint,
    service: String,
    project: String,
    api_version: String,
    max_batch: usize,
}

impl VertexEmbeddings {
    pub fn new(endpoint: CloudEndpoint, config: &VertexConfig, max_batch: Option<usize>) -> Self {
        Self {
            service: service_name("vertex", &endpoint.id),
            project: config.project.clone(),
            api_version: config.api_version.clone().unwrap_or_else(|| "v1".into()),
            max_batch: max_batch.unwrap_or(DEFAULT_MAX_BATCH).min(SERVICE_LIMIT),
            endpoint,
        }
    }

    async fn predict(&self, request: &EmbedRequest<'_>, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let task_type = match request.purpose {
            Purpose::Query => "RETRIEVAL_QUERY",
            Purpose::Document => "RETRIEVAL_DOCUMENT",
        };
        let instances: Vec<_> = texts
            .iter()
            .map(|text| json!({"content": text, "task_type": task_type}))
            .collect();
        let mut parameters = json!({"autoTruncate": true});
        if let Some(dims) = request.dims {
            parameters["outputDimensionality"] = json!(dims);
        }
        let url = self.endpoint.url(&format!(
            "/{}/projects/{}/locations/{}/publishers/google/models/{}:predict",
            uri_encode(&self.api_version),
            uri_encode(&self.project),
            uri_encode(&self.endpoint.region),
            uri_encode(request.model),
        ))?;
        #[derive(Deserialize)]
        struct Answer {
            predictions: Vec<Prediction>,
        }
        #[derive(Deserialize)]
        struct Prediction {
            embeddings: Embeddings,
        }
        #[derive(Deserialize)]
        struct Embeddings {
            values: Vec<f32>,
        }
        let body = json!({"instances": instances, "parameters": parameters});
        let answer: Answer = post(&self.endpoint, &self.service, url, &body).await?;
        Ok(answer
            .predictions
            .into_iter()
            .map(|prediction| prediction.embeddings.values)
            .collect())
    }
}

/// gemini-embedding models take one instance per request.
fn instances_per_request(model: &str, max_batch: usize) -> usize {
    if model.starts_with("gemini-embedding") {
        1
    } else {
        max_batch
    }
}

#[async_trait]
impl WireFormat for VertexEmbeddings {
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
        let per_request = instances_per_request(request.model, self.max_batch);
        // Futures collected first: a stream holding a closure over borrowed texts
        // trips the compiler's Send check of the async-trait future.
        let calls: Vec<_> = request
            .texts
            .chunks(per_request)
            .map(|texts| self.predict(&request, texts))
            .collect();
        let parts: Vec<Vec<Vec<f32>>> = futures::stream::iter(calls)
            .buffered(SINGLE_INSTANCE_CONCURRENCY)
            .try_collect()
            .await?;
        checked(
            &self.service,
            &request,
            parts.into_iter().flatten().collect(),
        )
    }
}
