//! The contract every backend keeps, run against each: local tantivy, local dense,
//! Qdrant and OpenSearch (the last two against the in-process servers, or live ones
//! when `QDRANT_URL` / `OPENSEARCH_URL` are set).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use std::collections::BTreeMap;

use skyfuse::document::{CharSpan, Chunk, ChunkMetadata, EmbeddedChunk, Hit};
use skyfuse::error::{ErrorKind, Result};
use skyfuse::stores::filter::{Filter, FilterRequest, RangeBounds};
use skyfuse::stores::resilient::{ResilienceSettings, ResilientBackend};
use skyfuse::stores::{SearchBackend, StoreKind, StoreQuery};

pub const DIMS: usize = 4;

/// How the suite gets stores of one backend.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A store named `name` (a fresh one the first time) for vectors of `dims`.
    async fn open(&self, name: &str, dims: usize) -> Result<Arc<dyn SearchBackend>>;

    /// Makes every later search stall for `delay`; false when the backend cannot.
    fn stall_searches(&self, _delay: Duration) -> bool {
        false
    }

    /// Whether the backend can filter by object key prefix (Qdrant cannot).
    fn supports_object_key_prefix(&self) -> bool {
        true
    }

    /// Whether stores have a vector dimension to check.
    fn has_dimensions(&self) -> bool {
        true
    }
}

fn chunk(doc: &str, ordinal: u32, text: &str, cloud: &str, vector: [f32; DIMS]) -> EmbeddedChunk {
    EmbeddedChunk {
        chunk: Chunk {
            chunk_id: Chunk::make_id(doc, ordinal),
            doc_id: doc.to_string(),
            object_key: format!("compass/{doc}"),
            title: doc.into(),
            text: text.into(),
            ordinal,
            cloud: cloud.to_string(),
            region: format!("{cloud}-region-1"),
            metadata: Default::default(),
            // Where the chunk would lie in its document: chunks of 100 chars or less.
            span: Some(CharSpan {
                start: u64::from(ordinal) * 100,
                end: u64::from(ordinal) * 100 + text.chars().count() as u64,
            }),
        },
        vector: vector.to_vec(),
    }
}

/// Object metadata of the sample's documents; `between` has none, as a chunk indexed
/// before chunks kept metadata.
fn metadata_of(doc: &str) -> ChunkMetadata {
    let (content_type, size_bytes, last_modified, team) = match doc {
        // 2024-01-01, 2024-06-01 and 2024-03-01 at midnight UTC.
        "east" => ("text/plain", 100, 1_704_067_200, Some("search")),
        "north" => ("application/pdf", 5_000, 1_717_200_000, Some("ingest")),
        "west" => ("text/plain", 300, 1_709_251_200, None),
        _ => return ChunkMetadata::default(),
    };
    ChunkMetadata {
        content_type: Some(content_type.to_string()),
        size_bytes: Some(size_bytes),
        last_modified: Some(last_modified),
        etag: Some(format!("etag-{doc}")),
        namespace: None,
        fields: team
            .map(|team| BTreeMap::from([("team".to_string(), team.to_string())]))
            .unwrap_or_default(),
    }
}

pub fn sample() -> Vec<EmbeddedChunk> {
    let mut chunks = vec![
        chunk(
            "east",
            0,
            "sunrise over the eastern harbour",
            "aws",
            [1.0, 0.0, 0.0, 0.0],
        ),
        chunk(
            "north",
            0,
            "polar ice and northern lights",
            "gcp",
            [0.0, 1.0, 0.0, 0.0],
        ),
        chunk(
            "north",
            1,
            "northern lights dance on polar snow",
            "gcp",
            [0.1, 0.9, 0.0, 0.0],
        ),
        chunk(
            "west",
            0,
            "sunset behind the western hills",
            "azure",
            [0.0, 0.0, 1.0, 0.0],
        ),
        chunk(
            "between",
            0,
            "sunrise and sunset by the harbour hills",
            "aws",
            [0.7, 0.0, 0.7, 0.0],
        ),
    ];
    for embedded in &mut chunks {
        embedded.chunk.metadata = metadata_of(&embedded.chunk.doc_id);
    }
    chunks
}

/// A query a lexical or dense store understands: the text for the one, the vector
/// for the other.
fn query(
    store: &dyn SearchBackend,
    text: &str,
    vector: [f32; DIMS],
    top_k: usize,
    filter: Option<Filter>,
) -> StoreQuery {
    StoreQuery {
        text: text.to_string(),
        vector: (store.describe().kind == StoreKind::Dense).then(|| Arc::new(vector.to_vec())),
        top_k,
        deadline: Instant::now() + Duration::from_secs(10),
        filter,
    }
}

