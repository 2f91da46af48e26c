//! The embedded dense store at scale: build time, top-10 latency, recall@10 against
//! exact search, memory and reopen time at 10k, 100k and (opt-in) 1M chunks of 384
//! dimensions, with the store's default options (exact below 50k rows, HNSW with
//! exact rescoring from there).
//!
//! Run with `cargo bench --bench dense_scale -- 10000 100000 1000000` (sizes as
//! arguments; 10k and 100k without). `--expansion N` sets the HNSW beam,
//! `--connectivity N` the graph degree of the index built, `--queries N` the
//! held-out queries (1,000). The synthetic corpus looks like
//! embeddings rather than noise: 2,000 cluster centres in a 64-d subspace, each
//! vector a centre plus a few of 256 in-subspace topic directions plus a little
//! isotropic noise, normalized. Queries come from the same process with another
//! seed, so none is in the corpus. Texts are short (~40 bytes): the memory
//! figures separate vectors and index from chunk metadata.
//!
//! `--bm25` measures the BM25 store (tantivy) at the same sizes instead: chunks of
//! 120 words and an 8-word title drawn from a 30,000-word Zipf-like vocabulary
//! (as `benches/local_search.rs`), 6-word queries, top 10; then the same queries
//! again over the index merged into one segment, for comparison.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{Array2, Axis, s};
use skyfuse::document::{Chunk, EmbeddedChunk};
use skyfuse::stores::dense::{DEFAULT_ANN_EXPANSION, DenseOptions, DenseStore};
use skyfuse::stores::local_bm25::LocalBm25Store;
use skyfuse::stores::{SearchBackend, SourceInfo, StoreKind, StoreQuery};

#[path = "synthetic/mod.rs"]
mod synthetic;
use synthetic::{SyntheticRandom, sentence};

const DIMS: usize = 384;
const SUBSPACE_DIMS: usize = 64;
const CLUSTERS: usize = 2_000;
const TOPICS: usize = 256;
const TOPICS_PER_VECTOR: usize = 3;
const TOP_K: usize = 10;
const WRITE_BATCH: usize = 10_000;
const EXACT_QUERIES: usize = 100;
const WORDS_PER_CHUNK: usize = 120;

async fn measure_bm25(size: usize, query_count: usize) {
    let directory =
        tempfile::tempdir_in(std::env::var("DENSE_SCALE_DIR").unwrap_or_else(|_| ".".into()))
            .expect("tempdir");
    let vocabulary: Vec<String> = synthetic::vocabulary();
    let store = LocalBm25Store::open(bm25_info(), directory.path()).expect("open");
    let mut random = SyntheticRandom(size as u64);
    let started = Instant::now();
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    for index in 0..size {
        let mut chunk = chunk(index, Vec::new());
        chunk.chunk.title = sentence(&mut random, &vocabulary, 8).into();
        chunk.chunk.text = sentence(&mut random, &vocabulary, WORDS_PER_CHUNK).into();
        batch.push(chunk);
        if batch.len() == WRITE_BATCH || index + 1 == size {
            store.upsert(&batch).await.expect("upsert");
            batch.clear();
        }
    }
    store.commit().await.expect("commit");
    let built = started.elapsed();
    // Closing the store waits for the merges its commits started.
    let started = Instant::now();
    drop(store);
    let closed = started.elapsed();
    let started = Instant::now();
    let store = LocalBm25Store::open(bm25_info(), directory.path()).expect("reopen");
    let reopened = started.elapsed();
    let segments = store.segment_count();
    report_bm25_queries(
        &store,
        size,
        query_count,
        &vocabulary,
        (built, closed, reopened),
        segments,
    )
    .await;
    // For comparison: the same queries over the index merged into one segment.
    drop(store);
    merge_into_one_segment(directory.path());
    let store = LocalBm25Store::open(bm25_info(), directory.path()).expect("reopen merged");
    let segments = store.segment_count();
    report_bm25_queries(
        &store,
        size,
        query_count,
        &vocabulary,
        (built, closed, reopened),
        segments,
    )
    .await;
}

