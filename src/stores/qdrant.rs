//! A Qdrant collection as a dense source, over Qdrant's gRPC API (`qdrant-client`).
//!
//! One unnamed vector per point, sized and compared as the source's embedding space
//! says; the chunk's fields ride along as payload, with keyword indexes on the ones
//! searches filter by. Point ids are derived from chunk ids (see
//! [`remote::point_id`]), so re-upserting a chunk replaces its point.
//!
//! Writes are sent with `wait = true`: when `upsert` returns, Qdrant has applied them,
//! so `commit` has nothing left to do. Each search carries the time left before its
//! deadline as Qdrant's own `timeout`.

use std::borrow::Cow;
use std::collections::HashMap;

use async_trait::async_trait;
use qdrant_client::qdrant::{
    self, Condition, CountPoints, CreateCollection, CreateFieldIndexCollection, DeletePoints,
    FieldCondition, FieldType, Filter, GetCollectionInfoRequest, Match, PointId, PointStruct,
    PointsSelector, RepeatedStrings, SearchPoints, UpsertPoints, VectorParams, Vectors,
    VectorsConfig, WithPayloadSelector,
};
use qdrant_client::{Qdrant, QdrantError};
use tokio::sync::OnceCell;

use crate::config::{Metric, Secret};
use crate::document::{CharSpan, ChunkMetadata, EmbeddedChunk, Hit};
use crate::error::{Error, ErrorKind, Result};
use crate::stores::filter::{
    self, Condition as FilterCondition, Filter as StoreFilter, FilterField, Pushdown,
};
use crate::stores::remote::{self, RemoteSettings, fields};
use crate::stores::{SearchBackend, SourceInfo, StoreQuery};

pub struct QdrantStore {
    settings: RemoteSettings,
    client: Qdrant,
    /// Set once the collection was found to match the space; until then every call
    /// checks first (a store that was down at startup is checked when it is back).
    checked: OnceCell<()>,
}

impl QdrantStore {
    /// Connects and checks the collection. A collection of another dimension or
    /// distance is refused here; one that cannot be reached (or is missing, unless
    /// `create_missing`) is logged and checked again on first use, so that a store
    /// that is down does not stop the service.
    pub async fn connect(settings: RemoteSettings, api_key: Option<Secret>) -> Result<Self> {
        let client = Qdrant::from_url(&settings.url)
            .api_key(api_key.map(|key| key.expose().to_string()))
            .timeout(settings.write_timeout)
            .connect_timeout(std::time::Duration::from_secs(5))
            .skip_compatibility_check()
            .build()
            .map_err(|error| Error::config(format!("qdrant url {:?}: {error}", settings.url)))?;
        let store = Self {
            settings,
            client,
            checked: OnceCell::new(),
        };
        match store.ensure_checked().await {
            Ok(()) => {}
            Err(error) if error.kind == ErrorKind::Config => return Err(error),
            Err(error) if error.kind == ErrorKind::NotFound && store.settings.create_missing => {
                store.create_collection().await?;
                store.ensure_checked().await?;
            }
            Err(error) => tracing::warn!(
                source = store.settings.info.id,
                %error,
                "qdrant collection not checked at startup; searches will retry"
            ),
        }
        Ok(store)
    }

    /// The raw client, for benches comparing the adapter with a direct call.
    pub fn client(&self) -> &Qdrant {
        &self.client
    }

