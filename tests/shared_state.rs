//! Three replicas sharing one real Redis (`[shared_state]`): one budget, one rate
//! limit and one set of cooldowns across all three, and what each kind does when
//! Redis cannot be reached. Each replica is a `Service` served by `api::serve` on its
//! own loopback listeners, in front of OpenAI-compatible upstreams on loopback.
//!
//! Redis comes from `SKYFUSE_TEST_REDIS_URL` (scripts/test.sh starts `redis-server`);
//! the `_on_a_cluster` tests run the same checks on the three-primary Redis Cluster of
//! `SKYFUSE_TEST_REDIS_CLUSTER_URL`. Without them the Redis tests skip, unless `CI` or
//! `SKYFUSE_REQUIRE_TOOLS` is set.
//! Each test uses its own key prefix, so tests share one Redis safely.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use skyfuse::api::Listeners;
use skyfuse::config::Config;
use skyfuse::service::Service;
use tokio::net::TcpListener;

const KEY_A: &str = "team-a-key";
const KEY_B: &str = "team-b-key";

#[path = "common/redis.rs"]
mod redis_support;
use redis_support::{fresh_prefix, redis_cluster_url, redis_url};

/// What an upstream answers to every call.
#[derive(Clone, Copy)]
enum Upstream {
    /// A short answer whose usage is `completion_tokens` output tokens (no input).
    Answer {
        completion_tokens: u64,
    },
    Throttle {
        retry_after_seconds: u64,
    },
}

/// An OpenAI-compatible upstream on loopback, and how many calls it received.
async fn upstream(behaviour: Upstream) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                match behaviour {
                    Upstream::Answer { completion_tokens } => {
                        let events = [
                            json!({"choices": [{"index": 0, "delta": {"content": "Hello."}, "finish_reason": null}]}),
                            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
                            json!({"choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": completion_tokens, "total_tokens": completion_tokens}}),
                        ];
                        let mut body: String = events
                            .iter()
                            .map(|event| format!("data: {event}\n\n"))
                            .collect();
                        body.push_str("data: [DONE]\n\n");
                        ([("content-type", "text/event-stream")], body).into_response()
                    }
                    Upstream::Throttle {
                        retry_after_seconds,
                    } => (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", retry_after_seconds.to_string())],
                        axum::Json(json!({"error": {"message": "slow down", "code": "429"}})),
                    )
                        .into_response(),
                }
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

/// One replica: its facade's base URL and its service.
struct Replica {
    base: String,
    service: Arc<Service>,
}

/// `count` replicas built from one config, each served as production serves it.
async fn replicas(count: usize, config: &str, redis_url: &str) -> Vec<Replica> {
    let env = HashMap::from([
        ("SKYFUSE_REDIS_URL".to_string(), redis_url.to_string()),
        ("TEAM_A_KEY".to_string(), KEY_A.to_string()),
        ("TEAM_B_KEY".to_string(), KEY_B.to_string()),
    ]);
    let mut replicas = Vec::new();
    for _ in 0..count {
        let config: Config = toml::from_str(config).unwrap();
        let service = Arc::new(Service::build(config, &env).await.unwrap());
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let openai = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", openai.local_addr().unwrap());
        let listeners = Listeners {
            grpc,
            openai: Some(openai),
            metrics: None,
        };
        tokio::spawn(skyfuse::api::serve(
            service.clone(),
            listeners,
            std::future::pending(),
        ));
        replicas.push(Replica { base, service });
    }
    replicas
}