fn merge_into_one_segment(directory: &std::path::Path) {
    let index = tantivy::Index::open_in_dir(directory).expect("open the bm25 index");
    let mut writer: tantivy::IndexWriter = index.writer(64 << 20).expect("bm25 writer");
    let segments = index.searchable_segment_ids().expect("bm25 segments");
    if segments.len() > 1 {
        writer.merge(&segments).wait().expect("merge");
    }
    writer.wait_merging_threads().expect("wait for merges");
}

async fn report_bm25_queries(
    store: &LocalBm25Store,
    size: usize,
    query_count: usize,
    vocabulary: &[String],
    (built, closed, reopened): (Duration, Duration, Duration),
    segments: usize,
) {
    let mut query_random = SyntheticRandom(42);
    let mut latencies = Vec::with_capacity(query_count);
    let mut slowest = (Duration::ZERO, String::new());
    for _ in 0..query_count {
        let request = StoreQuery {
            text: sentence(&mut query_random, vocabulary, 6),
            vector: None,
            top_k: TOP_K,
            deadline: Instant::now() + Duration::from_secs(60),
            filter: None,
        };
        let started = Instant::now();
        let hits = store.search(&request).await.expect("search");
        let elapsed = started.elapsed();
        latencies.push(elapsed);
        if elapsed > slowest.0 {
            slowest = (elapsed, request.text.clone());
        }
        std::hint::black_box(hits);
    }
    latencies.sort();
    println!(
        "bm25 rows={size} | build {:.1}s, close {:.1}s | reopen {:.2}s | {segments} segments | top10 p50 {:.3} ms p90 {:.3} ms p99 {:.3} ms max {:.3} ms over {} queries \
         (slowest: {:?}) | RSS {:.0} MB",
        built.as_secs_f64(),
        closed.as_secs_f64(),
        reopened.as_secs_f64(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        query_count,
        slowest.1,
        resident_mb(),
    );
}

fn bm25_info() -> SourceInfo {
    SourceInfo {
        id: "bm25-scale".to_string(),
        backend: "tantivy".to_string(),
        kind: StoreKind::Lexical,
        space: None,
        dims: None,
        cloud: "local".to_string(),
        region: "local".to_string(),
    }
}

/// Centres and topic directions, all inside one random 64-d subspace of R^384.
struct Generator {
    centres: Array2<f32>,
    topics: Array2<f32>,
}

impl Generator {
    fn new() -> Self {
        let mut random = SyntheticRandom(7);
        let basis = Array2::from_shape_fn((SUBSPACE_DIMS, DIMS), |_| random.next_gaussian());
        let latent_centres =
            Array2::from_shape_fn((CLUSTERS, SUBSPACE_DIMS), |_| random.next_gaussian());
        let latent_topics =
            Array2::from_shape_fn((TOPICS, SUBSPACE_DIMS), |_| random.next_gaussian());
        Self {
            centres: latent_centres.dot(&basis),
            topics: latent_topics.dot(&basis),
        }
    }

    /// One normalized vector: a centre, a few topics, a little noise.
    fn vector(&self, random: &mut SyntheticRandom) -> Vec<f32> {
        let mut vector = self.centres.row(random.below(CLUSTERS)).to_vec();
        for _ in 0..TOPICS_PER_VECTOR {
            let weight = 0.5 * random.next_gaussian();
            let topic = self.topics.row(random.below(TOPICS));
            for (value, topic_value) in vector.iter_mut().zip(topic) {
                *value += weight * topic_value;
            }
        }
        for value in &mut vector {
            *value += 1.5 * random.next_gaussian();
        }
        let norm = vector.iter().map(|value| value * value).sum::<f32>().sqrt();
        vector.iter_mut().for_each(|value| *value /= norm);
        vector
    }
}

fn source_info() -> SourceInfo {
    SourceInfo {
        id: "dense-scale".to_string(),
        backend: "dense".to_string(),
        kind: StoreKind::Dense,
        space: Some("synthetic".to_string()),
        dims: Some(DIMS),
        cloud: "local".to_string(),
        region: "local".to_string(),
    }
}

fn chunk(index: usize, vector: Vec<f32>) -> EmbeddedChunk {
    let doc_id = format!("doc{index}");
    EmbeddedChunk {
        chunk: Chunk {
            chunk_id: Chunk::make_id(&doc_id, 0),
            object_key: format!("synthetic/{}", index / 10),
            doc_id,
            title: "".into(),
            text: format!("synthetic chunk number {index}").into(),
            ordinal: 0,
            cloud: "local".to_string(),
            region: "local".to_string(),
            metadata: Default::default(),
            span: None,
        },
        vector,
    }
}

/// Resident memory of this process, from /proc/self/status, in MB.
fn resident_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |kilobytes| kilobytes / 1024.0)
}

