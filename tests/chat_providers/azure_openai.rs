//! Azure OpenAI chat completions: the classic deployment URL with `api-version` and
//! the `api-key` header, the v1 path with an Entra bearer token, Azure's stream
//! quirks (a first chunk without choices, filter annotations without a delta).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use skyfuse::error::ErrorKind;
use skyfuse::llm::FinishReason;

use crate::openai_compat::{chunk, finish};
use crate::support::*;
use crate::{Make, Wire, common_statuses, status_faults, stream_faults};

fn env() -> HashMap<String, String> {
    HashMap::from([
        ("AZURE_KEY".to_string(), "0f3c-key".to_string()),
        ("AZURE_TOKEN".to_string(), "entra-token".to_string()),
    ])
}

fn classic(base_url: &str) -> String {
    format!(
        "[[provider]]\nid = \"azure-weu\"\nkind = \"azure_openai\"\nbase_url = \"{base_url}\"\nregion = \"westeurope\"\napi_version = \"2024-10-21\"\napi_key = \"env:AZURE_KEY\"\ninput_per_1m_usd = 2.5\noutput_per_1m_usd = 10.0\n"
    )
}

fn v1(base_url: &str) -> String {
    format!(
        "[[provider]]\nid = \"azure-v1\"\nkind = \"azure_openai\"\nbase_url = \"{base_url}\"\nregion = \"swedencentral\"\naccess_token = \"env:AZURE_TOKEN\"\n"
    )
}

fn make() -> Make {
    Arc::new(|base_url: &str| {
        build(
            &classic(base_url),
            &target("gpt-4o", "gpt4o-eu", true),
            &env(),
        )
    })
}

fn classic_checks(received: &Received) -> Result<(), String> {
    expect(
        received.method == "POST"
            && received.path() == "/openai/deployments/gpt4o-eu/chat/completions"
            && received.query() == Some("api-version=2024-10-21"),
        format!("target {}", received.target),
    )?;
    expect(received.header("api-key") == Some("0f3c-key"), "api-key")?;
    expect(
        received.header("authorization").is_none(),
        "no authorization with a key",
    )?;
    let body = received.json();
    expect(
        body.get("model").is_none(),
        "the deployment URL names the model",
    )?;
    expect(
        body["messages"][1]["content"] == "Where are cold archives replicated?",
        "messages",
    )?;
    expect(
        body["temperature"]
            .as_f64()
            .is_some_and(|t| (t - 0.2).abs() < 1e-6),
        "temperature",
    )
}

#[tokio::test]
async fn classic_deployment_stream_with_azure_chunks() {
    let server = serve(|received| {
        classic_checks(received)?;
        expect(received.json()["stream_options"]["include_usage"] == true, "include_usage")?;
        Ok(Reply::stream(
            "text/event-stream",
            vec![
                Part::Bytes(sse(
                    None,
                    r#"{"id":"","object":"","created":0,"model":"","choices":[],"prompt_filter_results":[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}}}]}"#,
                )),
                Part::Bytes(chunk("They")),
                Part::Bytes(sse(
                    None,
                    r#"{"id":"c","choices":[{"index":0,"finish_reason":null,"content_filter_results":{"hate":{"filtered":false}},"content_filter_offsets":{"check_offset":0}}]}"#,
                )),
                Part::Bytes(chunk(" are replicated [2].")),
                Part::Bytes(finish()),
            ],
        ))
    })
    .await;
    let provider = make()(&server.base_url);
    let info = provider.info();
    assert_eq!(
        (
            info.cloud.as_str(),
            info.region.as_str(),
            info.deployment.as_str(),
            info.dedicated
        ),
        ("azure", "westeurope", "gpt4o-eu", true)
    );
    assert_eq!((info.input_per_1m_usd, info.output_per_1m_usd), (2.5, 10.0));
    let outcome = drain(provider.as_ref(), soon(5000)).await.unwrap();
    assert_eq!(outcome.deltas, ["They", " are replicated [2]."]);
    assert_eq!(
        outcome.end.unwrap(),
        (FinishReason::Stop, Some(usage(388, 9, 256)))
    );
}

#[tokio::test]
async fn v1_path_with_an_entra_token_and_a_filtered_completion() {
    let server = serve(|received| {
        expect(
            received.target == "/openai/v1/chat/completions",
            format!("target {}", received.target),
        )?;
        expect(
            received.header("authorization") == Some("Bearer entra-token"),
            "bearer",
        )?;
        expect(received.header("api-key").is_none(), "no api-key")?;
        expect(received.json()["model"] == "gpt4o-se", "deployment as model")?;
        Ok(Reply::stream(
            "text/event-stream",
            vec![
                Part::Bytes(chunk("They")),
                Part::Bytes(sse(
                    None,
                    r#"{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"content_filter"}]}"#,
                )),
                Part::Bytes(sse(None, "[DONE]")),
            ],
        ))
    })
    .await;
    let provider = build(
        &v1(&server.base_url),
        &target("gpt-4o", "gpt4o-se", false),
        &env(),
    );
    let outcome = drain(provider.as_ref(), soon(5000)).await.unwrap();
    assert_eq!(outcome.deltas, ["They"]);
    assert_eq!(outcome.end.unwrap(), (FinishReason::ContentFilter, None));
}

