//! The OpenAI-compatible facade over real HTTP: upstreams are OpenAI-compatible
//! servers on loopback that answer, throttle or break on demand.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use skyfuse::api::Listeners;
use skyfuse::config::Config;
use skyfuse::service::Service;
use tokio::net::TcpListener;

#[path = "common/llama.rs"]
mod llama;

/// What an upstream answers, call after call (the last one repeats).
#[derive(Clone)]
enum Upstream {
    Answer(&'static str),
    Throttle { retry_after: &'static str },
    BreakAfter(&'static str),
}

async fn upstream(script: Vec<Upstream>) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |body: axum::Json<Value>| {
            let call = counter.fetch_add(1, Ordering::SeqCst);
            let step = script[call.min(script.len() - 1)].clone();
            async move {
                assert_eq!(body["stream"], true, "the router always streams upstream");
                match step {
                    Upstream::Answer(text) => sse(&[chunk(text), finish(), usage()]),
                    Upstream::BreakAfter(text) => sse(&[
                        chunk(text),
                        json!({"error": {"message": "engine died", "code": 500}}),
                    ]),
                    Upstream::Throttle { retry_after } => (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", retry_after)],
                        axum::Json(json!({"error": {"message": "slow down", "code": "429"}})),
                    )
                        .into_response(),
                }
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

fn chunk(text: &str) -> Value {
    json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
}

fn finish() -> Value {
    json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
}

fn usage() -> Value {
    json!({"choices": [], "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}})
}

fn sse(events: &[Value]) -> axum::response::Response {
    let mut body: String = events
        .iter()
        .map(|event| format!("data: {event}\n\n"))
        .collect();
    body.push_str("data: [DONE]\n\n");
    ([("content-type", "text/event-stream")], body).into_response()
}

/// The `[server]` every facade test runs with: small bodies, and no data of its own
/// (no stores are configured, so nothing is written).
const FACADE_SERVER: &str = r#"
[server]
max_message_bytes = 65536
data_dir = "/nonexistent/skyfuse-facade-tests"
"#;

/// gRPC and the facade, started as production starts them (`api::serve`).
struct Served {
    /// The facade's base URL.
    base: String,
    grpc: std::net::SocketAddr,
    /// The operator's port: `/metrics`, `/healthz`, `/readyz`.
    metrics: std::net::SocketAddr,
    service: Arc<Service>,
    serving: tokio::task::JoinHandle<skyfuse::error::Result<()>>,
}

/// Serves a service built from `config` until `shutdown` resolves.
async fn serve(config: &str, shutdown: impl Future<Output = ()> + Send + 'static) -> Served {
    let config: Config = toml::from_str(&format!("{FACADE_SERVER}{config}")).unwrap();
    let service = Arc::new(Service::build(config, &HashMap::new()).await.unwrap());
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let openai = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", openai.local_addr().unwrap());
    let grpc_address = grpc.local_addr().unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_address = metrics.local_addr().unwrap();
    let listeners = Listeners {
        grpc,
        openai: Some(openai),
        metrics: Some(metrics),
    };
    Served {
        base,
        grpc: grpc_address,
        metrics: metrics_address,
        service: service.clone(),
        serving: tokio::spawn(skyfuse::api::serve(service, listeners, shutdown)),
    }
}

/// Serves `config` for the rest of the test; returns the facade's base URL.
async fn facade(config: &str) -> String {
    serve(config, std::future::pending()).await.base
}

fn two_deployments(primary: &str, secondary: &str) -> String {
    format!(
        r#"
        [routing]
        default_model = "llama"
        [[provider]]
        id = "primary"
        kind = "openai_compat"
        base_url = "{primary}"
        cloud = "azure"
        region = "westeurope"
        [[provider]]
        id = "secondary"
        kind = "openai_compat"
        base_url = "{secondary}"
        cloud = "aws"
        region = "eu-west-1"
        [[deployment]]
        provider = "primary"
        model = "llama"
        name = "llama-3.1-8b"
        dedicated = true
        input_per_1m_usd = 0.0
        output_per_1m_usd = 0.0
        [[deployment]]
        provider = "secondary"
        model = "llama"
        input_per_1m_usd = 1.0
        output_per_1m_usd = 2.0
        "#
    )
}

/// POSTs a chat completion to the facade at `base`.
async fn complete(http: &reqwest::Client, base: &str, body: &Value) -> reqwest::Response {
    http.post(format!("{base}/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap()
}

fn completion(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "stream": stream,
        "stream_options": {"include_usage": true},
        "max_tokens": 64,
    })
}

#[tokio::test]
async fn a_throttled_dedicated_deployment_bursts_to_on_demand_with_route_and_cost() {
    let (primary, primary_calls) = upstream(vec![Upstream::Throttle { retry_after: "30" }]).await;
    let (secondary, _) = upstream(vec![Upstream::Answer("Hello there.")]).await;
    let base = facade(&two_deployments(&primary, &secondary)).await;
    let http = reqwest::Client::new();

    let response = complete(&http, &base, &completion("llama", false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-skyfuse-provider"], "secondary");
    assert_eq!(response.headers()["x-skyfuse-failover-count"], "1");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello there.");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["total_tokens"], 1500);
    // 1000 input at $1/M + 500 output at $2/M.
    assert!((body["skyfuse"]["cost_usd"].as_f64().unwrap() - 0.002).abs() < 1e-12);
    assert_eq!(body["skyfuse"]["region"], "eu-west-1");
    // One spelling of error kinds everywhere: the proto's (`ErrorKind::as_str`).
    assert_eq!(
        body["skyfuse"]["attempts"][0]["outcome"],
        "error: THROTTLED"
    );
    assert_eq!(body["skyfuse"]["attempts"][0]["provider"], "primary");

    // The dedicated deployment asked for 30 s: the next request skips it.
    let asked = std::time::Instant::now();
    let response = complete(&http, &base, &completion("auto", true)).await;
    let waited_ms = asked.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(response.status(), 200);
    // A stream's headers leave with its first token, skyfuse's share of the wait in them.
    let overhead: f64 = response.headers()["x-skyfuse-overhead-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (0.0..=waited_ms).contains(&overhead),
        "{overhead} of {waited_ms} ms"
    );
    let text = response.text().await.unwrap();
    assert_eq!(
        primary_calls.load(Ordering::SeqCst),
        1,
        "left alone for its Retry-After"
    );
    let data: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "Hello there.");
    assert_eq!(chunks[1]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[2]["usage"]["completion_tokens"], 500);
}

#[tokio::test]
async fn a_stream_broken_after_its_first_token_ends_with_an_error_event_and_no_done() {
    let (primary, _) = upstream(vec![Upstream::BreakAfter("Half an")]).await;
    let (secondary, secondary_calls) = upstream(vec![Upstream::Answer("unused")]).await;
    let base = facade(&two_deployments(&primary, &secondary)).await;
    let text = complete(&reqwest::Client::new(), &base, &completion("llama", true))
        .await
        .text()
        .await
        .unwrap();
    let data: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect();
    assert!(!data.contains(&"[DONE]"), "{text}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("(request id: "),
        "{last}"
    );
    let first: Value = serde_json::from_str(data[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["content"], "Half an");
    assert_eq!(
        secondary_calls.load(Ordering::SeqCst),
        0,
        "no failover after a token went out"
    );
}

#[tokio::test]
async fn models_are_listed_and_bad_requests_get_openai_shaped_errors() {
    let (primary, _) = upstream(vec![Upstream::Answer("ok")]).await;
    let (secondary, _) = upstream(vec![Upstream::Answer("ok")]).await;
    let config = format!(
        "{}\n[[caller]]\nid = \"team-a\"\napi_key = \"env:NOT_SET_ANYWHERE\"\n",
        two_deployments(&primary, &secondary)
    );
    // A caller whose key cannot be resolved is a startup error naming it.
    let parsed: Config = toml::from_str(&config).unwrap();
    let Err(error) = Service::build(parsed, &HashMap::new()).await else {
        panic!("a caller without its key must not start");
    };
    assert!(
        error.message.contains("caller \"team-a\""),
        "{}",
        error.message
    );

    let base = facade(&two_deployments(&primary, &secondary)).await;
    let http = reqwest::Client::new();
    let models: Value = http
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "llama");

    let unknown = complete(&http, &base, &completion("gpt-9", false)).await;
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
    assert!(body["error"]["message"].as_str().unwrap().contains("llama"));

    let nowhere = http
        .post(format!("{base}/v1/chat/completions"))
        .header("x-skyfuse-allowed-regions", "us-*")
        .json(&completion("llama", false))
        .send()
        .await
        .unwrap();
    assert_eq!(nowhere.status(), 400, "both deployments are in Europe");
    let body: Value = nowhere.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("allows regions us-*"),
        "{body}"
    );

    let malformed = http
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);

    let tool_role = complete(
        &http,
        &base,
        &json!({"model": "llama", "messages": [{"role": "tool", "content": "x"}]}),
    )
    .await;
    assert_eq!(tool_role.status(), 400);

    let five_stops = complete(
        &http,
        &base,
        &json!({"model": "llama", "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}),
    )
    .await;
    assert_eq!(five_stops.status(), 400);
    let body: Value = five_stops.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 4"),
        "{body}"
    );

    let oversized = complete(
        &http,
        &base,
        &json!({"model": "llama", "messages": [{"role": "user", "content": "x".repeat(100_000)}]}),
    )
    .await;
    assert_eq!(oversized.status(), 413);
    // In OpenAI's error shape, so SDKs show why.
    let refusal: Value = oversized.json().await.unwrap();
    assert_eq!(refusal["error"]["type"], "invalid_request_error");
    let message = refusal["error"]["message"].as_str().unwrap();
    assert!(message.contains("request body is larger than"), "{message}");
}

#[tokio::test]
async fn callers_need_their_key_and_stay_within_their_models() {
    let (primary, _) = upstream(vec![Upstream::Answer("ok")]).await;
    let (secondary, _) = upstream(vec![Upstream::Answer("ok")]).await;
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), "sekret-key\n").unwrap();
    let config = format!(
        "{}\n[[caller]]\nid = \"team-a\"\napi_key = \"file:{}\"\nmodels = [\"gpt-*\"]\n",
        two_deployments(&primary, &secondary),
        key_file.path().display()
    );
    let base = facade(&config).await;
    let http = reqwest::Client::new();
    let anonymous = complete(&http, &base, &completion("llama", false)).await;
    assert_eq!(anonymous.status(), 401);
    let forbidden = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth("sekret-key")
        .json(&completion("llama", false))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);
}

/// A real LLM (llama.cpp's server with Gemma 3 270M, see tests/common/llama.rs)
/// answers a question through the facade.
#[tokio::test]
async fn a_real_local_llm_answers_through_the_facade() {
    let Some(llama) = llama::start().await else {
        return;
    };
    let http = reqwest::Client::new();
    let base = facade(&format!(
        "[routing]\ndefault_model = \"local\"\n[[provider]]\nid = \"llama\"\nkind = \"openai_compat\"\nbase_url = \"{}\"\n[[deployment]]\nprovider = \"llama\"\nmodel = \"local\"\n",
        llama.url
    ))
    .await;
    let question = json!({
        "model": "local",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16,
        "temperature": 0,
        "stop": "\n"
    });
    let body: Value = complete(&http, &base, &question)
        .await
        .json()
        .await
        .unwrap();
    let text = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("Paris"), "{body}");
    // The caller's stop reached the model: it ended the line instead of going on
    // with the next question until max_tokens.
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
    assert!(!text.contains('\n'), "{body}");
    assert!(
        body["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0,
        "{body}"
    );
}

/// An upstream that sends its first token, then holds the stream open until the
/// returned sender fires (or is dropped), then finishes it.
async fn held_upstream() -> (String, tokio::sync::oneshot::Sender<()>) {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let released = Arc::new(std::sync::Mutex::new(Some(released)));
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let released = released.lock().unwrap().take();
            async move {
                let event = |value: Value| format!("data: {value}\n\n");
                let first = futures::stream::once(async move {
                    Ok::<_, std::convert::Infallible>(event(chunk("Hello")))
                });
                let rest = futures::stream::once(async move {
                    if let Some(released) = released {
                        let _ = released.await;
                    }
                    Ok(format!(
                        "{}{}{}data: [DONE]\n\n",
                        event(chunk(" world.")),
                        event(finish()),
                        event(usage())
                    ))
                });
                (
                    [("content-type", "text/event-stream")],
                    axum::body::Body::from_stream(futures::StreamExt::chain(first, rest)),
                )
                    .into_response()
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, release)
}

/// The `data:` payloads of the server-sent events in `text`.
fn sse_data(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect()
}

#[tokio::test]
async fn a_facade_stream_in_flight_when_shutdown_starts_finishes_before_serve_returns() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let (held, release) = held_upstream().await;
    let (unused, _) = upstream(vec![Upstream::Answer("unused")]).await;
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = serve(&two_deployments(&held, &unused), async {
        let _ = stopped.await;
    })
    .await;
    let mut health = HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", served.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let mut statuses = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let status = |message: Option<tonic_health::pb::HealthCheckResponse>| message.unwrap().status;
    assert_eq!(
        status(statuses.message().await.unwrap()),
        ServingStatus::Serving as i32
    );

    // A streamed completion whose first token arrived; the rest is held upstream.
    let mut response = complete(
        &reqwest::Client::new(),
        &served.base,
        &completion("llama", true),
    )
    .await;
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    while !text.contains("Hello") {
        let bytes = response.chunk().await.unwrap().expect("the first token");
        text.push_str(std::str::from_utf8(&bytes).unwrap());
    }

    // Shutdown starts: health says so, and `serve` waits for the stream in flight.
    shutdown.send(()).unwrap();
    assert_eq!(
        status(statuses.message().await.unwrap()),
        ServingStatus::NotServing as i32
    );
    drop(statuses);
    drop(health);
    assert!(
        !served.serving.is_finished(),
        "serve returned while a facade stream was in flight"
    );

    release.send(()).unwrap();
    while let Some(bytes) = response.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&bytes).unwrap());
    }
    let data = sse_data(&text);
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    let content: String = data[..data.len() - 1]
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(content, "Hello world.");
    served.serving.await.unwrap().unwrap();
}

/// The lines of a scrape that start with `name{` and hold every `label="value"` given.
fn samples<'a>(scrape: &'a str, name: &str, labels: &[(&str, &str)]) -> Vec<&'a str> {
    scrape
        .lines()
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .filter(|line| {
            labels
                .iter()
                .all(|(label, value)| line.contains(&format!("{label}=\"{value}\"")))
        })
        .collect()
}

