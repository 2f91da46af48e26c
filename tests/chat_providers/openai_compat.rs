//! OpenAI-compatible servers (llama.cpp, vLLM, Ollama): `POST /v1/chat/completions`,
//! streamed with usage asked for, bearer key when configured.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use skyfuse::error::ErrorKind;
use skyfuse::llm::FinishReason;

use crate::support::*;
use crate::{Make, Wire, common_statuses, status_faults, stream_faults};

fn config(base_url: &str) -> String {
    format!(
        "[[provider]]\nid = \"local-llama\"\nkind = \"openai_compat\"\nbase_url = \"{base_url}\"\napi_key = \"env:LLAMA_KEY\"\ninput_per_1m_usd = 0.5\noutput_per_1m_usd = 1.5\n"
    )
}

fn make() -> Make {
    Arc::new(|base_url: &str| {
        build(
            &config(base_url),
            &target("llama-3.1-8b", "llama-3.1-8b-instruct-q4", false),
            &HashMap::from([("LLAMA_KEY".to_string(), "sk-local".to_string())]),
        )
    })
}

pub fn chunk(content: &str) -> Vec<u8> {
    sse(
        None,
        &json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]}).to_string(),
    )
}

pub fn finish() -> Vec<u8> {
    [
        sse(
            None,
            r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        ),
        sse(
            None,
            r#"{"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":388,"completion_tokens":9,"total_tokens":397,"prompt_tokens_details":{"cached_tokens":256}},"timings":{"prompt_n":388}}"#,
        ),
        sse(None, "[DONE]"),
    ]
    .concat()
}

fn checks(received: &Received) -> Result<(), String> {
    expect(
        received.method == "POST" && received.target == "/v1/chat/completions",
        format!("target {}", received.target),
    )?;
    expect(
        received.header("authorization") == Some("Bearer sk-local"),
        "bearer key",
    )?;
    let body = received.json();
    expect(
        body["model"] == "llama-3.1-8b-instruct-q4",
        "model is the wire id",
    )?;
    expect(body["messages"][0]["role"] == "system", "system message")?;
    expect(body["messages"][1]["role"] == "user", "user message")?;
    expect(body["max_tokens"] == 300, "max_tokens")?;
    Ok(())
}

#[tokio::test]
async fn streams_deltas_then_finish_with_usage() {
    let server = serve(|received| {
        checks(received)?;
        let body = received.json();
        expect(body["stream"] == true, "stream")?;
        expect(
            body["stream_options"]["include_usage"] == true,
            "include_usage",
        )?;
        expect(
            received.header("accept") == Some("text/event-stream"),
            "accept",
        )?;
        Ok(Reply::stream(
            "text/event-stream",
            vec![
                Part::Bytes(sse(
                    None,
                    r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
                )),
                Part::Bytes(chunk("To a paired")),
                Part::Pause(Duration::from_millis(20)),
                Part::Bytes(chunk(" region [2].")),
                Part::Bytes(finish()),
            ],
        ))
    })
    .await;
    let provider = make()(&server.base_url);
    let info = provider.info();
    assert_eq!(
        (
            info.id.as_str(),
            info.model.as_str(),
            info.deployment.as_str()
        ),
        ("local-llama", "llama-3.1-8b", "llama-3.1-8b-instruct-q4")
    );
    assert_eq!(
        (info.cloud.as_str(), info.region.as_str()),
        ("local", "local")
    );
    assert_eq!(info.input_per_1m_usd, 0.5);
    let outcome = drain(provider.as_ref(), soon(5000)).await.unwrap();
    assert_eq!(outcome.deltas, ["To a paired", " region [2]."]);
    assert_eq!(
        outcome.end.unwrap(),
        (FinishReason::Stop, Some(usage(388, 9, 256)))
    );
}

#[tokio::test]
async fn whole_completion() {
    let server = serve(|received| {
        checks(received)?;
        expect(received.json()["stream"] == false, "not streamed")?;
        Ok(Reply::json(
            200,
            json!({"id": "c1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "To a paired region [2]."}, "finish_reason": "length"}], "usage": {"prompt_tokens": 388, "completion_tokens": 9, "total_tokens": 397}}),
        ))
    })
    .await;
    let response = make()(&server.base_url)
        .chat(&request(), soon(5000))
        .await
        .unwrap();
    assert_eq!(response.text, "To a paired region [2].");
    assert_eq!(response.reason, FinishReason::Length);
    assert_eq!(response.usage, Some(usage(388, 9, 0)));
}

#[tokio::test]
async fn error_statuses_map_to_kinds() {
    let cases = common_statuses(
        || {
            Reply::json(
                429,
                json!({"error": {"code": 429, "message": "too many requests", "type": "rate_limit_error"}}),
            )
        },
        || {
            Reply::json(429, json!({"error": {"message": "slow down"}}))
                .with_header("retry-after", "3")
        },
        Duration::from_secs(3),
        || {
            Reply::json(
                503,
                json!({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}),
            )
        },
        || {
            Reply::json(
                400,
                json!({"object": "error", "message": "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.", "type": "BadRequestError", "code": 400}),
            )
        },
        || {
            Reply::json(
                401,
                json!({"error": {"message": "Invalid API Key", "type": "authentication_error"}}),
            )
        },
    );
    status_faults(cases, make()).await;
}

#[tokio::test]
async fn stream_faults_surface_as_errors() {
    stream_faults(
        Wire {
            content_type: "text/event-stream",
            delta: chunk,
            finish,
            malformed: sse(None, r#"{"choices":[{"index":0,"delta":{"content":"#),
            in_band_error: sse(None, r#"{"error":{"code":500,"message":"engine died"}}"#),
            in_band_kind: ErrorKind::Unavailable,
        },
        make(),
    )
    .await;
}

/// A real server: runs when `SKYFUSE_LIVE_OPENAI_CHAT_URL` is set (base URL without
/// `/v1`, e.g. a llama.cpp `llama-server`), with the model from
/// `SKYFUSE_LIVE_OPENAI_CHAT_MODEL`. Otherwise it says so and passes.
#[tokio::test]
async fn live_openai_compatible_chat() {
    let Ok(base_url) = std::env::var("SKYFUSE_LIVE_OPENAI_CHAT_URL") else {
        eprintln!("skipped: set SKYFUSE_LIVE_OPENAI_CHAT_URL to run against a real server");
        return;
    };
    let model =
        std::env::var("SKYFUSE_LIVE_OPENAI_CHAT_MODEL").unwrap_or_else(|_| "default".into());
    let provider = build(
        &format!(
            "[[provider]]\nid = \"live\"\nkind = \"openai_compat\"\nbase_url = \"{base_url}\"\n"
        ),
        &target(&model, &model, false),
        &HashMap::new(),
    );
    crate::live_check(provider.as_ref()).await;
}
