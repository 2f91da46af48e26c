//! In-process all-MiniLM-L6-v2 speed: one short query (search latency), eight queries in
//! one pass (the query batcher under load) and a batch of 32 SciFact-like abstracts
//! (indexing throughput).
//!
//! Run: `cargo bench --bench embed` (wall time), or with `SKYFUSE_BENCH_CPU_TIME=1` for
//! the process's CPU time per call. Needs the model (`scripts/fetch-model.sh`, or
//! `SKYFUSE_MODEL_DIR`); uses `../shared/datasets/scifact/corpus.jsonl` when present
//! (override with `SKYFUSE_SCIFACT_CORPUS`), else synthetic abstracts of similar length.
//! Reference on this 2-core machine, sentence-transformers on PyTorch CPU: 7.5 ms per
//! query (p50), 38.7 abstracts/s (max 256 tokens, batch 32).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use skyfuse::config::LocalPrecision;
use skyfuse::embed::EmbeddingSpace;
use skyfuse::embed::local::{DEFAULT_MODEL_DIR, LocalEmbedder, MODEL_DIR_ENV};

const QUERY: &str = "0-dimensional biomaterials show inductive properties.";
const ABSTRACTS_PER_BATCH: usize = 32;
const QUERIES_PER_BATCH: usize = 8;

fn model_dir() -> PathBuf {
    match std::env::var_os(MODEL_DIR_ENV) {
        Some(directory) if !directory.is_empty() => PathBuf::from(directory),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL_DIR),
    }
}

fn load_embedder(precision: LocalPrecision) -> LocalEmbedder {
    let directory = model_dir();
    let space = EmbeddingSpace {
        id: "minilm".to_owned(),
        model: "all-MiniLM-L6-v2".to_owned(),
        dims: 384,
    };
    LocalEmbedder::load(space, &directory, precision).unwrap_or_else(|error| {
        panic!(
            "cannot load the embedding model from {}: {error}",
            directory.display()
        )
    })
}

/// `title + " " + text` of the first abstracts of the SciFact corpus (as a BEIR
/// retriever sees them), or synthetic abstracts of about 250 tokens.
fn abstracts(count: usize) -> Vec<String> {
    let corpus_path = std::env::var_os("SKYFUSE_SCIFACT_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/scifact/corpus.jsonl")
        });
    if let Ok(corpus) = std::fs::read_to_string(&corpus_path) {
        let documents: Vec<String> = corpus
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .map(|document| {
                format!(
                    "{} {}",
                    document["title"].as_str().unwrap_or_default(),
                    document["text"].as_str().unwrap_or_default()
                )
            })
            .take(count)
            .collect();
        if documents.len() == count {
            return documents;
        }
    }
    eprintln!(
        "{} not found: using synthetic abstracts",
        corpus_path.display()
    );
    (0..count)
        .map(|index| {
            (0..180)
                .map(|word| format!("protein{} expression cells", (index * 7 + word) % 53))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The first SciFact test queries, or the one query repeated with a counter.
fn scifact_queries(count: usize) -> Vec<String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/scifact/queries.jsonl");
    let from_file: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|query| query["text"].as_str().map(str::to_string))
        .take(count)
        .collect();
    if from_file.len() == count {
        return from_file;
    }
    (0..count)
        .map(|index| format!("{QUERY} ({index})"))
        .collect()
}

/// Each arithmetic side by side: `minilm-f32/...` and, on a CPU with AVX512_BF16,
/// `minilm-bf16/...` (what `precision = "auto"` picks there).
fn bench_embedding(criterion: &mut Criterion) {
    bench_precision(criterion, "minilm-f32", load_embedder(LocalPrecision::F32));
    let auto = load_embedder(LocalPrecision::Auto);
    if auto.is_bf16() {
        bench_precision(criterion, "minilm-bf16", auto);
    } else {
        eprintln!("this CPU has no AVX512_BF16: bf16 not measured");
    }
}

fn bench_precision(criterion: &mut Criterion, name: &str, embedder: LocalEmbedder) {
    let mut group = criterion.benchmark_group(name);
    let cpu_time = std::env::var_os(CPU_TIME_ENV).is_some();
    let case = |group: &mut BenchmarkGroup<WallTime>, label: &str, texts: &[&str]| {
        group.throughput(Throughput::Elements(texts.len() as u64));
        group.bench_function(label, |bencher| {
            bencher.iter_custom(|iterations| {
                let (wall, cpu) = (Instant::now(), process_cpu_time());
                for _ in 0..iterations {
                    black_box(embedder.embed_blocking(texts).expect("texts embed"));
                }
                if cpu_time {
                    process_cpu_time() - cpu
                } else {
                    wall.elapsed()
                }
            })
        });
    };
    case(&mut group, "single_short_query", &[QUERY]);

    // What the query batcher does under load: eight concurrent queries in one pass
    // (throughput per query, to compare with the single query above).
    let queries = scifact_queries(QUERIES_PER_BATCH);
    let borrowed_queries: Vec<&str> = queries.iter().map(String::as_str).collect();
    case(&mut group, "batch_8_queries", &borrowed_queries);

    let documents = abstracts(ABSTRACTS_PER_BATCH);
    let borrowed: Vec<&str> = documents.iter().map(String::as_str).collect();
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    case(&mut group, "batch_32_abstracts", &borrowed);
    group.finish();
}

/// Set to measure the CPU time of the whole process (every thread) instead of wall time:
/// on a machine shared with other work, what one call costs rather than how long it waited
/// for a core. Idle rayon workers spin briefly before sleeping, which counts too.
const CPU_TIME_ENV: &str = "SKYFUSE_BENCH_CPU_TIME";

fn process_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the clock id is a constant Linux knows.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

criterion_group!(benches, bench_embedding);
criterion_main!(benches);
