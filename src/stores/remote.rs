//! What the remote stores (Qdrant, OpenSearch) share: their settings as resolved from
//! config, the chunk fields they keep beside each vector, stable point ids, and the
//! startup check that a collection or index matches the source's embedding space.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::config::Metric;
use crate::document::{Chunk, Hit};
use crate::error::{Error, Result};
use crate::stores::SourceInfo;

/// The payload or document field names a chunk is stored under.
pub mod fields {
    pub const CHUNK_ID: &str = "chunk_id";
    pub const DOC_ID: &str = "doc_id";
    pub const OBJECT_KEY: &str = "object_key";
    pub const TITLE: &str = "title";
    pub const TEXT: &str = "text";
    pub const ORDINAL: &str = "ordinal";
    pub const CLOUD: &str = "cloud";
    pub const REGION: &str = "region";
    /// The skyfuse source that wrote the chunk: several sources may share a collection.
    pub const SOURCE: &str = "source";
    /// OpenSearch: the `knn_vector` field.
    pub const VECTOR: &str = "embedding";
    /// Fields that are filtered on and get keyword indexes.
    pub const KEYWORDS: [&str; 4] = [DOC_ID, OBJECT_KEY, CLOUD, SOURCE];
    /// Object metadata, present only on chunks that have it.
    pub const CONTENT_TYPE: &str = "content_type";
    pub const ETAG: &str = "etag";
    /// The chunk's char span in its document (integers), on chunks that have one.
    pub const START_CHAR: &str = "start_char";
    pub const END_CHAR: &str = "end_char";
    /// Integers: bytes, and unix seconds.
    pub const SIZE_BYTES: &str = "size_bytes";
    pub const LAST_MODIFIED: &str = "last_modified";
    /// An object of the user metadata fields, text values: `metadata.<name>`.
    pub const METADATA: &str = "metadata";
    /// The chunk's tenant, present only on chunks that have one.
    pub const NAMESPACE: &str = "namespace";
    /// Metadata fields filtered by equality, beside [`KEYWORDS`].
    pub const FILTER_KEYWORDS: [&str; 3] = [REGION, CONTENT_TYPE, NAMESPACE];
    /// Metadata fields filtered by range.
    pub const FILTER_INTEGERS: [&str; 2] = [SIZE_BYTES, LAST_MODIFIED];
}

/// The stored field a filter field is kept in (`metadata.<name>` for user fields);
/// None for `source`, which each store decides for itself.
pub fn filter_key(field: &crate::stores::filter::FilterField) -> Option<String> {
    use crate::stores::filter::FilterField;
    let key = match field {
        FilterField::ObjectKey => fields::OBJECT_KEY,
        FilterField::Cloud => fields::CLOUD,
        FilterField::Region => fields::REGION,
        FilterField::DocId => fields::DOC_ID,
        FilterField::ContentType => fields::CONTENT_TYPE,
        FilterField::LastModified => fields::LAST_MODIFIED,
        FilterField::SizeBytes => fields::SIZE_BYTES,
        FilterField::Namespace => fields::NAMESPACE,
        FilterField::Metadata(name) => return Some(format!("{}.{name}", fields::METADATA)),
        FilterField::Source => return None,
    };
    Some(key.to_string())
}

/// What a remote adapter needs to know about its source, besides credentials.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    pub info: SourceInfo,
    pub url: String,
    /// The collection (Qdrant) or index (OpenSearch).
    pub name: String,
    /// The source's embedding space: vector size and metric (none for lexical-only).
    pub dims: Option<usize>,
    pub metric: Metric,
    pub create_missing: bool,
    pub upsert_batch: usize,
    pub score_threshold: Option<f32>,
    /// Limit of one write request.
    pub write_timeout: Duration,
    /// The user metadata fields (`metadata.<name>`) the indexes writing here keep:
    /// Qdrant gets a keyword payload index on each.
    pub metadata_fields: Vec<String>,
}