#[tokio::test]
async fn without_a_key_or_token_the_managed_identity_is_asked_for_a_cached_entra_token() {
    let server = serve(|received| {
        if received.path() == "/msi/token" {
            let query = received.query().unwrap_or_default();
            expect(
                query.contains("resource=https%3A%2F%2Fcognitiveservices.azure.com"),
                format!("resource: {query}"),
            )?;
            expect(
                received.header("x-identity-header") == Some("identity-secret"),
                "x-identity-header",
            )?;
            let expires_on = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 3600;
            return Ok(Reply::json(
                200,
                json!({"access_token": "mi-token", "expires_on": expires_on.to_string(),
                       "resource": "https://cognitiveservices.azure.com", "token_type": "Bearer"}),
            ));
        }
        expect(
            received.header("authorization") == Some("Bearer mi-token"),
            "the managed identity's token",
        )?;
        Ok(Reply::stream(
            "text/event-stream",
            vec![
                Part::Bytes(chunk("Yes")),
                Part::Bytes(finish()),
                Part::Bytes(sse(None, "[DONE]")),
            ],
        ))
    })
    .await;
    let config = format!(
        "[[provider]]\nid = \"azure-mi\"\nkind = \"azure_openai\"\nbase_url = \"{}\"\nregion = \"swedencentral\"\n",
        server.base_url
    );
    let env = HashMap::from([
        (
            "IDENTITY_ENDPOINT".to_string(),
            format!("{}/msi/token", server.base_url),
        ),
        ("IDENTITY_HEADER".to_string(), "identity-secret".to_string()),
    ]);
    let provider = build(&config, &target("gpt-4o", "gpt4o-se", false), &env);
    for _ in 0..2 {
        let outcome = drain(provider.as_ref(), soon(5000)).await.unwrap();
        assert_eq!(outcome.deltas, ["Yes"]);
    }
    assert_eq!(server.count(), 3, "one token for two calls");
}

#[tokio::test]
async fn whole_completion() {
    let server = serve(|received| {
        classic_checks(received)?;
        expect(received.json()["stream"] == false, "not streamed")?;
        Ok(Reply::json(
            200,
            json!({
                "id": "chatcmpl-B7xQ2e", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "They are replicated to a paired region [2]."}, "finish_reason": "stop", "content_filter_results": {}}],
                "usage": {"prompt_tokens": 412, "completion_tokens": 14, "total_tokens": 426, "prompt_tokens_details": {"cached_tokens": 128}, "completion_tokens_details": {"reasoning_tokens": 0}}
            }),
        ))
    })
    .await;
    let response = make()(&server.base_url)
        .chat(&request(), soon(5000))
        .await
        .unwrap();
    assert_eq!(response.text, "They are replicated to a paired region [2].");
    assert_eq!(response.reason, FinishReason::Stop);
    assert_eq!(response.usage, Some(usage(412, 14, 128)));
}

#[tokio::test]
async fn error_statuses_map_to_kinds() {
    let cases = common_statuses(
        || {
            Reply::json(
                429,
                json!({"error": {"code": "429", "message": "Requests to the ChatCompletions_Create Operation have exceeded call rate limit."}}),
            )
        },
        || {
            Reply::json(429, json!({"error": {"code": "429", "message": "exceeded token rate limit. Please retry after 7 seconds."}}))
                .with_header("retry-after", "7")
                .with_header("retry-after-ms", "6850")
        },
        Duration::from_millis(6850),
        || {
            Reply::json(
                503,
                json!({"error": {"code": "ServiceUnavailable", "message": "The service is temporarily unable to process your request."}}),
            )
        },
        || {
            Reply::json(
                400,
                json!({"error": {"code": "context_length_exceeded", "message": "This model's maximum context length is 128000 tokens. However, your messages resulted in 130512 tokens.", "param": "messages", "type": "invalid_request_error"}}),
            )
        },
        || {
            Reply::json(
                401,
                json!({"statusCode": 401, "message": "Unauthorized. Access token is missing, invalid, audience is incorrect, or have expired."}),
            )
        },
    );
    status_faults(cases, make()).await;
    // A wrong deployment name is a configuration problem, not a retry.
    let server = serve(|_| {
        Ok(Reply::json(404, json!({"error": {"code": "DeploymentNotFound", "message": "The API deployment for this resource does not exist."}})))
    })
    .await;
    let error = drain(make()(&server.base_url).as_ref(), soon(5000))
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::NotFound);
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn stream_faults_surface_as_errors() {
    stream_faults(
        Wire {
            content_type: "text/event-stream",
            delta: chunk,
            finish,
            malformed: sse(None, "{\"choices\": [oops"),
            in_band_error: sse(
                None,
                r#"{"error":{"code":"server_error","message":"The server had an error while processing your request."}}"#,
            ),
            in_band_kind: ErrorKind::Unavailable,
        },
        make(),
    )
    .await;
}

/// Runs when `SKYFUSE_LIVE_AZURE_OPENAI_URL` (`https://{resource}.openai.azure.com`),
/// `SKYFUSE_LIVE_AZURE_OPENAI_CHAT_DEPLOYMENT` and `AZURE_OPENAI_API_KEY` are set;
/// `SKYFUSE_LIVE_AZURE_OPENAI_API_VERSION` picks the classic path (else v1).
/// Otherwise it says so and passes.
#[tokio::test]
async fn live_azure_openai_chat() {
    let Some(config) = live::azure_openai() else {
        return;
    };
    let Ok(deployment) = std::env::var("SKYFUSE_LIVE_AZURE_OPENAI_CHAT_DEPLOYMENT") else {
        eprintln!("skipped: set SKYFUSE_LIVE_AZURE_OPENAI_CHAT_DEPLOYMENT to run against Azure");
        return;
    };
    let provider = build(
        &config,
        &target(&deployment, &deployment, false),
        &skyfuse::config::process_env(),
    );
    crate::live_check(provider.as_ref()).await;
}
