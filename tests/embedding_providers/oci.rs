//! OCI Generative AI `embedText`, every request's signature verified with the
//! public half of a key generated here.

use std::collections::HashMap;

use serde_json::json;
use skyfuse::embed::Purpose;
use skyfuse::error::ErrorKind;

use crate::support::*;

const KEY_ID: &str = "ocid1.tenancy.oc1..tenancy/ocid1.user.oc1..user/20:3b:97:13:55:1c";

fn config(base_url: &str, extra: &str) -> String {
    format!(
        r#"
        [[provider]]
        id = "oci-fra"
        kind = "oci"
        region = "eu-frankfurt-1"
        base_url = "{base_url}"
        compartment_id = "ocid1.compartment.oc1..comp"
        tenancy_id = "ocid1.tenancy.oc1..tenancy"
        user_id = "ocid1.user.oc1..user"
        key_fingerprint = "20:3b:97:13:55:1c"
        private_key = "env:OCI_KEY"
        timeout_ms = 2000
        {extra}
        "#
    )
}

fn embed_answer(received: &Received, dims: usize) -> Handled {
    let body = received.json();
    let inputs = field(&body, "inputs")?.as_array().ok_or("inputs")?;
    let embeddings: Vec<_> = inputs
        .iter()
        .map(|text| vector_for(text.as_str().unwrap_or_default(), dims))
        .collect();
    Ok(Reply::json(200, json!({"id": "e1", "modelId": "cohere.embed-multilingual-v3.0", "modelVersion": "3.0", "embeddings": embeddings}))
        .with_header("opc-request-id", "r1"))
}

#[tokio::test]
async fn signed_on_demand_embed_text() {
    let (pem, public_key) = rsa_key();
    let server = serve(move |received| {
        verify_oci(received, KEY_ID, &public_key)?;
        expect(received.target == "/20231130/actions/embedText", format!("target {}", received.target))?;
        let body = received.json();
        expect(field(&body, "compartmentId")? == "ocid1.compartment.oc1..comp", "compartmentId")?;
        expect(
            field(&body, "servingMode")? == &json!({"servingType": "ON_DEMAND", "modelId": "cohere.embed-multilingual-v3.0"}),
            "servingMode",
        )?;
        expect(field(&body, "inputType")? == "SEARCH_DOCUMENT", "inputType")?;
        expect(field(&body, "truncate")? == "END", "truncate")?;
        expect(body.get("outputDimensions").is_none(), "v3 takes no outputDimensions")?;
        embed_answer(received, 1024)
    })
    .await;
    let env = HashMap::from([("OCI_KEY".to_string(), pem)]);
    let provider = build(&config(&server.base_url, ""), &env);
    assert_eq!(provider.location(), ("oci", "eu-frankfurt-1"));
    assert_eq!(provider.max_batch(), 96);
    let documents = texts(&["a", "bb"]);
    let vectors = provider
        .embed(request(
            "cohere.embed-multilingual-v3.0",
            &documents,
            Purpose::Document,
            None,
        ))
        .await
        .unwrap();
    assert_eq!(vectors[1], vector_for("bb", 1024));
}

#[tokio::test]
async fn dedicated_endpoint_and_query_input_type() {
    let (pem, public_key) = rsa_key();
    let server = serve(move |received| {
        verify_oci(received, KEY_ID, &public_key)?;
        let body = received.json();
        expect(
            field(&body, "servingMode")? == &json!({"servingType": "DEDICATED", "endpointId": "ocid1.generativeaiendpoint.oc1.eu-frankfurt-1.dac"}),
            "dedicated servingMode",
        )?;
        expect(field(&body, "inputType")? == "SEARCH_QUERY", "inputType")?;
        expect(field(&body, "outputDimensions")? == 512, "outputDimensions")?;
        embed_answer(received, 512)
    })
    .await;
    let env = HashMap::from([("OCI_KEY".to_string(), pem)]);
    let provider = build(
        &config(
            &server.base_url,
            r#"dedicated_endpoints = { "cohere.embed-v4.0" = "ocid1.generativeaiendpoint.oc1.eu-frankfurt-1.dac" }"#,
        ),
        &env,
    );
    let query = texts(&["where"]);
    provider
        .embed(request(
            "cohere.embed-v4.0",
            &query,
            Purpose::Query,
            Some(512),
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn oci_errors_map_to_kinds() {
    let (pem, public_key) = rsa_key();
    let error = |status: u16, code: &str| {
        Reply::json(
            status,
            json!({"code": code, "message": format!("{code} message")}),
        )
    };
    let cases = vec![
        (
            error(429, "TooManyRequests").with_header("retry-after", "4"),
            ErrorKind::Throttled,
        ),
        (error(401, "NotAuthenticated"), ErrorKind::Auth),
        (error(404, "NotAuthorizedOrNotFound"), ErrorKind::NotFound),
        (error(400, "InvalidParameter"), ErrorKind::InvalidArgument),
        (error(500, "InternalServerError"), ErrorKind::Unavailable),
        (
            Reply::text(503, "service unavailable"),
            ErrorKind::Unavailable,
        ),
        (
            Reply::json(200, json!({"embeddings": [[]]})),
            ErrorKind::Unavailable,
        ),
    ];
    for (index, (reply, kind)) in cases.into_iter().enumerate() {
        let reply = std::sync::Mutex::new(Some(reply));
        let public_key = public_key.clone();
        let server = serve(move |received| {
            verify_oci(received, KEY_ID, &public_key)?;
            Ok(reply.lock().unwrap().take().expect("one request"))
        })
        .await;
        let env = HashMap::from([("OCI_KEY".to_string(), pem.clone())]);
        let provider = build(&config(&server.base_url, ""), &env);
        let query = texts(&["q"]);
        let error = assert_kind(
            provider
                .embed(request(
                    "cohere.embed-english-v3.0",
                    &query,
                    Purpose::Query,
                    None,
                ))
                .await,
            kind,
        );
        if index == 0 {
            assert_eq!(error.retry_after, Some(std::time::Duration::from_secs(4)));
        }
    }
}

#[tokio::test]
async fn a_key_that_is_not_pem_fails_at_build() {
    let env = HashMap::from([("OCI_KEY".to_string(), "not a key".to_string())]);
    let error = skyfuse::embed::providers::build(
        &provider_config(&config("http://127.0.0.1:9", "")),
        &env,
        reqwest::Client::new(),
    )
    .err()
    .expect("a bad key is refused");
    assert!(
        error.message.contains("oci-fra") && error.message.contains("private_key"),
        "{}",
        error.message
    );
}

/// Runs when `SKYFUSE_LIVE_OCI_REGION` and `SKYFUSE_LIVE_OCI_COMPARTMENT` are set,
/// with `OCI_TENANCY`, `OCI_USER`, `OCI_FINGERPRINT` and the API key PEM at
/// `OCI_KEY_FILE`, and the model from `SKYFUSE_LIVE_OCI_EMBED_MODEL` (default
/// cohere.embed-multilingual-v3.0). Otherwise it says so and passes.
#[tokio::test]
async fn live_oci_embeddings() {
    let Some(config) = live::oci() else {
        return;
    };
    let model = std::env::var("SKYFUSE_LIVE_OCI_EMBED_MODEL")
        .unwrap_or_else(|_| "cohere.embed-multilingual-v3.0".into());
    let provider = build(&config, &HashMap::new());
    crate::live_check(provider.as_ref(), &model, None).await;
}
