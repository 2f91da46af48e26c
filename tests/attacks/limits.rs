//! Attacks on limits: see docs/security/limits.md.
//!
//! - more calls at once than `server.max_concurrent_calls`, held open as streams;
//! - one caller over its requests per minute (others must not notice);
//! - asking for more output tokens than the server allows;
//! - a second writer on a data dir (in this process and as a second `skyfuse`).
//!
//! Upstream models are OpenAI-compatible servers on loopback; streams are held
//! open by an upstream that waits on a channel the test controls, never by sleeps.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::response::IntoResponse;
use futures::StreamExt;
use serde_json::{Value, json};
use skyfuse::api::proto;
use skyfuse::api::proto::admin_service_client::AdminServiceClient;
use skyfuse::api::proto::generation_service_client::GenerationServiceClient;
use skyfuse::api::proto::retrieval_service_client::RetrievalServiceClient;
use tokio::sync::watch;

use crate::support::{AttackServer, serve_http};

fn sse_data(event: &Value) -> String {
    format!("data: {event}\n\n")
}

fn token(text: &str) -> Value {
    json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
}

fn finish() -> String {
    let end = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}});
    format!("{}data: [DONE]\n\n", sse_data(&end))
}

/// An OpenAI-compatible upstream: each stream sends "Hello" at once and finishes
/// only when the returned sender says `true`. Counts the calls it got.
async fn held_upstream() -> (String, watch::Sender<bool>, Arc<AtomicUsize>) {
    let (release, released) = watch::channel(false);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut released = released.clone();
            async move {
                let first = futures::stream::once(async { sse_data(&token("Hello")) });
                let rest = futures::stream::once(async move {
                    let _ = released.wait_for(|released| *released).await;
                    finish()
                });
                let body = first
                    .chain(rest)
                    .map(|text| Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(text)));
                (
                    [("content-type", "text/event-stream")],
                    axum::body::Body::from_stream(body),
                )
                    .into_response()
            }
        }),
    );
    (serve_http(app).await, release, calls)
}

/// A chat model served by `upstream`, the default model, and the facade on.
fn chat_config(upstream: &str, extra: &str) -> String {
    format!(
        r#"
        [facade]
        listen = "127.0.0.1:0"
        [routing]
        default_model = "llama"
        [[provider]]
        id = "loopback"
        kind = "openai_compat"
        base_url = "{upstream}"
        cloud = "local"
        region = "local"
        [[deployment]]
        provider = "loopback"
        model = "llama"
        input_per_1m_usd = 0.0
        output_per_1m_usd = 0.0
        {extra}
        "#
    )
}

/// A BM25-only store and index in `data_dir`: needs no model.
fn bm25_config(data_dir: &Path) -> String {
    format!(
        r#"
        [server]
        data_dir = "{}"
        [[source]]
        id = "bm25"
        kind = "tantivy"
        [[index]]
        id = "docs"
        sources = ["bm25"]
        "#,
        data_dir.display()
    )
}

fn completion(stream: bool, max_tokens: u32) -> Value {
    json!({
        "model": "llama",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
        "max_tokens": max_tokens,
    })
}

