//! Vertex AI: Gemini `generateContent` / `streamGenerateContent?alt=sse` and Claude
//! `rawPredict` / `streamRawPredict`, with a bearer token from a local token
//! endpoint that verifies the service account's signed JWT, a static token, or a
//! local stand-in for the GCE metadata server.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use skyfuse::error::ErrorKind;
use skyfuse::llm::FinishReason;

use crate::support::*;
use crate::{Make, StatusCase, Wire, common_statuses, status_faults, stream_faults};

const CLIENT_EMAIL: &str = "skyfuse@acme.iam.gserviceaccount.com";
const GEMINI_PATH: &str =
    "/v1/projects/acme/locations/europe-west4/publishers/google/models/gemini-2.0-flash-001";
const CLAUDE_PATH: &str =
    "/v1/projects/acme/locations/europe-west4/publishers/anthropic/models/claude-sonnet-4@20250514";

/// A token endpoint that verifies the JWT-bearer assertion with the account's
/// public key and hands out `ya29.test-N`, counting exchanges.
async fn token_endpoint(public_key: Vec<u8>, exchanges: Arc<AtomicUsize>) -> TestServer {
    serve(move |received| {
        expect(received.method == "POST" && received.path() == "/token", "token path")?;
        let form: HashMap<String, String> = url::form_urlencoded::parse(&received.body)
            .into_owned()
            .collect();
        expect(
            form.get("grant_type").map(String::as_str)
                == Some("urn:ietf:params:oauth:grant-type:jwt-bearer"),
            "grant_type",
        )?;
        let assertion = form.get("assertion").ok_or("no assertion")?;
        let parts: Vec<&str> = assertion.split('.').collect();
        expect(parts.len() == 3, "a JWT has three parts")?;
        let decode = |part: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|error| error.to_string())
        };
        let claims: Value =
            serde_json::from_slice(&decode(parts[1])?).map_err(|error| error.to_string())?;
        expect(claims["iss"] == CLIENT_EMAIL, "iss")?;
        expect(
            claims["scope"] == "https://www.googleapis.com/auth/cloud-platform",
            "scope",
        )?;
        let signed = format!("{}.{}", parts[0], parts[1]);
        if !verify_rsa_sha256(&public_key, signed.as_bytes(), &decode(parts[2])?) {
            return Ok(Reply::json(
                400,
                json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
            ));
        }
        let number = exchanges.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Reply::json(
            200,
            json!({"access_token": format!("ya29.test-{number}"), "expires_in": 3599, "token_type": "Bearer"}),
        ))
    })
    .await
}

fn key_file(pem: &str, token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": "acme",
        "private_key_id": "key-1",
        "private_key": pem,
        "client_email": CLIENT_EMAIL,
        "token_uri": token_uri,
    })
    .to_string()
}

fn config(base_url: &str, credentials: &str) -> String {
    format!(
        "[[provider]]\nid = \"vertex-euw4\"\nkind = \"vertex\"\nproject = \"acme\"\nregion = \"europe-west4\"\nbase_url = \"{base_url}\"\n{credentials}"
    )
}

fn static_token() -> HashMap<String, String> {
    HashMap::from([("VERTEX_TOKEN".to_string(), "ya29.static".to_string())])
}

fn make(wire_id: &'static str) -> Make {
    Arc::new(move |base_url: &str| {
        build(
            &config(base_url, "access_token = \"env:VERTEX_TOKEN\""),
            &target(wire_id, wire_id, false),
            &static_token(),
        )
    })
}

fn gemini_chunk(text: &str) -> Vec<u8> {
    sse(
        None,
        &json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}}], "usageMetadata": {"promptTokenCount": 412, "candidatesTokenCount": 1, "totalTokenCount": 413}, "modelVersion": "gemini-2.0-flash-001"}).to_string(),
    )
}

fn gemini_finish() -> Vec<u8> {
    [
        sse(
            None,
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":""}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":412,"candidatesTokenCount":14,"thoughtsTokenCount":3,"cachedContentTokenCount":100,"totalTokenCount":429,"trafficType":"ON_DEMAND"}}"#,
        ),
        // A last chunk without usage must not reset it.
        sse(None, r#"{"candidates":[{"content":{"role":"model","parts":[]}}]}"#),
    ]
    .concat()
}