fn ids(hits: &[Hit]) -> Vec<&str> {
    hits.iter().map(|hit| hit.chunk_id.as_str()).collect()
}

async fn filled(harness: &dyn Harness, name: &str) -> Arc<dyn SearchBackend> {
    let store = harness.open(name, DIMS).await.expect("open");
    assert_eq!(
        store.count().await.unwrap(),
        0,
        "{name}: a new store is empty"
    );
    store.upsert(&sample()).await.unwrap();
    store.commit().await.unwrap();
    assert_eq!(
        store.count().await.unwrap(),
        5,
        "{name}: every chunk counted"
    );
    store
}

/// The whole suite; `prefix` keeps the names of one run apart from another's.
pub async fn run(harness: &dyn Harness, prefix: &str) {
    nearest_first_with_whole_chunks(harness, &format!("{prefix}-order")).await;
    filters_restrict_the_hits(harness, &format!("{prefix}-filter")).await;
    delete_removes_exactly_the_objects_chunks(harness, &format!("{prefix}-delete")).await;
    re_upserting_replaces_in_place(harness, &format!("{prefix}-reupsert")).await;
    tenants_never_see_each_other(harness, &format!("{prefix}-tenants")).await;
    if harness.has_dimensions() {
        another_dimension_is_refused_at_open(harness, &format!("{prefix}-dims")).await;
    }
    the_deadline_is_honoured(harness, &format!("{prefix}-deadline")).await;
}

async fn nearest_first_with_whole_chunks(harness: &dyn Harness, name: &str) {
    let store = filled(harness, name).await;
    let store = store.as_ref();
    let hits = store
        .search(&query(
            store,
            "sunrise harbour",
            [1.0, 0.0, 0.2, 0.0],
            2,
            None,
        ))
        .await
        .unwrap();
    assert_eq!(ids(&hits), vec!["east#0", "between#0"], "{name}");
    assert!(hits[0].score >= hits[1].score, "{name}: best first");
    let east = &hits[0];
    assert_eq!(
        (east.doc_id.as_str(), east.object_key.as_str(), &*east.title),
        ("east", "compass/east", "east")
    );
    assert_eq!(&*east.text, "sunrise over the eastern harbour");
    assert_eq!(
        east.span,
        Some(CharSpan { start: 0, end: 32 }),
        "{name}: the chunk's place in its document is kept"
    );
    assert_eq!(
        (east.cloud.as_str(), east.region.as_str()),
        ("aws", "aws-region-1")
    );
    if store.describe().kind == StoreKind::Dense {
        let all = store
            .search(&query(store, "", [1.0, 0.0, 0.2, 0.0], 10, None))
            .await
            .unwrap();
        assert_eq!(
            ids(&all),
            vec!["east#0", "between#0", "west#0", "north#1", "north#0"],
            "{name}: the whole order"
        );
    }
    let none = store
        .search(&query(store, "sunrise", [1.0, 0.0, 0.0, 0.0], 0, None))
        .await
        .unwrap();
    assert!(none.is_empty(), "{name}: top_k 0 is empty");
}

fn eq(field: &str, value: &str) -> FilterRequest {
    FilterRequest::Eq {
        field: field.into(),
        value: value.into(),
    }
}

fn range(field: &str, bounds: [Option<&str>; 4]) -> FilterRequest {
    let [gte, gt, lte, lt] = bounds.map(|bound| bound.map(str::to_string));
    FilterRequest::Range {
        field: field.into(),
        bounds: RangeBounds { gte, gt, lte, lt },
    }
}

fn not(inner: FilterRequest) -> FilterRequest {
    FilterRequest::Not(Box::new(inner))
}

fn prefix(prefix: &str) -> FilterRequest {
    FilterRequest::Prefix {
        field: "object_key".into(),
        prefix: prefix.into(),
    }
}