async fn post(
    http: &reqwest::Client,
    server: &AttackServer,
    key: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut request = http
        .post(format!(
            "http://{}/v1/chat/completions",
            server.http.unwrap()
        ))
        .json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

/// Reads a streamed response until its first token has arrived.
async fn until_first_token(response: &mut reqwest::Response) {
    let mut seen = String::new();
    while !seen.contains("Hello") {
        let chunk = response
            .chunk()
            .await
            .unwrap()
            .expect("the stream ended early");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

async fn list_sources(
    server: &AttackServer,
) -> Result<tonic::Response<proto::ListSourcesResponse>, tonic::Status> {
    AdminServiceClient::new(server.channel.clone())
        .list_sources(proto::ListSourcesRequest::default())
        .await
}

#[tokio::test]
async fn calls_past_max_concurrent_calls_are_refused_at_once_while_streams_are_open() {
    let (upstream, release, upstream_calls) = held_upstream().await;
    let directory = tempfile::tempdir().unwrap();
    let config = chat_config(
        &upstream,
        "[server]\nmax_concurrent_calls = 2\ndata_dir = \"unused\"",
    );
    let server = AttackServer::start(&config, directory.path()).await;
    let http = reqwest::Client::new();

    // Two streams, each past its first token: the handlers have returned, the
    // bodies are still streaming.
    let mut first = post(&http, &server, None, &completion(true, 16)).await;
    let mut second = post(&http, &server, None, &completion(true, 16)).await;
    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 200);
    until_first_token(&mut first).await;
    until_first_token(&mut second).await;

    // A third call on either edge is refused at once, before it reaches a model.
    let refused = post(&http, &server, None, &completion(true, 16)).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "server_busy");
    assert_eq!(
        body["error"]["message"],
        "the server is busy: 2 calls in flight, its limit (server.max_concurrent_calls); retry shortly"
    );
    let status = list_sources(&server).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(status.metadata().get("retry-after").unwrap(), "1");
    assert!(
        status.message().contains("server.max_concurrent_calls"),
        "{status:?}"
    );
    assert_eq!(upstream_calls.load(Ordering::SeqCst), 2);
    // Health is never counted: a busy server is alive.
    let health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1, "SERVING");

    // The streams end: their slots are free again.
    release.send(true).unwrap();
    for stream in [first, second] {
        assert!(stream.text().await.unwrap().contains("[DONE]"));
    }
    list_sources(&server).await.expect("served again");
    let whole = post(&http, &server, None, &completion(false, 16)).await;
    assert_eq!(whole.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn a_caller_over_its_requests_per_minute_gets_429_with_headers_and_others_do_not_notice() {
    let (upstream, release, _) = held_upstream().await;
    release.send(true).unwrap();
    let directory = tempfile::tempdir().unwrap();
    for (name, key) in [("team-a.key", "key-a"), ("team-b.key", "key-b")] {
        std::fs::write(directory.path().join(name), key).unwrap();
    }
    let data_dir = directory.path().join("data");
    // A minute per request for team-a: the test cannot outlive the window.
    let extra = format!(
        r#"
        [[caller]]
        id = "team-a"
        api_key = "file:{dir}/team-a.key"
        [[caller]]
        id = "team-b"
        api_key = "file:{dir}/team-b.key"
        [limits]
        requests_per_minute = 1000
        tokens_per_minute = 1000000
        [[limits.caller]]
        id = "team-a"
        requests_per_minute = 2
        "#,
        dir = directory.path().display()
    );
    let config = format!(
        "{}{}",
        bm25_config(&data_dir),
        chat_config(&upstream, &extra)
    );
    let server = AttackServer::start(&config, directory.path()).await;
    let http = reqwest::Client::new();

    for remaining in ["1", "0"] {
        let response = post(&http, &server, Some("key-a"), &completion(false, 16)).await;
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        assert_eq!(headers["x-ratelimit-limit-requests"], "2");
        assert_eq!(headers["x-ratelimit-remaining-requests"], remaining);
        assert_eq!(headers["x-ratelimit-limit-tokens"], "1000000");
        assert!(headers.contains_key("x-ratelimit-remaining-tokens"));
        assert!(headers.contains_key("x-ratelimit-reset-requests"));
        assert!(headers.contains_key("x-ratelimit-reset-tokens"));
    }
    let refused = post(&http, &server, Some("key-a"), &completion(false, 16)).await;
    assert_eq!(refused.status(), 429);
    let headers = refused.headers().clone();
    // One request every 30 s: the next fits at most 30 s after the first.
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "retry-after {retry_after}");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    assert!(
        headers["x-ratelimit-reset-requests"]
            .to_str()
            .unwrap()
            .ends_with('s')
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(
        body["error"]["message"],
        format!(
            "rate limit: over 2 requests per minute (limits.requests_per_minute); retry in {retry_after} s"
        )
    );

    // The same caller over gRPC is refused too, with the hint as metadata.
    let mut answer = tonic::Request::new(proto::AnswerRequest {
        question: "hello".into(),
        model: "llama".into(),
        ..Default::default()
    });
    answer
        .metadata_mut()
        .insert("authorization", "Bearer key-a".parse().unwrap());
    let status = GenerationServiceClient::new(server.channel.clone())
        .answer(answer)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let retry_after: u64 = status
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry_after), "retry-after {retry_after}");
    assert!(
        status.message().starts_with("rate limit: over 2 requests"),
        "{status:?}"
    );

    // Every entrance counts the call, not only chat: team-a's Search is refused too.
    let mut search = tonic::Request::new(proto::SearchRequest {
        query: "hello".into(),
        ..Default::default()
    });
    search
        .metadata_mut()
        .insert("authorization", "Bearer key-a".parse().unwrap());
    let status = RetrievalServiceClient::new(server.channel.clone())
        .search(search)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    // team-b has its own allowance.
    let other = post(&http, &server, Some("key-b"), &completion(false, 16)).await;
    assert_eq!(other.status(), 200);
    assert_eq!(other.headers()["x-ratelimit-limit-requests"], "1000");
    assert_eq!(other.headers()["x-ratelimit-remaining-requests"], "999");
    // And the server still serves everything else.
    let mut search = tonic::Request::new(proto::SearchRequest {
        query: "hello".into(),
        ..Default::default()
    });
    search
        .metadata_mut()
        .insert("authorization", "Bearer key-b".parse().unwrap());
    RetrievalServiceClient::new(server.channel.clone())
        .search(search)
        .await
        .expect("search still serves");
    server.stop().await;
}

