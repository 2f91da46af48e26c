//! OpenAI-compatible `/v1/embeddings`, and the error mapping every provider shares.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use skyfuse::embed::Purpose;
use skyfuse::error::ErrorKind;

use crate::support::*;

fn config(base_url: &str, extra: &str) -> String {
    format!(
        "[[provider]]\nid = \"llama\"\nkind = \"openai_compat\"\nbase_url = \"{base_url}\"\n{extra}"
    )
}

/// Answers the documented shape, items in reverse order (clients must use `index`).
fn embeddings_answer(received: &Received, dims: usize) -> Handled {
    let body = received.json();
    let inputs = field(&body, "input")?
        .as_array()
        .ok_or("input is not an array")?;
    let data: Vec<_> = inputs
        .iter()
        .enumerate()
        .rev()
        .map(|(index, text)| {
            json!({"object": "embedding", "index": index, "embedding": vector_for(text.as_str().unwrap(), dims)})
        })
        .collect();
    Ok(Reply::json(
        200,
        json!({"object": "list", "data": data, "model": "bge", "usage": {"prompt_tokens": 3, "total_tokens": 3}}),
    ))
}

#[tokio::test]
async fn sends_the_documented_request_and_keeps_input_order() {
    let server = serve(|received| {
        expect(received.method == "POST", "method")?;
        expect(
            received.target == "/v1/embeddings",
            format!("target {}", received.target),
        )?;
        expect(
            received.header("authorization") == Some("Bearer sk-local"),
            "bearer key",
        )?;
        expect(
            received.header("content-type") == Some("application/json"),
            "content-type",
        )?;
        let body = received.json();
        expect(field(&body, "model")? == "bge-m3", "model")?;
        expect(
            field(&body, "encoding_format")? == "float",
            "encoding_format",
        )?;
        expect(field(&body, "dimensions")? == 256, "dimensions")?;
        embeddings_answer(received, 256)
    })
    .await;
    let env = HashMap::from([("LLAMA_KEY".to_string(), "sk-local".to_string())]);
    let provider = build(
        &config(&server.base_url, "api_key = \"env:LLAMA_KEY\"\n"),
        &env,
    );
    assert_eq!(provider.id(), "llama");
    assert_eq!(provider.location(), ("local", "local"));
    let inputs = texts(&["a", "bb", "ccc"]);
    let vectors = provider
        .embed(request("bge-m3", &inputs, Purpose::Document, Some(256)))
        .await
        .unwrap();
    assert_eq!(vectors.len(), 3);
    for (vector, text) in vectors.iter().zip(&inputs) {
        assert_eq!(vector, &vector_for(text, 256));
    }
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn no_dimensions_and_no_key_when_not_configured() {
    let server = serve(|received| {
        let body = received.json();
        expect(body.get("dimensions").is_none(), "dimensions sent unasked")?;
        expect(
            received.header("authorization").is_none(),
            "authorization sent",
        )?;
        embeddings_answer(received, 8)
    })
    .await;
    let provider = build(&config(&server.base_url, ""), &HashMap::new());
    let inputs = texts(&["query"]);
    let vectors = provider
        .embed(request("bge-m3", &inputs, Purpose::Query, None))
        .await
        .unwrap();
    assert_eq!(vectors[0].len(), 8);
}

#[tokio::test]
async fn statuses_and_broken_answers_map_to_kinds() {
    let cases: Vec<(Reply, ErrorKind)> = vec![
        (
            Reply::json(429, json!({"error": {"message": "slow down"}}))
                .with_header("retry-after", "2"),
            ErrorKind::Throttled,
        ),
        (
            Reply::json(
                503,
                json!({"error": {"code": 503, "message": "Loading model"}}),
            ),
            ErrorKind::Unavailable,
        ),
        (Reply::text(500, "boom"), ErrorKind::Unavailable),
        (
            Reply::json(401, json!({"error": {"message": "bad key"}})),
            ErrorKind::Auth,
        ),
        (
            Reply::json(403, json!({"error": "forbidden"})),
            ErrorKind::Auth,
        ),
        (
            Reply::json(400, json!({"error": {"message": "too long"}})),
            ErrorKind::InvalidArgument,
        ),
        (
            Reply::json(404, json!({"error": "model 'x' not found"})),
            ErrorKind::NotFound,
        ),
        (Reply::text(200, "not json"), ErrorKind::Unavailable),
        (
            Reply::json(200, json!({"data": [{"index": 0, "embedding": [0.1]}]})),
            ErrorKind::Unavailable,
        ),
        (
            Reply::json(
                200,
                json!({"data": [{"index": 0, "embedding": [0.1]}, {"index": 0, "embedding": [0.2]}]}),
            ),
            ErrorKind::Unavailable,
        ),
        (Reply::Drop, ErrorKind::Unavailable),
        (
            Reply::Delayed(Duration::from_secs(5), Box::new(Reply::text(200, "late"))),
            ErrorKind::Timeout,
        ),
    ];
    for (index, (reply, kind)) in cases.into_iter().enumerate() {
        let reply = std::sync::Mutex::new(Some(reply));
        let server = serve(move |_| Ok(reply.lock().unwrap().take().expect("one request"))).await;
        let provider = build(
            &config(&server.base_url, "timeout_ms = 300\n"),
            &HashMap::new(),
        );
        let inputs = texts(&["a", "b"]);
        let error = assert_kind(
            provider
                .embed(request("bge-m3", &inputs, Purpose::Document, None))
                .await,
            kind,
        );
        if index == 0 {
            assert_eq!(error.retry_after, Some(Duration::from_secs(2)));
            assert!(error.message.contains("slow down"), "{}", error.message);
        }
    }
}

#[tokio::test]
async fn refused_connection_is_unavailable_and_big_batches_are_refused_unsent() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let provider = build(
        &config(&format!("http://127.0.0.1:{port}"), "max_batch = 2\n"),
        &HashMap::new(),
    );
    assert_eq!(provider.max_batch(), 2);
    let two = texts(&["a", "b"]);
    assert_kind(
        provider
            .embed(request("m", &two, Purpose::Query, None))
            .await,
        ErrorKind::Unavailable,
    );
    let three = texts(&["a", "b", "c"]);
    assert_kind(
        provider
            .embed(request("m", &three, Purpose::Query, None))
            .await,
        ErrorKind::InvalidArgument,
    );
}

