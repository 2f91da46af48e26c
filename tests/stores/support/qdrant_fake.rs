//! An in-process Qdrant: the Collections and Points gRPC services from
//! `qdrant-client`'s generated server traits, over an exact in-memory index (every
//! point scored on each search). Implements what the skyfuse adapter uses (collection
//! info/create/exists, upsert, delete by filter, search with filter and score
//! threshold, count, payload indexes); everything else answers `unimplemented`.
//!
//! Shared by the tests (`tests/stores`), the bench (`benches/remote_stores.rs`) and the
//! runnable fake (`examples/qdrant_fake.rs`), which include this file by path.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::qdrant_client::qdrant::collections_server::{Collections, CollectionsServer};
use ::qdrant_client::qdrant::points_server::{Points, PointsServer};
use ::qdrant_client::qdrant::*;
use tonic::{Request, Response, Status};

/// One stored point: its vector (normalized for cosine) and payload.
#[derive(Clone)]
struct StoredPoint {
    vector: Vec<f32>,
    payload: HashMap<String, Value>,
}

struct FakeCollection {
    size: u64,
    distance: Distance,
    points: HashMap<String, StoredPoint>,
    field_indexes: Vec<String>,
}

/// What tests can set and observe.
#[derive(Default)]
pub struct FakeState {
    collections: Mutex<HashMap<String, FakeCollection>>,
    /// Required in the `api-key` header when set.
    pub api_key: Option<String>,
    /// Each search waits this long before answering.
    pub search_delay: Mutex<Duration>,
    /// The `timeout` of the last search request, in seconds.
    pub last_search_timeout: Mutex<Option<u64>>,
    pub searches: Mutex<u64>,
    /// The `traceparent` each request carried (None for a request without one).
    pub traceparents: Mutex<Vec<Option<String>>>,
}

#[derive(Clone)]
pub struct FakeQdrant {
    pub state: Arc<FakeState>,
}

fn point_key(id: &Option<PointId>) -> Result<String, Status> {
    match id.as_ref().and_then(|id| id.point_id_options.as_ref()) {
        Some(point_id::PointIdOptions::Uuid(uuid)) => Ok(uuid.clone()),
        Some(point_id::PointIdOptions::Num(number)) => Ok(number.to_string()),
        None => Err(Status::invalid_argument("a point without an id")),
    }
}

fn dense_vector(vectors: &Option<Vectors>) -> Result<Vec<f32>, Status> {
    match vectors
        .as_ref()
        .and_then(|vectors| vectors.vectors_options.as_ref())
    {
        Some(vectors::VectorsOptions::Vector(vector)) => match &vector.vector {
            Some(vector::Vector::Dense(dense)) => Ok(dense.data.clone()),
            // Older clients send the deprecated flat `data`.
            #[expect(deprecated)]
            None if !vector.data.is_empty() => Ok(vector.data.clone()),
            _ => Err(Status::invalid_argument(
                "only dense vectors are served here",
            )),
        },
        _ => Err(Status::invalid_argument("a point needs one unnamed vector")),
    }
}

fn normalized(vector: &[f32]) -> Vec<f32> {
    let norm = vector.iter().map(|value| value * value).sum::<f32>().sqrt();
    if norm == 0.0 {
        return vector.to_vec();
    }
    vector.iter().map(|value| value / norm).collect()
}

fn keyword(value: &Value) -> Option<&str> {
    match value.kind.as_ref()? {
        value::Kind::StringValue(text) => Some(text),
        _ => None,
    }
}

/// The payload value at a key, `a.b` reaching into nested objects, as Qdrant reads
/// payload keys.
fn payload_value<'a>(payload: &'a HashMap<String, Value>, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let mut value = payload.get(parts.next()?)?;
    for part in parts {
        let Some(value::Kind::StructValue(object)) = value.kind.as_ref() else {
            return None;
        };
        value = object.fields.get(part)?;
    }
    Some(value)
}

fn number(value: &Value) -> Option<f64> {
    match value.kind.as_ref()? {
        value::Kind::IntegerValue(number) => Some(*number as f64),
        value::Kind::DoubleValue(number) => Some(*number),
        _ => None,
    }
}

