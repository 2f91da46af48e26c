//! `[[index]]`: a logical index, how documents are chunked and which sources they
//! are written to.

use serde::Deserialize;

/// A logical index: how documents are chunked and which sources they are written to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    pub id: String,
    pub sources: Vec<String>,
    #[serde(default = "default_chunk_max_words")]
    pub chunk_max_words: usize,
    #[serde(default = "default_chunk_overlap_words")]
    pub chunk_overlap_words: usize,
    #[serde(default = "default_embed_batch_size")]
    pub embed_batch_size: usize,
    #[serde(default = "default_max_object_bytes")]
    pub max_object_bytes: u64,
    /// Commit the stores and save the manifest after about this many chunks: the most
    /// work a crash can make the next run redo.
    #[serde(default = "default_commit_every_chunks")]
    pub commit_every_chunks: usize,
}

fn default_commit_every_chunks() -> usize {
    4096
}

fn default_chunk_max_words() -> usize {
    200
}

fn default_chunk_overlap_words() -> usize {
    40
}

fn default_embed_batch_size() -> usize {
    32
}

fn default_max_object_bytes() -> u64 {
    64 * 1024 * 1024
}
