//! Query embedding on the search path: the local model through its space (cache off),
//! the cache-hit path, and a Matryoshka family member's truncated vector.
//!
//! Run: `cargo bench --bench query_embed`. Needs the model (`scripts/fetch-model.sh`, or
//! `SKYFUSE_MODEL_DIR`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use skyfuse::config::Metric;
use skyfuse::embed::EmbeddingSpace;
use skyfuse::embed::local::{DEFAULT_MODEL_DIR, LocalEmbedder, MODEL_DIR_ENV};
use skyfuse::embed::query::{QueryCacheSettings, QueryEmbedder};
use skyfuse::embed::space::{Serving, SpaceEmbedder};

const QUERY: &str = "0-dimensional biomaterials show inductive properties.";

fn model_dir() -> PathBuf {
    match std::env::var_os(MODEL_DIR_ENV) {
        Some(directory) if !directory.is_empty() => PathBuf::from(directory),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL_DIR),
    }
}

/// Spaces "minilm" (384) and "minilm-128" (its truncation) over one loaded model.
fn query_embedder(cache_entries: usize) -> QueryEmbedder {
    let model = LocalEmbedder::load_native("minilm", &model_dir()).expect("the model loads");
    let space = |id: &str, dims| {
        let space = EmbeddingSpace {
            id: id.to_string(),
            model: "all-MiniLM-L6-v2".to_string(),
            dims,
        };
        let serving = Serving::new(Arc::new(model.clone()), "all-MiniLM-L6-v2");
        let embedder = SpaceEmbedder::new(space, Metric::Cosine, true, vec![serving]);
        (id.to_string(), Arc::new(embedder.expect("a space")))
    };
    let spaces = HashMap::from([space("minilm", 384), space("minilm-128", 128)]);
    let family = HashMap::from([
        ("minilm".to_string(), "minilm".to_string()),
        ("minilm-128".to_string(), "minilm".to_string()),
    ]);
    let cache = QueryCacheSettings {
        entries: cache_entries,
        ttl: Duration::from_secs(3600),
    };
    QueryEmbedder::new(spaces, family, cache)
}

fn bench_query_embedding(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let mut group = criterion.benchmark_group("query_embedding");

    let uncached = query_embedder(0);
    let (families, _) = uncached.families(["minilm", "minilm-128"]);
    group.bench_function("local_minilm_miss", |bencher| {
        bencher.iter(|| {
            runtime
                .block_on(uncached.embed(&families[0], QUERY, None))
                .expect("embeds")
        })
    });

    let cached = query_embedder(1024);
    let (families, _) = cached.families(["minilm", "minilm-128"]);
    runtime
        .block_on(cached.embed(&families[0], QUERY, None))
        .expect("embeds");
    group.bench_function("cache_hit", |bencher| {
        bencher.iter(|| {
            runtime
                .block_on(cached.embed(&families[0], QUERY, None))
                .expect("hit")
        })
    });

    let full = runtime
        .block_on(cached.embed(&families[0], QUERY, None))
        .expect("hit");
    group.bench_function("matryoshka_truncate_384_to_128", |bencher| {
        bencher.iter(|| cached.for_space(&full, "minilm-128").expect("truncates"))
    });
    group.finish();
}

criterion_group!(benches, bench_query_embedding);
criterion_main!(benches);
