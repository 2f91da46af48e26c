//! Load generator for gRPC `Search` on loopback: a fixed number of concurrent
//! clients (or a fixed rate) for a fixed time, reporting QPS and p50/p90/p99.
//!
//! cargo bench --bench search_load -- [--server ADDR] [--data-dir DIR]
//!     [--queries FILE] [--concurrency N] [--rate QPS] [--seconds S] [--top-k K]
//!
//! Without --server it starts the embedded default in-process on a loopback port
//! over `--data-dir` (default indexes/eval-scifact, made by `skyfuse eval`).
//! Bounded in time and count; it only ever talks to loopback.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use skyfuse::api::proto;
use skyfuse::api::proto::retrieval_service_client::RetrievalServiceClient;
use skyfuse::client::{connect, load_config};

struct Options {
    server: Option<String>,
    data_dir: PathBuf,
    queries: PathBuf,
    concurrency: usize,
    rate: Option<f64>,
    seconds: u64,
    top_k: u32,
    sources: Vec<String>,
}

fn options() -> Options {
    let mut options = Options {
        server: None,
        data_dir: PathBuf::from("indexes/eval-scifact"),
        queries: PathBuf::from("../shared/datasets/scifact/queries.jsonl"),
        concurrency: 8,
        rate: None,
        seconds: 20,
        top_k: 10,
        sources: Vec::new(),
    };
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        let mut value = || {
            arguments
                .next()
                .unwrap_or_else(|| panic!("{argument} needs a value"))
        };
        match argument.as_str() {
            "--server" => options.server = Some(value()),
            "--data-dir" => options.data_dir = value().into(),
            "--queries" => options.queries = value().into(),
            "--concurrency" => options.concurrency = value().parse().expect("--concurrency N"),
            "--rate" => options.rate = Some(value().parse().expect("--rate QPS")),
            "--seconds" => options.seconds = value().parse().expect("--seconds S"),
            "--top-k" => options.top_k = value().parse().expect("--top-k K"),
            "--source" => options.sources.push(value()),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    options
}

fn read_queries(path: &PathBuf) -> Vec<String> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|value| value["text"].as_str().map(str::to_string))
        .collect()
}

#[tokio::main]
async fn main() {
    let options = options();
    let queries = read_queries(&options.queries);
    assert!(
        !queries.is_empty(),
        "no queries in {}",
        options.queries.display()
    );
    let mut config = load_config(None).expect("embedded default config");
    config.server.data_dir = std::path::absolute(&options.data_dir).unwrap();
    let channel = connect(options.server.as_deref(), config)
        .await
        .expect("connect");

    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let interval = options
        .rate
        .map(|rate| Duration::from_secs_f64(options.concurrency as f64 / rate));
    let started = Instant::now();
    let workers: Vec<_> = (0..options.concurrency)
        .map(|worker| {
            let mut client = RetrievalServiceClient::new(channel.clone());
            let queries = queries.clone();
            let sources = options.sources.clone();
            let top_k = options.top_k;
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0usize;
                let mut next_query = worker;
                let mut ticker = interval.map(tokio::time::interval);
                while Instant::now() < deadline {
                    if let Some(ticker) = ticker.as_mut() {
                        ticker.tick().await;
                    }
                    let request = proto::SearchRequest {
                        query: queries[next_query % queries.len()].clone(),
                        top_k,
                        sources: sources.clone(),
                        ..Default::default()
                    };
                    next_query += 7;
                    let sent = Instant::now();
                    match client.search(request).await {
                        Ok(response) if !response.get_ref().degraded => {
                            latencies.push(sent.elapsed())
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (worker_latencies, worker_errors) = worker.await.unwrap();
        latencies.extend(worker_latencies);
        errors += worker_errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |share: f64| {
        latencies
            .get(((latencies.len() as f64 * share).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |latency| latency.as_secs_f64() * 1000.0)
    };
    println!(
        "search load: {} ok, {errors} failed or degraded in {elapsed:.1}s = {:.1} QPS at concurrency {}{}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        options.concurrency,
        options
            .rate
            .map_or(String::new(), |rate| format!(", target rate {rate} QPS")),
    );
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        percentile(0.50),
        percentile(0.90),
        percentile(0.99),
        percentile(1.0)
    );
}