/// The config every test starts from: one caller with a budget (team-a), one
/// without (team-b), the deployments given, and `[shared_state]` with `extra`.
fn config(deployments: &str, prefix: &str, shared_state_extra: &str, limits: &str) -> String {
    format!(
        r#"
        [server]
        max_message_bytes = 65536
        max_concurrent_calls = 4096
        data_dir = "/nonexistent/skyfuse-shared-state-tests"
        default_timeout_ms = 60000
        [routing]
        default_model = "llama"
        attempt_timeout_ms = 60000
        first_token_timeout_ms = 60000
        max_retry_wait_ms = 0
        {deployments}
        [[caller]]
        id = "team-a"
        api_key = "env:TEAM_A_KEY"
        budget_usd_per_day = 0.1
        [[caller]]
        id = "team-b"
        api_key = "env:TEAM_B_KEY"
        {limits}
        [shared_state]
        redis_url = "env:SKYFUSE_REDIS_URL"
        key_prefix = "{prefix}"
        {shared_state_extra}
        "#
    )
}

/// One deployment of `provider` at `base_url`: output at $10 per 1M tokens, input free,
/// so a call of `max_tokens` 100 that uses them all costs exactly its hold ($0.001).
fn deployment(provider: &str, base_url: &str, dedicated: bool) -> String {
    format!(
        r#"
        [[provider]]
        id = "{provider}"
        kind = "openai_compat"
        base_url = "{base_url}"
        cloud = "aws"
        region = "eu-west-1"
        [[deployment]]
        provider = "{provider}"
        model = "llama"
        dedicated = {dedicated}
        input_per_1m_usd = 0.0
        output_per_1m_usd = 10.0
        "#
    )
}

fn completion() -> Value {
    json!({
        "model": "llama",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 100,
    })
}