/// Whether the payload passes the filter as Qdrant documents it: every `must`
/// condition, at least one `should` when there are any, no `must_not`; a condition on
/// a missing key is false. Keyword matches and numeric ranges on fields, and nested
/// filters; anything else is refused as unimplemented.
fn passes(filter: &Option<Filter>, payload: &HashMap<String, Value>) -> Result<bool, Status> {
    let Some(filter) = filter else {
        return Ok(true);
    };
    filter_passes(filter, payload)
}

fn filter_passes(filter: &Filter, payload: &HashMap<String, Value>) -> Result<bool, Status> {
    if filter.min_should.is_some() {
        return Err(Status::unimplemented("min_should is not served here"));
    }
    for condition in &filter.must {
        if !condition_passes(condition, payload)? {
            return Ok(false);
        }
    }
    for condition in &filter.must_not {
        if condition_passes(condition, payload)? {
            return Ok(false);
        }
    }
    if filter.should.is_empty() {
        return Ok(true);
    }
    for condition in &filter.should {
        if condition_passes(condition, payload)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn condition_passes(
    condition: &Condition,
    payload: &HashMap<String, Value>,
) -> Result<bool, Status> {
    let field = match &condition.condition_one_of {
        Some(condition::ConditionOneOf::Filter(nested)) => return filter_passes(nested, payload),
        Some(condition::ConditionOneOf::Field(field)) => field,
        _ => {
            return Err(Status::unimplemented(
                "only field conditions and nested filters are served here",
            ));
        }
    };
    let value = payload_value(payload, &field.key);
    if let Some(range) = &field.range {
        let Some(number) = value.and_then(number) else {
            return Ok(false);
        };
        return Ok(range.gte.is_none_or(|bound| number >= bound)
            && range.gt.is_none_or(|bound| number > bound)
            && range.lte.is_none_or(|bound| number <= bound)
            && range.lt.is_none_or(|bound| number < bound));
    }
    let value = value.and_then(keyword);
    match field.r#match.as_ref().and_then(|m| m.match_value.as_ref()) {
        Some(r#match::MatchValue::Keyword(wanted)) => Ok(value == Some(wanted.as_str())),
        Some(r#match::MatchValue::Keywords(wanted)) => {
            Ok(value.is_some_and(|value| wanted.strings.iter().any(|w| w == value)))
        }
        _ => Err(Status::unimplemented(
            "only keyword matches and ranges are served here",
        )),
    }
}

impl FakeQdrant {
    pub fn new(api_key: Option<&str>) -> Self {
        Self {
            state: Arc::new(FakeState {
                api_key: api_key.map(str::to_string),
                ..FakeState::default()
            }),
        }
    }

    /// Serves on `address` (port 0 for any) until the runtime stops; returns the
    /// bound address.
    pub async fn serve(&self, address: SocketAddr) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let bound = listener.local_addr().unwrap();
        // As Qdrant's server does: no Nagle delay on the answers.
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let api_key = self.state.api_key.clone();
        let state = Arc::clone(&self.state);
        let check = move |request: Request<()>| -> Result<Request<()>, Status> {
            let traceparent = request
                .metadata()
                .get("traceparent")
                .and_then(|value| value.to_str().ok())
                .map(str::to_string);
            state.traceparents.lock().unwrap().push(traceparent);
            if let Some(expected) = &api_key {
                let sent = request
                    .metadata()
                    .get("api-key")
                    .and_then(|value| value.to_str().ok());
                if sent != Some(expected.as_str()) {
                    return Err(Status::unauthenticated("Invalid api-key"));
                }
            }
            Ok(request)
        };
        let collections = CollectionsServer::with_interceptor(self.clone(), check.clone());
        let points = tonic::service::interceptor::InterceptedService::new(
            PointsServer::new(self.clone()).max_decoding_message_size(64 * 1024 * 1024),
            check,
        );
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(collections)
                .add_service(points)
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        bound
    }

    /// Creates a collection directly (a store someone else made).
    pub fn create(&self, name: &str, size: u64, distance: Distance) {
        self.state.collections.lock().unwrap().insert(
            name.to_string(),
            FakeCollection {
                size,
                distance,
                points: HashMap::new(),
                field_indexes: Vec::new(),
            },
        );
    }

    pub fn field_indexes(&self, name: &str) -> Vec<String> {
        self.state.collections.lock().unwrap()[name]
            .field_indexes
            .clone()
    }

    fn with_collection<T>(
        &self,
        name: &str,
        work: impl FnOnce(&mut FakeCollection) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let mut collections = self.state.collections.lock().unwrap();
        let collection = collections
            .get_mut(name)
            .ok_or_else(|| Status::not_found(format!("Collection `{name}` doesn't exist!")))?;
        work(collection)
    }
}

fn done() -> Response<PointsOperationResponse> {
    Response::new(PointsOperationResponse {
        result: Some(UpdateResult {
            operation_id: Some(0),
            status: UpdateStatus::Completed.into(),
        }),
        time: 0.0,
        usage: None,
    })
}

/// Methods the fake does not serve, written in the shape `async_trait` gives trait
/// methods (an attribute macro does not see into macro output).
macro_rules! unimplemented_methods {
    ($($method:ident($request:ty) -> $response:ty;)*) => {
        $(
            fn $method<'life0, 'async_trait>(
                &'life0 self,
                _request: Request<$request>,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<Response<$response>, Status>> + Send + 'async_trait>,
            >
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async move {
                    Err(Status::unimplemented(concat!(stringify!($method), " is not served by the fake")))
                })
            }
        )*
    };
}

