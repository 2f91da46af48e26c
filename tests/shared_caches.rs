//! Caches replicas share through one real Redis (`[shared_state]`): a query vector
//! one replica embedded is a Redis hit for another, and an answer one replica gave is
//! replayed by another without a model call, until the bucket's content changes.
//! A Redis that fails or never answers is a miss, never a failed search.
//!
//! Each replica is a `Service` with its own data dir (as replicas on their own
//! machines), in front of OpenAI-compatible upstreams on loopback that count calls.
//! Redis comes from `SKYFUSE_TEST_REDIS_URL`; without it the tests skip, unless `CI`
//! or `SKYFUSE_REQUIRE_TOOLS` is set. Each test uses its own key prefix.

#[path = "common/redis.rs"]
mod redis_support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::IntoResponse;
use redis_support::{fresh_prefix, redis_url};
use serde_json::{Value, json};
use skyfuse::auth::Principal;
use skyfuse::config::Config;
use skyfuse::service::{
    AnswerEvent, AnswerRequest, AnswerSummary, IndexFilters, SearchParams, Service,
};
use tempfile::TempDir;
use tokio::net::TcpListener;

const DIMS: usize = 8;

/// An upstream on loopback: every embedding request's inputs in order, and the
/// number of chat completions.
#[derive(Clone, Default)]
struct Upstream {
    embedded: Arc<Mutex<Vec<String>>>,
    chats: Arc<AtomicUsize>,
}

impl Upstream {
    fn embeddings_of(&self, text: &str) -> usize {
        self.embedded
            .lock()
            .unwrap()
            .iter()
            .filter(|input| input.as_str() == text)
            .count()
    }

    fn chats(&self) -> usize {
        self.chats.load(Ordering::SeqCst)
    }
}

/// A vector that depends on the text, so different texts rank differently.
fn vector_for(text: &str) -> Vec<f32> {
    let mut vector = vec![0.1_f32; DIMS];
    for (index, byte) in text.bytes().enumerate() {
        vector[index % DIMS] += f32::from(byte) / 255.0;
    }
    vector
}

