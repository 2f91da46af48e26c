//! Vertex AI text-embedding `predict`, with a bearer token obtained from a local
//! token endpoint that checks the service account's signed JWT.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use serde_json::{Value, json};
use skyfuse::embed::Purpose;
use skyfuse::error::ErrorKind;

use crate::support::*;

const CLIENT_EMAIL: &str = "skyfuse@acme.iam.gserviceaccount.com";

/// A token endpoint that verifies the JWT-bearer assertion with the account's
/// public key and hands out `ya29.test-N`, counting exchanges.
async fn token_endpoint(public_key: Vec<u8>, exchanges: Arc<AtomicUsize>) -> TestServer {
    let token_url = Arc::new(std::sync::Mutex::new(String::new()));
    let url_seen = token_url.clone();
    let server = serve(move |received| {
        expect(received.method == "POST" && received.path() == "/token", "token path")?;
        expect(
            received.header("content-type") == Some("application/x-www-form-urlencoded"),
            "form content-type",
        )?;
        let form: HashMap<String, String> = url::form_urlencoded::parse(&received.body)
            .into_owned()
            .collect();
        expect(
            form.get("grant_type").map(String::as_str) == Some("urn:ietf:params:oauth:grant-type:jwt-bearer"),
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
        let header: Value = serde_json::from_slice(&decode(parts[0])?).map_err(|e| e.to_string())?;
        let claims: Value = serde_json::from_slice(&decode(parts[1])?).map_err(|e| e.to_string())?;
        expect(header["alg"] == "RS256", "alg")?;
        expect(header["kid"] == "key-1", "kid")?;
        expect(claims["iss"] == CLIENT_EMAIL, "iss")?;
        expect(claims["scope"] == "https://www.googleapis.com/auth/cloud-platform", "scope")?;
        expect(claims["aud"] == *url_seen.lock().unwrap(), format!("aud {}", claims["aud"]))?;
        let issued = claims["iat"].as_u64().ok_or("iat")?;
        expect(claims["exp"].as_u64() == Some(issued + 3600), "exp")?;
        let signed = format!("{}.{}", parts[0], parts[1]);
        if !verify_rsa_sha256(&public_key, signed.as_bytes(), &decode(parts[2])?) {
            // What Google answers a JWT signed by another key.
            return Ok(Reply::json(
                400,
                json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
            ));
        }
        let number = exchanges.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Reply::json(200, json!({"access_token": format!("ya29.test-{number}"), "expires_in": 3599, "token_type": "Bearer"})))
    })
    .await;
    *token_url.lock().unwrap() = format!("{}/token", server.base_url);
    server
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

fn predict_answer(received: &Received, dims: usize) -> Handled {
    let body = received.json();
    let instances = field(&body, "instances")?.as_array().ok_or("instances")?;
    let predictions: Vec<_> = instances
        .iter()
        .map(|instance| {
            let text = instance["content"].as_str().unwrap_or_default();
            json!({"embeddings": {"values": vector_for(text, dims), "statistics": {"token_count": 2, "truncated": false}}})
        })
        .collect();
    Ok(Reply::json(
        200,
        json!({"predictions": predictions, "metadata": {"billableCharacterCount": 10}}),
    ))
}

fn config(base_url: &str, credentials: &str) -> String {
    format!(
        "[[provider]]\nid = \"vertex-euw4\"\nkind = \"vertex\"\nproject = \"acme\"\nregion = \"europe-west4\"\nbase_url = \"{base_url}\"\ntimeout_ms = 2000\n{credentials}"
    )
}

#[tokio::test]
async fn predict_with_a_service_account_token_fetched_once() {
    let (pem, public_key) = rsa_key();
    let exchanges = Arc::new(AtomicUsize::new(0));
    let tokens = token_endpoint(public_key, exchanges.clone()).await;
    let vertex = serve(|received| {
        expect(
            received.target
                == "/v1/projects/acme/locations/europe-west4/publishers/google/models/text-embedding-005:predict",
            format!("target {}", received.target),
        )?;
        expect(received.header("authorization") == Some("Bearer ya29.test-1"), "bearer token")?;
        let body = received.json();
        let instances = field(&body, "instances")?.as_array().ok_or("instances")?;
        let task_type = instances[0]["task_type"].as_str().ok_or("task_type")?;
        expect(
            instances.iter().all(|instance| instance["task_type"] == task_type),
            "one task_type per call",
        )?;
        expect(
            task_type == "RETRIEVAL_QUERY" || task_type == "RETRIEVAL_DOCUMENT",
            format!("task_type {task_type}"),
        )?;
        let parameters = field(&body, "parameters")?;
        expect(parameters["outputDimensionality"] == 256, "outputDimensionality")?;
        expect(parameters["autoTruncate"] == true, "autoTruncate")?;
        predict_answer(received, 256)
    })
    .await;
    // The key file names the token endpoint, as Google's do.
    let env = HashMap::from([(
        "SA_KEY".to_string(),
        key_file(&pem, &format!("{}/token", tokens.base_url)),
    )]);
    let provider = build(
        &config(&vertex.base_url, "service_account_key = \"env:SA_KEY\"\n"),
        &env,
    );
    assert_eq!(provider.location(), ("gcp", "europe-west4"));
    let documents = texts(&["cold archive", "object lock", "x"]);
    let vectors = provider
        .embed(request(
            "text-embedding-005",
            &documents,
            Purpose::Document,
            Some(256),
        ))
        .await
        .unwrap();
    assert_eq!(vectors[1], vector_for("object lock", 256));
    assert_eq!(
        vertex.last().json()["instances"][0]["task_type"],
        "RETRIEVAL_DOCUMENT"
    );
    let query = texts(&["where"]);
    provider
        .embed(request(
            "text-embedding-005",
            &query,
            Purpose::Query,
            Some(256),
        ))
        .await
        .unwrap();
    assert_eq!(
        vertex.last().json()["instances"][0]["task_type"],
        "RETRIEVAL_QUERY"
    );
    assert_eq!(vertex.count(), 2);
    assert_eq!(exchanges.load(Ordering::SeqCst), 1, "the token is cached");
}

#[tokio::test]
async fn token_url_in_config_overrides_the_key_file_and_refusal_is_auth() {
    let (pem, _) = rsa_key();
    // The endpoint checks signatures with another key: the exchange is refused.
    let (_, other_public_key) = rsa_key();
    let exchanges = Arc::new(AtomicUsize::new(0));
    let tokens = token_endpoint(other_public_key, exchanges.clone()).await;
    let vertex = serve(|received| predict_answer(received, 4)).await;
    let env = HashMap::from([(
        "SA_KEY".to_string(),
        key_file(&pem, "http://127.0.0.1:1/never-used"),
    )]);
    let provider = build(
        &config(
            &vertex.base_url,
            &format!(
                "service_account_key = \"env:SA_KEY\"\ntoken_url = \"{}/token\"\n",
                tokens.base_url
            ),
        ),
        &env,
    );
    let query = texts(&["q"]);
    let error = assert_kind(
        provider
            .embed(request("text-embedding-005", &query, Purpose::Query, None))
            .await,
        ErrorKind::Auth,
    );
    assert!(
        error.message.contains("token endpoint"),
        "{}",
        error.message
    );
    assert_eq!(tokens.count(), 1, "the configured token_url was used");
    assert_eq!(vertex.count(), 0);
}

#[tokio::test]
async fn static_token_and_gemini_embedding_one_instance_per_request() {
    let vertex = serve(|received| {
        expect(
            received.header("authorization") == Some("Bearer static-token"),
            "static token",
        )?;
        expect(
            received
                .path()
                .ends_with("/models/gemini-embedding-001:predict"),
            "model in path",
        )?;
        let body = received.json();
        expect(
            field(&body, "instances")?.as_array().map(Vec::len) == Some(1),
            "one instance per gemini-embedding request",
        )?;
        expect(
            body["parameters"].get("outputDimensionality").is_none(),
            "unasked dims",
        )?;
        predict_answer(received, 3072)
    })
    .await;
    let env = HashMap::from([("VERTEX_TOKEN".to_string(), "static-token".to_string())]);
    let provider = build(
        &config(&vertex.base_url, "access_token = \"env:VERTEX_TOKEN\"\n"),
        &env,
    );
    let documents = texts(&["a", "bb", "ccc"]);
    let vectors = provider
        .embed(request(
            "gemini-embedding-001",
            &documents,
            Purpose::Document,
            None,
        ))
        .await
        .unwrap();
    assert_eq!(vertex.count(), 3);
    assert_eq!(vectors[2], vector_for("ccc", 3072));
}

#[tokio::test]
async fn vertex_errors_map_to_kinds() {
    let status = |code: u16, status: &str| {
        Reply::json(
            code,
            json!({"error": {"code": code, "message": format!("{status} happened"), "status": status, "details": []}}),
        )
    };
    let cases = vec![
        (status(429, "RESOURCE_EXHAUSTED"), ErrorKind::Throttled),
        (status(503, "UNAVAILABLE"), ErrorKind::Unavailable),
        (status(500, "INTERNAL"), ErrorKind::Unavailable),
        (status(504, "DEADLINE_EXCEEDED"), ErrorKind::Timeout),
        (status(400, "INVALID_ARGUMENT"), ErrorKind::InvalidArgument),
        (status(401, "UNAUTHENTICATED"), ErrorKind::Auth),
        (status(403, "PERMISSION_DENIED"), ErrorKind::Auth),
        (status(404, "NOT_FOUND"), ErrorKind::NotFound),
        (
            Reply::json(200, json!({"predictions": [{"embeddings": {}}]})),
            ErrorKind::Unavailable,
        ),
    ];
    for (reply, kind) in cases {
        let reply = std::sync::Mutex::new(Some(reply));
        let vertex = serve(move |_| Ok(reply.lock().unwrap().take().expect("one request"))).await;
        let env = HashMap::from([("VERTEX_TOKEN".to_string(), "t".to_string())]);
        let provider = build(
            &config(&vertex.base_url, "access_token = \"env:VERTEX_TOKEN\"\n"),
            &env,
        );
        let query = texts(&["q"]);
        let error = assert_kind(
            provider
                .embed(request("text-embedding-005", &query, Purpose::Query, None))
                .await,
            kind,
        );
        assert!(error.message.contains("vertex"), "{}", error.message);
    }
}

/// Runs when `SKYFUSE_LIVE_VERTEX_PROJECT` and `SKYFUSE_LIVE_VERTEX_REGION` are set,
/// with a service-account key file at `GOOGLE_APPLICATION_CREDENTIALS` and the model
/// from `SKYFUSE_LIVE_VERTEX_EMBED_MODEL` (default text-embedding-005). Otherwise it
/// says so and passes.
#[tokio::test]
async fn live_vertex_embeddings() {
    let Some(config) = live::vertex() else {
        return;
    };
    let model = std::env::var("SKYFUSE_LIVE_VERTEX_EMBED_MODEL")
        .unwrap_or_else(|_| "text-embedding-005".into());
    let provider = build(&config, &HashMap::new());
    crate::live_check(provider.as_ref(), &model, Some(256)).await;
}
