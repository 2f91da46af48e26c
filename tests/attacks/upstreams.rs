//! Attacks on upstreams: see docs/security/upstreams.md.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use skyfuse::api::proto::{self, generation_service_client::GenerationServiceClient};
use tokio::sync::oneshot;

use crate::support::{AttackServer, serve_http};

const KEY: &str = "sk-secret-upstream-key-0123456789";

/// A chat upstream answering every completion with `status`, `headers` and `body`.
async fn fixed_upstream(
    status: StatusCode,
    headers: &'static [(&'static str, &'static str)],
    body: String,
) -> String {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let body = body.clone();
            async move {
                let mut response = (status, body).into_response();
                for (name, value) in headers {
                    response
                        .headers_mut()
                        .insert(*name, axum::http::HeaderValue::from_static(value));
                }
                response
            }
        }),
    );
    serve_http(app).await
}

/// An upstream whose completion body is `head` then 64 KiB chunks of `x` for ever, with
/// no line break: resolves with the bytes it sent once the reader hangs up.
async fn endless_upstream(
    status: StatusCode,
    head: &'static str,
) -> (String, oneshot::Receiver<u64>) {
    /// Reports the bytes sent when hyper drops the body (the connection closed).
    struct HangUp {
        sent: u64,
        report: Option<oneshot::Sender<u64>>,
    }
    impl Drop for HangUp {
        fn drop(&mut self) {
            if let Some(report) = self.report.take() {
                let _ = report.send(self.sent);
            }
        }
    }
    let (report, hung_up) = oneshot::channel();
    let report = Arc::new(std::sync::Mutex::new(Some(report)));
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let report = report.lock().unwrap().take();
            async move {
                let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
                let guard = HangUp { sent: 0, report };
                let body = futures::stream::once(async move {
                    Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(head.as_bytes()))
                })
                .chain(futures::stream::unfold(guard, move |mut guard| {
                    let chunk = chunk.clone();
                    async move {
                        guard.sent += chunk.len() as u64;
                        Some((Ok(chunk), guard))
                    }
                }));
                Response::builder()
                    .status(status)
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(body))
                    .unwrap()
            }
        }),
    );
    (serve_http(app).await, hung_up)
}

/// One chat deployment on `upstream` with our key in `key_file`, facade on.
fn chat_config(upstream: &str, key_file: &Path) -> String {
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
        api_key = "file:{}"
        cloud = "local"
        region = "local"
        [[deployment]]
        provider = "loopback"
        model = "llama"
        "#,
        key_file.display()
    )
}

/// What skyfuse read of an endless body before hanging up: a cap plus socket buffers,
/// where the unbounded reads this replaces took gigabytes.
const MAX_READ_OF_ENDLESS_BODY: u64 = 32 << 20;

async fn complete(server: &AttackServer) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!(
            "http://{}/v1/chat/completions",
            server.http.unwrap()
        ))
        .json(
            &serde_json::json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap()
}

async fn start(upstream: &str) -> (AttackServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, KEY).unwrap();
    let server = AttackServer::start(&chat_config(upstream, &key_file), dir.path()).await;
    (server, dir)
}

#[tokio::test]
async fn upstream_echoing_our_key_is_not_relayed_to_the_client() {
    let upstream = fixed_upstream(
        StatusCode::UNAUTHORIZED,
        &[("content-type", "application/json")],
        format!(
            r#"{{"error": {{"message": "Incorrect API key provided: {KEY}. See https://platform.example.test/keys"}}}}"#
        ),
    )
    .await;
    let (server, _dir) = start(&upstream).await;
    let response = complete(&server).await;
    let status = response.status();
    let headers = format!("{:?}", response.headers());
    let request_id = response
        .headers()
        .get("x-request-id")
        .map(|value| value.to_str().unwrap().to_string());
    let body = response.text().await.unwrap();
    eprintln!("observed: {status} {body}");
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    for leak in [KEY, "sk-secret", upstream.as_str(), "https://", "http://"] {
        assert!(!body.contains(leak), "{leak} in body: {body}");
        assert!(!headers.contains(leak), "{leak} in headers: {headers}");
    }
    let request_id = request_id.expect("an x-request-id header");
    assert!(body.contains(&request_id), "{body}");
    // Still serving: the models list answers.
    let models = reqwest::get(format!("http://{}/v1/models", server.http.unwrap()))
        .await
        .unwrap();
    assert!(models.status().is_success());
    server.stop().await;
}

