//! Query embedding on the search path: the local model through its space (cache off),
//! the cache-hit path, a Matryoshka family member's truncated vector, and a hit in
//! the replicas' Redis tier (`shared_query_cache`) with the process cache off.
//!
//! Run: `cargo bench --bench query_embed`. Needs the model (`scripts/fetch-model.sh`, or
//! `SKYFUSE_MODEL_DIR`); the Redis case runs when `SKYFUSE_TEST_REDIS_URL` names a
//! Redis (`redis-server --port 6399 --save "" --appendonly no` on loopback).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use skyfuse::config::{LocalPrecision, Metric};
use skyfuse::embed::EmbeddingSpace;
use skyfuse::embed::local::{DEFAULT_MODEL_DIR, LocalEmbedder, MODEL_DIR_ENV};
use skyfuse::embed::query::{QueryCacheSettings, QueryEmbedder};
use skyfuse::embed::space::{Serving, SpaceEmbedder};
use skyfuse::state::{RedisQueryVectors, SharedState};
use skyfuse::telemetry::Metrics;

const QUERY: &str = "0-dimensional biomaterials show inductive properties.";

fn model_dir() -> PathBuf {
    match std::env::var_os(MODEL_DIR_ENV) {
        Some(directory) if !directory.is_empty() => PathBuf::from(directory),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL_DIR),
    }
}

/// Spaces "minilm" (384) and "minilm-128" (its truncation) over one loaded model.
fn query_embedder(cache_entries: usize) -> QueryEmbedder {
    let model = LocalEmbedder::load_native("minilm", &model_dir(), LocalPrecision::Auto)
        .expect("the model loads");
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

    if let Some(shared) = redis_tier(&runtime) {
        // Process cache off: every lookup is a GET of 384 f32s and their decoding.
        let redis_only = query_embedder(0).sharing(
            shared,
            HashMap::from([("minilm".to_string(), "minilm:bench".to_string())]),
        );
        let (families, _) = redis_only.families(["minilm", "minilm-128"]);
        runtime
            .block_on(redis_only.embed(&families[0], QUERY, None))
            .expect("embeds and shares");
        group.bench_function("redis_hit", |bencher| {
            bencher.iter(|| {
                runtime
                    .block_on(redis_only.embed(&families[0], QUERY, None))
                    .expect("hit")
            })
        });
    }
    group.finish();
}

/// The Redis tier on `SKYFUSE_TEST_REDIS_URL`, under a prefix of this run.
fn redis_tier(runtime: &tokio::runtime::Runtime) -> Option<Arc<RedisQueryVectors>> {
    let Ok(url) = std::env::var("SKYFUSE_TEST_REDIS_URL") else {
        eprintln!("SKIPPED redis_hit: SKYFUSE_TEST_REDIS_URL is not set");
        return None;
    };
    let config = toml::from_str(&format!(
        "redis_url = \"env:REDIS_URL\"\nkey_prefix = \"skyfuse-bench-{}\"\ntimeout_ms = 1000",
        std::process::id()
    ))
    .expect("a shared_state table");
    let env = HashMap::from([("REDIS_URL".to_string(), url)]);
    let _entered = runtime.enter();
    let state = SharedState::from_config(Some(&config), &env, Arc::new(Metrics::new())).ok()?;
    let store = state.redis()?.clone();
    Some(Arc::new(RedisQueryVectors::new(
        store,
        Duration::from_secs(3600),
    )))
}

criterion_group!(benches, bench_query_embedding);
criterion_main!(benches);
