//! Load generator for the OpenAI-compatible facade (and any other gateway).
//!
//! `upstream --port P` serves an instant OpenAI-compatible upstream (a fixed
//! answer, whole or streamed). `--chunks N` streams N small content deltas, like
//! tokens, instead of one sentence; `--gap-ms G` waits G ms before each after the
//! first, so every chunk crosses the gateway on its own as a model's would.
//! `load --target URL --model M --qps N --seconds S` sends chat completions at a
//! fixed rate (open loop: a slow gateway does not slow the schedule) and prints
//! latency percentiles. `--stream` asks for streamed answers, reads each body as it
//! arrives and adds the time to the first content chunk (TTFT); `--chunks N` there
//! counts an answer without exactly N content chunks and a `[DONE]` as failed.
//! `--server-pid P` adds that process's CPU time per request over the timed run.
//! Run it against the upstream directly, then through skyfuse's facade and through
//! another gateway pointed at the same upstream: the differences are the gateways'
//! overheads.
//! `scripts/measure-facade.sh` runs the whole comparison. `--target` may list several
//! URLs (comma-separated): requests go to each in turn, as a round-robin load
//! balancer would send them (`scripts/measure-replicas.sh`). `--key K` sends
//! `authorization: Bearer K`.

#[path = "flags/mod.rs"]
mod flags;

use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use serde_json::{Value, json};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| flags::value(&args, name);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    match args.first().map(String::as_str) {
        Some("upstream") => {
            let port: u16 = arg("--port")
                .and_then(|port| port.parse().ok())
                .unwrap_or(18080);
            let shape = Shape {
                chunks: arg("--chunks").and_then(|chunks| chunks.parse().ok()),
                gap: Duration::from_millis(
                    arg("--gap-ms")
                        .and_then(|gap| gap.parse().ok())
                        .unwrap_or(0),
                ),
            };
            runtime.block_on(upstream(port, shape));
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
            let options = Load {
                key: arg("--key"),
                stream: args.iter().any(|arg| arg == "--stream"),
                chunks: arg("--chunks").and_then(|chunks| chunks.parse().ok()),
                server_pid: arg("--server-pid").and_then(|pid| pid.parse().ok()),
            };
            runtime.block_on(load(&label, &target, &model, qps, seconds, &options));
        }
        // `cargo bench` runs every bench with `--bench`: nothing to do unasked.
        _ => eprintln!(
            "usage: facade_load upstream --port P [--chunks N] [--gap-ms G] | load --target URL --model M --qps N --seconds S [--stream] [--chunks N] [--server-pid P]"
        ),
    }
}

/// How the upstream streams: `chunks` content deltas (None: one sentence), `gap`
/// before each after the first.
#[derive(Clone, Copy)]
struct Shape {
    chunks: Option<usize>,
    gap: Duration,
}

async fn upstream(port: u16, shape: Shape) {
    let answer = move |body: axum::Json<Value>| answer(body, shape);
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(answer))
        .route("/chat/completions", axum::routing::post(answer));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the upstream port");
    eprintln!("instant upstream on 127.0.0.1:{port}");
    // Without it a chunk written on its own waits for the ACK of the one before
    // (Nagle), which the client delays by up to 40 ms.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await.expect("upstream");
}