    /// The client for one call: within a trace, one that sends its `traceparent` (a
    /// light clone sharing the connection pool), so Qdrant's own traces join ours.
    fn traced(&self) -> Cow<'_, Qdrant> {
        match crate::telemetry::trace::current_traceparent() {
            Some(traceparent) => Cow::Owned(self.client.with_header("traceparent", traceparent)),
            None => Cow::Borrowed(&self.client),
        }
    }

    async fn ensure_checked(&self) -> Result<()> {
        self.checked
            .get_or_try_init(|| self.check_collection())
            .await
            .map(|_| ())
    }

    async fn check_collection(&self) -> Result<()> {
        let name = &self.settings.name;
        let info = self
            .traced()
            .collection_info(GetCollectionInfoRequest {
                collection_name: name.clone(),
            })
            .await
            .map_err(|error| self.error("reading the collection", error))?;
        let params = info
            .result
            .and_then(|info| info.config)
            .and_then(|config| config.params)
            .and_then(|params| params.vectors_config)
            .and_then(|vectors| vectors.config);
        let vector = match params {
            Some(qdrant::vectors_config::Config::Params(vector)) => vector,
            _ => {
                return Err(Error::config(format!(
                    "collection {name:?} has named vectors or none; skyfuse needs one unnamed vector"
                )));
            }
        };
        let distance = qdrant::Distance::try_from(vector.distance).ok();
        let metric = match distance {
            Some(qdrant::Distance::Cosine) => Some(Metric::Cosine),
            Some(qdrant::Distance::Dot) => Some(Metric::Dot),
            Some(qdrant::Distance::Euclid) => Some(Metric::L2),
            _ => None,
        };
        let distance_text = distance.map_or("an unknown distance".to_string(), |distance| {
            distance.as_str_name().to_lowercase()
        });
        remote::check_space(
            &self.settings,
            "collection",
            usize::try_from(vector.size).unwrap_or(usize::MAX),
            metric,
            &distance_text,
        )?;
        // A collection someone else made (or a create cut short) may lack them, and
        // under Qdrant's strict mode filtered searches and deletes then fail.
        self.ensure_payload_indexes().await
    }

    /// The payload indexes searches and deletes filter by, and one per user metadata
    /// field the index config names (`metadata.<name>`); creating one that exists is a
    /// no-op for Qdrant, so this runs on every check.
    async fn ensure_payload_indexes(&self) -> Result<()> {
        let keywords = fields::KEYWORDS
            .into_iter()
            .chain(fields::FILTER_KEYWORDS)
            .map(|field| (field.to_string(), FieldType::Keyword));
        let integers = fields::FILTER_INTEGERS
            .into_iter()
            .map(|field| (field.to_string(), FieldType::Integer));
        let metadata = self
            .settings
            .metadata_fields
            .iter()
            .map(|name| (format!("{}.{name}", fields::METADATA), FieldType::Keyword));
        for (field, field_type) in keywords.chain(integers).chain(metadata) {
            self.traced()
                .create_field_index(CreateFieldIndexCollection {
                    collection_name: self.settings.name.clone(),
                    wait: Some(true),
                    field_name: field,
                    field_type: Some(field_type.into()),
                    ..Default::default()
                })
                .await
                .map_err(|error| self.error("creating a payload index", error))?;
        }
        Ok(())
    }

    /// Creates the collection for the source's space, with keyword payload indexes
    /// on the fields searches and deletes filter by.
    pub async fn create_collection(&self) -> Result<()> {
        let dims = self
            .settings
            .dims
            .ok_or_else(|| Error::config("a qdrant source needs a space"))?;
        let distance = match self.settings.metric {
            Metric::Cosine => qdrant::Distance::Cosine,
            Metric::Dot => qdrant::Distance::Dot,
            Metric::L2 => qdrant::Distance::Euclid,
        };
        let name = &self.settings.name;
        let created = self
            .traced()
            .create_collection(CreateCollection {
                collection_name: name.clone(),
                vectors_config: Some(VectorsConfig {
                    config: Some(qdrant::vectors_config::Config::Params(VectorParams {
                        size: dims as u64,
                        distance: distance.into(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => {}
            // Another replica created it first: its space is checked next, as any.
            Err(QdrantError::ResponseError { status })
                if status.code() == tonic::Code::AlreadyExists =>
            {
                return Ok(());
            }
            Err(error) => return Err(self.error("creating the collection", error)),
        }
        self.ensure_payload_indexes().await?;
        tracing::info!(
            source = self.settings.info.id,
            collection = name,
            dims,
            "created qdrant collection"
        );
        Ok(())
    }

    fn error(&self, what: &str, error: QdrantError) -> Error {
        let collection = &self.settings.name;
        let error = match error {
            QdrantError::ResourceExhaustedError {
                status,
                retry_after_seconds,
            } => Error::throttled(
                format!("qdrant is throttling: {}", status.message()),
                Some(crate::time_caps::retry_after_secs(retry_after_seconds)),
            ),
            QdrantError::ResponseError { status } => status_error(&status, collection),
            other => Error::internal(format!("qdrant client: {other}")),
        };
        error.context(format!("qdrant {}: {what}", self.settings.url))
    }

    /// The filter as Qdrant's (every chunk of the collection is the source's):
    /// `Some(None)` searches unfiltered, `None` means no chunk can match, and Err that
    /// Qdrant cannot express a part of it.
    fn filter(&self, filter: Option<&StoreFilter>) -> Result<Option<Option<Filter>>> {
        match filter.map(|filter| filter.for_source(&self.settings.info.id)) {
            None | Some(Pushdown::All) => Ok(Some(None)),
            Some(Pushdown::Nothing) => Ok(None),
            Some(Pushdown::Only(filter)) => Ok(Some(Some(Filter {
                must: vec![qdrant_condition(&filter)?],
                ..Default::default()
            }))),
        }
    }
}

/// One node of a filter as a Qdrant condition: `and` / `or` / `not` as a nested
/// filter's must / should / must_not, a condition as a `FieldCondition`.
fn qdrant_condition(filter: &StoreFilter) -> Result<Condition> {
    use qdrant::condition::ConditionOneOf;
    let nested = |filter: Filter| Condition {
        condition_one_of: Some(ConditionOneOf::Filter(filter)),
    };
    let all = |children: &[StoreFilter]| {
        children
            .iter()
            .map(qdrant_condition)
            .collect::<Result<Vec<_>>>()
    };
    let field_condition = |field: &FilterField, condition: FieldCondition| -> Result<Condition> {
        let key = remote::filter_key(field).ok_or_else(|| filter::unsupported("source"))?;
        Ok(Condition {
            condition_one_of: Some(ConditionOneOf::Field(FieldCondition { key, ..condition })),
        })
    };
    match filter {
        StoreFilter::And(children) => Ok(nested(Filter {
            must: all(children)?,
            ..Default::default()
        })),
        StoreFilter::Or(children) => Ok(nested(Filter {
            should: all(children)?,
            ..Default::default()
        })),
        StoreFilter::Not(inner) => Ok(nested(Filter {
            must_not: vec![qdrant_condition(inner)?],
            ..Default::default()
        })),
        StoreFilter::Condition(FilterCondition::ObjectKeyPrefix(_)) => Err(filter::unsupported(
            "prefix on object_key (qdrant matches whole keywords only)",
        )),
        StoreFilter::Condition(FilterCondition::In { field, values }) => {
            let match_value = match values.as_slice() {
                [value] => qdrant::r#match::MatchValue::Keyword(value.clone()),
                _ => qdrant::r#match::MatchValue::Keywords(RepeatedStrings {
                    strings: values.clone(),
                }),
            };
            field_condition(
                field,
                FieldCondition {
                    r#match: Some(Match {
                        match_value: Some(match_value),
                    }),
                    ..Default::default()
                },
            )
        }
        StoreFilter::Condition(FilterCondition::Range { field, min, max }) => field_condition(
            field,
            FieldCondition {
                // Qdrant ranges are doubles: exact for integers below 2^53 (sizes up to 8
                // PiB, any date).
                range: Some(qdrant::Range {
                    gte: min.map(|min| min as f64),
                    lte: max.map(|max| max as f64),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
    }
}

/// Qdrant's Euclid score is a distance (lower is better); skyfuse's scores are
/// higher-is-better on every store, so an `l2` distance `d` becomes `1 / (1 + d²)`,
/// the score OpenSearch's k-NN gives the same pair.
fn higher_is_better(metric: Metric, score: f32) -> f32 {
    match metric {
        Metric::L2 => 1.0 / (1.0 + score * score),
        Metric::Cosine | Metric::Dot => score,
    }
}

/// A `score_threshold` (in skyfuse's higher-is-better scores) as Qdrant's: for `l2`
/// the largest distance whose score reaches it; None when every distance does.
fn qdrant_threshold(metric: Metric, threshold: f32) -> Option<f32> {
    match metric {
        Metric::L2 if threshold <= 0.0 => None,
        Metric::L2 if threshold >= 1.0 => Some(0.0),
        Metric::L2 => Some((1.0 / threshold - 1.0).sqrt()),
        Metric::Cosine | Metric::Dot => Some(threshold),
    }
}

/// One gRPC status as our error, by code.
fn status_error(status: &tonic::Status, collection: &str) -> Error {
    let message = status.message();
    let kind = match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => ErrorKind::Auth,
        tonic::Code::NotFound => {
            return Error::not_found(format!(
                "collection {collection:?} does not exist ({message})"
            ));
        }
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
            ErrorKind::InvalidArgument
        }
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => ErrorKind::Timeout,
        tonic::Code::ResourceExhausted => ErrorKind::Throttled,
        tonic::Code::Unavailable => ErrorKind::Unavailable,
        // qdrant-client reports a failed connection as `internal`.
        tonic::Code::Internal if message.starts_with("Failed to connect") => ErrorKind::Unavailable,
        // An HTTP/1 server (Qdrant's REST port) answering a gRPC call.
        tonic::Code::Internal if message.contains("h2 protocol error") => ErrorKind::Config,
        _ => ErrorKind::Internal,
    };
    let message = match kind {
        ErrorKind::Auth => format!("the api key was refused: {message}"),
        ErrorKind::Unavailable => format!("unreachable: {message}"),
        ErrorKind::Config => format!(
            "{message}: wrong port? skyfuse speaks Qdrant's gRPC API, usually on port 6334 (6333 is its REST API)"
        ),
        _ => message.to_string(),
    };
    Error::new(kind, message)
}

fn text_value(text: &str) -> qdrant::Value {
    qdrant::Value {
        kind: Some(qdrant::value::Kind::StringValue(text.to_string())),
    }
}

/// The chunk's metadata as payload: only the parts it has, so a missing one matches
/// no condition, as on every store.
fn add_metadata(payload: &mut HashMap<String, qdrant::Value>, metadata: &ChunkMetadata) {
    let integer = |value: i64| qdrant::Value {
        kind: Some(qdrant::value::Kind::IntegerValue(value)),
    };
    if let Some(content_type) = &metadata.content_type {
        payload.insert(fields::CONTENT_TYPE.into(), text_value(content_type));
    }
    if let Some(etag) = &metadata.etag {
        payload.insert(fields::ETAG.into(), text_value(etag));
    }
    if let Some(namespace) = &metadata.namespace {
        payload.insert(fields::NAMESPACE.into(), text_value(namespace));
    }
    if let Some(size) = metadata
        .size_bytes
        .and_then(|size| i64::try_from(size).ok())
    {
        payload.insert(fields::SIZE_BYTES.into(), integer(size));
    }
    if let Some(last_modified) = metadata.last_modified {
        payload.insert(fields::LAST_MODIFIED.into(), integer(last_modified));
    }
    if !metadata.fields.is_empty() {
        let user_fields = metadata
            .fields
            .iter()
            .map(|(name, value)| (name.clone(), text_value(value)))
            .collect();
        payload.insert(
            fields::METADATA.into(),
            qdrant::Value {
                kind: Some(qdrant::value::Kind::StructValue(qdrant::Struct {
                    fields: user_fields,
                })),
            },
        );
    }
}

/// The chunk's span as two integers (read back by [`payload_integer`]).
fn add_span(payload: &mut HashMap<String, qdrant::Value>, span: CharSpan) {
    for (key, value) in [
        (fields::START_CHAR, span.start),
        (fields::END_CHAR, span.end),
    ] {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        payload.insert(
            key.into(),
            qdrant::Value {
                kind: Some(qdrant::value::Kind::IntegerValue(value)),
            },
        );
    }
}

fn payload_integer(payload: &HashMap<String, qdrant::Value>, key: &str) -> Option<u64> {
    match payload.get(key)?.kind.as_ref()? {
        qdrant::value::Kind::IntegerValue(number) => u64::try_from(*number).ok(),
        _ => None,
    }
}

fn payload_text(payload: &HashMap<String, qdrant::Value>, key: &str) -> Option<String> {
    match payload.get(key)?.kind.as_ref()? {
        qdrant::value::Kind::StringValue(text) => Some(text.clone()),
        _ => None,
    }
}

#[async_trait]
impl SearchBackend for QdrantStore {
    fn describe(&self) -> &SourceInfo {
        &self.settings.info
    }

    async fn search(&self, query: &StoreQuery) -> Result<Vec<Hit>> {
        if query.top_k == 0 {
            return Ok(Vec::new());
        }
        let Some(vector) = query.vector.as_ref() else {
            return Err(Error::invalid(format!(
                "source {} is a dense store and needs a query vector",
                self.settings.info.id
            )));
        };
        if Some(vector.len()) != self.settings.dims {
            return Err(Error::invalid(format!(
                "the query vector has {} dimensions but the source holds {}",
                vector.len(),
                self.settings.dims.unwrap_or_default()
            )));
        }
        let timeout = remote::seconds_left(query.deadline)
            .ok_or_else(|| Error::timeout("the deadline passed before qdrant was asked"))?;
        let Some(filter) = self.filter(query.filter.as_ref())? else {
            return Ok(Vec::new());
        };
        self.ensure_checked().await?;
        let response = self
            .traced()
            .search_points(SearchPoints {
                collection_name: self.settings.name.clone(),
                vector: vector.to_vec(),
                filter,
                limit: query.top_k as u64,
                with_payload: Some(WithPayloadSelector {
                    selector_options: Some(qdrant::with_payload_selector::SelectorOptions::Enable(
                        true,
                    )),
                }),
                score_threshold: self
                    .settings
                    .score_threshold
                    .and_then(|threshold| qdrant_threshold(self.settings.metric, threshold)),
                timeout: Some(timeout),
                ..Default::default()
            })
            .await
            .map_err(|error| self.error("search", error))?;
        Ok(response
            .result
            .into_iter()
            .map(|point| {
                let payload = point.payload;
                let texts: HashMap<&str, String> = [
                    fields::CHUNK_ID,
                    fields::DOC_ID,
                    fields::OBJECT_KEY,
                    fields::TITLE,
                    fields::TEXT,
                    fields::CLOUD,
                    fields::REGION,
                ]
                .into_iter()
                .filter_map(|key| Some((key, payload_text(&payload, key)?)))
                .collect();
                let score = higher_is_better(self.settings.metric, point.score);
                remote::hit_from_fields(
                    score,
                    |key| texts.get(key).map(String::as_str),
                    |key| payload_integer(&payload, key),
                )
            })
            .collect())
    }

    async fn upsert(&self, chunks: &[EmbeddedChunk]) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        remote::check_vectors(&self.settings, chunks)?;
        self.ensure_checked().await?;
        let source_id = &self.settings.info.id;
        for batch in chunks.chunks(self.settings.upsert_batch) {
            let points = batch
                .iter()
                .map(|embedded| {
                    let chunk = &embedded.chunk;
                    let mut payload: HashMap<String, qdrant::Value> =
                        remote::chunk_text_fields(chunk, source_id)
                            .into_iter()
                            .map(|(key, value)| (key.to_string(), text_value(value)))
                            .collect();
                    payload.insert(
                        fields::ORDINAL.to_string(),
                        qdrant::Value {
                            kind: Some(qdrant::value::Kind::IntegerValue(i64::from(chunk.ordinal))),
                        },
                    );
                    add_metadata(&mut payload, &chunk.metadata);
                    if let Some(span) = chunk.span {
                        add_span(&mut payload, span);
                    }
                    PointStruct {
                        id: Some(PointId::from(remote::point_id(&chunk.chunk_id))),
                        payload,
                        vectors: Some(Vectors::from(embedded.vector.clone())),
                    }
                })
                .collect();
            self.traced()
                .upsert_points(UpsertPoints {
                    collection_name: self.settings.name.clone(),
                    wait: Some(true),
                    points,
                    ..Default::default()
                })
                .await
                .map_err(|error| self.error("upsert", error))?;
        }
        Ok(())
    }

    async fn delete_objects(&self, object_keys: &[String]) -> Result<()> {
        if object_keys.is_empty() {
            return Ok(());
        }
        self.ensure_checked().await?;
        let mut filter = Filter::default();
        filter.must.push(Condition {
            condition_one_of: Some(qdrant::condition::ConditionOneOf::Field(FieldCondition {
                key: fields::OBJECT_KEY.to_string(),
                r#match: Some(Match {
                    match_value: Some(qdrant::r#match::MatchValue::Keywords(RepeatedStrings {
                        strings: object_keys.to_vec(),
                    })),
                }),
                ..Default::default()
            })),
        });
        self.traced()
            .delete_points(DeletePoints {
                collection_name: self.settings.name.clone(),
                wait: Some(true),
                points: Some(PointsSelector {
                    points_selector_one_of: Some(
                        qdrant::points_selector::PointsSelectorOneOf::Filter(filter),
                    ),
                }),
                ..Default::default()
            })
            .await
            .map_err(|error| self.error("delete", error))?;
        Ok(())
    }

    /// Writes were sent with `wait = true`: they are applied already.
    async fn commit(&self) -> Result<()> {
        Ok(())
    }

    async fn count(&self) -> Result<u64> {
        self.ensure_checked().await?;
        let response = self
            .traced()
            .count(CountPoints {
                collection_name: self.settings.name.clone(),
                filter: None,
                exact: Some(true),
                ..Default::default()
            })
            .await
            .map_err(|error| self.error("count", error))?;
        Ok(response.result.map_or(0, |result| result.count))
    }

    async fn sample_texts(&self, _n: usize) -> Result<Vec<(String, String)>> {
        Err(Error::invalid(format!(
            "source {:?}: sampling a qdrant collection is not supported yet",
            self.settings.info.id
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l2_distances_become_higher_is_better_scores_and_thresholds_follow() {
        let near = higher_is_better(Metric::L2, 0.5);
        let far = higher_is_better(Metric::L2, 2.0);
        assert!(near > far && far > 0.0 && near <= 1.0);
        assert_eq!(higher_is_better(Metric::Cosine, 0.25), 0.25);
        // A score of 0.5 is a distance of 1.
        assert_eq!(qdrant_threshold(Metric::L2, 0.5), Some(1.0));
        assert_eq!(qdrant_threshold(Metric::L2, 0.0), None);
        assert_eq!(qdrant_threshold(Metric::Dot, 0.3), Some(0.3));
        let distance = qdrant_threshold(Metric::L2, near).unwrap();
        assert!((distance - 0.5).abs() < 1e-6);
    }

    #[test]
    fn a_grpc_call_answered_by_the_rest_port_says_which_port_to_use() {
        let status = tonic::Status::internal("h2 protocol error: http2 error");
        let error = status_error(&status, "docs");
        assert_eq!(error.kind, ErrorKind::Config);
        assert!(
            error.message.contains("usually on port 6334"),
            "{}",
            error.message
        );
    }
}
