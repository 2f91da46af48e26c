//! The Qdrant adapter's own cost: the same top-10 search sent through
//! `QdrantStore::search` (request built from a `StoreQuery`, payload turned into
//! hits), through the resilience wrapper on top, and as the raw `qdrant-client` call,
//! all against the in-process Qdrant of the tests on loopback (2,000 points of 384
//! dimensions, exact search). The difference is what the adapter adds.
//!
//! Run: `cargo bench --bench remote_stores`.

#[path = "../tests/stores/support/qdrant_fake.rs"]
mod qdrant_fake;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use qdrant_client::qdrant::{SearchPoints, WithPayloadSelector, with_payload_selector};
use skyfuse::config::Metric;
use skyfuse::document::{Chunk, EmbeddedChunk};
use skyfuse::stores::qdrant::QdrantStore;
use skyfuse::stores::remote::RemoteSettings;
use skyfuse::stores::resilient::{ResilienceSettings, ResilientBackend};
use skyfuse::stores::{SearchBackend, SourceInfo, StoreKind, StoreQuery};

const DIMS: usize = 384;
const POINTS: usize = 2_000;
const TOP_K: usize = 10;

/// Deterministic pseudo-random vectors (a 64-bit LCG), no extra dependency.
fn vectors(count: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            (0..DIMS)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                })
                .collect()
        })
        .collect()
}

fn bench(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (store, wrapped) = runtime.block_on(async {
        let fake = qdrant_fake::FakeQdrant::new(None);
        let address = fake.serve(SocketAddr::from(([127, 0, 0, 1], 0))).await;
        let settings = RemoteSettings {
            info: SourceInfo {
                id: "bench-qdrant".into(),
                backend: "qdrant".into(),
                kind: StoreKind::Dense,
                space: Some("bench".into()),
                dims: Some(DIMS),
                cloud: "aws".into(),
                region: "us-east-1".into(),
            },
            url: format!("http://{address}"),
            name: "bench".into(),
            dims: Some(DIMS),
            metric: Metric::Cosine,
            create_missing: true,
            upsert_batch: 500,
            score_threshold: None,
            write_timeout: Duration::from_secs(30),
            metadata_fields: Vec::new(),
        };
        let store = Arc::new(QdrantStore::connect(settings, None).await.unwrap());
        let chunks: Vec<EmbeddedChunk> = vectors(POINTS, 7)
            .into_iter()
            .enumerate()
            .map(|(index, vector)| EmbeddedChunk {
                chunk: Chunk {
                    chunk_id: format!("doc{index}#0"),
                    doc_id: format!("doc{index}"),
                    object_key: format!("bucket/doc{index}.txt"),
                    title: format!("Document {index}").into(),
                    text: "a chunk of about the length a real one has; "
                        .repeat(20)
                        .into(),
                    ordinal: 0,
                    cloud: "aws".into(),
                    region: "us-east-1".into(),
                    metadata: Default::default(),
                    span: None,
                },
                vector,
            })
            .collect();
        store.upsert(&chunks).await.unwrap();
        let wrapped = ResilientBackend::new(store.clone(), ResilienceSettings::default());
        (store, wrapped)
    });
    let queries: Vec<Arc<Vec<f32>>> = vectors(64, 99).into_iter().map(Arc::new).collect();
    let store_query = |index: usize| StoreQuery {
        text: String::new(),
        vector: Some(Arc::clone(&queries[index % queries.len()])),
        top_k: TOP_K,
        deadline: Instant::now() + Duration::from_secs(10),
        filter: Default::default(),
    };

    let mut group = criterion.benchmark_group("qdrant_search_top10");
    group
        .sample_size(200)
        .measurement_time(Duration::from_secs(8));
    let mut next = 0usize;
    group.bench_function("raw_client", |bencher| {
        bencher.to_async(&runtime).iter(|| {
            next += 1;
            let request = SearchPoints {
                collection_name: "bench".into(),
                vector: queries[next % queries.len()].to_vec(),
                limit: TOP_K as u64,
                with_payload: Some(WithPayloadSelector {
                    selector_options: Some(with_payload_selector::SelectorOptions::Enable(true)),
                }),
                timeout: Some(10),
                ..Default::default()
            };
            let client = store.client();
            async move { std::hint::black_box(client.search_points(request).await.unwrap()) }
        });
    });
    let mut next = 0usize;
    group.bench_function("adapter", |bencher| {
        bencher.to_async(&runtime).iter(|| {
            next += 1;
            let query = store_query(next);
            let store = &store;
            async move { std::hint::black_box(store.search(&query).await.unwrap()) }
        });
    });
    let mut next = 0usize;
    group.bench_function("adapter_with_resilience", |bencher| {
        bencher.to_async(&runtime).iter(|| {
            next += 1;
            let query = store_query(next);
            let wrapped = &wrapped;
            async move { std::hint::black_box(wrapped.search(&query).await.unwrap()) }
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
