//! OCI Generative AI `chat`: every request's signature verified with the public half
//! of a key generated here; COHERE and GENERIC formats, on-demand and dedicated
//! serving, `isStream` SSE with padding.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::json;
use skyfuse::error::ErrorKind;
use skyfuse::llm::FinishReason;

use crate::support::*;
use crate::{Make, Wire, common_statuses, status_faults, stream_faults};

const KEY_ID: &str = "ocid1.tenancy.oc1..tenancy/ocid1.user.oc1..user/20:3b:97:13:55:1c";
const COMPARTMENT: &str = "ocid1.compartment.oc1..comp";
const ENDPOINT_ID: &str = "ocid1.generativeaiendpoint.oc1.eu-frankfurt-1.amaaaa";

/// One key for the whole file: generating RSA keys is slow in debug builds.
fn key() -> &'static (String, Vec<u8>) {
    static KEY: OnceLock<(String, Vec<u8>)> = OnceLock::new();
    KEY.get_or_init(rsa_key)
}

fn config(base_url: &str) -> String {
    format!(
        r#"
        [[provider]]
        id = "oci-fra"
        kind = "oci"
        region = "eu-frankfurt-1"
        base_url = "{base_url}"
        compartment_id = "{COMPARTMENT}"
        tenancy_id = "ocid1.tenancy.oc1..tenancy"
        user_id = "ocid1.user.oc1..user"
        key_fingerprint = "20:3b:97:13:55:1c"
        private_key = "env:OCI_KEY"
        "#
    )
}

fn env() -> HashMap<String, String> {
    HashMap::from([("OCI_KEY".to_string(), key().0.clone())])
}

fn make() -> Make {
    Arc::new(|base_url: &str| {
        build(
            &config(base_url),
            &target("llama-3.3-70b", "meta.llama-3.3-70b-instruct", false),
            &env(),
        )
    })
}

fn checks(received: &Received) -> Result<(), String> {
    verify_oci(received, KEY_ID, &key().1)?;
    expect(
        received.method == "POST" && received.target == "/20231130/actions/chat",
        format!("target {}", received.target),
    )?;
    expect(
        received.json()["compartmentId"] == COMPARTMENT,
        "compartmentId",
    )
}

fn generic_delta(text: &str) -> Vec<u8> {
    sse(
        None,
        &json!({"index": 0, "message": {"role": "ASSISTANT", "content": [{"type": "TEXT", "text": text}]}, "pad": "aBcDeF"}).to_string(),
    )
}

fn generic_finish() -> Vec<u8> {
    [
        sse(
            None,
            r#"{"message":{"role":"ASSISTANT"},"finishReason":"stop","pad":"xY"}"#,
        ),
        sse(
            None,
            r#"{"usage":{"promptTokens":405,"completionTokens":13,"totalTokens":418,"promptTokensDetails":{"cachedTokens":5}},"pad":"q"}"#,
        ),
    ]
    .concat()
}

#[tokio::test]
async fn generic_on_demand_stream() {
    let server = serve(|received| {
        checks(received)?;
        let body = received.json();
        expect(
            body["servingMode"]
                == json!({"servingType": "ON_DEMAND", "modelId": "meta.llama-3.3-70b-instruct"}),
            "servingMode",
        )?;
        let chat = &body["chatRequest"];
        expect(chat["apiFormat"] == "GENERIC", "apiFormat")?;
        expect(
            chat["messages"]
                == json!([
                    {"role": "SYSTEM", "content": [{"type": "TEXT", "text": "Answer only from the numbered passages."}]},
                    {"role": "USER", "content": [{"type": "TEXT", "text": "Where are cold archives replicated?"}]},
                ]),
            "messages",
        )?;
        expect(chat["isStream"] == true, "isStream")?;
        expect(
            chat["streamOptions"]["isIncludeUsage"] == true,
            "isIncludeUsage",
        )?;
        expect(chat["maxTokens"] == 300, "maxTokens")?;
        Ok(Reply::stream(
            "text/event-stream",
            vec![
                Part::Bytes(generic_delta("They are")),
                Part::Bytes(generic_delta(" replicated [2].")),
                Part::Bytes(generic_finish()),
            ],
        ))
    })
    .await;
    let provider = make()(&server.base_url);
    assert_eq!(
        (
            provider.info().cloud.as_str(),
            provider.info().region.as_str(),
            provider.info().dedicated
        ),
        ("oci", "eu-frankfurt-1", false)
    );
    let outcome = drain(provider.as_ref(), soon(5000)).await.unwrap();
    assert_eq!(outcome.deltas, ["They are", " replicated [2]."]);
    assert_eq!(
        outcome.end.unwrap(),
        (FinishReason::Stop, Some(usage(405, 13, 5)))
    );
}

