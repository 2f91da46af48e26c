//! Load generator for the OpenAI-compatible facade (and any other gateway).
//!
//! `upstream --port P` serves an instant OpenAI-compatible upstream (a fixed
//! answer, whole or streamed). `load --target URL --model M --qps N --seconds S`
//! sends chat completions at a fixed rate (open loop: a slow gateway does not slow
//! the schedule) and prints latency percentiles. Run it against the upstream
//! directly, then through skyfuse's facade and through another gateway pointed at
//! the same upstream: the differences are the gateways' overheads.
//! `scripts/measure-facade.sh` runs the whole comparison. `--target` may list several
//! URLs (comma-separated): requests go to each in turn, as a round-robin load
//! balancer would send them (`scripts/measure-replicas.sh`). `--key K` sends
//! `authorization: Bearer K`.

use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use serde_json::{Value, json};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|arg| arg == name)
            .and_then(|at| args.get(at + 1))
            .cloned()
    };
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    match args.first().map(String::as_str) {
        Some("upstream") => {
            let port: u16 = arg("--port")
                .and_then(|port| port.parse().ok())
                .unwrap_or(18080);
            runtime.block_on(upstream(port));
        }
        Some("load") => {
            let target = arg("--target").expect("--target URL");
            let model = arg("--model").unwrap_or_else(|| "bench-model".into());
            let qps: f64 = arg("--qps")
                .and_then(|qps| qps.parse().ok())
                .unwrap_or(200.0);
            let seconds: f64 = arg("--seconds")
                .and_then(|seconds| seconds.parse().ok())
                .unwrap_or(10.0);
            let label = arg("--label").unwrap_or_else(|| target.clone());
            let key = arg("--key");
            runtime.block_on(load(&label, &target, key.as_deref(), &model, qps, seconds));
        }
        // `cargo bench` runs every bench with `--bench`: nothing to do unasked.
        _ => eprintln!(
            "usage: facade_load upstream --port P | load --target URL --model M --qps N --seconds S"
        ),
    }
}

async fn upstream(port: u16) {
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(answer))
        .route("/chat/completions", axum::routing::post(answer));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the upstream port");
    eprintln!("instant upstream on 127.0.0.1:{port}");
    axum::serve(listener, app).await.expect("upstream");
}

async fn answer(body: axum::Json<Value>) -> axum::response::Response {
    let model = body["model"].as_str().unwrap_or("bench-model").to_string();
    if body["stream"] == true {
        let chunks = [
            json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model,
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Paris is the capital of France."}, "finish_reason": null}]}),
            json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model,
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [],
                   "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28}}),
        ];
        let mut body: String = chunks
            .iter()
            .map(|chunk| format!("data: {chunk}\n\n"))
            .collect();
        body.push_str("data: [DONE]\n\n");
        return ([("content-type", "text/event-stream")], body).into_response();
    }
    axum::Json(json!({
        "id": "c", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris is the capital of France."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28},
    }))
    .into_response()
}

async fn load(label: &str, target: &str, key: Option<&str>, model: &str, qps: f64, seconds: f64) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()
        .expect("a client");
    let urls: Vec<String> = target
        .split(',')
        .map(|target| {
            format!(
                "{}/v1/chat/completions",
                target.trim().trim_end_matches('/')
            )
        })
        .collect();
    let authorization = key.map(|key| format!("Bearer {key}"));
    let post = move |http: &reqwest::Client, url: &str, body: &Value| {
        let request = http.post(url).json(body);
        match &authorization {
            Some(value) => request.header("authorization", value),
            None => request,
        }
    };
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16,
    });
    // Warm the connection pool and both ends.
    for index in 0..50 {
        let _ = post(&http, &urls[index % urls.len()], &body)
            .send()
            .await
            .and_then(|r| r.error_for_status());
    }
    let total = (qps * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / qps);
    let began = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for index in 0..total {
        tokio::time::sleep_until((began + interval * index as u32).into()).await;
        let request = post(&http, &urls[index % urls.len()], &body);
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let response = request.send().await;
            let ok = match response {
                Ok(response) if response.status().is_success() => response.bytes().await.is_ok(),
                _ => false,
            };
            (sent.elapsed(), ok)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut failures = 0;
    for task in tasks {
        let (latency, ok) = task.await.expect("a request task");
        if ok {
            latencies.push(latency);
        } else {
            failures += 1;
        }
    }
    let elapsed = began.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(f64::NAN, |latency| latency.as_secs_f64() * 1e3)
    };
    let mean = latencies.iter().map(Duration::as_secs_f64).sum::<f64>()
        / latencies.len().max(1) as f64
        * 1e3;
    println!(
        "{label}: {} ok, {failures} failed, {:.0} req/s achieved; latency ms: mean {mean:.3} p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        at(0.50),
        at(0.90),
        at(0.99),
        at(1.0),
    );
}