#[tokio::test]
async fn huge_retry_after_on_a_429_is_a_throttled_answer_not_a_panic() {
    let upstream = fixed_upstream(
        StatusCode::TOO_MANY_REQUESTS,
        &[("retry-after", "99999999999999999999")],
        r#"{"error": {"message": "slow down"}}"#.to_string(),
    )
    .await;
    let (server, _dir) = start(&upstream).await;
    let response = complete(&server).await;
    let status = response.status();
    let body = response.text().await.unwrap();
    eprintln!("observed: {status} {body}");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let models = reqwest::get(format!("http://{}/v1/models", server.http.unwrap()))
        .await
        .unwrap();
    assert!(models.status().is_success());
    server.stop().await;
}

#[tokio::test]
async fn an_endless_error_body_is_read_only_up_to_its_cap() {
    let (upstream, hung_up) = endless_upstream(StatusCode::INTERNAL_SERVER_ERROR, "").await;
    let (server, _dir) = start(&upstream).await;
    let response = complete(&server).await;
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(!body.contains("xxxx"), "{body}");
    let sent = hung_up.await.expect("skyfuse hangs up on the endless body");
    eprintln!("observed: {status}; the upstream sent {sent} bytes before skyfuse hung up");
    assert!(sent < MAX_READ_OF_ENDLESS_BODY, "{sent} bytes read");
    server.stop().await;
}

#[tokio::test]
async fn an_endless_sse_line_ends_the_stream_with_an_error() {
    let (upstream, hung_up) = endless_upstream(StatusCode::OK, "data: ").await;
    let (server, _dir) = start(&upstream).await;
    let response = complete(&server).await;
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let sent = hung_up.await.expect("skyfuse hangs up on the endless line");
    eprintln!("observed: {status}; the upstream sent {sent} bytes before skyfuse hung up");
    assert!(sent < MAX_READ_OF_ENDLESS_BODY, "{sent} bytes read");
    server.stop().await;
}

#[tokio::test]
async fn a_stream_that_starts_with_a_byte_order_mark_is_read() {
    let events = [
        r#"{"choices":[{"index":0,"delta":{"content":"harbour"},"finish_reason":null}]}"#,
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
    ];
    let mut sse = String::from("\u{feff}");
    for event in events {
        sse.push_str(&format!("data: {event}\n\n"));
    }
    sse.push_str("data: [DONE]\n\n");
    let upstream = fixed_upstream(
        StatusCode::OK,
        &[("content-type", "text/event-stream")],
        sse,
    )
    .await;
    let (server, _dir) = start(&upstream).await;
    let response = complete(&server).await;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"], "harbour",
        "{body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_redirect_is_not_followed_so_our_key_stays_on_its_host() {
    let listened_to = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&listened_to);
    let second = serve_http(axum::Router::new().fallback(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async { StatusCode::OK }
    }))
    .await;
    let location = format!("{second}/v1/chat/completions");
    let redirecting =
        serve_http(
            axum::Router::new().route(
                "/v1/chat/completions",
                axum::routing::post(move || {
                    let location = location.clone();
                    async move {
                        (StatusCode::TEMPORARY_REDIRECT, [("location", location)]).into_response()
                    }
                }),
            ),
        )
        .await;
    let (server, _dir) = start(&redirecting).await;
    let response = complete(&server).await;
    let status = response.status();
    let body = response.text().await.unwrap();
    eprintln!("observed: {status} {body}");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(!body.contains(&second), "{body}");
    assert_eq!(
        listened_to.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
    server.stop().await;
}

#[tokio::test]
async fn upstream_echoing_our_key_is_not_relayed_over_grpc_either() {
    let upstream = fixed_upstream(
        StatusCode::UNAUTHORIZED,
        &[("content-type", "application/json")],
        format!(r#"{{"error": {{"message": "Incorrect API key provided: {KEY}."}}}}"#),
    )
    .await;
    let (server, _dir) = start(&upstream).await;
    let mut client = GenerationServiceClient::new(server.channel.clone());
    let outcome = client
        .answer(proto::AnswerRequest {
            question: "where is the harbour?".into(),
            model: "llama".into(),
            ..Default::default()
        })
        .await;
    // The refusal arrives as a status or as the stream's error event; either way
    // it names no key and no upstream.
    let text = match outcome {
        Err(status) => format!("{status:?}"),
        Ok(response) => {
            let mut stream = response.into_inner();
            let mut events = Vec::new();
            loop {
                match stream.message().await {
                    Ok(Some(event)) => events.push(format!("{event:?}")),
                    Ok(None) => break,
                    Err(status) => {
                        events.push(format!("{status:?}"));
                        break;
                    }
                }
            }
            events.join("\n")
        }
    };
    eprintln!("observed: {text}");
    assert!(
        text.contains("UNAVAILABLE") || text.contains("Unavailable"),
        "{text}"
    );
    for leak in [KEY, "sk-secret", upstream.as_str()] {
        assert!(!text.contains(leak), "{leak} in {text}");
    }
    server.stop().await;
}
