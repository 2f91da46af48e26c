//! OCI Generative AI `POST /20231130/actions/embedText`, OCI-signed: `inputs` (up to
//! 96), `inputType` SEARCH_QUERY / SEARCH_DOCUMENT, the compartment, and the serving
//! mode: a dedicated AI cluster endpoint when one is configured for the model,
//! on-demand otherwise. `outputDimensions` for embed-v4 models.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{WireFormat, checked, max_batch, post, service_name};
use crate::cloud::CloudEndpoint;
use crate::config::OciConfig;
use crate::embed::{EmbedRequest, Purpose};
use crate::error::Result;

pub const SERVICE_LIMIT: usize = 96;

pub struct OciEmbeddings {
    endpoint: CloudEndpoint,
    service: String,
    compartment_id: String,
    dedicated_endpoints: BTreeMap<String, String>,
    max_batch: usize,
}

impl OciEmbeddings {
    pub fn new(
        endpoint: CloudEndpoint,
        config: &OciConfig,
        configured_max_batch: Option<usize>,
    ) -> Self {
        Self {
            service: service_name("oci", &endpoint.id),
            compartment_id: config.compartment_id.clone(),
            dedicated_endpoints: config.dedicated_endpoints.clone(),
            max_batch: max_batch(configured_max_batch, SERVICE_LIMIT),
            endpoint,
        }
    }

    fn serving_mode(&self, model: &str) -> Value {
        let endpoint_id = self
            .dedicated_endpoints
            .get(model)
            .map(String::as_str)
            .or_else(|| {
                model
                    .starts_with("ocid1.generativeaiendpoint")
                    .then_some(model)
            });
        match endpoint_id {
            Some(endpoint_id) => json!({"servingType": "DEDICATED", "endpointId": endpoint_id}),
            None => json!({"servingType": "ON_DEMAND", "modelId": model}),
        }
    }
}

#[async_trait]
impl WireFormat for OciEmbeddings {
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
        let mut body = json!({
            "compartmentId": self.compartment_id,
            "servingMode": self.serving_mode(request.model),
            "inputs": request.texts,
            "inputType": match request.purpose {
                Purpose::Query => "SEARCH_QUERY",
                Purpose::Document => "SEARCH_DOCUMENT",
            },
            "truncate": "END",
        });
        // v3 models are of fixed size and take no dimension: `checked` refuses a
        // size they do not produce.
        if let Some(dims) = request.dims
            && request.model.contains("embed-v4")
        {
            body["outputDimensions"] = json!(dims);
        }
        #[derive(Deserialize)]
        struct Answer {
            embeddings: Vec<Vec<f32>>,
        }
        let url = self.endpoint.url("/20231130/actions/embedText")?;
        let answer: Answer = post(&self.endpoint, &self.service, url, &body).await?;
        checked(&self.service, &request, answer.embeddings)
    }
}
