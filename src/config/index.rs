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
    /// No chunk is longer than this many bytes, whatever its word count (a document
    /// without whitespace is one "word"): a cited chunk must fit a gRPC message and an
    /// embedding request.
    #[serde(default = "default_chunk_max_bytes")]
    pub chunk_max_bytes: usize,
    /// An object that yields more chunks than this fails (a small `.gz` can expand into
    /// hundreds of thousands of them).
    #[serde(default = "default_max_chunks_per_object")]
    pub max_chunks_per_object: usize,
    #[serde(default = "default_embed_batch_size")]
    pub embed_batch_size: usize,
    #[serde(default = "default_max_object_bytes")]
    pub max_object_bytes: u64,
    /// Commit the stores and save the manifest after about this many chunks: the most
    /// work a crash can make the next run redo.
    #[serde(default = "default_commit_every_chunks")]
    pub commit_every_chunks: usize,
    /// Whether a JSON(L) record's own `_id`/`id` names it within its object (the default,
    /// so two files may reuse ids) or within the whole index (BEIR corpora, whose qrels
    /// name the raw ids).
    #[serde(default)]
    pub record_ids: RecordIdScope,
    /// Fields of each JSON(L) record kept on its chunks as user metadata (text, numbers
    /// and booleans as text), so searches can filter on `metadata.<name>`. A bucket
    /// object's own user metadata of the same name (S3 `x-amz-meta-<name>`, Azure
    /// `x-ms-meta-<name>`, GCS custom metadata; names match regardless of case) is kept
    /// too, on every chunk of the object, a record's field winning; no other user
    /// metadata is kept, and no value longer than 256 bytes.
    #[serde(default)]
    pub metadata_fields: Vec<String>,
    /// The tenant this index's bucket syncs stamp on their chunks, and the namespace of
    /// API documents upserted without one: only searches in that namespace (or in none)
    /// see them. None: chunks have no tenant.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// How far a record id reaches: see [`IndexConfig::record_ids`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordIdScope {
    /// `<object>#<record id>`: records of different objects never collide.
    #[default]
    PerObject,
    /// The record id as it is: a second object reusing one is reported and not written.
    Global,
}

impl RecordIdScope {
    /// The config spelling, for fingerprints and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordIdScope::PerObject => "per_object",
            RecordIdScope::Global => "global",
        }
    }
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

fn default_chunk_max_bytes() -> usize {
    crate::ingest::chunk::DEFAULT_CHUNK_MAX_BYTES
}

fn default_max_chunks_per_object() -> usize {
    crate::ingest::pipeline::DEFAULT_MAX_CHUNKS_PER_OBJECT
}