async fn answer(body: axum::Json<Value>, shape: Shape) -> axum::response::Response {
    let model = body["model"].as_str().unwrap_or("bench-model").to_string();
    if body["stream"] == true {
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut chunks = match shape.chunks {
            None => vec![chunk(
                json!({"role": "assistant", "content": "Paris is the capital of France."}),
                Value::Null,
            )],
            Some(count) => (0..count)
                .map(|index| match index {
                    0 => chunk(
                        json!({"role": "assistant", "content": "Paris"}),
                        Value::Null,
                    ),
                    _ => chunk(json!({"content": " word"}), Value::Null),
                })
                .collect(),
        };
        let tokens = shape.chunks.unwrap_or(8);
        chunks.push(chunk(json!({}), json!("stop")));
        chunks.push(json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [],
                   "usage": {"prompt_tokens": 20, "completion_tokens": tokens, "total_tokens": 20 + tokens}}));
        let mut events: Vec<String> = chunks
            .iter()
            .map(|chunk| format!("data: {chunk}\n\n"))
            .collect();
        events.push("data: [DONE]\n\n".into());
        let headers = [("content-type", "text/event-stream")];
        if shape.gap.is_zero() {
            return (headers, events.concat()).into_response();
        }
        // One write per chunk, `gap` apart; the finish, usage and [DONE] follow the
        // last token at once, as a model's do.
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
        tokio::spawn(async move {
            let tokens = events.len() - 3;
            for (index, event) in events.into_iter().enumerate() {
                if index > 0 && index < tokens {
                    tokio::time::sleep(shape.gap).await;
                }
                if sender.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        let body =
            axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
        return (headers, body).into_response();
    }
    axum::Json(json!({
        "id": "c", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris is the capital of France."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28},
    }))
    .into_response()
}

/// The `load` subcommand's options beside target, model and rate.
struct Load {
    key: Option<String>,
    /// Ask for streamed answers and time their first content chunk.
    stream: bool,
    /// The content chunks every streamed answer must have.
    chunks: Option<usize>,
    /// The server whose CPU time over the timed run is reported.
    server_pid: Option<u32>,
}

/// What one request came to.
struct Outcome {
    latency: Duration,
    /// Until the first content chunk (streamed answers only).
    first_chunk: Option<Duration>,
    chunks: usize,
    /// A success status and, streamed, a whole stream: `[DONE]` and the chunks asked for.
    ok: bool,
}

async fn load(label: &str, target: &str, model: &str, qps: f64, seconds: f64, options: &Load) {
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
    let authorization = options.key.as_ref().map(|key| format!("Bearer {key}"));
    let post = move |http: &reqwest::Client, url: &str, body: &Value| {
        let request = http.post(url).json(body);
        match &authorization {
            Some(value) => request.header("authorization", value),
            None => request,
        }
    };
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16,
    });
    if options.stream {
        body["stream"] = json!(true);
    }
    let (stream, expected) = (options.stream, options.chunks);
    // Warm the connection pool and both ends; streamed answers may take a while
    // each (a paced upstream), so those warm up all at once.
    if stream {
        let warming = (0..50).map(|index| {
            receive(
                post(&http, &urls[index % urls.len()], &body),
                stream,
                expected,
            )
        });
        futures::future::join_all(warming).await;
    } else {
        for index in 0..50 {
            let _ = receive(
                post(&http, &urls[index % urls.len()], &body),
                stream,
                expected,
            )
            .await;
        }
    }
    let total = (qps * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / qps);
    let cpu_before = options.server_pid.and_then(cpu_time);
    let began = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for index in 0..total {
        tokio::time::sleep_until((began + interval * index as u32).into()).await;
        let request = post(&http, &urls[index % urls.len()], &body);
        tasks.push(tokio::spawn(receive(request, stream, expected)));
    }
    let mut outcomes = Vec::with_capacity(total);
    for task in tasks {
        outcomes.push(task.await.expect("a request task"));
    }
    let elapsed = began.elapsed().as_secs_f64();
    let cpu_after = options.server_pid.and_then(cpu_time);
    let failures = outcomes.iter().filter(|outcome| !outcome.ok).count();
    let ok: Vec<&Outcome> = outcomes.iter().filter(|outcome| outcome.ok).collect();
    let latencies = percentiles(ok.iter().map(|outcome| outcome.latency).collect());
    println!(
        "{label}: {} ok, {failures} failed, {:.0} req/s achieved; latency ms: {latencies}",
        ok.len(),
        ok.len() as f64 / elapsed,
    );
    if stream {
        let first = percentiles(
            ok.iter()
                .filter_map(|outcome| outcome.first_chunk)
                .collect(),
        );
        let chunks: usize = outcomes.iter().map(|outcome| outcome.chunks).sum();
        let fewest = outcomes
            .iter()
            .map(|outcome| outcome.chunks)
            .min()
            .unwrap_or(0);
        let most = outcomes
            .iter()
            .map(|outcome| outcome.chunks)
            .max()
            .unwrap_or(0);
        let asked = expected.map_or(String::new(), |expected| {
            let short = outcomes
                .iter()
                .filter(|outcome| outcome.chunks != expected)
                .count();
            format!(" ({short} answers without exactly {expected})")
        });
        println!(
            "{label}: TTFT ms: {first}; content chunks {chunks}, {fewest}..{most} an answer{asked}"
        );
    }
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        let cpu = after.saturating_sub(before);
        println!(
            "{label}: server CPU {:.0} ms, {:.1} us a request",
            cpu.as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e6 / outcomes.len().max(1) as f64,
        );
    }
}