/// The filter cases every backend answers alike: (what, filter, the chunks that match).
/// `store_id` is the source the store serves, for the `source` cases.
pub fn filter_cases(store_id: &str) -> Vec<(&'static str, FilterRequest, Vec<&'static str>)> {
    vec![
        ("cloud eq", eq("cloud", "aws"), vec!["between#0", "east#0"]),
        (
            "not cloud in",
            not(FilterRequest::In {
                field: "cloud".into(),
                values: vec!["aws".into(), "azure".into()],
            }),
            vec!["north#0", "north#1"],
        ),
        (
            "or of doc_id and region",
            FilterRequest::Or(vec![eq("doc_id", "west"), eq("region", "gcp-region-1")]),
            vec!["north#0", "north#1", "west#0"],
        ),
        (
            "content_type eq",
            eq("content_type", "text/plain"),
            vec!["east#0", "west#0"],
        ),
        (
            "not content_type: a chunk without one matches",
            not(eq("content_type", "application/pdf")),
            vec!["between#0", "east#0", "west#0"],
        ),
        (
            "size_bytes inclusive range",
            range("size_bytes", [Some("300"), None, Some("5000"), None]),
            vec!["north#0", "north#1", "west#0"],
        ),
        (
            "size_bytes exclusive range",
            range("size_bytes", [None, Some("100"), None, Some("5000")]),
            vec!["west#0"],
        ),
        (
            "last_modified since a date",
            range("last_modified", [Some("2024-02-01"), None, None, None]),
            vec!["north#0", "north#1", "west#0"],
        ),
        (
            "last_modified before a timestamp",
            range(
                "last_modified",
                [None, None, None, Some("2024-03-01T00:00:00Z")],
            ),
            vec!["east#0"],
        ),
        (
            "metadata in",
            FilterRequest::In {
                field: "metadata.team".into(),
                values: vec!["search".into(), "ingest".into()],
            },
            vec!["east#0", "north#0", "north#1"],
        ),
        (
            "and of metadata and cloud",
            FilterRequest::And(vec![eq("metadata.team", "search"), eq("cloud", "aws")]),
            vec!["east#0"],
        ),
        (
            "this source",
            eq("source", store_id),
            vec!["between#0", "east#0", "north#0", "north#1", "west#0"],
        ),
        ("another source", eq("source", "elsewhere"), vec![]),
        (
            "object_key prefix",
            prefix("compass/n"),
            vec!["north#0", "north#1"],
        ),
        (
            "prefix and not",
            FilterRequest::And(vec![prefix("compass/"), not(eq("cloud", "gcp"))]),
            vec!["between#0", "east#0", "west#0"],
        ),
    ]
}

fn uses_prefix(request: &FilterRequest) -> bool {
    match request {
        FilterRequest::Prefix { .. } => true,
        FilterRequest::And(children) | FilterRequest::Or(children) => {
            children.iter().any(uses_prefix)
        }
        FilterRequest::Not(inner) => uses_prefix(inner),
        _ => false,
    }
}

/// The same filter cases on every backend, with a query that reaches every chunk, so
/// the hits are exactly the chunks the filter keeps. A backend that cannot express a
/// case must refuse it ("filter not supported") rather than answer unfiltered.
async fn filters_restrict_the_hits(harness: &dyn Harness, name: &str) {
    let store = filled(harness, name).await;
    let store = store.as_ref();
    let metadata_fields = ["team".to_string()];
    for (case, request, expected) in filter_cases(&store.describe().id) {
        let filter = request.check(&metadata_fields).expect(case);
        let mut search = query(
            store,
            "sunrise sunset northern lights harbour hills",
            [0.5, 0.5, 0.5, 0.5],
            10,
            None,
        );
        search.filter = Some(filter);
        let uses_prefix = uses_prefix(&request);
        let result = store.search(&search).await;
        if uses_prefix && !harness.supports_object_key_prefix() {
            let error = result.expect_err(case);
            assert_eq!(error.kind, ErrorKind::InvalidArgument, "{name}: {case}");
            assert!(
                error.message.contains("filter not supported: prefix"),
                "{name}: {case}: {}",
                error.message
            );
            continue;
        }
        let hits = result.unwrap_or_else(|error| panic!("{name}: {case}: {error}"));
        let mut found = ids(&hits);
        found.sort_unstable();
        assert_eq!(found, expected, "{name}: {case}");
    }
}

/// The sample as tenant `namespace` wrote it: the same texts and vectors, its own ids.
fn sample_of(namespace: &str) -> Vec<EmbeddedChunk> {
    let mut chunks = sample();
    for embedded in &mut chunks {
        let chunk = &mut embedded.chunk;
        chunk.doc_id = format!("{namespace}:{}", chunk.doc_id);
        chunk.chunk_id = Chunk::make_id(&chunk.doc_id, chunk.ordinal);
        chunk.object_key = format!("api/compass@{namespace}/{}", chunk.object_key);
        chunk.metadata.namespace = Some(namespace.to_string());
    }
    chunks
}

