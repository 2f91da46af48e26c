//! The hot-path cost of shared state: a budget reservation and its settle, and a
//! rate-limit admission, in process vs in Redis on loopback (a Lua script each).
//! The Redis half runs when `SKYFUSE_TEST_REDIS_URL` names a Redis (scripts/test.sh
//! starts one; `redis-server --port 6390 --save "" --appendonly no` does too).

use std::collections::HashMap;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use skyfuse::config::{LimitsConfig, SharedStateConfig};
use skyfuse::limits::RateLimiter;
use skyfuse::state::{BudgetLedger, SharedState, utc_day};
use skyfuse::telemetry::Metrics;

/// A budget no run exhausts, and a hold of one cent.
const BUDGET_USD: f64 = 1e9;
const HOLD_USD: f64 = 0.01;

fn limits() -> LimitsConfig {
    // High enough never to refuse: the admission path is what is measured.
    toml::from_str("requests_per_minute = 1000000000\ntokens_per_minute = 1000000000000").unwrap()
}

fn redis_state(runtime: &tokio::runtime::Runtime) -> Option<SharedState> {
    let Ok(url) = std::env::var("SKYFUSE_TEST_REDIS_URL") else {
        eprintln!("SKIPPED the Redis half: SKYFUSE_TEST_REDIS_URL is not set");
        return None;
    };
    let config: SharedStateConfig = toml::from_str(&format!(
        "redis_url = \"env:REDIS_URL\"\nkey_prefix = \"skyfuse-bench-{}\"\ntimeout_ms = 1000",
        std::process::id()
    ))
    .unwrap();
    let env = HashMap::from([("REDIS_URL".to_string(), url)]);
    let _entered = runtime.enter();
    Some(SharedState::from_config(Some(&config), &env, Arc::new(Metrics::new())).unwrap())
}

fn shared_state(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = criterion.benchmark_group("shared_state");

    let ledger = BudgetLedger::default();
    group.bench_function("budget_reserve_settle/in_process", |bench| {
        bench.iter(|| {
            ledger
                .reserve("bench", BUDGET_USD, HOLD_USD)
                .unwrap()
                .settle(HOLD_USD)
        })
    });
    let local_limiter = RateLimiter::from_config(&limits());
    group.bench_function("rate_admit/in_process", |bench| {
        bench
            .to_async(&runtime)
            .iter(|| async { local_limiter.admit_shared("bench", 1, 100).await.unwrap() })
    });

    if let Some(state) = redis_state(&runtime) {
        let store = state.redis().unwrap().clone();
        let key = store.budget_key("bench", utc_day());
        let (budget, hold) = (1_000_000_000_000_000i64, 10_000i64);
        // Reserve then settle, both awaited (the service settles in the background).
        group.bench_function("budget_reserve_settle/redis", |bench| {
            bench.to_async(&runtime).iter(|| async {
                let verdict = store.reserve_budget(&key, budget, hold).await.unwrap();
                assert!(verdict.admitted);
                store.settle_budget(&key, hold, hold).await.unwrap();
            })
        });
        let shared_limiter = RateLimiter::from_config(&limits()).sharing(state.clone());
        group.bench_function("rate_admit/redis", |bench| {
            bench
                .to_async(&runtime)
                .iter(|| async { shared_limiter.admit_shared("bench", 1, 100).await.unwrap() })
        });
    }
    group.finish();
}

criterion_group!(benches, shared_state);
criterion_main!(benches);