#[tokio::test]
async fn a_vector_of_another_size_than_asked_is_refused() {
    let server = serve(|received| embeddings_answer(received, 384)).await;
    let provider = build(&config(&server.base_url, ""), &HashMap::new());
    let inputs = texts(&["a"]);
    let error = assert_kind(
        provider
            .embed(request("m", &inputs, Purpose::Query, Some(256)))
            .await,
        ErrorKind::InvalidArgument,
    );
    assert!(error.message.contains("384"), "{}", error.message);
}

/// A real server: runs when `SKYFUSE_LIVE_OPENAI_EMBED_URL` is set (base URL without
/// `/v1`, e.g. llama-server started with `--embeddings`), with the model from
/// `SKYFUSE_LIVE_OPENAI_EMBED_MODEL`. Otherwise it says so and passes.
#[tokio::test]
async fn live_openai_compatible_embeddings() {
    let Ok(base_url) = std::env::var("SKYFUSE_LIVE_OPENAI_EMBED_URL") else {
        eprintln!("skipped: set SKYFUSE_LIVE_OPENAI_EMBED_URL to run against a real server");
        return;
    };
    let model =
        std::env::var("SKYFUSE_LIVE_OPENAI_EMBED_MODEL").unwrap_or_else(|_| "default".into());
    let provider = build(&config(&base_url, "timeout_ms = 60000\n"), &HashMap::new());
    crate::live_check(provider.as_ref(), &model, None).await;
}
