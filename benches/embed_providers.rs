//! One query through each cloud embedding provider's client path: build the request,
//! sign it (SigV4 for Bedrock, a bearer or api-key elsewhere), send it over loopback to
//! a server answering the documented shape instantly, parse the answer. What this
//! measures is skyfuse's own overhead per provider; a real cloud adds its network and
//! model time on top.
//!
//! Run: `cargo bench --bench embed_providers`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::http::Uri;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use skyfuse::config::Config;
use skyfuse::embed::{EmbedRequest, EmbeddingProvider, Purpose, providers};

const DIMS: usize = 1024;
const QUERY: &str = "0-dimensional biomaterials show inductive properties.";

/// Answers every provider's documented response shape, chosen by path.
async fn answer(uri: Uri, Json(body): Json<Value>) -> Json<Value> {
    let vector: Vec<f32> = (0..DIMS).map(|i| i as f32 / DIMS as f32).collect();
    let path = uri.path();
    Json(if path.ends_with(":predict") {
        let count = body["instances"].as_array().map_or(1, Vec::len);
        json!({"predictions": vec![json!({"embeddings": {"values": vector, "statistics": {"token_count": 9, "truncated": false}}}); count]})
    } else if path.starts_with("/model/") {
        json!({"embedding": vector, "inputTextTokenCount": 9})
    } else {
        let count = body["input"].as_array().map_or(1, Vec::len);
        let data: Vec<Value> = (0..count)
            .map(|index| json!({"object": "embedding", "index": index, "embedding": vector}))
            .collect();
        json!({"object": "list", "data": data, "usage": {"prompt_tokens": 9, "total_tokens": 9}})
    })
}

fn providers_at(base_url: &str) -> Vec<(&'static str, &'static str, Arc<dyn EmbeddingProvider>)> {
    let text = format!(
        r#"
        [[provider]]
        id = "openai_compat"
        kind = "openai_compat"
        base_url = "{base_url}"
        [[provider]]
        id = "azure_openai"
        kind = "azure_openai"
        base_url = "{base_url}"
        region = "westeurope"
        api_version = "2024-10-21"
        api_key = "env:AZURE_OPENAI_API_KEY"
        [[provider]]
        id = "bedrock"
        kind = "bedrock"
        region = "us-east-1"
        base_url = "{base_url}"
        [[provider]]
        id = "vertex"
        kind = "vertex"
        project = "acme"
        region = "europe-west4"
        base_url = "{base_url}"
        access_token = "env:VERTEX_TOKEN"
        "#
    );
    let config = Config::parse(&text, Path::new("/")).expect("bench config parses");
    let env = HashMap::from([
        ("AZURE_OPENAI_API_KEY".to_string(), "bench-key".to_string()),
        ("AWS_ACCESS_KEY_ID".to_string(), "AKIDBENCH".to_string()),
        (
            "AWS_SECRET_ACCESS_KEY".to_string(),
            "bench-secret".to_string(),
        ),
        ("VERTEX_TOKEN".to_string(), "ya29.bench".to_string()),
    ]);
    let http = reqwest::Client::new();
    let models = [
        ("openai_compat", "bge-m3"),
        ("azure_openai", "text-embedding-3-large"),
        ("bedrock", "amazon.titan-embed-text-v2:0"),
        ("vertex", "text-embedding-005"),
    ];
    models
        .into_iter()
        .map(|(id, model)| {
            let provider_config = config
                .providers
                .iter()
                .find(|provider| provider.id == id)
                .expect("configured");
            let provider = providers::build(provider_config, &env, http.clone())
                .unwrap_or_else(|error| panic!("{id}: {error}"));
            (id, model, provider)
        })
        .collect()
}

fn bench_provider_paths(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let base_url = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(axum::routing::post(answer));
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    });
    let texts = vec![QUERY.to_string()];
    let mut group = criterion.benchmark_group("query_embedding_provider");
    for (id, model, provider) in providers_at(&base_url) {
        let request = EmbedRequest {
            model,
            texts: &texts,
            purpose: Purpose::Query,
            dims: None,
        };
        runtime
            .block_on(provider.embed(request))
            .unwrap_or_else(|error| panic!("{id}: {error}"));
        group.bench_function(id, |bencher| {
            bencher.iter(|| runtime.block_on(provider.embed(request)).expect("embeds"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_provider_paths);
criterion_main!(benches);