/// Two tenants with identical documents beside chunks of no tenant: a search bound to a
/// namespace (as the service binds every search of a pinned caller) sees only that
/// tenant's chunks, alone or under another filter, and a namespace with no chunks sees
/// nothing.
async fn tenants_never_see_each_other(harness: &dyn Harness, name: &str) {
    let store = filled(harness, name).await;
    let store = store.as_ref();
    // `acme` and `team-acme`: a store that analysed the namespace as text would let
    // the term `acme` match both.
    for tenant in ["acme", "team-acme"] {
        store.upsert(&sample_of(tenant)).await.unwrap();
    }
    store.commit().await.unwrap();
    assert_eq!(store.count().await.unwrap(), 15, "{name}");
    let cloud_aws = FilterRequest::Eq {
        field: "cloud".into(),
        value: "aws".into(),
    }
    .check(&[])
    .unwrap();
    let cases: [(&str, Option<Filter>, Vec<&str>); 4] = [
        (
            "acme",
            None,
            vec![
                "acme:between#0",
                "acme:east#0",
                "acme:north#0",
                "acme:north#1",
                "acme:west#0",
            ],
        ),
        (
            "team-acme",
            Some(cloud_aws.clone()),
            vec!["team-acme:between#0", "team-acme:east#0"],
        ),
        (
            "acme",
            Some(cloud_aws),
            vec!["acme:between#0", "acme:east#0"],
        ),
        ("initech", None, vec![]),
    ];
    for (tenant, filter, expected) in cases {
        let mut search = query(
            store,
            "sunrise sunset northern lights harbour hills",
            [0.5, 0.5, 0.5, 0.5],
            20,
            None,
        );
        search.filter = Some(Filter::within_namespaces(filter, &[tenant.to_string()]));
        let hits = store
            .search(&search)
            .await
            .unwrap_or_else(|error| panic!("{name}: {tenant}: {error}"));
        let mut found = ids(&hits);
        found.sort_unstable();
        assert_eq!(found, expected, "{name}: {tenant}");
    }
}

async fn delete_removes_exactly_the_objects_chunks(harness: &dyn Harness, name: &str) {
    let store = filled(harness, name).await;
    let store = store.as_ref();
    store
        .delete_objects(&["compass/north".to_string()])
        .await
        .unwrap();
    store.commit().await.unwrap();
    assert_eq!(store.count().await.unwrap(), 3, "{name}");
    let hits = store
        .search(&query(
            store,
            "northern lights polar sunrise",
            [0.0, 1.0, 0.0, 0.0],
            10,
            None,
        ))
        .await
        .unwrap();
    assert!(
        hits.iter().all(|hit| hit.doc_id != "north"),
        "{name}: {:?}",
        ids(&hits)
    );
    assert!(!hits.is_empty(), "{name}: the others remain");
}

async fn re_upserting_replaces_in_place(harness: &dyn Harness, name: &str) {
    let store = filled(harness, name).await;
    let store = store.as_ref();
    store.upsert(&sample()).await.unwrap();
    store.commit().await.unwrap();
    assert_eq!(
        store.count().await.unwrap(),
        5,
        "{name}: same chunks, same count"
    );
    let mut revised = sample()[0].clone();
    revised.chunk.text = "sunrise over the eastern harbour, revised".into();
    store.upsert(&[revised]).await.unwrap();
    store.commit().await.unwrap();
    assert_eq!(store.count().await.unwrap(), 5, "{name}");
    let hits = store
        .search(&query(
            store,
            "sunrise harbour",
            [1.0, 0.0, 0.0, 0.0],
            1,
            None,
        ))
        .await
        .unwrap();
    assert_eq!(ids(&hits), vec!["east#0"], "{name}");
    assert!(
        hits[0].text.ends_with("revised"),
        "{name}: {}",
        hits[0].text
    );
}

async fn another_dimension_is_refused_at_open(harness: &dyn Harness, name: &str) {
    let _store = filled(harness, name).await;
    let error = match harness.open(name, DIMS * 2).await {
        Ok(_) => panic!(
            "{name}: a store of {DIMS} dimensions opened as {}",
            DIMS * 2
        ),
        Err(error) => error,
    };
    assert_eq!(error.kind, ErrorKind::Config, "{name}: {}", error.message);
    assert!(
        error.message.contains(&DIMS.to_string())
            && error.message.contains(&(DIMS * 2).to_string()),
        "{name}: the message names both dimensions: {}",
        error.message
    );
}

async fn the_deadline_is_honoured(harness: &dyn Harness, name: &str) {
    let store = filled(harness, name).await;
    let stalled = harness.stall_searches(Duration::from_secs(5));
    let wrapped = ResilientBackend::new(store, ResilienceSettings::default());
    let mut search = query(&wrapped, "sunrise", [1.0, 0.0, 0.0, 0.0], 3, None);
    search.deadline = Instant::now() + Duration::from_millis(300);
    let started = Instant::now();
    let result = wrapped.search(&search).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "{name}: answered after {took:?}"
    );
    if stalled {
        let error = result.expect_err("a stalled store cannot answer in time");
        assert_eq!(error.kind, ErrorKind::Timeout, "{name}: {}", error.message);
        harness.stall_searches(Duration::ZERO);
    } else {
        result.unwrap();
    }
}
