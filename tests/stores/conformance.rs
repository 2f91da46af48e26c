//! The contract every backend keeps, run against each: local tantivy, local dense,
//! Qdrant and OpenSearch (the last two against the in-process servers, or live ones
//! when `QDRANT_URL` / `OPENSEARCH_URL` are set).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use skyfuse::document::{Chunk, EmbeddedChunk, Hit};
use skyfuse::error::{ErrorKind, Result};
use skyfuse::stores::resilient::{ResilienceSettings, ResilientBackend};
use skyfuse::stores::{SearchBackend, StoreFilter, StoreKind, StoreQuery};

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
            title: doc.to_string(),
            text: text.to_string(),
            ordinal,
            cloud: cloud.to_string(),
            region: format!("{cloud}-region-1"),
        },
        vector: vector.to_vec(),
    }
}

pub fn sample() -> Vec<EmbeddedChunk> {
    vec![
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
    ]
}

/// A query a lexical or dense store understands: the text for the one, the vector
/// for the other.
fn query(
    store: &dyn SearchBackend,
    text: &str,
    vector: [f32; DIMS],
    top_k: usize,
    filter: StoreFilter,
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
            StoreFilter::default(),
        ))
        .await
        .unwrap();
    assert_eq!(ids(&hits), vec!["east#0", "between#0"], "{name}");
    assert!(hits[0].score >= hits[1].score, "{name}: best first");
    let east = &hits[0];
    assert_eq!(
        (
            east.doc_id.as_str(),
            east.object_key.as_str(),
            east.title.as_str()
        ),
        ("east", "compass/east", "east")
    );
    assert_eq!(east.text, "sunrise over the eastern harbour");
    assert_eq!(
        (east.cloud.as_str(), east.region.as_str()),
        ("aws", "aws-region-1")
    );
    if store.describe().kind == StoreKind::Dense {
        let all = store
            .search(&query(
                store,
                "",
                [1.0, 0.0, 0.2, 0.0],
                10,
                StoreFilter::default(),
            ))
            .await
            .unwrap();
        assert_eq!(
            ids(&all),
            vec!["east#0", "between#0", "west#0", "north#1", "north#0"],
            "{name}: the whole order"
        );
    }
    let none = store
        .search(&query(
            store,
            "sunrise",
            [1.0, 0.0, 0.0, 0.0],
            0,
            StoreFilter::default(),
        ))
        .await
        .unwrap();
    assert!(none.is_empty(), "{name}: top_k 0 is empty");
}

async fn filters_restrict_the_hits(harness: &dyn Harness, name: &str) {
    let store = filled(harness, name).await;
    let store = store.as_ref();
    let by_doc = StoreFilter {
        doc_ids: vec!["west".into(), "north".into()],
        clouds: Vec::new(),
    };
    let hits = store
        .search(&query(
            store,
            "sunset lights",
            [1.0, 0.0, 0.2, 0.0],
            10,
            by_doc,
        ))
        .await
        .unwrap();
    assert!(!hits.is_empty(), "{name}");
    assert!(
        hits.iter()
            .all(|hit| hit.doc_id == "west" || hit.doc_id == "north"),
        "{name}: {:?}",
        ids(&hits)
    );
    let by_cloud = StoreFilter {
        doc_ids: Vec::new(),
        clouds: vec!["azure".into()],
    };
    let hits = store
        .search(&query(
            store,
            "sunrise sunset",
            [1.0, 0.0, 0.0, 0.0],
            10,
            by_cloud,
        ))
        .await
        .unwrap();
    assert_eq!(ids(&hits), vec!["west#0"], "{name}");
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
            StoreFilter::default(),
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
            StoreFilter::default(),
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
    let mut search = query(
        &wrapped,
        "sunrise",
        [1.0, 0.0, 0.0, 0.0],
        3,
        StoreFilter::default(),
    );
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