/// Give freed heap back to the OS so the next RSS reading shows what is held.
fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory of glibc's allocator.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Exact top-10 row indices of each query over `corpus`, by blocked matrix products.
fn exact_top(corpus: &Array2<f32>, queries: &Array2<f32>) -> Vec<Vec<usize>> {
    let mut best: Vec<BinaryHeap<Reverse<(u32, usize)>>> =
        (0..queries.nrows()).map(|_| BinaryHeap::new()).collect();
    let block_rows = 16_384;
    let mut first_row = 0;
    while first_row < corpus.nrows() {
        let end_row = (first_row + block_rows).min(corpus.nrows());
        let scores = queries.dot(&corpus.slice(s![first_row..end_row, ..]).t());
        for (query, row_scores) in scores.axis_iter(Axis(0)).enumerate() {
            let heap = &mut best[query];
            for (offset, &score) in row_scores.iter().enumerate() {
                // Order-preserving bits of a non-negative or negative f32.
                let bits = score.to_bits();
                let key = if bits >> 31 == 1 {
                    !bits
                } else {
                    bits | 1 << 31
                };
                if heap.len() < TOP_K {
                    heap.push(Reverse((key, first_row + offset)));
                } else if let Some(mut worst) = heap.peek_mut()
                    && key > worst.0.0
                {
                    *worst = Reverse((key, first_row + offset));
                }
            }
        }
        first_row = end_row;
    }
    best.into_iter()
        .map(|heap| heap.into_iter().map(|Reverse((_, row))| row).collect())
        .collect()
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

/// Latencies (sorted) and the hits' row indices of one query each.
async fn run_queries(
    store: &DenseStore,
    queries: &Array2<f32>,
) -> (Vec<Duration>, Vec<Vec<usize>>) {
    let mut latencies = Vec::with_capacity(queries.nrows());
    let mut found = Vec::with_capacity(queries.nrows());
    for query in queries.axis_iter(Axis(0)) {
        let request = StoreQuery {
            text: String::new(),
            vector: Some(Arc::new(query.to_vec())),
            top_k: TOP_K,
            deadline: Instant::now() + Duration::from_secs(60),
            filter: None,
        };
        let started = Instant::now();
        let hits = store.search(&request).await.expect("search");
        latencies.push(started.elapsed());
        found.push(
            hits.iter()
                .filter_map(|hit| hit.doc_id.strip_prefix("doc")?.parse().ok())
                .collect(),
        );
    }
    latencies.sort();
    (latencies, found)
}

async fn measure(size: usize, query_count: usize, options: DenseOptions) {
    let directory =
        tempfile::tempdir_in(std::env::var("DENSE_SCALE_DIR").unwrap_or_else(|_| ".".into()))
            .expect("tempdir");
    let generator = Generator::new();
    let mut random = SyntheticRandom(42);
    let mut corpus = Array2::<f32>::zeros((size, DIMS));
    let store = DenseStore::open_with_options(source_info(), DIMS, directory.path(), options)
        .expect("open");
    let started = Instant::now();
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    for index in 0..size {
        let vector = generator.vector(&mut random);
        corpus
            .row_mut(index)
            .assign(&ndarray::ArrayView1::from(&vector[..]));
        batch.push(chunk(index, vector));
        if batch.len() == WRITE_BATCH || index + 1 == size {
            store.upsert(&batch).await.expect("upsert");
            batch.clear();
        }
    }
    let generated = started.elapsed();
    let started = Instant::now();
    store.commit().await.expect("commit");
    let committed = started.elapsed();
    let uses_ann = store.uses_ann();
    drop(store);

    let mut query_random = SyntheticRandom(4242);
    let queries = Array2::from_shape_fn((query_count, DIMS), |_| 0.0f32);
    let mut queries = queries;
    for mut row in queries.axis_iter_mut(Axis(0)) {
        row.assign(&ndarray::ArrayView1::from(
            &generator.vector(&mut query_random)[..],
        ));
    }
    let started = Instant::now();
    let truth = exact_top(&corpus, &queries);
    let truth_time = started.elapsed();
    drop(corpus);
    trim_heap();

    let resident_before = resident_mb();
    let started = Instant::now();
    let store = DenseStore::open_with_options(source_info(), DIMS, directory.path(), options)
        .expect("reopen");
    let reopened = started.elapsed();
    let resident_opened = resident_mb();
    let (latencies, found) = run_queries(&store, &queries).await;
    let resident_searched = resident_mb();
    let recall = truth
        .iter()
        .zip(&found)
        .map(|(expected, got)| got.iter().filter(|row| expected.contains(row)).count())
        .sum::<usize>() as f64
        / (truth.len() * TOP_K) as f64;
    let memory = store.memory();
    drop(store);
    trim_heap();

    // The exact scan over the same file, for comparison (fewer queries: it is slow).
    let exact_options = DenseOptions {
        ann_min_rows: usize::MAX,
        ..options
    };
    let exact_store =
        DenseStore::open_with_options(source_info(), DIMS, directory.path(), exact_options)
            .expect("reopen exact");
    let resident_exact = resident_mb();
    let exact_queries = queries
        .slice(s![..EXACT_QUERIES.min(query_count), ..])
        .to_owned();
    let (exact_latencies, _) = run_queries(&exact_store, &exact_queries).await;
    drop(exact_store);

    let file_mb = std::fs::metadata(directory.path().join("dense.bin"))
        .map(|metadata| metadata.len() as f64 / 1e6)
        .unwrap_or(f64::NAN);
    let mb = |bytes: usize| bytes as f64 / 1e6;
    println!(
        "rows={size} mode={} expansion={} connectivity={} | generate+upsert {:.1}s, commit (write + index) {:.1}s, \
         exact ground truth {:.1}s | reopen {:.2}s | top10 p50 {:.3} ms p99 {:.3} ms (exact scan p50 {:.3} ms p99 {:.3} ms) \
         | recall@10 {:.4} over {} queries | index {:.0} MB (graph {:.0} MB, i8 vectors {:.0} MB), keys {:.0} MB, mapped f32 {:.0} MB, dense.bin {:.0} MB \
         | RSS before open {:.0} MB, after open {:.0} MB, after queries {:.0} MB, after an exact-only reopen {:.0} MB",
        if uses_ann { "hnsw" } else { "exact" },
        options.ann_expansion,
        options.ann_connectivity,
        generated.as_secs_f64(),
        committed.as_secs_f64(),
        truth_time.as_secs_f64(),
        reopened.as_secs_f64(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&exact_latencies, 0.50),
        percentile(&exact_latencies, 0.99),
        recall,
        query_count,
        mb(memory.ann_index_bytes),
        mb(memory.ann_graph_bytes),
        mb(memory.ann_vector_bytes),
        mb(memory.key_bytes),
        mb(memory.mapped_vector_bytes),
        file_mb,
        resident_before,
        resident_opened,
        resident_searched,
        resident_exact,
    );
}

fn main() {
    let mut sizes = Vec::new();
    let mut query_count = 1_000;
    let mut options = DenseOptions::default();
    let mut bm25 = false;
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        match argument.as_str() {
            "--bench" => {}
            "--bm25" => bm25 = true,
            "--expansion" => {
                options.ann_expansion = arguments
                    .next()
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(DEFAULT_ANN_EXPANSION);
            }
            "--connectivity" => {
                options.ann_connectivity = arguments
                    .next()
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(options.ann_connectivity);
            }
            "--queries" => {
                query_count = arguments
                    .next()
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(query_count);
            }
            "--ann-min-rows" => {
                options.ann_min_rows = arguments
                    .next()
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(options.ann_min_rows);
            }
            size => match size.parse() {
                Ok(size) => sizes.push(size),
                Err(_) => eprintln!("ignoring argument {size:?}"),
            },
        }
    }
    if sizes.is_empty() {
        sizes = vec![10_000, 100_000];
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for size in sizes {
        if bm25 {
            runtime.block_on(measure_bm25(size, query_count));
        } else {
            runtime.block_on(measure(size, query_count, options));
        }
    }
}