fn gemini_checks(received: &Received) -> Result<(), String> {
    let body = received.json();
    expect(
        body["systemInstruction"]["parts"][0]["text"] == "Answer only from the numbered passages.",
        "systemInstruction",
    )?;
    expect(body["contents"][0]["role"] == "user", "role")?;
    expect(
        body["generationConfig"]["maxOutputTokens"] == 300,
        "maxOutputTokens",
    )
}

#[tokio::test]
async fn gemini_stream_with_a_service_account_token_fetched_once() {
    let (pem, public_key) = rsa_key();
    let exchanges = Arc::new(AtomicUsize::new(0));
    let tokens = token_endpoint(public_key, exchanges.clone()).await;
    let vertex = serve(|received| {
        expect(
            received.path() == format!("{GEMINI_PATH}:streamGenerateContent")
                && received.query() == Some("alt=sse"),
            format!("target {}", received.target),
        )?;
        expect(
            received.header("authorization") == Some("Bearer ya29.test-1"),
            "bearer token",
        )?;
        gemini_checks(received)?;
        Ok(Reply::stream(
            "text/event-stream",
            vec![
                Part::Bytes(gemini_chunk("They are")),
                Part::Bytes(gemini_chunk(" replicated [2].")),
                Part::Bytes(gemini_finish()),
            ],
        ))
    })
    .await;
    let env = HashMap::from([(
        "SA_KEY".to_string(),
        key_file(&pem, &format!("{}/token", tokens.base_url)),
    )]);
    let provider = build(
        &config(&vertex.base_url, "service_account_key = \"env:SA_KEY\""),
        &target("gemini-2.0-flash", "gemini-2.0-flash-001", false),
        &env,
    );
    assert_eq!(
        (
            provider.info().cloud.as_str(),
            provider.info().region.as_str()
        ),
        ("gcp", "europe-west4")
    );
    for _ in 0..2 {
        let outcome = drain(provider.as_ref(), soon(5000)).await.unwrap();
        assert_eq!(outcome.deltas, ["They are", " replicated [2]."]);
        assert_eq!(
            outcome.end.unwrap(),
            (FinishReason::Stop, Some(usage(412, 17, 100)))
        );
    }
    assert_eq!(exchanges.load(Ordering::SeqCst), 1, "the token is cached");
}

#[tokio::test]
async fn gemini_whole_answer_and_a_blocked_prompt() {
    let server = serve(|received| {
        expect(
            received.target == format!("{GEMINI_PATH}:generateContent"),
            format!("target {}", received.target),
        )?;
        expect(
            received.header("authorization") == Some("Bearer ya29.static"),
            "static token",
        )?;
        gemini_checks(received)?;
        Ok(Reply::json(
            200,
            json!({
                "candidates": [{"content": {"role": "model", "parts": [{"text": "They are replicated to a paired region [2]."}]}, "finishReason": "MAX_TOKENS"}],
                "usageMetadata": {"promptTokenCount": 412, "candidatesTokenCount": 14, "totalTokenCount": 426}
            }),
        ))
    })
    .await;
    let response = make("gemini-2.0-flash-001")(&server.base_url)
        .chat(&request(), soon(5000))
        .await
        .unwrap();
    assert_eq!(response.text, "They are replicated to a paired region [2].");
    assert_eq!(response.reason, FinishReason::Length);
    assert_eq!(response.usage, Some(usage(412, 14, 0)));

    let blocked = serve(|_| {
        Ok(Reply::stream(
            "text/event-stream",
            vec![Part::Bytes(sse(
                None,
                r#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":8,"totalTokenCount":8}}"#,
            ))],
        ))
    })
    .await;
    let outcome = drain(
        make("gemini-2.0-flash-001")(&blocked.base_url).as_ref(),
        soon(5000),
    )
    .await
    .unwrap();
    assert!(outcome.deltas.is_empty());
    assert_eq!(outcome.end.unwrap().0, FinishReason::ContentFilter);
}

fn claude_delta(text: &str) -> Vec<u8> {
    sse(
        Some("content_block_delta"),
        &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}).to_string(),
    )
}