#[tokio::test]
async fn cohere_on_a_dedicated_endpoint_stream() {
    let server = serve(|received| {
        checks(received)?;
        let body = received.json();
        expect(
            body["servingMode"] == json!({"servingType": "DEDICATED", "endpointId": ENDPOINT_ID}),
            "servingMode",
        )?;
        let chat = &body["chatRequest"];
        expect(chat["apiFormat"] == "COHERE", "apiFormat")?;
        expect(chat["message"] == "Where are cold archives replicated?", "message")?;
        expect(
            chat["preambleOverride"] == "Answer only from the numbered passages.",
            "preambleOverride",
        )?;
        expect(chat["chatHistory"] == json!([]), "chatHistory")?;
        Ok(Reply::stream(
            "text/event-stream",
            vec![
                Part::Bytes(sse(None, r#"{"apiFormat":"COHERE","text":"They are","pad":"abc"}"#)),
                Part::Bytes(sse(None, r#"{"apiFormat":"COHERE","text":" replicated.","pad":"d"}"#)),
                // The final event repeats the whole text.
                Part::Bytes(sse(
                    None,
                    r#"{"apiFormat":"COHERE","text":"They are replicated.","finishReason":"COMPLETE","chatHistory":[],"usage":{"promptTokens":655,"completionTokens":11,"totalTokens":666},"pad":"e"}"#,
                )),
            ],
        ))
    })
    .await;
    let provider = build(
        &config(&server.base_url),
        &target("cohere.command-r-plus-08-2024", ENDPOINT_ID, true),
        &env(),
    );
    assert!(provider.info().dedicated);
    assert_eq!(provider.info().deployment, ENDPOINT_ID);
    let outcome = drain(provider.as_ref(), soon(5000)).await.unwrap();
    assert_eq!(outcome.deltas.concat(), "They are replicated.");
    assert_eq!(
        outcome.end.unwrap(),
        (FinishReason::Stop, Some(usage(655, 11, 0)))
    );
}

#[tokio::test]
async fn whole_answers_in_both_formats() {
    let server = serve(|received| {
        checks(received)?;
        let chat = &received.json()["chatRequest"];
        expect(chat["isStream"] == false, "isStream")?;
        let answer = if chat["apiFormat"] == "COHERE" {
            json!({"modelId": "cohere.command-r-plus-08-2024", "chatResponse": {"apiFormat": "COHERE", "text": "They are replicated to the paired region.", "finishReason": "MAX_TOKENS", "usage": {"promptTokens": 655, "completionTokens": 11, "totalTokens": 666}}})
        } else {
            json!({"modelId": "meta.llama-3.3-70b-instruct", "chatResponse": {"apiFormat": "GENERIC", "choices": [{"index": 0, "message": {"role": "ASSISTANT", "content": [{"type": "TEXT", "text": "They are replicated to a paired region [2]."}]}, "finishReason": "stop"}], "usage": {"promptTokens": 405, "completionTokens": 13, "totalTokens": 418}}})
        };
        Ok(Reply::json(200, answer).with_header("opc-request-id", "r1"))
    })
    .await;
    let generic = make()(&server.base_url)
        .chat(&request(), soon(5000))
        .await
        .unwrap();
    assert_eq!(generic.text, "They are replicated to a paired region [2].");
    assert_eq!(generic.reason, FinishReason::Stop);
    assert_eq!(generic.usage, Some(usage(405, 13, 0)));
    let cohere = build(
        &config(&server.base_url),
        &target(
            "cohere.command-r-plus-08-2024",
            "cohere.command-r-plus-08-2024",
            false,
        ),
        &env(),
    )
    .chat(&request(), soon(5000))
    .await
    .unwrap();
    assert_eq!(cohere.text, "They are replicated to the paired region.");
    assert_eq!(cohere.reason, FinishReason::Length);
}

fn oci_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(status, json!({"code": code, "message": message}))
        .with_header("opc-request-id", "r1")
}

#[tokio::test]
async fn error_statuses_map_to_kinds() {
    let cases = common_statuses(
        || oci_error(429, "TooManyRequests", "Too many requests for the tenancy"),
        || oci_error(429, "TooManyRequests", "Too many requests").with_header("retry-after", "4"),
        Duration::from_secs(4),
        || oci_error(503, "ServiceUnavailable", "Service unavailable"),
        || {
            oci_error(
                400,
                "InvalidParameter",
                "Please reduce the length of the messages or completion. This model's maximum context length is 128000 tokens.",
            )
        },
        || {
            oci_error(
                401,
                "NotAuthenticated",
                "The required information to complete authentication was not provided or was incorrect.",
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
            delta: generic_delta,
            finish: generic_finish,
            malformed: sse(None, "{\"index\":0,\"message\":"),
            in_band_error: sse(
                None,
                r#"{"code":"InternalServerError","message":"model crashed"}"#,
            ),
            in_band_kind: ErrorKind::Unavailable,
        },
        make(),
    )
    .await;
}

/// Runs when `SKYFUSE_LIVE_OCI_REGION` and `SKYFUSE_LIVE_OCI_COMPARTMENT` are set,
/// with `OCI_TENANCY`, `OCI_USER`, `OCI_FINGERPRINT` and the API key PEM at
/// `OCI_KEY_FILE`, and the model from `SKYFUSE_LIVE_OCI_CHAT_MODEL` (default
/// meta.llama-3.3-70b-instruct). Otherwise it says so and passes.
#[tokio::test]
async fn live_oci_chat() {
    let Some(config) = live::oci() else {
        return;
    };
    let model = std::env::var("SKYFUSE_LIVE_OCI_CHAT_MODEL")
        .unwrap_or_else(|_| "meta.llama-3.3-70b-instruct".into());
    let provider = build(&config, &target(&model, &model, false), &HashMap::new());
    crate::live_check(provider.as_ref()).await;
}
