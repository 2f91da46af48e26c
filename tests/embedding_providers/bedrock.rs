//! Bedrock InvokeModel for Titan v2 and Cohere Embed, every request's SigV4
//! signature recomputed here from what arrived.

use std::collections::HashMap;

use serde_json::json;
use skyfuse::embed::Purpose;
use skyfuse::error::ErrorKind;

use crate::support::*;

const ACCESS_KEY_ID: &str = "AKIDTEST";
const SECRET: &str = "test/secret+key";

fn env(with_token: bool) -> HashMap<String, String> {
    let mut env = HashMap::from([
        ("AWS_ACCESS_KEY_ID".to_string(), ACCESS_KEY_ID.to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), SECRET.to_string()),
    ]);
    if with_token {
        env.insert("AWS_SESSION_TOKEN".into(), "session-token-1".into());
    }
    env
}

fn config(base_url: &str) -> String {
    format!(
        "[[provider]]\nid = \"aws-use1\"\nkind = \"bedrock\"\nregion = \"us-east-1\"\nbase_url = \"{base_url}\"\ntimeout_ms = 2000\n"
    )
}

fn titan_server_checks(received: &Received) -> Handled {
    verify_sigv4(received, ACCESS_KEY_ID, SECRET, "us-east-1", None)?;
    expect(
        received.target == "/model/amazon.titan-embed-text-v2%3A0/invoke",
        format!("target {}", received.target),
    )?;
    expect(
        received.header("accept") == Some("application/json"),
        "accept",
    )?;
    let body = received.json();
    let text = field(&body, "inputText")?
        .as_str()
        .ok_or("inputText")?
        .to_string();
    expect(field(&body, "dimensions")? == 512, "dimensions")?;
    expect(field(&body, "normalize")? == true, "normalize")?;
    expect(
        field(&body, "embeddingTypes")? == &json!(["float"]),
        "embeddingTypes",
    )?;
    let vector = vector_for(&text, 512);
    Ok(Reply::json(
        200,
        json!({"embedding": vector, "inputTextTokenCount": 3, "embeddingsByType": {"float": vector}}),
    )
    .with_header("x-amzn-bedrock-input-token-count", "3"))
}

#[tokio::test]
async fn titan_one_signed_call_per_text_in_order() {
    let server = serve(titan_server_checks).await;
    let provider = build(&config(&server.base_url), &env(false));
    assert_eq!(provider.location(), ("aws", "us-east-1"));
    assert_eq!(provider.max_batch(), 96);
    let inputs = texts(&["one", "three", "fifteen chars!!", "x"]);
    let vectors = provider
        .embed(request(
            "amazon.titan-embed-text-v2:0",
            &inputs,
            Purpose::Document,
            Some(512),
        ))
        .await
        .unwrap();
    assert_eq!(server.count(), 4);
    for (vector, text) in vectors.iter().zip(&inputs) {
        assert_eq!(vector, &vector_for(text, 512));
    }
}

#[tokio::test]
async fn titan_refuses_an_unsupported_dimension_before_sending() {
    let server = serve(titan_server_checks).await;
    let provider = build(&config(&server.base_url), &env(false));
    let inputs = texts(&["a"]);
    assert_kind(
        provider
            .embed(request(
                "amazon.titan-embed-text-v2:0",
                &inputs,
                Purpose::Query,
                Some(384),
            ))
            .await,
        ErrorKind::InvalidArgument,
    );
    assert_kind(
        provider
            .embed(request(
                "meta.llama3-70b-instruct-v1:0",
                &inputs,
                Purpose::Query,
                None,
            ))
            .await,
        ErrorKind::InvalidArgument,
    );
    assert_eq!(server.count(), 0);
}

#[tokio::test]
async fn cohere_batch_with_input_type_and_session_token() {
    let server = serve(|received| {
        verify_sigv4(received, ACCESS_KEY_ID, SECRET, "us-east-1", Some("session-token-1"))?;
        expect(
            received.path() == "/model/cohere.embed-english-v3/invoke",
            format!("path {}", received.path()),
        )?;
        let body = received.json();
        let purpose = field(&body, "input_type")?.as_str().ok_or("input_type")?;
        expect(field(&body, "truncate")? == "END", "truncate")?;
        expect(body.get("output_dimension").is_none(), "v3 takes no output_dimension")?;
        let texts: Vec<String> = field(&body, "texts")?
            .as_array()
            .ok_or("texts")?
            .iter()
            .map(|text| text.as_str().unwrap().to_string())
            .collect();
        let vectors: Vec<_> = texts.iter().map(|text| vector_for(text, 1024)).collect();
        // Queries get the floats-only shape, documents the by-type shape: parse both.
        Ok(Reply::json(
            200,
            if purpose == "search_query" {
                json!({"id": "q", "response_type": "embeddings_floats", "texts": texts, "embeddings": vectors})
            } else if purpose == "search_document" {
                json!({"id": "d", "response_type": "embeddings_by_type", "texts": texts, "embeddings": {"float": vectors}})
            } else {
                return Err(format!("input_type {purpose}"));
            },
        ))
    })
    .await;
    let provider = build(&config(&server.base_url), &env(true));
    let query = texts(&["where are archives replicated"]);
    let vectors = provider
        .embed(request(
            "cohere.embed-english-v3",
            &query,
            Purpose::Query,
            None,
        ))
        .await
        .unwrap();
    assert_eq!(vectors[0], vector_for(&query[0], 1024));
    let documents = texts(&["a", "bb", "ccc"]);
    let vectors = provider
        .embed(request(
            "cohere.embed-english-v3",
            &documents,
            Purpose::Document,
            Some(1024),
        ))
        .await
        .unwrap();
    assert_eq!(vectors[2], vector_for("ccc", 1024));
    let too_many: Vec<String> = (0..97).map(|index| index.to_string()).collect();
    assert_kind(
        provider
            .embed(request(
                "cohere.embed-english-v3",
                &too_many,
                Purpose::Document,
                None,
            ))
            .await,
        ErrorKind::InvalidArgument,
    );
}

