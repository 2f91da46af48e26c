//! Bedrock Runtime Converse and ConverseStream: every request's SigV4 signature
//! recomputed here (signing name `bedrock`, the model id encoded in the path and
//! once more in the canonical request), stream answers written as real
//! `application/vnd.amazon.eventstream` frames by the encoder below.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use skyfuse::error::ErrorKind;
use skyfuse::llm::FinishReason;

use crate::support::*;
use crate::{Make, StatusCase, Wire, status_faults, stream_faults};

const ACCESS_KEY_ID: &str = "AKIDTEST";
const SECRET: &str = "test/secret+key";
const PROFILE: &str = "us.anthropic.claude-3-5-sonnet-20240620-v1:0";
const EVENTSTREAM: &str = "application/vnd.amazon.eventstream";

fn env() -> HashMap<String, String> {
    HashMap::from([
        ("AWS_ACCESS_KEY_ID".to_string(), ACCESS_KEY_ID.to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), SECRET.to_string()),
    ])
}

fn config(base_url: &str) -> String {
    format!(
        "[[provider]]\nid = \"aws-use1\"\nkind = \"bedrock\"\nregion = \"us-east-1\"\nbase_url = \"{base_url}\"\ninput_per_1m_usd = 3.0\noutput_per_1m_usd = 15.0\n"
    )
}

fn make() -> Make {
    Arc::new(|base_url: &str| {
        build(
            &config(base_url),
            &target("claude-3-5-sonnet", PROFILE, false),
            &env(),
        )
    })
}

/// One event-stream frame: prelude with its CRC, string headers, payload, and the
/// CRC of everything before it.
pub fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut header_bytes = Vec::new();
    for (name, value) in headers {
        header_bytes.push(name.len() as u8);
        header_bytes.extend_from_slice(name.as_bytes());
        header_bytes.push(7);
        header_bytes.extend_from_slice(&(value.len() as u16).to_be_bytes());
        header_bytes.extend_from_slice(value.as_bytes());
    }
    let total = 12 + header_bytes.len() + payload.len() + 4;
    let mut frame = Vec::with_capacity(total);
    frame.extend_from_slice(&(total as u32).to_be_bytes());
    frame.extend_from_slice(&(header_bytes.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&frame);
    frame.extend_from_slice(&prelude_crc.to_be_bytes());
    frame.extend_from_slice(&header_bytes);
    frame.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&frame);
    frame.extend_from_slice(&message_crc.to_be_bytes());
    frame
}

