//! `[search]`: how results of the sources are fused, and the query embedding cache.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FusionMethod {
    Rrf,
    Dbsf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    pub fusion: FusionMethod,
    /// RRF's k: each list adds weight / (k + rank), ranks from 1.
    pub rrf_k: f64,
    /// Hits asked of each source, at least top_k: fusion needs depth to work with.
    pub candidates_per_source: usize,
    /// A source's budget when it sets no `timeout_ms`; always capped by the call's deadline.
    pub source_timeout_ms: u64,
    /// Query embeddings kept for reuse (0: no cache), and for how long.
    pub query_cache_entries: usize,
    pub query_cache_ttl_ms: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            fusion: FusionMethod::Rrf,
            rrf_k: 60.0,
            candidates_per_source: 100,
            source_timeout_ms: 2_000,
            query_cache_entries: 4_096,
            query_cache_ttl_ms: 60_000,
        }
    }
}
