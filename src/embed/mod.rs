//! Embedding spaces and the models that embed into them.
//!
//! Two layers: an [`EmbeddingProvider`] is one endpoint that serves embedding models (the
//! in-process model, or a cloud API in one region with its credentials); an [`Embedder`]
//! is one embedding space (a model at a dimension and metric) and is what ingestion and
//! search call. A space is served by one or more providers of the *same* model, tried in
//! order: a space never fails over to a different model.
//!
//! The in-process provider is [`local`]: a BERT runtime (tokenizer, weights, forward pass)
//! for all-MiniLM-L6-v2, whose `unsafe` code and SIMD kernels all live in
//! `local/kernels.rs`.

pub mod adapter;
#[cfg(feature = "embedded")]
pub mod local;
pub mod normalize;
pub mod providers;
pub mod query;
pub mod query_cache;
pub mod space;

use async_trait::async_trait;

use crate::error::Result;

/// A model + dimension + metric. Vectors from different spaces are never compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingSpace {
    pub id: String,
    pub model: String,
    pub dims: usize,
}

/// Queries and documents may be embedded differently (instruction prefixes, Cohere
/// `input_type`, Vertex `task_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Query,
    Document,
}

/// Turns text into vectors of one space: `space().dims` dimensions, L2-normalized when the
/// space's metric needs it.
#[async_trait]
pub trait Embedder: Send + Sync {
    fn space(&self) -> &EmbeddingSpace;

    /// One vector per input text, in order.
    async fn embed(&self, texts: &[String], purpose: Purpose) -> Result<Vec<Vec<f32>>>;
}

/// One call to an embedding endpoint.
#[derive(Debug, Clone, Copy)]
pub struct EmbedRequest<'a> {
    /// The model's id at this provider (Bedrock `cohere.embed-english-v3`, an Azure
    /// deployment's model, a Vertex model name, an OCI model OCID or name).
    pub model: &'a str,
    pub texts: &'a [String],
    pub purpose: Purpose,
    /// The output dimension to ask for, for models that take one (text-embedding-3
    /// `dimensions`, Titan v2 `dimensions`, Vertex `outputDimensionality`); `None` means
    /// the model's native size.
    pub dims: Option<usize>,
}

/// One endpoint that serves embedding models: a cloud API in one region with its
/// credentials, an OpenAI-compatible server, or the in-process model.
///
/// Implementations send at most [`EmbeddingProvider::max_batch`] texts per call (callers
/// split larger inputs), return vectors exactly as the service produced them (the space
/// normalizes), and map failures to [`crate::error::ErrorKind`] so the caller can tell a
/// throttle or an outage (try the next provider) from bad input (do not).
#[async_trait]
pub trait EmbeddingProvider: Send + Sync {
    /// The provider's config id, for outcomes, logs and metrics.
    fn id(&self) -> &str;

    /// Cloud and region the texts are sent to (residency and egress rules use them).
    fn location(&self) -> (&str, &str);

    /// The most texts the service takes in one call.
    fn max_batch(&self) -> usize;

    /// One vector per input text, in order.
    async fn embed(&self, request: EmbedRequest<'_>) -> Result<Vec<Vec<f32>>>;
}