#[tonic::async_trait]
impl Collections for FakeQdrant {
    async fn get(
        &self,
        request: Request<GetCollectionInfoRequest>,
    ) -> Result<Response<GetCollectionInfoResponse>, Status> {
        let name = request.into_inner().collection_name;
        let info = self.with_collection(&name, |collection| {
            Ok(CollectionInfo {
                status: CollectionStatus::Green.into(),
                points_count: Some(collection.points.len() as u64),
                config: Some(CollectionConfig {
                    params: Some(CollectionParams {
                        shard_number: 1,
                        vectors_config: Some(VectorsConfig {
                            config: Some(vectors_config::Config::Params(VectorParams {
                                size: collection.size,
                                distance: collection.distance.into(),
                                ..Default::default()
                            })),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
        })?;
        Ok(Response::new(GetCollectionInfoResponse {
            result: Some(info),
            time: 0.0,
        }))
    }

    async fn create(
        &self,
        request: Request<CreateCollection>,
    ) -> Result<Response<CollectionOperationResponse>, Status> {
        let request = request.into_inner();
        let Some(VectorsConfig {
            config: Some(vectors_config::Config::Params(params)),
        }) = request.vectors_config
        else {
            return Err(Status::invalid_argument(
                "one unnamed vector config is required",
            ));
        };
        let distance = Distance::try_from(params.distance)
            .ok()
            .filter(|distance| *distance != Distance::UnknownDistance)
            .ok_or_else(|| Status::invalid_argument("unknown distance"))?;
        if params.size == 0 {
            return Err(Status::invalid_argument("vector size must be at least 1"));
        }
        let mut collections = self.state.collections.lock().unwrap();
        if collections.contains_key(&request.collection_name) {
            return Err(Status::already_exists(format!(
                "Collection `{}` already exists!",
                request.collection_name
            )));
        }
        collections.insert(
            request.collection_name,
            FakeCollection {
                size: params.size,
                distance,
                points: HashMap::new(),
                field_indexes: Vec::new(),
            },
        );
        Ok(Response::new(CollectionOperationResponse {
            result: true,
            time: 0.0,
        }))
    }

    async fn collection_exists(
        &self,
        request: Request<CollectionExistsRequest>,
    ) -> Result<Response<CollectionExistsResponse>, Status> {
        let name = request.into_inner().collection_name;
        let exists = self.state.collections.lock().unwrap().contains_key(&name);
        Ok(Response::new(CollectionExistsResponse {
            result: Some(CollectionExists { exists }),
            time: 0.0,
        }))
    }

    unimplemented_methods! {
        list(ListCollectionsRequest) -> ListCollectionsResponse;
        update(UpdateCollection) -> CollectionOperationResponse;
        delete(DeleteCollection) -> CollectionOperationResponse;
        update_aliases(ChangeAliases) -> CollectionOperationResponse;
        list_collection_aliases(ListCollectionAliasesRequest) -> ListAliasesResponse;
        list_aliases(ListAliasesRequest) -> ListAliasesResponse;
        collection_cluster_info(CollectionClusterInfoRequest) -> CollectionClusterInfoResponse;
        update_collection_cluster_setup(UpdateCollectionClusterSetupRequest) -> UpdateCollectionClusterSetupResponse;
        create_shard_key(CreateShardKeyRequest) -> CreateShardKeyResponse;
        delete_shard_key(DeleteShardKeyRequest) -> DeleteShardKeyResponse;
        list_shard_keys(ListShardKeysRequest) -> ListShardKeysResponse;
    }
}

#[tonic::async_trait]
impl Points for FakeQdrant {
    async fn upsert(
        &self,
        request: Request<UpsertPoints>,
    ) -> Result<Response<PointsOperationResponse>, Status> {
        let request = request.into_inner();
        self.with_collection(&request.collection_name, |collection| {
            // Check the whole batch first: Qdrant applies a batch or refuses it.
            let mut batch = Vec::with_capacity(request.points.len());
            for point in request.points {
                let vector = dense_vector(&point.vectors)?;
                if vector.len() as u64 != collection.size {
                    return Err(Status::invalid_argument(format!(
                        "Wrong input: Vector dimension error: expected dim: {}, got {}",
                        collection.size,
                        vector.len()
                    )));
                }
                let vector = if collection.distance == Distance::Cosine {
                    normalized(&vector)
                } else {
                    vector
                };
                batch.push((
                    point_key(&point.id)?,
                    StoredPoint {
                        vector,
                        payload: point.payload,
                    },
                ));
            }
            collection.points.extend(batch);
            Ok(())
        })?;
        Ok(done())
    }

    async fn delete(
        &self,
        request: Request<DeletePoints>,
    ) -> Result<Response<PointsOperationResponse>, Status> {
        let request = request.into_inner();
        self.with_collection(&request.collection_name, |collection| {
            match request
                .points
                .and_then(|selector| selector.points_selector_one_of)
            {
                Some(points_selector::PointsSelectorOneOf::Filter(filter)) => {
                    let filter = Some(filter);
                    let mut kept = HashMap::new();
                    for (id, point) in collection.points.drain() {
                        if !passes(&filter, &point.payload)? {
                            kept.insert(id, point);
                        }
                    }
                    collection.points = kept;
                }
                Some(points_selector::PointsSelectorOneOf::Points(list)) => {
                    for id in list.ids {
                        collection.points.remove(&point_key(&Some(id))?);
                    }
                }
                None => return Err(Status::invalid_argument("delete needs a selector")),
            }
            Ok(())
        })?;
        Ok(done())
    }

    async fn search(
        &self,
        request: Request<SearchPoints>,
    ) -> Result<Response<SearchResponse>, Status> {
        let request = request.into_inner();
        *self.state.searches.lock().unwrap() += 1;
        *self.state.last_search_timeout.lock().unwrap() = request.timeout;
        let delay = *self.state.search_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let with_payload = matches!(
            request
                .with_payload
                .as_ref()
                .and_then(|selector| selector.selector_options.as_ref()),
            Some(with_payload_selector::SelectorOptions::Enable(true))
        );
        let result = self.with_collection(&request.collection_name, |collection| {
            if request.vector.len() as u64 != collection.size {
                return Err(Status::invalid_argument(format!(
                    "Wrong input: Vector dimension error: expected dim: {}, got {}",
                    collection.size,
                    request.vector.len()
                )));
            }
            let distance = collection.distance;
            let query = if distance == Distance::Cosine {
                normalized(&request.vector)
            } else {
                request.vector.clone()
            };
            let mut scored = Vec::new();
            for (id, point) in &collection.points {
                if !passes(&request.filter, &point.payload)? {
                    continue;
                }
                let score = match distance {
                    Distance::Euclid => point
                        .vector
                        .iter()
                        .zip(&query)
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum::<f32>()
                        .sqrt(),
                    _ => point.vector.iter().zip(&query).map(|(a, b)| a * b).sum(),
                };
                let kept = match (request.score_threshold, distance) {
                    (None, _) => true,
                    (Some(threshold), Distance::Euclid) => score <= threshold,
                    (Some(threshold), _) => score >= threshold,
                };
                if kept {
                    scored.push((score, id, point));
                }
            }
            // Best first; Euclid is a distance, smaller is better. Ties by id.
            scored.sort_by(|left, right| {
                let order = if distance == Distance::Euclid {
                    left.0.total_cmp(&right.0)
                } else {
                    right.0.total_cmp(&left.0)
                };
                order.then_with(|| left.1.cmp(right.1))
            });
            let offset = request.offset.unwrap_or(0) as usize;
            Ok(scored
                .into_iter()
                .skip(offset)
                .take(request.limit as usize)
                .map(|(score, id, point)| ScoredPoint {
                    id: Some(PointId::from(id.clone())),
                    payload: if with_payload {
                        point.payload.clone()
                    } else {
                        HashMap::new()
                    },
                    score,
                    ..Default::default()
                })
                .collect())
        })?;
        Ok(Response::new(SearchResponse {
            result,
            time: 0.0,
            usage: None,
        }))
    }

    async fn count(
        &self,
        request: Request<CountPoints>,
    ) -> Result<Response<CountResponse>, Status> {
        let request = request.into_inner();
        let count = self.with_collection(&request.collection_name, |collection| {
            let mut count = 0;
            for point in collection.points.values() {
                if passes(&request.filter, &point.payload)? {
                    count += 1;
                }
            }
            Ok(count)
        })?;
        Ok(Response::new(CountResponse {
            result: Some(CountResult { count }),
            time: 0.0,
            usage: None,
        }))
    }

    async fn create_field_index(
        &self,
        request: Request<CreateFieldIndexCollection>,
    ) -> Result<Response<PointsOperationResponse>, Status> {
        let request = request.into_inner();
        if request.field_type != Some(FieldType::Keyword.into())
            && request.field_type != Some(FieldType::Integer.into())
        {
            return Err(Status::unimplemented(
                "only keyword and integer payload indexes are served here",
            ));
        }
        self.with_collection(&request.collection_name, |collection| {
            // Qdrant answers ok for an index that exists, and keeps one.
            if !collection.field_indexes.contains(&request.field_name) {
                collection.field_indexes.push(request.field_name.clone());
            }
            Ok(())
        })?;
        Ok(done())
    }

    unimplemented_methods! {
        get(GetPoints) -> GetResponse;
        update_vectors(UpdatePointVectors) -> PointsOperationResponse;
        delete_vectors(DeletePointVectors) -> PointsOperationResponse;
        set_payload(SetPayloadPoints) -> PointsOperationResponse;
        overwrite_payload(SetPayloadPoints) -> PointsOperationResponse;
        delete_payload(DeletePayloadPoints) -> PointsOperationResponse;
        clear_payload(ClearPayloadPoints) -> PointsOperationResponse;
        delete_field_index(DeleteFieldIndexCollection) -> PointsOperationResponse;
        create_vector_name(CreateVectorNameRequest) -> PointsOperationResponse;
        delete_vector_name(DeleteVectorNameRequest) -> PointsOperationResponse;
        search_batch(SearchBatchPoints) -> SearchBatchResponse;
        search_groups(SearchPointGroups) -> SearchGroupsResponse;
        scroll(ScrollPoints) -> ScrollResponse;
        recommend(RecommendPoints) -> RecommendResponse;
        recommend_batch(RecommendBatchPoints) -> RecommendBatchResponse;
        recommend_groups(RecommendPointGroups) -> RecommendGroupsResponse;
        discover(DiscoverPoints) -> DiscoverResponse;
        discover_batch(DiscoverBatchPoints) -> DiscoverBatchResponse;
        update_batch(UpdateBatchPoints) -> UpdateBatchResponse;
        query(QueryPoints) -> QueryResponse;
        query_batch(QueryBatchPoints) -> QueryBatchResponse;
        query_groups(QueryPointGroups) -> QueryGroupsResponse;
        facet(FacetCounts) -> FacetResponse;
        search_matrix_pairs(SearchMatrixPoints) -> SearchMatrixPairsResponse;
        search_matrix_offsets(SearchMatrixPoints) -> SearchMatrixOffsetsResponse;
    }
}
