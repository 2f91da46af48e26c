//! Azure OpenAI embeddings: classic deployment URL with `api-version` and `api-key`,
//! the v1 path with the deployment as `model` and an Entra bearer token.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use skyfuse::embed::Purpose;
use skyfuse::error::ErrorKind;

use crate::support::*;

fn answer(received: &Received, dims: usize) -> Handled {
    let body = received.json();
    let inputs = field(&body, "input")?
        .as_array()
        .ok_or("input is not an array")?;
    let data: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| json!({"object": "embedding", "index": index, "embedding": vector_for(text.as_str().unwrap(), dims)}))
        .collect();
    Ok(Reply::json(
        200,
        json!({"object": "list", "data": data, "model": "text-embedding-3-large", "usage": {"prompt_tokens": 4, "total_tokens": 4}}),
    ))
}

fn env() -> HashMap<String, String> {
    HashMap::from([
        (
            "AZURE_OPENAI_API_KEY".to_string(),
            "azure-key-1".to_string(),
        ),
        ("AZURE_TOKEN".to_string(), "entra-token-1".to_string()),
    ])
}

#[tokio::test]
async fn classic_deployment_url_with_api_version_and_api_key() {
    let server = serve(|received| {
        expect(
            received.path() == "/openai/deployments/emb3-large/embeddings",
            format!("path {}", received.path()),
        )?;
        expect(
            received.query() == Some("api-version=2024-10-21"),
            "api-version",
        )?;
        expect(
            received.header("api-key") == Some("azure-key-1"),
            "api-key header",
        )?;
        expect(
            received.header("authorization").is_none(),
            "no bearer with a key",
        )?;
        let body = received.json();
        expect(
            body.get("model").is_none(),
            "model in a deployment-scoped body",
        )?;
        expect(field(&body, "dimensions")? == 1024, "dimensions")?;
        expect(
            field(&body, "encoding_format")? == "float",
            "encoding_format",
        )?;
        answer(received, 1024)
    })
    .await;
    let provider = build(
        &format!(
            r#"
            [[provider]]
            id = "azure-weu"
            kind = "azure_openai"
            base_url = "{}"
            region = "westeurope"
            api_version = "2024-10-21"
            api_key = "env:AZURE_OPENAI_API_KEY"
            deployments = {{ "text-embedding-3-large" = "emb3-large" }}
            "#,
            server.base_url
        ),
        &env(),
    );
    assert_eq!(provider.location(), ("azure", "westeurope"));
    assert_eq!(provider.max_batch(), 2048);
    let inputs = texts(&["cold archive", "object lock"]);
    let vectors = provider
        .embed(request(
            "text-embedding-3-large",
            &inputs,
            Purpose::Document,
            Some(1024),
        ))
        .await
        .unwrap();
    assert_eq!(vectors[1], vector_for("object lock", 1024));
}

#[tokio::test]
async fn v1_path_with_deployment_as_model_and_entra_token() {
    let server = serve(|received| {
        expect(
            received.target == "/openai/v1/embeddings",
            format!("target {}", received.target),
        )?;
        expect(
            received.header("authorization") == Some("Bearer entra-token-1"),
            "entra bearer",
        )?;
        expect(received.header("api-key").is_none(), "api-key with a token")?;
        let body = received.json();
        // Not in `deployments`: deployed under the model's own name.
        expect(field(&body, "model")? == "text-embedding-3-small", "model")?;
        expect(body.get("dimensions").is_none(), "dimensions unasked")?;
        answer(received, 1536)
    })
    .await;
    let provider = build(
        &format!(
            "[[provider]]\nid = \"azure\"\nkind = \"azure_openai\"\nbase_url = \"{}\"\nregion = \"eastus\"\naccess_token = \"env:AZURE_TOKEN\"\n",
            server.base_url
        ),
        &env(),
    );
    let inputs = texts(&["q"]);
    let vectors = provider
        .embed(request(
            "text-embedding-3-small",
            &inputs,
            Purpose::Query,
            None,
        ))
        .await
        .unwrap();
    assert_eq!(vectors[0].len(), 1536);
}

#[tokio::test]
async fn azure_errors_map_to_kinds() {
    let cases: Vec<(Reply, ErrorKind)> = vec![
        (
            Reply::json(
                429,
                json!({"error": {"code": "429", "message": "Please retry after 7 seconds."}}),
            )
            .with_header("retry-after", "7")
            .with_header("retry-after-ms", "6850"),
            ErrorKind::Throttled,
        ),
        (
            Reply::json(
                401,
                json!({"statusCode": 401, "message": "Unauthorized. Access token is missing, invalid"}),
            ),
            ErrorKind::Auth,
        ),
        (
            Reply::json(
                404,
                json!({"error": {"code": "DeploymentNotFound", "message": "The API deployment for this resource does not exist."}}),
            ),
            ErrorKind::NotFound,
        ),
        (
            Reply::json(
                400,
                json!({"error": {"code": null, "message": "This model does not support specifying dimensions.", "param": null, "type": "invalid_request_error"}}),
            ),
            ErrorKind::InvalidArgument,
        ),
        (
            Reply::json(
                503,
                json!({"error": {"code": "ServiceUnavailable", "message": "busy"}}),
            ),
            ErrorKind::Unavailable,
        ),
        (
            Reply::json(504, json!({"error": {"message": "gateway timeout"}})),
            ErrorKind::Timeout,
        ),
    ];
    for (index, (reply, kind)) in cases.into_iter().enumerate() {
        let reply = std::sync::Mutex::new(Some(reply));
        let server = serve(move |_| Ok(reply.lock().unwrap().take().expect("one request"))).await;
        let provider = build(
            &format!(
                "[[provider]]\nid = \"azure\"\nkind = \"azure_openai\"\nbase_url = \"{}\"\nregion = \"eastus\"\napi_key = \"env:AZURE_OPENAI_API_KEY\"\napi_version = \"2024-10-21\"\n",
                server.base_url
            ),
            &env(),
        );
        let inputs = texts(&["a"]);
        let error = assert_kind(
            provider
                .embed(request(
                    "text-embedding-ada-002",
                    &inputs,
                    Purpose::Document,
                    None,
                ))
                .await,
            kind,
        );
        if index == 0 {
            assert_eq!(error.retry_after, Some(Duration::from_millis(6850)));
        }
        if index == 1 {
            assert!(
                error.message.contains("Access token is missing"),
                "{}",
                error.message
            );
        }
    }
}

/// Runs when `SKYFUSE_LIVE_AZURE_OPENAI_URL` (`https://{resource}.openai.azure.com`),
/// `SKYFUSE_LIVE_AZURE_OPENAI_DEPLOYMENT` (an embeddings deployment) and
/// `AZURE_OPENAI_API_KEY` are set; `SKYFUSE_LIVE_AZURE_OPENAI_API_VERSION` picks the
/// classic path (default: the v1 path). Otherwise it says so and passes.
#[tokio::test]
async fn live_azure_openai_embeddings() {
    let Some(config) = live::azure_openai() else {
        return;
    };
    let Ok(deployment) = std::env::var("SKYFUSE_LIVE_AZURE_OPENAI_DEPLOYMENT") else {
        eprintln!("skipped: set SKYFUSE_LIVE_AZURE_OPENAI_DEPLOYMENT to run against Azure");
        return;
    };
    let provider = build(&config, &skyfuse::config::process_env());
    crate::live_check(provider.as_ref(), &deployment, None).await;
}
