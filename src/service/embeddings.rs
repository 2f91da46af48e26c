//! Embeddings for pipelines: texts embedded in one of the service's spaces, so a
//! caller's vectors match the ones its sources were indexed with.

use super::Service;
use crate::auth::Principal;
use crate::embed::Purpose;
use crate::embed::normalize::shape_vector;
use crate::error::{Error, Result};
use crate::llm::prompt::estimate_tokens;

/// At most this many texts per call (OpenAI's own limit for one request).
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

/// What to embed.
#[derive(Debug, Clone)]
pub struct EmbeddingsRequest {
    /// A space id, or the model of exactly one space.
    pub model: String,
    pub texts: Vec<String>,
    pub purpose: Purpose,
    /// Fewer dimensions than the space's, for a Matryoshka model; None: the space's.
    pub dimensions: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Embeddings {
    /// The space the vectors belong to.
    pub space: String,
    pub vectors: Vec<Vec<f32>>,
    /// Estimated from the texts (local models report none).
    pub input_tokens: u64,
}

impl Service {
    /// Embeds `request.texts` in the space it names, for a caller that may search
    /// a source of that space.
    pub async fn embeddings(
        &self,
        principal: &Principal,
        request: EmbeddingsRequest,
    ) -> Result<Embeddings> {
        self.admit_call(principal).await?;
        let result = self.embed_for(principal, request).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.record_request("embeddings", outcome);
        result
    }

    async fn embed_for(
        &self,
        principal: &Principal,
        request: EmbeddingsRequest,
    ) -> Result<Embeddings> {
        if request.texts.is_empty() || request.texts.len() > MAX_EMBEDDING_INPUTS {
            return Err(Error::invalid(format!(
                "input must hold 1 to {MAX_EMBEDDING_INPUTS} texts, got {}",
                request.texts.len()
            )));
        }
        if let Some(index) = request.texts.iter().position(|text| text.trim().is_empty()) {
            return Err(Error::invalid(format!("input[{index}] is empty")));
        }
        let space = self.embedding_space(principal, &request.model)?;
        let embedder = self
            .embedders
            .get(&space.id)
            .ok_or_else(|| Error::internal(format!("space {:?} has no embedder", space.id)))?;
        let dims = match request.dimensions {
            None => space.dims,
            Some(dims) if dims == space.dims => dims,
            Some(dims) if space.matryoshka && (1..space.dims).contains(&dims) => dims,
            Some(dims) => {
                return Err(Error::invalid(format!(
                    "dimensions: space {:?} embeds at {} dimensions{}, not {dims}",
                    space.id,
                    space.dims,
                    if space.matryoshka { " or fewer" } else { "" }
                )));
            }
        };
        let mut vectors = embedder.embed(&request.texts, request.purpose).await?;
        if dims != space.dims {
            vectors = vectors
                .into_iter()
                .map(|vector| shape_vector(vector, dims, true, true))
                .collect::<Result<_>>()?;
        }
        let input_tokens = request
            .texts
            .iter()
            .map(|text| estimate_tokens(text) as u64)
            .sum();
        Ok(Embeddings {
            space: space.id.clone(),
            vectors,
            input_tokens,
        })
    }

    /// The space `model` names (its id, or the model of exactly one space) among those
    /// with a source the caller may search; any other name is unknown to it.
    fn embedding_space(
        &self,
        principal: &Principal,
        model: &str,
    ) -> Result<&crate::config::SpaceConfig> {
        let permissions = principal.permissions();
        let visible: Vec<&crate::config::SpaceConfig> = self
            .config
            .spaces
            .iter()
            .filter(|space| {
                self.retriever.sources().iter().any(|source| {
                    source.info().space.as_deref() == Some(space.id.as_str())
                        && permissions.may_search(source.id())
                })
            })
            .collect();
        if let Some(space) = visible.iter().find(|space| space.id == model) {
            return Ok(space);
        }
        let by_model: Vec<_> = visible
            .iter()
            .filter(|space| space.model == model)
            .collect();
        if let [space] = by_model.as_slice() {
            return Ok(space);
        }
        let known: Vec<&str> = visible.iter().map(|space| space.id.as_str()).collect();
        Err(Error::not_found(if by_model.len() > 1 {
            format!(
                "model {model:?} serves several spaces; name one: {}",
                known.join(", ")
            )
        } else {
            format!(
                "unknown embedding model {model:?}; available: {}",
                known.join(", ")
            )
        }))
    }
}