/// Sends one request and reads its answer, a streamed one event by event.
async fn receive(
    request: reqwest::RequestBuilder,
    stream: bool,
    expected: Option<usize>,
) -> Outcome {
    let sent = Instant::now();
    let mut outcome = Outcome {
        latency: Duration::ZERO,
        first_chunk: None,
        chunks: 0,
        ok: false,
    };
    let mut response = match request.send().await {
        Ok(response) if response.status().is_success() => response,
        _ => return outcome,
    };
    if !stream {
        outcome.ok = response.bytes().await.is_ok();
        outcome.latency = sent.elapsed();
        return outcome;
    }
    let mut pending: Vec<u8> = Vec::new();
    let mut done = false;
    loop {
        let bytes = match response.chunk().await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => break,
            Err(_) => return outcome,
        };
        pending.extend_from_slice(&bytes);
        // Whole events only; a partial one waits for the rest of its bytes.
        while let Some(end) = pending.windows(2).position(|pair| pair == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            for line in event.split(|byte| *byte == b'\n') {
                let Some(data) = line.strip_prefix(b"data:") else {
                    continue;
                };
                let data = data.trim_ascii();
                if data == b"[DONE]" {
                    done = true;
                } else if has_content(data) {
                    outcome.chunks += 1;
                    outcome.first_chunk.get_or_insert_with(|| sent.elapsed());
                }
            }
        }
    }
    outcome.latency = sent.elapsed();
    outcome.ok = done && expected.is_none_or(|expected| outcome.chunks == expected);
    outcome
}

/// Whether a chunk's JSON carries a non-empty content delta.
fn has_content(data: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Chunk<'a> {
        #[serde(default, borrow)]
        choices: Vec<Choice<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Choice<'a> {
        #[serde(borrow)]
        delta: Option<Delta<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Delta<'a> {
        #[serde(borrow)]
        content: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Chunk>(data).is_ok_and(|chunk| {
        chunk.choices.iter().any(|choice| {
            choice
                .delta
                .as_ref()
                .and_then(|delta| delta.content.as_ref())
                .is_some_and(|content| !content.is_empty())
        })
    })
}

/// "mean … p50 … p90 … p99 … max …" in milliseconds.
fn percentiles(mut latencies: Vec<Duration>) -> String {
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(f64::NAN, |latency| latency.as_secs_f64() * 1e3)
    };
    let mean = latencies.iter().map(Duration::as_secs_f64).sum::<f64>()
        / latencies.len().max(1) as f64
        * 1e3;
    format!(
        "mean {mean:.3} p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}",
        at(0.50),
        at(0.90),
        at(0.99),
        at(1.0)
    )
}

/// A process's user and system CPU time so far, all threads (/proc/PID/stat).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is field 3,
    // utime and stime fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(Duration::from_secs_f64(
        ticks as f64 / per_second.max(1) as f64,
    ))
}