fn event(kind: &str, payload: Value) -> Vec<u8> {
    frame(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

fn exception(kind: &str, message: &str) -> Vec<u8> {
    frame(
        &[
            (":exception-type", kind),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        json!({"message": message}).to_string().as_bytes(),
    )
}

fn delta(text: &str) -> Vec<u8> {
    // Bedrock pads stream payloads with a random-length field.
    event(
        "contentBlockDelta",
        json!({"contentBlockIndex": 0, "delta": {"text": text}, "p": "abcdefgh"}),
    )
}

fn finish() -> Vec<u8> {
    [
        event("contentBlockStop", json!({"contentBlockIndex": 0})),
        event("messageStop", json!({"stopReason": "end_turn"})),
        event(
            "metadata",
            json!({"usage": {"inputTokens": 12, "outputTokens": 14, "totalTokens": 426, "cacheReadInputTokens": 400, "cacheWriteInputTokens": 0}, "metrics": {"latencyMs": 1130}}),
        ),
    ]
    .concat()
}

fn checks(received: &Received, operation: &str) -> Result<(), String> {
    verify_sigv4(received, ACCESS_KEY_ID, SECRET, "us-east-1", None)?;
    expect(
        received.target
            == format!("/model/us.anthropic.claude-3-5-sonnet-20240620-v1%3A0/{operation}"),
        format!("target {}", received.target),
    )?;
    let body = received.json();
    expect(
        body["system"] == json!([{"text": "Answer only from the numbered passages."}]),
        "system apart",
    )?;
    expect(
        body["messages"]
            == json!([{"role": "user", "content": [{"text": "Where are cold archives replicated?"}]}]),
        "messages",
    )?;
    expect(body["inferenceConfig"]["maxTokens"] == 300, "maxTokens")?;
    expect(body.get("model").is_none(), "the model is in the path")
}

#[tokio::test]
async fn converse_stream_decodes_frames_split_anywhere() {
    let server = serve(|received| {
        checks(received, "converse-stream")?;
        expect(received.header("accept") == Some(EVENTSTREAM), "accept")?;
        let body: Vec<u8> = [
            event("messageStart", json!({"role": "assistant"})),
            delta("They are "),
            delta("replicated to a paired region [2]."),
            finish(),
        ]
        .concat();
        // Chunks that cut frames (and preludes) in odd places.
        let parts = body
            .chunks(37)
            .map(|piece| Part::Bytes(piece.to_vec()))
            .collect();
        Ok(Reply::stream(EVENTSTREAM, parts))
    })
    .await;
    let provider = make()(&server.base_url);
    let info = provider.info();
    assert_eq!(
        (
            info.cloud.as_str(),
            info.region.as_str(),
            info.deployment.as_str()
        ),
        ("aws", "us-east-1", PROFILE)
    );
    let outcome = drain(provider.as_ref(), soon(5000)).await.unwrap();
    assert_eq!(
        outcome.deltas.concat(),
        "They are replicated to a paired region [2]."
    );
    assert_eq!(
        outcome.end.unwrap(),
        (FinishReason::Stop, Some(usage(412, 14, 400)))
    );
}

#[tokio::test]
async fn a_stream_without_metadata_still_finishes() {
    let server = serve(|_| {
        Ok(Reply::stream(
            EVENTSTREAM,
            vec![
                Part::Bytes(delta("They")),
                Part::Bytes(event("messageStop", json!({"stopReason": "max_tokens"}))),
            ],
        ))
    })
    .await;
    let outcome = drain(make()(&server.base_url).as_ref(), soon(5000))
        .await
        .unwrap();
    assert_eq!(outcome.end.unwrap(), (FinishReason::Length, None));
}

#[tokio::test]
async fn converse_whole_and_an_arn_model_id() {
    let arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123";
    let server = serve(|received| {
        verify_sigv4(received, ACCESS_KEY_ID, SECRET, "us-east-1", None)?;
        expect(
            received.target
                == "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fabc123/converse",
            format!("target {}", received.target),
        )?;
        expect(received.header("accept") == Some("application/json"), "accept")?;
        Ok(Reply::json(
            200,
            json!({
                "output": {"message": {"role": "assistant", "content": [{"text": "They are replicated to a paired region [2]."}]}},
                "stopReason": "end_turn",
                "usage": {"inputTokens": 412, "outputTokens": 14, "totalTokens": 426},
                "metrics": {"latencyMs": 1130}
            }),
        ))
    })
    .await;
    let provider = build(
        &config(&server.base_url),
        &target("claude-3-5-sonnet", arn, false),
        &env(),
    );
    let response = provider.chat(&request(), soon(5000)).await.unwrap();
    assert_eq!(response.text, "They are replicated to a paired region [2].");
    assert_eq!(response.reason, FinishReason::Stop);
    assert_eq!(response.usage, Some(usage(412, 14, 0)));
}

fn aws_error(status: u16, kind: &str, message: &str) -> Reply {
    Reply::json(status, json!({"message": message}))
        .with_header(
            "x-amzn-errortype",
            &format!("{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
        )
        .with_header("x-amzn-requestid", "r-1")
}

#[tokio::test]
async fn error_statuses_map_to_kinds() {
    let cases = vec![
        StatusCase {
            name: "429 throttling",
            reply: || {
                aws_error(
                    429,
                    "ThrottlingException",
                    "Too many tokens, please wait before trying again.",
                )
            },
            kind: ErrorKind::Throttled,
            retry_after: None,
        },
        StatusCase {
            name: "429 with retry-after (a proxy in front)",
            reply: || {
                aws_error(429, "ThrottlingException", "Rate exceeded")
                    .with_header("retry-after", "2")
            },
            kind: ErrorKind::Throttled,
            retry_after: Some(Duration::from_secs(2)),
        },
        StatusCase {
            name: "503",
            reply: || aws_error(503, "ServiceUnavailableException", "Service unavailable"),
            kind: ErrorKind::Unavailable,
            retry_after: None,
        },
        StatusCase {
            name: "400 input too long",
            reply: || {
                aws_error(
                    400,
                    "ValidationException",
                    "Input is too long for requested model.",
                )
            },
            kind: ErrorKind::ContextLength,
            retry_after: None,
        },
        StatusCase {
            name: "400 inference profile required",
            reply: || {
                aws_error(
                    400,
                    "ValidationException",
                    "Invocation of model ID anthropic.claude-3-7-sonnet-20250219-v1:0 with on-demand throughput isn't supported. Retry your request with the ID or ARN of an inference profile that contains this model.",
                )
            },
            kind: ErrorKind::InvalidArgument,
            retry_after: None,
        },
        StatusCase {
            name: "403",
            reply: || {
                aws_error(
                    403,
                    "AccessDeniedException",
                    "You don't have access to the model with the specified model ID.",
                )
            },
            kind: ErrorKind::Auth,
            retry_after: None,
        },
        StatusCase {
            name: "401 (a proxy)",
            reply: || Reply::json(401, json!({"message": "unauthorized"})),
            kind: ErrorKind::Auth,
            retry_after: None,
        },
    ];
    status_faults(cases, make()).await;
}

#[tokio::test]
async fn exception_frames_inside_a_200_map_to_kinds() {
    let cases = [
        (
            "throttlingException",
            "Too many requests",
            ErrorKind::Throttled,
        ),
        (
            "modelStreamErrorException",
            "The model stream errored",
            ErrorKind::Unavailable,
        ),
        (
            "internalServerException",
            "Internal error",
            ErrorKind::Unavailable,
        ),
        (
            "serviceUnavailableException",
            "Unavailable",
            ErrorKind::Unavailable,
        ),
        (
            "validationException",
            "temperature out of range",
            ErrorKind::InvalidArgument,
        ),
        (
            "validationException",
            "Input is too long for requested model.",
            ErrorKind::ContextLength,
        ),
    ];
    for (kind, message, expected) in cases {
        let parts = vec![
            Part::Bytes(event("messageStart", json!({"role": "assistant"}))),
            Part::Bytes(delta("They")),
            Part::Bytes(exception(kind, message)),
        ];
        let server = serve(move |_| Ok(Reply::stream(EVENTSTREAM, parts.clone()))).await;
        let outcome = drain(make()(&server.base_url).as_ref(), soon(5000))
            .await
            .unwrap();
        let error = assert_broken(&outcome, &["They"], expected);
        assert!(error.message.contains(message), "{}", error.message);
    }
}

#[tokio::test]
async fn stream_faults_surface_as_errors() {
    // A frame whose last byte (the message CRC) is wrong.
    let mut bad_crc = delta(" are");
    *bad_crc.last_mut().unwrap() ^= 0xff;
    stream_faults(
        Wire {
            content_type: EVENTSTREAM,
            delta,
            finish,
            malformed: bad_crc,
            in_band_error: exception("throttlingException", "Too many requests, please wait"),
            in_band_kind: ErrorKind::Throttled,
        },
        make(),
    )
    .await;
    // A stream that ends inside a frame is broken, not short.
    let half = delta(" are")[..30].to_vec();
    let parts = vec![Part::Bytes(delta("They")), Part::Bytes(half)];
    let server = serve(move |_| Ok(Reply::stream(EVENTSTREAM, parts.clone()))).await;
    let outcome = drain(make()(&server.base_url).as_ref(), soon(5000))
        .await
        .unwrap();
    assert_broken(&outcome, &["They"], ErrorKind::Unavailable);
}

/// Runs when `SKYFUSE_LIVE_BEDROCK_REGION` is set, with the standard `AWS_*`
/// credential variables and the model from `SKYFUSE_LIVE_BEDROCK_CHAT_MODEL`
/// (default `us.anthropic.claude-3-5-haiku-20241022-v1:0`). Otherwise it says so
/// and passes.
#[tokio::test]
async fn live_bedrock_chat() {
    let Some(config) = live::bedrock() else {
        return;
    };
    let model = std::env::var("SKYFUSE_LIVE_BEDROCK_CHAT_MODEL")
        .unwrap_or_else(|_| "us.anthropic.claude-3-5-haiku-20241022-v1:0".into());
    let provider = build(
        &config,
        &target(&model, &model, false),
        &skyfuse::config::process_env(),
    );
    crate::live_check(provider.as_ref()).await;
}

/// Temporary keys from the container credentials endpoint (ECS, EKS Pod Identity),
/// each handed out two minutes before it expires: inside the renewal margin, so every
/// call renews them and the next request is signed with the new key, no restart.
#[tokio::test]
async fn converse_is_signed_with_temporary_keys_renewed_before_they_expire() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    let credentials = serve(move |received| {
        expect(received.path() == "/creds", received.path())?;
        let fetch = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let expires = skyfuse::cloud::sigv4::amz_date(
            std::time::SystemTime::now() + Duration::from_secs(120),
        );
        let expiration = format!(
            "{}-{}-{}T{}:{}:{}Z",
            &expires[0..4],
            &expires[4..6],
            &expires[6..8],
            &expires[9..11],
            &expires[11..13],
            &expires[13..15]
        );
        Ok(Reply::json(
            200,
            json!({
                "AccessKeyId": format!("ASIAPOD{fetch}"),
                "SecretAccessKey": format!("pod/secret+{fetch}"),
                "Token": format!("pod-session-{fetch}"),
                "Expiration": expiration,
            }),
        ))
    })
    .await;
    let seen = fetches.clone();
    let server = serve(move |received| {
        let fetch = seen.load(Ordering::SeqCst);
        verify_sigv4(
            received,
            &format!("ASIAPOD{fetch}"),
            &format!("pod/secret+{fetch}"),
            "us-east-1",
            Some(&format!("pod-session-{fetch}")),
        )?;
        Ok(Reply::json(
            200,
            json!({
                "output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}},
                "stopReason": "end_turn",
                "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}
            }),
        ))
    })
    .await;
    let env = HashMap::from([(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI".to_string(),
        format!("{}/creds", credentials.base_url),
    )]);
    let provider = build(
        &config(&server.base_url),
        &target("claude-3-5-sonnet", PROFILE, false),
        &env,
    );
    for call in 1..=2 {
        let response = provider.chat(&request(), soon(5000)).await.unwrap();
        assert_eq!(response.text, "ok");
        assert_eq!(fetches.load(Ordering::SeqCst), call);
    }
}