/// A UUID-shaped id derived from the chunk id (Qdrant ids are integers or UUIDs):
/// the same chunk always lands on the same point, so re-upserting replaces it.
pub fn point_id(chunk_id: &str) -> String {
    let digest = Sha256::digest(chunk_id.as_bytes());
    let hex = hex::encode(&digest[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The metric's name in the store's own words, for messages.
pub fn metric_name(metric: Metric) -> &'static str {
    match metric {
        Metric::Cosine => "cosine",
        Metric::Dot => "dot",
        Metric::L2 => "l2",
    }
}

/// Refuses a collection or index whose vectors are not those of the source's space.
/// `found_metric` is `None` when the store uses a distance skyfuse has no name for
/// (`found_metric_text` says which).
pub fn check_space(
    settings: &RemoteSettings,
    what: &str,
    found_dims: usize,
    found_metric: Option<Metric>,
    found_metric_text: &str,
) -> Result<()> {
    let Some(dims) = settings.dims else {
        return Ok(());
    };
    let space = settings.info.space.as_deref().unwrap_or("?");
    if found_dims != dims {
        return Err(Error::config(format!(
            "{what} {:?} holds vectors of {found_dims} dimensions but space {space:?} has {dims}; \
             use a {what} made for this space or point the source at another space",
            settings.name
        )));
    }
    if found_metric != Some(settings.metric) {
        return Err(Error::config(format!(
            "{what} {:?} compares vectors by {found_metric_text} but space {space:?} uses {}; \
             recreate the {what} with the space's metric",
            settings.name,
            metric_name(settings.metric)
        )));
    }
    Ok(())
}

/// The chunk's fields as (name, value) text pairs, in a fixed order.
pub fn chunk_text_fields<'a>(chunk: &'a Chunk, source_id: &'a str) -> [(&'static str, &'a str); 8] {
    [
        (fields::CHUNK_ID, &chunk.chunk_id),
        (fields::DOC_ID, &chunk.doc_id),
        (fields::OBJECT_KEY, &chunk.object_key),
        (fields::TITLE, &chunk.title),
        (fields::TEXT, &chunk.text),
        (fields::CLOUD, &chunk.cloud),
        (fields::REGION, &chunk.region),
        (fields::SOURCE, source_id),
    ]
}

/// A hit built from a stored chunk's text fields, looked up by name, and its integer
/// fields (the span).
pub fn hit_from_fields<'a>(
    score: f32,
    field: impl Fn(&str) -> Option<&'a str>,
    integer: impl Fn(&str) -> Option<u64>,
) -> Hit {
    let span = integer(fields::START_CHAR)
        .zip(integer(fields::END_CHAR))
        .map(|(start, end)| crate::document::CharSpan { start, end });
    let text = |name: &str| field(name).unwrap_or_default().to_string();
    Hit {
        chunk_id: text(fields::CHUNK_ID),
        doc_id: text(fields::DOC_ID),
        object_key: text(fields::OBJECT_KEY),
        title: text(fields::TITLE).into(),
        text: text(fields::TEXT).into(),
        cloud: text(fields::CLOUD),
        region: text(fields::REGION),
        classes: Vec::new(),
        score,
        span,
    }
}

/// Whole seconds left before `deadline`, at least 1: Qdrant's and OpenSearch's
/// request timeouts. `None` once it has passed.
pub fn seconds_left(deadline: Instant) -> Option<u64> {
    let left = deadline.checked_duration_since(Instant::now())?;
    if left.is_zero() {
        return None;
    }
    Some(left.as_secs_f64().ceil().max(1.0) as u64)
}

/// Checks every vector of a batch before any of it is sent.
pub fn check_vectors(
    settings: &RemoteSettings,
    chunks: &[crate::document::EmbeddedChunk],
) -> Result<()> {
    let Some(dims) = settings.dims else {
        return Ok(());
    };
    for embedded in chunks {
        if embedded.chunk.chunk_id.is_empty() {
            return Err(Error::invalid("a chunk has an empty chunk id"));
        }
        if embedded.vector.len() != dims {
            return Err(Error::invalid(format!(
                "the vector of chunk {} has {} dimensions but the source holds {dims}",
                embedded.chunk.chunk_id,
                embedded.vector.len()
            )));
        }
        if embedded.vector.iter().any(|value| !value.is_finite()) {
            return Err(Error::invalid(format!(
                "the vector of chunk {} has a non-finite value",
                embedded.chunk.chunk_id
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stores::StoreKind;

    #[test]
    fn point_ids_are_stable_uuid_shaped_and_distinct() {
        let id = point_id("doc#0");
        assert_eq!(id, point_id("doc#0"));
        assert_ne!(id, point_id("doc#1"));
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
    }

    #[test]
    fn a_store_of_another_dimension_or_metric_is_refused_naming_both() {
        let settings = RemoteSettings {
            info: SourceInfo {
                id: "aws-qdrant".into(),
                backend: "qdrant".into(),
                kind: StoreKind::Dense,
                space: Some("minilm".into()),
                dims: Some(384),
                cloud: "aws".into(),
                region: "us-east-1".into(),
            },
            url: "http://127.0.0.1:6334".into(),
            name: "docs".into(),
            dims: Some(384),
            metric: Metric::Cosine,
            create_missing: false,
            upsert_batch: 10,
            score_threshold: None,
            metadata_fields: Vec::new(),
            write_timeout: Duration::from_secs(1),
        };
        let message = check_space(&settings, "collection", 768, Some(Metric::Cosine), "cosine")
            .unwrap_err()
            .message;
        assert!(
            message.contains("768") && message.contains("384"),
            "{message}"
        );
        assert!(
            message.contains("\"minilm\"") && message.contains("\"docs\""),
            "{message}"
        );
        let message = check_space(&settings, "collection", 384, Some(Metric::Dot), "dot")
            .unwrap_err()
            .message;
        assert!(
            message.contains("dot") && message.contains("cosine"),
            "{message}"
        );
        check_space(&settings, "collection", 384, Some(Metric::Cosine), "cosine").unwrap();
    }
}
