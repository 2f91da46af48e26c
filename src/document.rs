//! The vocabulary shared by ingestion, stores and retrieval: chunks going in, hits coming out.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A piece of a document small enough to embed, with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// Stable and unique within an index: `{doc_id}#{ordinal}`.
    pub chunk_id: String,
    /// Stable document id used for deduplication, unique in its index: the qualified
    /// object key, or for a JSON(L) record `<qualified key>#<record id>` (the record id
    /// alone with `record_ids = "global"`); see [`crate::ingest::doc_ids`].
    pub doc_id: String,
    /// The object the chunk was extracted from; deleting an object deletes its chunks.
    pub object_key: String,
    /// Shared with the hits that show the chunk (an `Arc`): a store answering from
    /// memory hands out its text without copying it.
    pub title: Arc<str>,
    pub text: Arc<str>,
    /// Position of the chunk within its document, from 0.
    pub ordinal: u32,
    /// Where the object lives (`aws`, `azure`, `gcp`, `oci`, `local`...) and its region, for
    /// residency and egress rules over what a search returns. Empty in data written before
    /// buckets carried them.
    #[serde(default)]
    pub cloud: String,
    #[serde(default)]
    pub region: String,
    /// What the object store and the record said about the object; empty in data
    /// written before chunks kept it, and such chunks match no metadata filter.
    #[serde(default, skip_serializing_if = "ChunkMetadata::is_empty")]
    pub metadata: ChunkMetadata,
    /// Where the chunk's text lies in its document's text; none in data written before
    /// chunks kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span: Option<CharSpan>,
}

/// Char offsets (Unicode scalar values, as snippets count them) of a chunk within its
/// document's extracted text (for a JSON(L) record, the record's text), end exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CharSpan {
    pub start: u64,
    pub end: u64,
}

/// A chunk's object metadata, for filters; every part is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The tenant the chunk belongs to (`[[index]] namespace`, or the namespace of an
    /// upsert); none: no tenant, and a search bound to a namespace never sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The fields an `[[index]]` names in `metadata_fields`, as text: from the JSON(L)
    /// record, or else from the object's user metadata (`x-amz-meta-*`...).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, String>,
}

impl ChunkMetadata {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Chunk {
    pub fn make_id(doc_id: &str, ordinal: u32) -> String {
        format!("{doc_id}#{ordinal}")
    }
}

/// A chunk with its vector in the embedding space of the index it is written to.
/// Lexical stores ignore the vector.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddedChunk {
    pub chunk: Chunk,
    pub vector: Vec<f32>,
}

/// One result from one store, best first in the list it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub chunk_id: String,
    pub doc_id: String,
    pub object_key: String,
    /// Shared with the store when it answers from memory.
    pub title: Arc<str>,
    pub text: Arc<str>,
    /// The chunk's [`Chunk::cloud`] and [`Chunk::region`].
    pub cloud: String,
    pub region: String,
    /// The data's classes (`pii`, `anonymized`...) from `[[classification]]`: stamped
    /// when the hit leaves its source, since stores do not keep them.
    pub classes: Vec<String>,
    /// The store's own score: BM25, cosine... Only comparable within one list.
    pub score: f32,
    /// The chunk's [`Chunk::span`], when the store kept it.
    pub span: Option<CharSpan>,
}

/// The text a chunk is embedded from: its title gives later chunks of a document the
/// context their own words may lack.
pub fn embedding_text(title: &str, text: &str) -> String {
    if title.is_empty() || text.starts_with(title) {
        return text.to_string();
    }
    format!("{title}\n{text}")
}