#[tokio::test]
async fn cohere_v4_sends_output_dimension_and_right_truncation() {
    let server = serve(|received| {
        verify_sigv4(received, ACCESS_KEY_ID, SECRET, "us-east-1", None)?;
        expect(received.path() == "/model/us.cohere.embed-v4%3A0/invoke", "path")?;
        let body = received.json();
        expect(field(&body, "output_dimension")? == 512, "output_dimension")?;
        expect(field(&body, "truncate")? == "RIGHT", "truncate")?;
        Ok(Reply::json(200, json!({"response_type": "embeddings_by_type", "embeddings": {"float": [vector_for("a", 512)]}})))
    })
    .await;
    let provider = build(&config(&server.base_url), &env(false));
    let inputs = texts(&["a"]);
    provider
        .embed(request(
            "us.cohere.embed-v4:0",
            &inputs,
            Purpose::Query,
            Some(512),
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn bedrock_exceptions_map_to_kinds() {
    let exception = |status: u16, name: &str, message: &str| {
        Reply::json(status, json!({"message": message}))
            .with_header(
                "x-amzn-errortype",
                &format!("{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
            )
            .with_header("x-amzn-requestid", "req-1")
    };
    let cases = vec![
        (
            exception(429, "ThrottlingException", "Too many requests, please wait"),
            ErrorKind::Throttled,
        ),
        (
            exception(429, "ModelNotReadyException", "Model is not ready"),
            ErrorKind::Unavailable,
        ),
        (
            exception(503, "ServiceUnavailableException", "down"),
            ErrorKind::Unavailable,
        ),
        (
            exception(500, "InternalServerException", "oops"),
            ErrorKind::Unavailable,
        ),
        (
            exception(408, "ModelTimeoutException", "slow"),
            ErrorKind::Timeout,
        ),
        (
            exception(
                403,
                "AccessDeniedException",
                "You don't have access to the model",
            ),
            ErrorKind::Auth,
        ),
        (
            exception(400, "ValidationException", "Malformed input request"),
            ErrorKind::InvalidArgument,
        ),
        (
            exception(400, "ServiceQuotaExceededException", "quota"),
            ErrorKind::Throttled,
        ),
        (
            exception(404, "ResourceNotFoundException", "no such model"),
            ErrorKind::NotFound,
        ),
        (
            Reply::json(200, json!({"embeddings": "nope"})),
            ErrorKind::Unavailable,
        ),
        (
            Reply::json(200, json!({"embeddings": [[0.1], [0.2]]})),
            ErrorKind::Unavailable,
        ),
    ];
    for (reply, kind) in cases {
        let reply = std::sync::Mutex::new(Some(reply));
        let server = serve(move |received| {
            verify_sigv4(received, ACCESS_KEY_ID, SECRET, "us-east-1", None)?;
            Ok(reply.lock().unwrap().take().expect("one request"))
        })
        .await;
        let provider = build(&config(&server.base_url), &env(false));
        let inputs = texts(&["a"]);
        let error = assert_kind(
            provider
                .embed(request(
                    "cohere.embed-multilingual-v3",
                    &inputs,
                    Purpose::Query,
                    None,
                ))
                .await,
            kind,
        );
        assert_eq!(error.retry_after, None, "bedrock sends no retry-after");
    }
}

#[tokio::test]
async fn credentials_from_config_locations_over_the_standard_variables() {
    let server = serve(|received| {
        verify_sigv4(received, ACCESS_KEY_ID, SECRET, "eu-west-3", None)?;
        Ok(Reply::json(
            200,
            json!({"embeddings": [vector_for("a", 4)]}),
        ))
    })
    .await;
    let env = HashMap::from([
        ("MY_ID".to_string(), ACCESS_KEY_ID.to_string()),
        ("MY_SECRET".to_string(), SECRET.to_string()),
        ("AWS_ACCESS_KEY_ID".to_string(), "AKIDWRONG".to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), "wrong".to_string()),
    ]);
    let provider = build(
        &format!(
            "[[provider]]\nid = \"aws\"\nkind = \"bedrock\"\nregion = \"eu-west-3\"\nbase_url = \"{}\"\naws_access_key_id = \"env:MY_ID\"\naws_secret_access_key = \"env:MY_SECRET\"\n",
            server.base_url
        ),
        &env,
    );
    let inputs = texts(&["a"]);
    provider
        .embed(request(
            "cohere.embed-english-v3",
            &inputs,
            Purpose::Query,
            None,
        ))
        .await
        .unwrap();
}

/// Runs when `SKYFUSE_LIVE_BEDROCK_REGION` is set, with the standard `AWS_*`
/// credential variables and the model from `SKYFUSE_LIVE_BEDROCK_EMBED_MODEL`
/// (default `amazon.titan-embed-text-v2:0`). Otherwise it says so and passes.
#[tokio::test]
async fn live_bedrock_embeddings() {
    let Some(config) = live::bedrock() else {
        return;
    };
    let model = std::env::var("SKYFUSE_LIVE_BEDROCK_EMBED_MODEL")
        .unwrap_or_else(|_| "amazon.titan-embed-text-v2:0".into());
    let provider = build(&config, &skyfuse::config::process_env());
    crate::live_check(provider.as_ref(), &model, None).await;
}
