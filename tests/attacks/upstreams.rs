//! Attacks on upstreams: see docs/security/upstreams.md.

use std::path::Path;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use tokio::net::TcpListener;

use crate::support::AttackServer;

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
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
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
