//! Search latency of the two embedded stores through the `SearchBackend` trait:
//! BM25 (tantivy) and exact dense search (384 dims), over 10k and 100k synthetic
//! chunks, top 10 and top 100.
//!
//! Run with `cargo bench --bench local_search`. Building the 100k indexes takes a
//! little while before the first measurement; that time is not measured.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use skyfuse::document::{Chunk, EmbeddedChunk};
use skyfuse::stores::dense::DenseStore;
use skyfuse::stores::local_bm25::LocalBm25Store;
use skyfuse::stores::{SearchBackend, SourceInfo, StoreKind, StoreQuery};

#[path = "synthetic/mod.rs"]
mod synthetic;
use synthetic::{SyntheticRandom, sentence};

const DIMS: usize = 384;
const CORPUS_SIZES: [usize; 2] = [10_000, 100_000];
const TOP_KS: [usize; 2] = [10, 100];
const WORDS_PER_CHUNK: usize = 120;
const QUERY_COUNT: usize = 64;
const WRITE_BATCH: usize = 5_000;

fn unit_vector(random: &mut SyntheticRandom) -> Vec<f32> {
    let mut vector: Vec<f32> = (0..DIMS).map(|_| random.next_gaussian()).collect();
    let norm = vector.iter().map(|value| value * value).sum::<f32>().sqrt();
    for value in &mut vector {
        *value /= norm;
    }
    vector
}

fn synthetic_chunks(count: usize, with_vectors: bool, vocabulary: &[String]) -> Vec<EmbeddedChunk> {
    let mut random = SyntheticRandom(count as u64);
    (0..count)
        .map(|index| {
            let doc_id = format!("doc-{}", index / 4);
            let ordinal = (index % 4) as u32;
            EmbeddedChunk {
                chunk: Chunk {
                    chunk_id: Chunk::make_id(&doc_id, ordinal),
                    object_key: format!("bucket/{doc_id}.txt"),
                    doc_id,
                    title: sentence(&mut random, vocabulary, 8).into(),
                    text: sentence(&mut random, vocabulary, WORDS_PER_CHUNK).into(),
                    ordinal,
                    cloud: "aws".to_owned(),
                    region: "us-east-1".to_owned(),
                    metadata: Default::default(),
                    span: None,
                },
                vector: if with_vectors {
                    unit_vector(&mut random)
                } else {
                    Vec::new()
                },
            }
        })
        .collect()
}

fn source_info(kind: StoreKind) -> SourceInfo {
    SourceInfo {
        id: "bench".to_string(),
        backend: match kind {
            StoreKind::Lexical => "tantivy".to_string(),
            StoreKind::Dense => "dense".to_string(),
        },
        kind,
        space: None,
        dims: None,
        cloud: "local".to_string(),
        region: "local".to_string(),
    }
}

async fn fill(store: &dyn SearchBackend, chunks: &[EmbeddedChunk]) {
    for batch in chunks.chunks(WRITE_BATCH) {
        store.upsert(batch).await.expect("upsert");
    }
    store.commit().await.expect("commit");
}

fn bench_local_search(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let vocabulary: Vec<String> = synthetic::vocabulary();
    let mut query_random = SyntheticRandom(42);
    let query_texts: Vec<String> = (0..QUERY_COUNT)
        .map(|_| sentence(&mut query_random, &vocabulary, 6))
        .collect();
    let query_vectors: Vec<Arc<Vec<f32>>> = (0..QUERY_COUNT)
        .map(|_| Arc::new(unit_vector(&mut query_random)))
        .collect();
    let far_deadline = || Instant::now() + Duration::from_secs(60);

    let mut group = criterion.benchmark_group("local_search");
    group.sample_size(40);
    group.measurement_time(Duration::from_secs(6));
    for corpus_size in CORPUS_SIZES {
        let bm25_directory = tempfile::tempdir().expect("tempdir");
        let dense_directory = tempfile::tempdir().expect("tempdir");
        let (bm25_store, dense_store) = runtime.block_on(async {
            let bm25_store =
                LocalBm25Store::open(source_info(StoreKind::Lexical), bm25_directory.path())
                    .expect("open bm25");
            fill(
                &bm25_store,
                &synthetic_chunks(corpus_size, false, &vocabulary),
            )
            .await;
            let dense_store =
                DenseStore::open(source_info(StoreKind::Dense), DIMS, dense_directory.path())
                    .expect("open dense");
            fill(
                &dense_store,
                &synthetic_chunks(corpus_size, true, &vocabulary),
            )
            .await;
            (bm25_store, dense_store)
        });
        let corpus_label = format!("{}k", corpus_size / 1000);
        for top_k in TOP_KS {
            let mut next_query = 0usize;
            group.bench_function(
                BenchmarkId::new(format!("bm25_top{top_k}"), &corpus_label),
                |bencher| {
                    bencher.to_async(&runtime).iter(|| {
                        next_query = (next_query + 1) % QUERY_COUNT;
                        let query = StoreQuery {
                            text: query_texts[next_query].clone(),
                            vector: None,
                            top_k,
                            deadline: far_deadline(),
                            filter: Default::default(),
                        };
                        let store = &bm25_store;
                        async move { black_box(store.search(&query).await.expect("search")) }
                    });
                },
            );
            let mut next_query = 0usize;
            group.bench_function(
                BenchmarkId::new(format!("dense384_top{top_k}"), &corpus_label),
                |bencher| {
                    bencher.to_async(&runtime).iter(|| {
                        next_query = (next_query + 1) % QUERY_COUNT;
                        let query = StoreQuery {
                            text: String::new(),
                            vector: Some(Arc::clone(&query_vectors[next_query])),
                            top_k,
                            deadline: far_deadline(),
                            filter: Default::default(),
                        };
                        let store = &dense_store;
                        async move { black_box(store.search(&query).await.expect("search")) }
                    });
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench_local_search);
criterion_main!(benches);
