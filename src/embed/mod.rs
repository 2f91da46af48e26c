//! Embedding spaces and the models that embed into them.

pub mod local;

use async_trait::async_trait;

use crate::error::Result;

/// A model + dimension + metric. Vectors from different spaces are never compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingSpace {
    pub id: String,
    pub model: String,
    pub dims: usize,
}

/// Queries and documents may be embedded differently (instruction prefixes, Cohere `input_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Query,
    Document,
}

/// Turns text into L2-normalized vectors of `space().dims` dimensions.
#[async_trait]
pub trait Embedder: Send + Sync {
    fn space(&self) -> &EmbeddingSpace;

    /// One vector per input text, in order.
    async fn embed(&self, texts: &[String], purpose: Purpose) -> Result<Vec<Vec<f32>>>;
}