#[tokio::test]
async fn output_tokens_a_call_did_not_use_are_given_back_to_its_caller() {
    let (upstream, release, calls) = held_upstream().await;
    release.send(true).unwrap();
    // Each call is charged its prompt plus the 600 output tokens it may use up front;
    // the upstream reports 11 used. Without the refund the second call would not fit.
    let extra = r#"
        [limits]
        tokens_per_minute = 1000
        "#;
    let directory = tempfile::tempdir().unwrap();
    let server = AttackServer::start(&chat_config(&upstream, extra), directory.path()).await;
    let http = reqwest::Client::new();
    for call in 1..=3 {
        let response = post(&http, &server, None, &completion(false, 600)).await;
        assert_eq!(response.status(), 200, "call {call}");
        let remaining: u64 = response.headers()["x-ratelimit-remaining-tokens"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        // Charged up front: what remains right after admission is under 400.
        assert!(remaining < 400, "call {call}: {remaining} remaining");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    server.stop().await;
}

#[tokio::test]
async fn asking_for_more_output_tokens_than_the_server_allows_is_refused() {
    let (upstream, release, upstream_calls) = held_upstream().await;
    release.send(true).unwrap();
    let directory = tempfile::tempdir().unwrap();
    let config = format!(
        "{}{}",
        bm25_config(&directory.path().join("data")),
        chat_config(&upstream, "[answer]\nmax_output_tokens_limit = 1000")
    );
    let server = AttackServer::start(&config, directory.path()).await;
    let http = reqwest::Client::new();

    let refused = post(&http, &server, None, &completion(false, 1_000_000)).await;
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "max_tokens is 1000000, more than this server allows (answer.max_output_tokens_limit = 1000)"
    );
    let status = GenerationServiceClient::new(server.channel.clone())
        .answer(proto::AnswerRequest {
            question: "hello".into(),
            model: "llama".into(),
            max_output_tokens: 1_000_000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "max_output_tokens is 1000000, more than this server allows (answer.max_output_tokens_limit = 1000)"
    );
    assert_eq!(upstream_calls.load(Ordering::SeqCst), 0, "nothing was sent");

    let within = post(&http, &server, None, &completion(false, 1000)).await;
    assert_eq!(within.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn a_second_writer_on_a_data_dir_is_refused_naming_the_lock_and_its_holder() {
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let config = bm25_config(&data_dir);
    let server = AttackServer::start(&config, directory.path()).await;
    let lock_file = data_dir.canonicalize().unwrap().join("skyfuse.lock");
    let holder = format!("in use by process {}", std::process::id());

    // A second service in this process.
    let error = AttackServer::try_start(&config, directory.path())
        .await
        .err()
        .expect("a second writer is refused");
    assert_eq!(error.kind, skyfuse::error::ErrorKind::Config);
    assert!(error.message.contains(&holder), "{error}");
    assert!(
        error.message.contains(&lock_file.display().to_string()),
        "{error}"
    );

    // A second process: `skyfuse index` in-process beside the running server.
    let config_file = directory.path().join("skyfuse.toml");
    std::fs::write(&config_file, &config).unwrap();
    let documents = directory.path().join("documents");
    std::fs::create_dir_all(&documents).unwrap();
    std::fs::write(documents.join("a.txt"), "hello world").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_skyfuse"))
        .arg("--config")
        .arg(&config_file)
        .arg("index")
        .arg(&documents)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&holder), "{stderr}");
    assert!(
        stderr.contains("only one skyfuse may write a data dir"),
        "{stderr}"
    );

    // The holder still serves; once it stops, the data dir is free.
    list_sources(&server)
        .await
        .expect("the first server still serves");
    server.stop().await;
    let next = AttackServer::start(&config, directory.path()).await;
    list_sources(&next).await.expect("served");
    next.stop().await;
}
