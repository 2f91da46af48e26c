//! Bedrock Runtime `InvokeModel` (`POST /model/{modelId}/invoke`, SigV4 signed as
//! `bedrock`) for the embedding models, each with its own JSON:
//! - Amazon Titan Text Embeddings v2: one text per call (sent concurrently),
//!   `dimensions` 256 / 512 / 1024, `normalize`.
//! - Cohere Embed v3 / v4: up to 96 texts, `input_type` search_query /
//!   search_document; v4 takes `output_dimension`.

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{WireFormat, checked, max_batch, post, service_name};
use crate::cloud::CloudEndpoint;
use crate::cloud::http::malformed;
use crate::cloud::sigv4::uri_encode;
use crate::embed::{EmbedRequest, Purpose};
use crate::error::{Error, Result};

/// Cohere Embed's limit per call; Titan calls are fanned out up to the same count.
pub const SERVICE_LIMIT: usize = 96;
/// Titan calls in flight at once for one batch.
const TITAN_CONCURRENCY: usize = 8;
const TITAN_DIMENSIONS: [usize; 3] = [256, 512, 1024];
const COHERE_V4_DIMENSIONS: [usize; 4] = [256, 512, 1024, 1536];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Titan,
    CohereV3,
    CohereV4,
}

/// Which body a model id takes; inference-profile prefixes (`us.`, `eu.`) are fine.
fn family(model: &str) -> Option<Family> {
    if model.contains("amazon.titan-embed-text") {
        Some(Family::Titan)
    } else if model.contains("cohere.embed-v4") {
        Some(Family::CohereV4)
    } else if model.contains("cohere.embed-") {
        Some(Family::CohereV3)
    } else {
        None
    }
}

pub struct BedrockEmbeddings {
    endpoint: CloudEndpoint,
    service: String,
    max_batch: usize,
}

impl BedrockEmbeddings {
    pub fn new(endpoint: CloudEndpoint, configured_max_batch: Option<usize>) -> Self {
        Self {
            service: service_name("bedrock", &endpoint.id),
            max_batch: max_batch(configured_max_batch, SERVICE_LIMIT),
            endpoint,
        }
    }

    async fn invoke<T: serde::de::DeserializeOwned>(&self, model: &str, body: &Value) -> Result<T> {
        // The model id is encoded on the wire (`:` -> %3A); SigV4 encodes it again.
        let url = self
            .endpoint
            .url(&format!("/model/{}/invoke", uri_encode(model)))?;
        post(&self.endpoint, &self.service, url, body).await
    }

    async fn titan(&self, request: &EmbedRequest<'_>) -> Result<Vec<Vec<f32>>> {
        if let Some(dims) = request.dims
            && !TITAN_DIMENSIONS.contains(&dims)
        {
            return Err(Error::invalid(format!(
                "{}: titan text embeddings v2 takes dimensions 256, 512 or 1024, not {dims}",
                self.service
            )));
        }
        // Futures collected first: a stream holding a closure over borrowed texts
        // trips the compiler's Send check of the async-trait future.
        let calls: Vec<_> = request
            .texts
            .iter()
            .map(|text| self.titan_one(request, text))
            .collect();
        futures::stream::iter(calls)
            .buffered(TITAN_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn titan_one(&self, request: &EmbedRequest<'_>, text: &str) -> Result<Vec<f32>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct TitanAnswer {
            embedding: Option<Vec<f32>>,
            embeddings_by_type: Option<ByType<Vec<f32>>>,
        }
        let mut body = json!({
            "inputText": text,
            "normalize": true,
            "embeddingTypes": ["float"],
        });
        if let Some(dims) = request.dims {
            body["dimensions"] = json!(dims);
        }
        let answer: TitanAnswer = self.invoke(request.model, &body).await?;
        answer
            .embedding
            .or(answer.embeddings_by_type.and_then(|by_type| by_type.float))
            .ok_or_else(|| malformed(&self.service, "no embedding"))
    }

    async fn cohere(&self, request: &EmbedRequest<'_>, version4: bool) -> Result<Vec<Vec<f32>>> {
        let mut body = json!({
            "texts": request.texts,
            "input_type": match request.purpose {
                Purpose::Query => "search_query",
                Purpose::Document => "search_document",
            },
            // v3 names the end END, v4 RIGHT.
            "truncate": if version4 { "RIGHT" } else { "END" },
            "embedding_types": ["float"],
        });
        // v3 is 1024 wide and takes no size: `checked` refuses another one.
        if let Some(dims) = request.dims
            && version4
        {
            if !COHERE_V4_DIMENSIONS.contains(&dims) {
                return Err(Error::invalid(format!(
                    "{}: cohere embed v4 takes output dimensions 256, 512, 1024 or 1536, not {dims}",
                    self.service
                )));
            }
            body["output_dimension"] = json!(dims);
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum CohereEmbeddings {
            /// `"response_type": "embeddings_floats"`
            Floats(Vec<Vec<f32>>),
            /// `"response_type": "embeddings_by_type"`
            ByType(ByType),
        }
        #[derive(Deserialize)]
        struct CohereAnswer {
            embeddings: CohereEmbeddings,
        }
        let answer: CohereAnswer = self.invoke(request.model, &body).await?;
        match answer.embeddings {
            CohereEmbeddings::Floats(vectors) => Ok(vectors),
            CohereEmbeddings::ByType(ByType {
                float: Some(vectors),
            }) => Ok(vectors),
            CohereEmbeddings::ByType(ByType { float: None }) => {
                Err(malformed(&self.service, "no float embeddings"))
            }
        }
    }
}

#[derive(Deserialize)]
struct ByType<T = Vec<Vec<f32>>> {
    float: Option<T>,
}

#[async_trait]
impl WireFormat for BedrockEmbeddings {
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
        let vectors = match family(request.model) {
            Some(Family::Titan) => self.titan(&request).await?,
            Some(Family::CohereV3) => self.cohere(&request, false).await?,
            Some(Family::CohereV4) => self.cohere(&request, true).await?,
            None => {
                return Err(Error::invalid(format!(
                    "{}: {:?} is not a known embedding model (amazon.titan-embed-text-*, cohere.embed-*)",
                    self.service, request.model
                )));
            }
        };
        checked(&self.service, &request, vectors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_by_model_id() {
        assert_eq!(family("amazon.titan-embed-text-v2:0"), Some(Family::Titan));
        assert_eq!(family("cohere.embed-english-v3"), Some(Family::CohereV3));
        assert_eq!(
            family("cohere.embed-multilingual-v3"),
            Some(Family::CohereV3)
        );
        assert_eq!(family("us.cohere.embed-v4:0"), Some(Family::CohereV4));
        assert_eq!(family("anthropic.claude-3-5-sonnet-20240620-v1:0"), None);
    }
}