/// POSTs a chat completion to `base` as `key`; a request may never hang.
async fn complete(http: &reqwest::Client, base: &str, key: &str) -> (u16, Value) {
    let sent = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&completion())
        .send();
    let response = tokio::time::timeout(Duration::from_secs(60), sent)
        .await
        .expect("no request hangs")
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `check` until it holds, for at most `limit`; the bound only stops a broken
/// test from running forever.
async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < until {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_budget_across_three_replicas_is_never_overspent_and_is_used_up() {
    if let Some(redis_url) = redis_url() {
        budget_never_overspent(&redis_url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_budget_across_three_replicas_is_never_overspent_and_is_used_up_on_a_cluster() {
    if let Some(redis_url) = redis_cluster_url() {
        budget_never_overspent(&redis_url).await;
    }
}

async fn budget_never_overspent(redis_url: &str) {
    let (upstream_url, upstream_calls) = upstream(Upstream::Answer {
        completion_tokens: 100,
    })
    .await;
    let prefix = fresh_prefix("budget");
    let config = config(
        &deployment("steady", &upstream_url, false),
        &prefix,
        "timeout_ms = 5000",
        "",
    );
    let replicas = replicas(3, &config, redis_url).await;
    let http = reqwest::Client::new();

    // 1,000 calls of $0.001 each (their hold and their cost) against a $0.10 budget,
    // all at once, spread over the three replicas.
    let mut calls = tokio::task::JoinSet::new();
    for call in 0..1_000 {
        let (http, base) = (http.clone(), replicas[call % 3].base.clone());
        calls.spawn(async move { complete(&http, &base, KEY_A).await });
    }
    let (mut answered, mut refused, mut reported_cost) = (0u64, 0u64, 0.0f64);
    while let Some(outcome) = calls.join_next().await {
        let (status, body) = outcome.unwrap();
        match status {
            200 => {
                answered += 1;
                reported_cost += body["skyfuse"]["cost_usd"].as_f64().unwrap();
            }
            // The facade redacts the reason (the gRPC side and the logs carry it).
            429 => refused += 1,
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert_eq!(answered + refused, 1_000);

    // Settling runs after each answer: wait until nothing is held any more.
    let store = replicas[0].service.shared_state().redis().unwrap().clone();
    let key = store.budget_key("team-a", skyfuse::state::utc_day());
    let settled = eventually(Duration::from_secs(60), async || {
        store
            .budget_figures(&key)
            .await
            .is_ok_and(|(_, reserved)| reserved == 0)
    })
    .await;
    assert!(settled, "every hold settled");
    let (spent_micro_usd, _) = store.budget_figures(&key).await.unwrap();
    eprintln!(
        "budget: {answered} answered, {refused} refused, spent {spent_micro_usd} micro-USD of 100000, upstream saw {}",
        upstream_calls.load(Ordering::SeqCst)
    );
    assert!(spent_micro_usd <= 100_000, "never past the budget");
    assert!(
        spent_micro_usd > 100_000 - 1_000,
        "used to within one request's cost: {spent_micro_usd}"
    );
    assert_eq!(answered, 100, "$0.10 holds exactly 100 calls of $0.001");
    assert_eq!(
        upstream_calls.load(Ordering::SeqCst),
        100,
        "refused calls were never sent"
    );
    assert!((reported_cost - 0.1).abs() < 1e-9, "{reported_cost}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_rate_limit_across_three_replicas_admits_its_burst_once() {
    if let Some(redis_url) = redis_url() {
        rate_limit_admits_its_burst_once(&redis_url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_rate_limit_across_three_replicas_admits_its_burst_once_on_a_cluster() {
    if let Some(redis_url) = redis_cluster_url() {
        rate_limit_admits_its_burst_once(&redis_url).await;
    }
}

async fn rate_limit_admits_its_burst_once(redis_url: &str) {
    const LIMIT: u64 = 100;
    let (upstream_url, _) = upstream(Upstream::Answer {
        completion_tokens: 1,
    })
    .await;
    let prefix = fresh_prefix("rate");
    let limits =
        format!("[limits]\n[[limits.caller]]\nid = \"team-b\"\nrequests_per_minute = {LIMIT}\n");
    let config = config(
        &deployment("steady", &upstream_url, false),
        &prefix,
        "timeout_ms = 5000",
        &limits,
    );
    let replicas = replicas(3, &config, redis_url).await;
    let http = reqwest::Client::new();

    let began = std::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for call in 0..(3 * LIMIT) {
        let (http, base) = (http.clone(), replicas[call as usize % 3].base.clone());
        calls.spawn(async move { complete(&http, &base, KEY_B).await });
    }
    let mut admitted = 0u64;
    while let Some(outcome) = calls.join_next().await {
        let (status, body) = outcome.unwrap();
        match status {
            200 => admitted += 1,
            429 => assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}"),
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    let burst = began.elapsed();
    // GCRA: the whole minute's burst at once, then one more every 60 s / LIMIT; so
    // a burst that took `burst` may also admit what refilled meanwhile. Three
    // replicas counting apart would admit up to 3 × LIMIT.
    let refilled = (burst.as_secs_f64() * LIMIT as f64 / 60.0).ceil() as u64;
    eprintln!(
        "rate limit: {admitted} of {} admitted at {LIMIT}/min across 3 replicas; the burst took {burst:?} (refill allowance {refilled})",
        3 * LIMIT
    );
    assert!(admitted >= LIMIT, "the whole burst is admitted: {admitted}");
    assert!(
        admitted <= LIMIT + refilled,
        "one limit for all replicas: {admitted} admitted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployment_quota_holds_across_three_replicas_and_the_overflow_bursts_on() {
    if let Some(redis_url) = redis_url() {
        deployment_quota_holds(&redis_url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployment_quota_holds_across_three_replicas_and_the_overflow_bursts_on_on_a_cluster() {
    if let Some(redis_url) = redis_cluster_url() {
        deployment_quota_holds(&redis_url).await;
    }
}

async fn deployment_quota_holds(redis_url: &str) {
    const QUOTA: u64 = 30;
    let (reserved_url, reserved_calls) = upstream(Upstream::Answer {
        completion_tokens: 1,
    })
    .await;
    let (burst_url, burst_calls) = upstream(Upstream::Answer {
        completion_tokens: 1,
    })
    .await;
    // The dedicated deployment is tried first; its quota sends the rest on.
    let deployments = format!(
        "{}{}",
        deployment("reserved", &reserved_url, true).replace(
            "dedicated = true",
            &format!("dedicated = true\nrequests_per_minute = {QUOTA}")
        ),
        deployment("burst", &burst_url, false)
    );
    let prefix = fresh_prefix("quota");
    let config = config(&deployments, &prefix, "timeout_ms = 5000", "");
    let replicas = replicas(3, &config, redis_url).await;
    let http = reqwest::Client::new();

    let began = std::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for call in 0..(3 * QUOTA) {
        let (http, base) = (http.clone(), replicas[call as usize % 3].base.clone());
        calls.spawn(async move { complete(&http, &base, KEY_B).await });
    }
    while let Some(outcome) = calls.join_next().await {
        let (status, body) = outcome.unwrap();
        assert_eq!(status, 200, "every call is answered: {body}");
    }
    let burst = began.elapsed();
    let refilled = (burst.as_secs_f64() * QUOTA as f64 / 60.0).ceil() as usize;
    let (reserved, bursted) = (
        reserved_calls.load(Ordering::SeqCst),
        burst_calls.load(Ordering::SeqCst),
    );
    eprintln!(
        "deployment quota: {reserved} calls on the reserved deployment (quota {QUOTA}/min, refill allowance {refilled}), {bursted} burst on"
    );
    assert_eq!(
        reserved + bursted,
        3 * QUOTA as usize,
        "each call sent once"
    );
    assert!(reserved >= QUOTA as usize, "the quota is used: {reserved}");
    assert!(
        reserved <= QUOTA as usize + refilled,
        "one quota for all replicas, never the provider's 429: {reserved}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_throttle_seen_by_one_replica_holds_every_replica_off_that_deployment() {
    if let Some(redis_url) = redis_url() {
        throttle_holds_every_replica_off(&redis_url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_throttle_seen_by_one_replica_holds_every_replica_off_that_deployment_on_a_cluster() {
    if let Some(redis_url) = redis_cluster_url() {
        throttle_holds_every_replica_off(&redis_url).await;
    }
}

async fn throttle_holds_every_replica_off(redis_url: &str) {
    let (throttled_url, throttled_calls) = upstream(Upstream::Throttle {
        retry_after_seconds: 600,
    })
    .await;
    let (steady_url, steady_calls) = upstream(Upstream::Answer {
        completion_tokens: 1,
    })
    .await;
    // The throttled deployment is dedicated capacity: every replica tries it first.
    let deployments = format!(
        "{}{}",
        deployment("throttled", &throttled_url, true),
        deployment("steady", &steady_url, false)
    );
    let prefix = fresh_prefix("cooldown");
    let config = config(&deployments, &prefix, "timeout_ms = 5000", "");
    let replicas = replicas(3, &config, redis_url).await;
    let http = reqwest::Client::new();
    // Every replica is subscribed before A learns anything (a later one would catch
    // up from the cooldown key instead: that path is the same apply).
    for replica in &replicas {
        let up = eventually(Duration::from_secs(30), async || {
            replica
                .service
                .shared_state()
                .redis()
                .is_some_and(|store| store.is_up())
        })
        .await;
        assert!(up, "the replica reaches redis");
    }

    let (status, body) = complete(&http, &replicas[0].base, KEY_B).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["skyfuse"]["attempts"][0]["provider"], "throttled");
    assert_eq!(
        body["skyfuse"]["attempts"][0]["outcome"],
        "error: THROTTLED"
    );
    assert_eq!(throttled_calls.load(Ordering::SeqCst), 1);

    let learned_at = std::time::Instant::now();
    for replica in &replicas[1..] {
        let held_off = eventually(Duration::from_secs(30), async || {
            breaker_open(&replica.service, "throttled")
        })
        .await;
        assert!(held_off, "the cooldown reached the replica");
    }
    eprintln!(
        "cooldown reached replicas B and C within {:?}",
        learned_at.elapsed()
    );
    for replica in &replicas {
        let metrics = replica.service.render_metrics();
        assert!(
            !metrics.lines().any(|line| line
                .starts_with("skyfuse_shared_state_errors_total{kind=\"cooldowns\"}")
                && !line.ends_with(" 0")),
            "the subscription and its probes never broke: {metrics}"
        );
    }

    for replica in &replicas[1..] {
        let (status, body) = complete(&http, &replica.base, KEY_B).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["skyfuse"]["attempts"][0]["provider"], "throttled");
        assert_eq!(
            body["skyfuse"]["attempts"][0]["outcome"], "skipped",
            "{body}"
        );
        assert_eq!(body["skyfuse"]["provider"], "steady");
    }
    assert_eq!(
        throttled_calls.load(Ordering::SeqCst),
        1,
        "replicas B and C never called the throttled deployment"
    );
    assert_eq!(steady_calls.load(Ordering::SeqCst), 3);
}

/// Whether `service` holds `provider`'s deployment off, as its metrics say.
fn breaker_open(service: &Service, provider: &str) -> bool {
    service.render_metrics().lines().any(|line| {
        line.starts_with("skyfuse_breaker_open{")
            && line.contains(&format!("provider=\"{provider}\""))
            && line.ends_with(" 1")
    })
}

/// A Redis address that refuses connections, and one that accepts them and never
/// answers (a hung server), each as one node, as a cluster's seeds and as a sentinel:
/// all must fail fast, each kind as configured.
async fn unreachable_redis_urls() -> Vec<String> {
    let refused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused_address = refused.local_addr().unwrap();
    drop(refused);
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_address = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let mut urls = Vec::new();
    for address in [refused_address, silent_address] {
        urls.push(format!("redis://{address}"));
        urls.push(format!("redis+cluster://{address},{address}"));
        urls.push(format!("redis+sentinel://{address}/mymaster"));
    }
    urls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_fails_budgets_closed_and_rate_limits_open_without_hanging() {
    let (upstream_url, upstream_calls) = upstream(Upstream::Answer {
        completion_tokens: 1,
    })
    .await;
    for redis_url in unreachable_redis_urls().await {
        let prefix = fresh_prefix("down");
        let limits = "[limits]\nrequests_per_minute = 1000\n";
        let config = config(
            &deployment("steady", &upstream_url, false),
            &prefix,
            "timeout_ms = 200\non_unavailable = { budgets = \"closed\", rate_limits = \"open\" }",
            limits,
        );
        let replica = replicas(1, &config, &redis_url).await.remove(0);
        let http = reqwest::Client::new();
        let before = upstream_calls.load(Ordering::SeqCst);

        // team-a has a budget: refused, saying why, and nothing is sent upstream.
        let (status, body) = complete(&http, &replica.base, KEY_A).await;
        assert_eq!(status, 503, "{body}");
        // The facade redacts the reason; readiness below names it.
        assert_eq!(upstream_calls.load(Ordering::SeqCst), before);

        // team-b has no budget: its rate limit fails open (this replica counts alone).
        let (status, body) = complete(&http, &replica.base, KEY_B).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(upstream_calls.load(Ordering::SeqCst), before + 1);

        let service = &replica.service;
        assert!(
            service
                .unready_reasons()
                .iter()
                .any(|reason| reason.contains("redis is unreachable and budgets fail closed")),
            "{:?}",
            service.unready_reasons()
        );
        let metrics = service.render_metrics();
        assert!(metrics.contains("skyfuse_shared_state_up 0"), "{metrics}");
        for kind in ["budgets", "rate_limits"] {
            assert!(
                metrics.lines().any(|line| line.starts_with(&format!(
                    "skyfuse_shared_state_errors_total{{kind=\"{kind}\"}}"
                )) && !line.ends_with(" 0")),
                "{kind} errors counted: {metrics}"
            );
        }
    }
}