fn claude_finish() -> Vec<u8> {
    [
        sse(Some("content_block_stop"), r#"{"type":"content_block_stop","index":0}"#),
        sse(
            Some("message_delta"),
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":14}}"#,
        ),
        sse(Some("message_stop"), r#"{"type":"message_stop"}"#),
    ]
    .concat()
}

fn claude_checks(received: &Received) -> Result<(), String> {
    let body = received.json();
    expect(
        body["anthropic_version"] == "vertex-2023-10-16",
        "anthropic_version",
    )?;
    expect(body.get("model").is_none(), "no model in the body")?;
    expect(body["max_tokens"] == 300, "max_tokens")?;
    expect(
        body["system"] == "Answer only from the numbered passages.",
        "system",
    )?;
    expect(
        body["messages"]
            == json!([{"role": "user", "content": [{"type": "text", "text": "Where are cold archives replicated?"}]}]),
        "messages",
    )
}

#[tokio::test]
async fn claude_stream_raw_predict() {
    let server = serve(|received| {
        expect(
            received.target == format!("{CLAUDE_PATH}:streamRawPredict"),
            format!("target {}", received.target),
        )?;
        expect(
            received.header("authorization") == Some("Bearer ya29.static"),
            "bearer",
        )?;
        claude_checks(received)?;
        expect(received.json()["stream"] == true, "stream")?;
        Ok(Reply::stream(
            "text/event-stream",
            vec![
                Part::Bytes(sse(
                    Some("message_start"),
                    r#"{"type":"message_start","message":{"id":"msg_vrtx_1","type":"message","role":"assistant","content":[],"usage":{"input_tokens":12,"output_tokens":1,"cache_creation_input_tokens":0,"cache_read_input_tokens":400}}}"#,
                )),
                Part::Bytes(sse(
                    Some("content_block_start"),
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
                )),
                Part::Bytes(sse(Some("ping"), r#"{"type":"ping"}"#)),
                Part::Bytes(claude_delta("They are")),
                Part::Bytes(claude_delta(" replicated [2].")),
                Part::Bytes(claude_finish()),
            ],
        ))
    })
    .await;
    let outcome = drain(
        make("claude-sonnet-4@20250514")(&server.base_url).as_ref(),
        soon(5000),
    )
    .await
    .unwrap();
    assert_eq!(outcome.deltas, ["They are", " replicated [2]."]);
    assert_eq!(
        outcome.end.unwrap(),
        (FinishReason::Stop, Some(usage(412, 14, 400)))
    );
}

#[tokio::test]
async fn claude_raw_predict_whole() {
    let server = serve(|received| {
        expect(
            received.target == format!("{CLAUDE_PATH}:rawPredict"),
            format!("target {}", received.target),
        )?;
        claude_checks(received)?;
        Ok(Reply::json(
            200,
            json!({
                "id": "msg_vrtx_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
                "content": [{"type": "text", "text": "They are replicated to a paired region [2]."}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 412, "output_tokens": 14, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
            }),
        ))
    })
    .await;
    let response = make("claude-sonnet-4@20250514")(&server.base_url)
        .chat(&request(), soon(5000))
        .await
        .unwrap();
    assert_eq!(response.text, "They are replicated to a paired region [2].");
    assert_eq!(response.usage, Some(usage(412, 14, 0)));
}

#[tokio::test]
async fn token_from_a_metadata_server() {
    let metadata = serve(|received| {
        expect(
            received.method == "GET"
                && received.target == "/computeMetadata/v1/instance/service-accounts/default/token",
            format!("target {}", received.target),
        )?;
        expect(
            received.header("metadata-flavor") == Some("Google"),
            "Metadata-Flavor",
        )?;
        Ok(Reply::json(
            200,
            json!({"access_token": "ya29.metadata", "expires_in": 3599, "token_type": "Bearer"}),
        ))
    })
    .await;
    let vertex = serve(|received| {
        expect(
            received.header("authorization") == Some("Bearer ya29.metadata"),
            "metadata token",
        )?;
        Ok(Reply::stream(
            "text/event-stream",
            vec![
                Part::Bytes(gemini_chunk("They")),
                Part::Bytes(gemini_finish()),
            ],
        ))
    })
    .await;
    let provider = build(
        &config(
            &vertex.base_url,
            &format!("metadata_url = \"{}\"", metadata.base_url),
        ),
        &target("gemini-2.0-flash-001", "gemini-2.0-flash-001", false),
        &HashMap::new(),
    );
    let outcome = drain(provider.as_ref(), soon(5000)).await.unwrap();
    assert_eq!(outcome.deltas, ["They"]);
    assert_eq!(metadata.count(), 1);

    // No account attached: the metadata server's 404 is an auth problem.
    let empty = serve(|_| Ok(Reply::json(404, json!({"error": "not found"})))).await;
    let provider = build(
        &config(
            &vertex.base_url,
            &format!("metadata_url = \"{}\"", empty.base_url),
        ),
        &target("gemini-2.0-flash-001", "gemini-2.0-flash-001", false),
        &HashMap::new(),
    );
    let error = drain(provider.as_ref(), soon(5000)).await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Auth, "{}", error.message);
}

fn google_error(status: u16, rpc_status: &str, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"error": {"code": status, "message": message, "status": rpc_status, "details": []}}),
    )
}

#[tokio::test]
async fn error_statuses_map_to_kinds() {
    let mut cases = common_statuses(
        || {
            google_error(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource exhausted. Please try again later.",
            )
        },
        || {
            google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.")
                .with_header("retry-after", "5")
        },
        Duration::from_secs(5),
        || google_error(503, "UNAVAILABLE", "The service is currently unavailable."),
        || {
            google_error(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            )
        },
        || {
            google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials.",
            )
        },
    );
    cases.push(StatusCase {
        name: "403",
        reply: || {
            google_error(
                403,
                "PERMISSION_DENIED",
                "Permission denied on resource project acme.",
            )
        },
        kind: ErrorKind::Auth,
        retry_after: None,
    });
    status_faults(cases, make("gemini-2.0-flash-001")).await;

    let claude_cases = vec![
        StatusCase {
            name: "529 overloaded",
            reply: || {
                Reply::json(
                    529,
                    json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
                )
            },
            kind: ErrorKind::Unavailable,
            retry_after: None,
        },
        StatusCase {
            name: "400 prompt too long",
            reply: || {
                Reply::json(
                    400,
                    json!({"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"}}),
                )
            },
            kind: ErrorKind::ContextLength,
            retry_after: None,
        },
        StatusCase {
            name: "429 vertex quota",
            reply: || {
                google_error(
                    429,
                    "RESOURCE_EXHAUSTED",
                    "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model",
                )
            },
            kind: ErrorKind::Throttled,
            retry_after: None,
        },
    ];
    status_faults(claude_cases, make("claude-sonnet-4@20250514")).await;
}

