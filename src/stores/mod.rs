//! Search backends: the [`SearchBackend`] trait, the stores behind it, and the
//! registry that opens a `[[source]]` into them ([`open::open`]).
//!
//! Every backend stores chunk text beside its index so that hits come back whole,
//! whichever store served them.

#[cfg(feature = "embedded")]
pub mod dense;
pub mod filter;
#[cfg(feature = "embedded")]
pub mod local_bm25;
pub mod lock;
pub mod open;
#[cfg(feature = "remote-stores")]
pub mod opensearch;
#[cfg(feature = "remote-stores")]
pub mod qdrant;
pub mod remote;
pub mod resilient;
pub mod unopened;

use std::time::Instant;

use async_trait::async_trait;

use crate::document::{EmbeddedChunk, Hit};
use crate::error::Result;

/// What a store searches with: the text for lexical stores, the query vector in
/// the store's embedding space for dense ones.
#[derive(Debug, Clone)]
pub struct StoreQuery {
    pub text: String,
    /// Present for dense stores: L2-normalized, in the store's space.
    pub vector: Option<std::sync::Arc<Vec<f32>>>,
    pub top_k: usize,
    /// Remote stores pass this on as their own timeout.
    pub deadline: Instant,
    /// Only chunks that match; None matches every chunk. A store that cannot apply
    /// part of it fails the search with [`filter::unsupported`] rather than answer
    /// unfiltered.
    pub filter: Option<filter::Filter>,
}

/// Whether a store matches words or vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Lexical,
    Dense,
}

/// What a store is, for planning and for the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    pub id: String,
    /// Backend name as in the config: `tantivy`, `dense`, `qdrant`...
    pub backend: String,
    pub kind: StoreKind,
    /// Embedding space id, for dense stores.
    pub space: Option<String>,
    pub dims: Option<usize>,
    pub cloud: String,
    pub region: String,
}

/// A place `Search` fans out to and `Index` writes into.
#[async_trait]
pub trait SearchBackend: Send + Sync {
    fn describe(&self) -> &SourceInfo;

    /// The best `query.top_k` hits, best first.
    async fn search(&self, query: &StoreQuery) -> Result<Vec<Hit>>;

    /// Insert or replace chunks by `chunk_id`; re-upserting the same chunk is a no-op.
    async fn upsert(&self, chunks: &[EmbeddedChunk]) -> Result<()>;

    /// Remove every chunk extracted from these objects.
    async fn delete_objects(&self, object_keys: &[String]) -> Result<()>;

    /// Make all writes so far durable and visible to searches.
    async fn commit(&self) -> Result<()>;

    /// Number of chunks stored.
    async fn count(&self) -> Result<u64>;

    /// Whether calls are being refused without reaching the store (an open circuit
    /// breaker); only the resilience wrapper has one.
    fn breaker_open(&self) -> bool {
        false
    }

    /// Up to `n` stored chunks spread over the store, as (title, text): the sample an
    /// adapter between embedding spaces is fitted on. Stores without text have none.
    async fn sample_texts(&self, _n: usize) -> Result<Vec<(String, String)>> {
        Err(crate::error::Error::invalid(format!(
            "source {:?} keeps no chunk text to sample",
            self.describe().id
        )))
    }
}

/// A configured source: a backend plus how `Search` treats it.
#[derive(Clone)]
pub struct Source {
    pub backend: std::sync::Arc<dyn SearchBackend>,
    /// Weight in fusion.
    pub weight: f64,
    /// Budget for one search, always capped by the call's deadline.
    pub timeout: std::time::Duration,
}

impl Source {
    pub fn id(&self) -> &str {
        &self.backend.describe().id
    }

    pub fn info(&self) -> &SourceInfo {
        self.backend.describe()
    }
}
