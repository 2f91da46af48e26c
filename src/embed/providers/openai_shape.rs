//! The OpenAI embeddings body and answer, shared by Azure OpenAI and
//! OpenAI-compatible servers: `{"input": [...], "encoding_format": "float",
//! "dimensions"?}` -> `{"data": [{"index", "embedding"}]}`.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::cloud::http::malformed;
use crate::embed::EmbedRequest;
use crate::error::Result;

/// `model` is sent on paths that name the model in the body (OpenAI, Azure v1);
/// `dimensions` only when asked, since fixed-size models reject it.
pub(super) fn body(model: Option<&str>, request: &EmbedRequest<'_>) -> Value {
    let mut body = json!({"input": request.texts, "encoding_format": "float"});
    if let Some(model) = model {
        body["model"] = json!(model);
    }
    if let Some(dims) = request.dims {
        body["dimensions"] = json!(dims);
    }
    body
}

#[derive(Deserialize)]
pub(super) struct EmbeddingsAnswer {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    index: usize,
    embedding: Vec<f32>,
}

impl EmbeddingsAnswer {
    /// The vectors in input order, by `index`, which need not follow the order sent.
    pub(super) fn into_vectors(self, service: &str, count: usize) -> Result<Vec<Vec<f32>>> {
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; count];
        for item in self.data {
            let slot = vectors
                .get_mut(item.index)
                .ok_or_else(|| malformed(service, format!("index {} out of range", item.index)))?;
            if slot.replace(item.embedding).is_some() {
                return Err(malformed(service, format!("index {} twice", item.index)));
            }
        }
        vectors
            .into_iter()
            .enumerate()
            .map(|(index, vector)| {
                vector.ok_or_else(|| malformed(service, format!("no vector for input {index}")))
            })
            .collect()
    }
}