#[tokio::test]
async fn gemini_stream_faults_surface_as_errors() {
    stream_faults(
        Wire {
            content_type: "text/event-stream",
            delta: gemini_chunk,
            finish: gemini_finish,
            malformed: sse(None, "{\"candidates\": ["),
            in_band_error: sse(
                None,
                r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#,
            ),
            in_band_kind: ErrorKind::Unavailable,
        },
        make("gemini-2.0-flash-001"),
    )
    .await;
}

#[tokio::test]
async fn claude_stream_faults_surface_as_errors() {
    stream_faults(
        Wire {
            content_type: "text/event-stream",
            delta: claude_delta,
            finish: claude_finish,
            malformed: sse(Some("content_block_delta"), "{\"type\": \"content_block_delta\", "),
            in_band_error: sse(
                Some("error"),
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#,
            ),
            in_band_kind: ErrorKind::Throttled,
        },
        make("claude-sonnet-4@20250514"),
    )
    .await;
}

/// Runs when `SKYFUSE_LIVE_VERTEX_PROJECT` and `SKYFUSE_LIVE_VERTEX_REGION` are set,
/// with a service-account key file at `GOOGLE_APPLICATION_CREDENTIALS` and the model
/// from `SKYFUSE_LIVE_VERTEX_CHAT_MODEL` (default gemini-2.0-flash-001; a `claude-…`
/// model goes through rawPredict). Otherwise it says so and passes.
#[tokio::test]
async fn live_vertex_chat() {
    let Some(config) = live::vertex() else {
        return;
    };
    let model = std::env::var("SKYFUSE_LIVE_VERTEX_CHAT_MODEL")
        .unwrap_or_else(|_| "gemini-2.0-flash-001".into());
    let provider = build(&config, &target(&model, &model, false), &HashMap::new());
    crate::live_check(provider.as_ref()).await;
}