/// The value of the one sample of `name` with `labels`.
fn value(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = samples(scrape, name, labels);
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}\n{scrape}");
    found[0].rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn metrics_show_the_failover_its_attempts_cost_and_availability() {
    let (primary, _) = upstream(vec![Upstream::Throttle { retry_after: "30" }]).await;
    let (secondary, _) = upstream(vec![Upstream::Answer("Hello there.")]).await;
    let served = serve(
        &two_deployments(&primary, &secondary),
        std::future::pending(),
    )
    .await;
    let http = reqwest::Client::new();
    let response = complete(&http, &served.base, &completion("llama", false)).await;
    assert_eq!(response.status(), 200);
    // skyfuse's own share of the call, in milliseconds.
    let overhead: f64 = response.headers()["x-skyfuse-overhead-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(overhead >= 0.0, "{overhead}");
    let completion_id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The caller rates the completion by its id.
    let rated = http
        .post(format!("{}/v1/feedback", served.base))
        .json(&json!({"id": completion_id, "score": 0.75}))
        .send()
        .await
        .unwrap();
    assert_eq!(rated.status(), 204, "{}", rated.text().await.unwrap());
    let unknown = http
        .post(format!("{}/v1/feedback", served.base))
        .json(&json!({"id": "chatcmpl-unknown", "score": 0.75}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    let metrics = format!("http://{}", served.metrics);
    // Prometheus asks for OpenMetrics; curl and promtool get the classic text.
    let openmetrics = http
        .get(format!("{metrics}/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .await
        .unwrap();
    let content_type = openmetrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(openmetrics.text().await.unwrap().ends_with("# EOF\n"));
    let scrape = http.get(format!("{metrics}/metrics")).send().await.unwrap();
    let content_type = scrape.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let scrape = scrape.text().await.unwrap();
    assert_eq!(value(&scrape, "skyfuse_failover_count_total", &[]), 1.0);
    let primary_attempt = [("provider", "primary"), ("outcome", "THROTTLED")];
    assert_eq!(
        value(&scrape, "skyfuse_chat_attempts_total", &primary_attempt),
        1.0
    );
    let secondary_ok = [
        ("provider", "secondary"),
        ("outcome", "ok"),
        ("region", "eu-west-1"),
    ];
    assert_eq!(
        value(&scrape, "skyfuse_chat_attempts_total", &secondary_ok),
        1.0
    );
    // 1000 input at $1/M + 500 output at $2/M, under the deployment that answered.
    let cost = value(
        &scrape,
        "skyfuse_cost_usd_total",
        &[("provider", "secondary")],
    );
    assert!((cost - 0.002).abs() < 1e-12, "{cost}");
    let first_token = [("provider", "secondary"), ("phase", "first_token")];
    assert_eq!(
        value(
            &scrape,
            "skyfuse_model_response_time_by_provider_seconds_count",
            &first_token
        ),
        1.0
    );
    let output = [("provider", "secondary"), ("direction", "output")];
    assert_eq!(value(&scrape, "skyfuse_chat_tokens_total", &output), 500.0);
    // The throttled deployment asked for 30 s: it is held off (unavailable) meanwhile.
    for (provider, available) in [("primary", 0.0), ("secondary", 1.0)] {
        let availability = value(
            &scrape,
            "skyfuse_provider_availability",
            &[("provider", provider)],
        );
        assert_eq!(availability, available, "{provider}");
    }
    assert_eq!(value(&scrape, "skyfuse_calls_in_flight", &[]), 0.0);
    let rated_by = [("provider", "secondary")];
    assert_eq!(
        value(
            &scrape,
            "skyfuse_model_quality_score_by_provider_sum",
            &rated_by
        ),
        0.75
    );
    assert_eq!(
        value(
            &scrape,
            "skyfuse_requests_total",
            &[("entrance", "chat"), ("outcome", "ok")]
        ),
        1.0
    );
    // Nothing a caller sent becomes a label.
    assert!(
        !scrape.contains("be brief") && !scrape.contains("hi\""),
        "{scrape}"
    );

    let health = http.get(format!("{metrics}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = http.get(format!("{metrics}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());

    prometheus_scrapes(&scrape, served.metrics).await;
}

/// A real Prometheus (Debian's `prometheus`, installed by scripts/test.sh) scrapes the
/// metrics port and answers a query over its HTTP API; `promtool` accepts the scrape.
async fn prometheus_scrapes(scrape: &str, target: std::net::SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let scraped = dir.path().join("scrape.txt");
    std::fs::write(&scraped, scrape).unwrap();
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&scraped).unwrap())
        .output();
    let checked = promtool.expect("promtool is installed (scripts/test.sh installs prometheus)");
    assert!(
        checked.status.success(),
        "promtool: {}{}\n{scrape}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: skyfuse\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let web_address = web.local_addr().unwrap();
    drop(web);
    let _prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web_address}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus is installed (scripts/test.sh installs it)");
    let query = format!("http://{web_address}/api/v1/query?query=skyfuse_failover_count_total");
    let http = reqwest::Client::new();
    // Prometheus starts, scrapes every second, then answers; a minute covers a busy CI.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let answer = loop {
        if let Ok(response) = http.get(&query).send().await
            && let Ok(body) = response.json::<Value>().await
            && body["data"]["result"]
                .as_array()
                .is_some_and(|result| !result.is_empty())
        {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "prometheus never had the metric"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let sample = &answer["data"]["result"][0];
    assert_eq!(sample["metric"]["job"], "skyfuse");
    assert_eq!(sample["value"][1], "1");
}

#[tokio::test]
async fn health_and_readiness_follow_a_model_whose_only_deployment_is_held_off() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let (only, _) = upstream(vec![Upstream::Throttle { retry_after: "30" }]).await;
    let config = format!(
        r#"
        [routing]
        default_model = "llama"
        [[provider]]
        id = "only"
        kind = "openai_compat"
        base_url = "{only}"
        [[deployment]]
        provider = "only"
        model = "llama"
        "#
    );
    let served = serve(&config, std::future::pending()).await;
    let http = reqwest::Client::new();
    let metrics = format!("http://{}", served.metrics);
    let ready = http.get(format!("{metrics}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    // Its one deployment answers 429 with retry-after 30: it is held off for 30 s.
    let response = complete(&http, &served.base, &completion("llama", false)).await;
    assert_eq!(response.status(), 429);
    let ready = http.get(format!("{metrics}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.text().await.unwrap(),
        "not ready:\nmodel \"llama\": every deployment's circuit is open\n"
    );
    assert_eq!(
        http.get(format!("{metrics}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "alive all the same"
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", served.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let generation = "skyfuse.v1.GenerationService";
    let mut statuses = health.watch(check(generation)).await.unwrap().into_inner();
    // The watch follows the breakers (checked every second): it reaches NOT_SERVING.
    let not_serving = async {
        loop {
            let status = statuses.message().await.unwrap().unwrap().status;
            if status == ServingStatus::NotServing as i32 {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), not_serving)
        .await
        .expect("health never said NOT_SERVING");
    let retrieval = health
        .check(check("skyfuse.v1.RetrievalService"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        retrieval.status,
        ServingStatus::Serving as i32,
        "no source is down"
    );
}

/// An upstream that answers every call and records the `authorization` it was sent.
async fn recording_upstream() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorder = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let authorization = headers
                .get("authorization")
                .map(|value| value.to_str().unwrap().to_owned())
                .unwrap_or_default();
            recorder.lock().unwrap().push(authorization);
            async { sse(&[chunk("Hi."), finish(), usage()]) }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (upstream, seen)
}

/// One model, `llama`, served by one OpenAI-compatible upstream whose key is read
/// from the secret location `api_key`: the config of the key-rotation tests.
fn one_keyed_upstream(upstream: &str, api_key: &str) -> String {
    format!(
        r#"
        [routing]
        default_model = "llama"
        [[provider]]
        id = "only"
        kind = "openai_compat"
        base_url = "{upstream}"
        api_key = "{api_key}"
        [[deployment]]
        provider = "only"
        model = "llama"
        "#
    )
}

#[tokio::test]
async fn a_provider_key_rewritten_in_its_file_is_sent_on_the_next_call_without_a_restart() {
    let (upstream, seen) = recording_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("upstream.key");
    std::fs::write(&key_file, "sk-before-rotation\n").unwrap();
    let base = facade(&one_keyed_upstream(
        &upstream,
        &format!("file:{}", key_file.display()),
    ))
    .await;
    let http = reqwest::Client::new();
    let first = complete(&http, &base, &completion("llama", false)).await;
    assert_eq!(first.status(), 200);
    // The secret manager (or the operator) rewrites the file atomically.
    let staged = dir.path().join("upstream.key.new");
    std::fs::write(&staged, "sk-after-rotation-2\n").unwrap();
    std::fs::rename(&staged, &key_file).unwrap();
    let second = complete(&http, &base, &completion("llama", false)).await;
    assert_eq!(second.status(), 200);
    assert_eq!(
        *seen.lock().unwrap(),
        ["Bearer sk-before-rotation", "Bearer sk-after-rotation-2"]
    );
}

/// Calls moto's Secrets Manager (`target`: `CreateSecret`, `PutSecretValue`), signed as
/// the SDKs sign it.
async fn secrets_manager(endpoint: &str, target: &str, body: Value) {
    use skyfuse::cloud::sigv4::{AwsCredentials, SigV4Signer};
    use skyfuse::config::Secret;
    let signer = SigV4Signer {
        credentials: AwsCredentials {
            access_key_id: Secret::new("testing"),
            secret_access_key: Secret::new("testing"),
            session_token: None,
        }
        .into(),
        region: "us-east-1".into(),
        service: "secretsmanager".into(),
    };
    let url = url::Url::parse(endpoint).unwrap();
    let body = serde_json::to_vec(&body).unwrap();
    let target = format!("secretsmanager.{target}");
    let headers = [
        (
            "content-type".to_owned(),
            "application/x-amz-json-1.1".to_owned(),
        ),
        ("x-amz-target".to_owned(), target.clone()),
    ];
    let mut request = reqwest::Client::new()
        .post(url.clone())
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", target);
    let signed = signer
        .sign("POST", &url, &headers, &body, std::time::SystemTime::now())
        .await
        .unwrap();
    for (name, value) in signed {
        request = request.header(name, value);
    }
    let response = request.body(body).send().await.unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
}

#[tokio::test]
async fn a_provider_key_rotated_in_aws_secrets_manager_is_sent_on_the_next_call() {
    let Ok(moto) = std::env::var("SKYFUSE_TEST_S3_ENDPOINT") else {
        assert!(
            std::env::var_os("SKYFUSE_REQUIRE_EMULATORS").is_none(),
            "the emulators were required"
        );
        eprintln!(
            "SKIPPED: SKYFUSE_TEST_S3_ENDPOINT is not set; ./scripts/test.sh starts moto and runs this test"
        );
        return;
    };
    let name = format!("skyfuse/upstream-key-{}", std::process::id());
    secrets_manager(
        &moto,
        "CreateSecret",
        json!({"Name": name, "SecretString": "sk-from-the-manager-v1"}),
    )
    .await;

    let (upstream, seen) = recording_upstream().await;

    let config: Config = toml::from_str(&format!(
        "{FACADE_SERVER}\n{}",
        one_keyed_upstream(&upstream, &format!("aws-sm:{name}"))
    ))
    .unwrap();
    // Explicit loopback endpoint and keys: nothing falls back to a cloud address.
    let env = HashMap::from(
        [
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto.as_str()),
            ("SKYFUSE_SECRETS_CACHE_SECONDS", "0"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned())),
    );
    let service = Arc::new(Service::build(config, &env).await.unwrap());
    let openai = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", openai.local_addr().unwrap());
    let listeners = Listeners {
        grpc: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        openai: Some(openai),
        metrics: None,
    };
    tokio::spawn(skyfuse::api::serve(
        service,
        listeners,
        std::future::pending(),
    ));

    let http = reqwest::Client::new();
    let first = complete(&http, &base, &completion("llama", false)).await;
    assert_eq!(first.status(), 200);
    secrets_manager(
        &moto,
        "PutSecretValue",
        json!({"SecretId": name, "SecretString": "sk-from-the-manager-v2"}),
    )
    .await;
    let second = complete(&http, &base, &completion("llama", false)).await;
    assert_eq!(second.status(), 200);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "Bearer sk-from-the-manager-v1",
            "Bearer sk-from-the-manager-v2"
        ]
    );
}

/// A loopback cloud for the chain test: Key Vault answers 404 for every secret, the
/// GCE metadata server hands out a token, and Secret Manager serves `value` (base64)
/// to that token only.
async fn secret_clouds(value: Arc<std::sync::Mutex<String>>) -> String {
    use base64::Engine;
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap| {
            let value = value.lock().unwrap().clone();
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                match uri.path() {
                    "/vault/secrets/upstream-key" => (
                        StatusCode::NOT_FOUND,
                        axum::Json(json!({"error": {"code": "SecretNotFound", "message": "A secret with (name/id) upstream-key was not found in this key vault."}})),
                    ),
                    "/computeMetadata/v1/instance/service-accounts/default/token"
                        if header("metadata-flavor") == "Google" =>
                    {
                        (
                            StatusCode::OK,
                            axum::Json(json!({"access_token": "gcp-token", "expires_in": 3600})),
                        )
                    }
                    "/v1/projects/my-project/secrets/upstream-key/versions/latest:access"
                        if header("authorization") == "Bearer gcp-token" =>
                    {
                        let data = base64::engine::general_purpose::STANDARD.encode(value);
                        (StatusCode::OK, axum::Json(json!({"payload": {"data": data}})))
                    }
                    _ => (StatusCode::FORBIDDEN, axum::Json(json!({}))),
                }
            }
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

#[tokio::test]
async fn a_provider_key_from_a_chain_falls_back_to_gcp_secret_manager_and_follows_its_rotation() {
    let value = Arc::new(std::sync::Mutex::new("sk-from-gcp-v1".to_owned()));
    let clouds = secret_clouds(value.clone()).await;
    let (upstream, seen) = recording_upstream().await;
    let config: Config = toml::from_str(&format!(
        "{FACADE_SERVER}\n{}",
        one_keyed_upstream(
            &upstream,
            "chain:azure-kv:prod/upstream-key|gcp-sm:my-project/upstream-key"
        )
    ))
    .unwrap();
    // Every endpoint explicit and on loopback: nothing reaches a cloud or metadata address.
    let env = HashMap::from(
        [
            ("SKYFUSE_AZURE_KEYVAULT_TOKEN", "env:KV_TOKEN"),
            ("KV_TOKEN", "kv-token"),
            (
                "SKYFUSE_AZURE_KEYVAULT_ENDPOINT",
                &format!("{clouds}/vault"),
            ),
            ("SKYFUSE_GCP_METADATA_URL", &clouds),
            ("SKYFUSE_GCP_SECRET_MANAGER_ENDPOINT", &clouds),
            ("SKYFUSE_SECRETS_CACHE_SECONDS", "0"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned())),
    );
    let service = Arc::new(Service::build(config, &env).await.unwrap());
    let openai = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", openai.local_addr().unwrap());
    let listeners = Listeners {
        grpc: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        openai: Some(openai),
        metrics: None,
    };
    tokio::spawn(skyfuse::api::serve(
        service,
        listeners,
        std::future::pending(),
    ));

    let http = reqwest::Client::new();
    let first = complete(&http, &base, &completion("llama", false)).await;
    assert_eq!(first.status(), 200);
    *value.lock().unwrap() = "sk-from-gcp-v2".to_owned();
    let second = complete(&http, &base, &completion("llama", false)).await;
    assert_eq!(second.status(), 200);
    assert_eq!(
        *seen.lock().unwrap(),
        ["Bearer sk-from-gcp-v1", "Bearer sk-from-gcp-v2"]
    );
}

#[tokio::test]
async fn a_callers_budget_spend_is_a_metric() {
    let (primary, _) = upstream(vec![Upstream::Throttle { retry_after: "30" }]).await;
    let (secondary, _) = upstream(vec![Upstream::Answer("Hello there.")]).await;
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), "team-a-key\n").unwrap();
    let config = format!(
        "{}\n[[caller]]\nid = \"team-a\"\napi_key = \"file:{}\"\nbudget_usd_per_day = 1.0\n",
        two_deployments(&primary, &secondary),
        key_file.path().display()
    );
    let served = serve(&config, std::future::pending()).await;
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", served.base))
        .bearer_auth("team-a-key")
        .json(&completion("llama", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap();
    let scrape = reqwest::get(format!("http://{}/metrics", served.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // 1000 input at $1/M + 500 output at $2/M, settled; nothing held any more.
    let spent = value(&scrape, "skyfuse_budget_spent_usd", &[("caller", "team-a")]);
    assert!((spent - 0.002).abs() < 1e-12, "{spent}");
    assert_eq!(
        value(
            &scrape,
            "skyfuse_budget_reserved_usd",
            &[("caller", "team-a")]
        ),
        0.0
    );
}

#[tokio::test]
async fn a_streamed_completion_is_one_trace_exported_over_otlp_http() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    // An OTLP/HTTP collector: protobuf bodies on /v1/traces.
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = received.clone();
    let collector = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let request = ExportTraceServiceRequest::decode(body).unwrap();
            kept.lock().unwrap().extend(
                request
                    .resource_spans
                    .into_iter()
                    .flat_map(|resource| resource.scope_spans)
                    .flat_map(|scope| scope.spans),
            );
            async { StatusCode::OK }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await.unwrap() });
    let (primary, _) = upstream(vec![Upstream::Answer("Hello there.")]).await;
    let (secondary, _) = upstream(vec![Upstream::Answer("unused")]).await;
    let config = format!(
        "{}\n[telemetry.traces]\nendpoint = \"{endpoint}\"\nprotocol = \"http/protobuf\"\n",
        two_deployments(&primary, &secondary)
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = serve(&config, async {
        let _ = stopped.await;
    })
    .await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", served.base))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .json(&completion("llama", true))
        .send()
        .await
        .unwrap();
    assert!(response.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    // Every span has ended once the server has drained; then export them.
    stop.send(()).unwrap();
    served.serving.await.unwrap().unwrap();
    let service = served.service.clone();
    tokio::task::spawn_blocking(move || service.traces().flush())
        .await
        .unwrap()
        .unwrap();
    let spans = received.lock().unwrap().clone();
    let names: Vec<&str> = spans
        .iter()
        .filter(|span| hex::encode(&span.trace_id) == trace_id)
        .map(|span| span.name.as_str())
        .collect();
    assert!(names.contains(&"POST /v1/chat/completions"), "{names:?}");
    assert!(names.contains(&"chat llama"), "{names:?}");
}