/// Serves `/v1/embeddings` and `/v1/chat/completions` (a streamed "Cold archives
/// are in Dublin [1]." that stops by itself).
async fn upstream() -> (String, Upstream) {
    let upstream = Upstream::default();
    let (embedded, chats) = (upstream.embedded.clone(), upstream.chats.clone());
    let app = axum::Router::new()
        .route(
            "/v1/embeddings",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let inputs: Vec<String> = body["input"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|input| input.as_str().map(str::to_string))
                    .collect();
                embedded.lock().unwrap().extend(inputs.iter().cloned());
                let data: Vec<Value> = inputs
                    .iter()
                    .enumerate()
                    .map(|(index, text)| {
                        json!({"object": "embedding", "index": index, "embedding": vector_for(text)})
                    })
                    .collect();
                async move { axum::Json(json!({"object": "list", "data": data})) }
            }),
        )
        .route(
            "/v1/chat/completions",
            axum::routing::post(move || {
                chats.fetch_add(1, Ordering::SeqCst);
                async move {
                    let events = [
                        json!({"choices": [{"index": 0, "delta": {"content": "Cold archives "}, "finish_reason": null}]}),
                        json!({"choices": [{"index": 0, "delta": {"content": "are in Dublin [1]."}, "finish_reason": null}]}),
                        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
                        json!({"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 7, "total_tokens": 47}}),
                    ];
                    let mut body: String = events
                        .iter()
                        .map(|event| format!("data: {event}\n\n"))
                        .collect();
                    body.push_str("data: [DONE]\n\n");
                    ([("content-type", "text/event-stream")], body).into_response()
                }
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, upstream)
}

/// A replica: its service, and the data dir it alone writes.
struct Replica {
    service: Service,
    _data: TempDir,
}

/// A replica of `config_body` (everything but `[server]` and `[shared_state]`),
/// sharing state under `prefix` at `redis_url` with `timeout_ms`, reading `docs`.
async fn replica(
    config_body: &str,
    redis_url: &str,
    prefix: &str,
    timeout_ms: u64,
    docs: &Path,
) -> Replica {
    let data = TempDir::new().unwrap();
    let text = format!(
        r#"
        [server]
        data_dir = "{data}"
        {config_body}
        [shared_state]
        redis_url = "env:SKYFUSE_REDIS_URL"
        key_prefix = "{prefix}"
        timeout_ms = {timeout_ms}
        "#,
        data = data.path().display(),
    );
    let mut config = Config::parse(&text, Path::new("/")).unwrap();
    config.ingest.roots.push(docs.to_path_buf());
    let env = HashMap::from([("SKYFUSE_REDIS_URL".to_string(), redis_url.to_string())]);
    let service = Service::build(config, &env).await.unwrap();
    Replica {
        service,
        _data: data,
    }
}

/// One embedding space over the upstream, `model` as given, whose query vectors
/// replicas share, and a dense source in it.
fn dense_space(upstream_url: &str, model: &str) -> String {
    format!(
        r#"
        [[provider]]
        id = "embedder"
        kind = "openai_compat"
        base_url = "{upstream_url}"
        [[space]]
        id = "bge"
        provider = "embedder"
        model = "{model}"
        dims = {DIMS}
        shared_query_cache = true
        [[source]]
        id = "dense"
        kind = "dense"
        space = "bge"
        "#
    )
}

async fn search(replica: &Replica, query: &str) {
    let searched = tokio::time::timeout(
        Duration::from_secs(30),
        replica.service.search(
            &Principal::operator(),
            SearchParams {
                query: query.into(),
                ..Default::default()
            },
        ),
    )
    .await
    .expect("no search hangs");
    let result = searched.unwrap();
    assert!(!result.degraded, "{:?}", result.outcomes);
}

/// `skyfuse_cache_lookups_total{cache, tier}` of one replica.
fn lookups(replica: &Replica, cache: &str, tier: &str) -> u64 {
    metric(
        replica,
        &format!(r#"skyfuse_cache_lookups_total{{cache="{cache}",tier="{tier}"}}"#),
    )
}

fn metric(replica: &Replica, sample: &str) -> u64 {
    replica
        .service
        .metrics()
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(sample))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_embedded_by_one_replica_is_a_redis_hit_for_another_until_the_model_changes() {
    let Some(redis_url) = redis_url() else {
        return;
    };
    let (upstream_url, upstream) = upstream().await;
    let docs = TempDir::new().unwrap();
    let prefix = fresh_prefix("query-vectors");
    let body = dense_space(&upstream_url, "bge-small");
    let a = replica(&body, &redis_url, &prefix, 5_000, docs.path()).await;
    let b = replica(&body, &redis_url, &prefix, 5_000, docs.path()).await;
    let query = "where are cold archives kept?";

    search(&a, query).await;
    assert_eq!(upstream.embeddings_of(query), 1);
    assert_eq!(lookups(&a, "query_embedding", "miss"), 1);

    search(&b, query).await;
    assert_eq!(
        upstream.embeddings_of(query),
        1,
        "replica B found A's vector in Redis"
    );
    assert_eq!(lookups(&b, "query_embedding", "redis"), 1);
    assert_eq!(lookups(&b, "query_embedding", "miss"), 0);

    search(&b, query).await;
    assert_eq!(lookups(&b, "query_embedding", "process"), 1, "then its own");
    assert_eq!(upstream.embeddings_of(query), 1);

    // The same space id over another model: its vectors are not the old model's.
    let changed = replica(
        &dense_space(&upstream_url, "bge-small-v2"),
        &redis_url,
        &prefix,
        5_000,
        docs.path(),
    )
    .await;
    search(&changed, query).await;
    assert_eq!(
        upstream.embeddings_of(query),
        2,
        "embedded by the new model"
    );
    assert_eq!(lookups(&changed, "query_embedding", "redis"), 0);
}

/// A Redis that accepts connections and never answers.
async fn silent_redis() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answers_is_a_miss_and_the_search_goes_on() {
    let (upstream_url, upstream) = upstream().await;
    let docs = TempDir::new().unwrap();
    let silent = silent_redis().await;
    let body = dense_space(&upstream_url, "bge-small");
    let replica = replica(&body, &silent, &fresh_prefix("silent"), 100, docs.path()).await;
    let query = "where are cold archives kept?";

    search(&replica, query).await;
    assert_eq!(
        upstream.embeddings_of(query),
        1,
        "embedded as without Redis"
    );
    assert_eq!(lookups(&replica, "query_embedding", "miss"), 1);
    let errors = metric(
        &replica,
        r#"skyfuse_shared_state_errors_total{kind="embedding_cache"}"#,
    );
    assert_eq!(errors, 2, "the lookup and the write both gave up");
}

/// A BM25 index over `docs` and a model answering through the upstream, with
/// answers cached.
fn answering(upstream_url: &str) -> String {
    format!(
        r#"
        [answer]
        cache = {{ ttl_ms = 600000 }}
        [routing]
        default_model = "llama"
        [[provider]]
        id = "chat"
        kind = "openai_compat"
        base_url = "{upstream_url}"
        cloud = "aws"
        region = "eu-west-1"
        [[deployment]]
        provider = "chat"
        model = "llama"
        input_per_1m_usd = 1.0
        output_per_1m_usd = 10.0
        [[source]]
        id = "bm25"
        kind = "tantivy"
        [[index]]
        id = "docs"
        sources = ["bm25"]
        "#
    )
}

async fn index(replica: &Replica, docs: &Path) {
    let report = replica
        .service
        .index(
            &Principal::operator(),
            &docs.display().to_string(),
            "",
            &IndexFilters::default(),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(report.progress.failed, 0, "{report:?}");
}

/// The answer's text and its `Done`.
async fn ask(replica: &Replica, question: &str) -> (String, AnswerSummary) {
    let mut events = replica
        .service
        .answer(
            &Principal::operator(),
            AnswerRequest {
                question: question.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut text = String::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("no answer hangs");
        match event {
            Some(AnswerEvent::Token(token)) => text.push_str(&token),
            Some(AnswerEvent::Done(summary)) => return (text, *summary),
            Some(AnswerEvent::Failed(error)) => panic!("the answer failed: {error}"),
            None => panic!("the answer ended without Done"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_given_by_one_replica_is_replayed_by_another_until_the_bucket_changes() {
    let Some(redis_url) = redis_url() else {
        return;
    };
    let (upstream_url, upstream) = upstream().await;
    let docs = TempDir::new().unwrap();
    let file = docs.path().join("archives.txt");
    std::fs::write(
        &file,
        "Cold archives are kept in Dublin, replicated nightly.",
    )
    .unwrap();
    let prefix = fresh_prefix("answers");
    let body = answering(&upstream_url);
    let a = replica(&body, &redis_url, &prefix, 5_000, docs.path()).await;
    let b = replica(&body, &redis_url, &prefix, 5_000, docs.path()).await;
    index(&a, docs.path()).await;
    index(&b, docs.path()).await;
    let question = "Where are cold archives kept?";

    let (text, first) = ask(&a, question).await;
    assert_eq!(text, "Cold archives are in Dublin [1].");
    assert!(!first.cached);
    assert!(first.cost_usd > 0.0);
    assert_eq!(upstream.chats(), 1);

    let (replayed, second) = ask(&b, question).await;
    assert_eq!(upstream.chats(), 1, "replica B called no model");
    assert_eq!(replayed, text, "the same answer");
    assert!(second.cached, "marked cached");
    assert_eq!(second.cost_usd, 0.0);
    assert_eq!(second.finish_reason, "stop");
    assert_eq!(second.usage, first.usage, "what the answer took when made");
    assert_eq!(second.citations, first.citations);
    assert_eq!(second.cited.cited, vec![1]);
    assert!(second.route.attempts.is_empty());
    assert_eq!(
        second
            .route
            .chosen
            .as_ref()
            .map(|chosen| chosen.id.as_str()),
        Some("chat")
    );
    assert_eq!(lookups(&b, "answer", "redis"), 1);

    // The bucket changes and B re-indexes it: its passage is another, so is the key.
    std::fs::write(&file, "Cold archives moved to Frankfurt in March.").unwrap();
    index(&b, docs.path()).await;
    let (_, after) = ask(&b, question).await;
    assert!(!after.cached, "answered anew over the new content");
    assert_eq!(upstream.chats(), 2);
    assert!(after.citations[0].text.contains("Frankfurt"));
    assert_eq!(lookups(&b, "answer", "miss"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answers_leaves_answers_to_the_model_and_this_process() {
    let (upstream_url, upstream) = upstream().await;
    let docs = TempDir::new().unwrap();
    std::fs::write(
        docs.path().join("archives.txt"),
        "Cold archives are kept in Dublin, replicated nightly.",
    )
    .unwrap();
    let silent = silent_redis().await;
    let body = answering(&upstream_url);
    let replica = replica(
        &body,
        &silent,
        &fresh_prefix("silent-answers"),
        100,
        docs.path(),
    )
    .await;
    index(&replica, docs.path()).await;
    let question = "Where are cold archives kept?";

    let (text, first) = ask(&replica, question).await;
    assert_eq!(text, "Cold archives are in Dublin [1].");
    assert!(!first.cached);
    assert_eq!(upstream.chats(), 1);
    let errors = metric(
        &replica,
        r#"skyfuse_shared_state_errors_total{kind="answer_cache"}"#,
    );
    assert_eq!(errors, 2, "the lookup and the write both gave up");

    let (_, again) = ask(&replica, question).await;
    assert!(again.cached, "kept in process all the same");
    assert_eq!(upstream.chats(), 1);
    assert_eq!(lookups(&replica, "answer", "process"), 1);
}
