//! Heap allocations a facade request costs: a count that does not drift with a busy
//! machine as CPU time does, so a change to the facade's hot path can be judged in
//! one run.
//!
//! One process holds an instant OpenAI-compatible upstream (the SSE answer of
//! `scripts/measure-facade.sh`'s nginx), skyfuse's facade in front of it (`api::serve`,
//! as `skyfuse serve` starts it, with the binary's allocator) and a client sending
//! chat completions one after another on a kept-alive connection. Every allocation
//! in the process is counted; the same requests sent to the upstream directly are
//! the baseline, so the difference is the facade's.
//!
//!   cargo bench --bench facade_allocs
//!   cargo bench --bench facade_allocs -- --requests 5000

#[path = "flags/mod.rs"]
mod flags;

use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use skyfuse::api::Listeners;
use skyfuse::config::Config;
use skyfuse::service::Service;
use tokio::net::TcpListener;

/// The binary's allocator, counting.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Allocations by size: bucket i holds sizes in [2^i, 2^(i+1)).
static BY_SIZE: [AtomicU64; 32] = [const { AtomicU64::new(0) }; 32];

// SAFETY: every call is passed on unchanged to mimalloc; the counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
}

fn count(bytes: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    let bucket = (usize::BITS - bytes.max(1).leading_zeros() - 1).min(31);
    BY_SIZE[bucket as usize].fetch_add(1, Ordering::Relaxed);
}

fn by_size() -> [u64; 32] {
    std::array::from_fn(|bucket| BY_SIZE[bucket].load(Ordering::Relaxed))
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The completion the router asks for (it always streams upstream), as the
/// measurement script's nginx returns it.
const ANSWER: &str = concat!(
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"bench-model\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Paris is the capital of France.\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"bench-model\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"bench-model\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":8,\"total_tokens\":28}}\n\n",
    "data: [DONE]\n\n",
);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` runs every bench with `--bench`; this one is quick enough to run.
    let requests: u64 = flags::value(&args, "--requests")
        .and_then(|requests| requests.parse().ok())
        .unwrap_or(2_000);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(measure(requests));
}

async fn measure(requests: u64) {
    let upstream = upstream().await;
    let facade = facade(&upstream).await;
    let client = reqwest::Client::new();
    for stream in [false, true] {
        let body = serde_json::json!({
            "model": "bench-model",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "stream": stream,
        })
        .to_string();
        let (direct, direct_sizes) = per_request(&client, &upstream, &body, requests).await;
        let (through, through_sizes) = per_request(&client, &facade, &body, requests).await;
        println!(
            "{}: direct {:.1} allocations ({:.0} bytes) a request; through the facade {:.1} ({:.0} bytes); the facade's: {:.1} allocations, {:.0} bytes",
            if stream { "streamed" } else { "whole" },
            direct.0,
            direct.1,
            through.0,
            through.1,
            through.0 - direct.0,
            through.1 - direct.1,
        );
        // The facade's allocations of 1 KiB and more, by size.
        let large: Vec<String> = (10..32)
            .filter_map(|bucket| {
                let more = through_sizes[bucket] as f64 - direct_sizes[bucket] as f64;
                (more.abs() >= 0.05 * requests as f64).then(|| {
                    format!(
                        "{:.1} of {}-{} KiB",
                        more / requests as f64,
                        1 << (bucket - 10),
                        1 << (bucket - 9)
                    )
                })
            })
            .collect();
        println!("  of which 1 KiB or more, a request: {}", large.join(", "));
    }
}

/// Allocations and bytes allocated in the whole process per request to `base`, after
/// a warm-up, and the allocations by size over the timed requests.
async fn per_request(
    client: &reqwest::Client,
    base: &str,
    body: &str,
    requests: u64,
) -> ((f64, f64), [u64; 32]) {
    let url = format!("{base}/v1/chat/completions");
    let send = || async {
        let answer = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("an answer");
        assert!(answer.status().is_success(), "{}", answer.status());
        answer.bytes().await.expect("a body");
    };
    for _ in 0..200 {
        send().await;
    }
    let (allocations, bytes, sizes) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
        by_size(),
    );
    for _ in 0..requests {
        send().await;
    }
    let after = by_size();
    let per_request = |total: u64| total as f64 / requests as f64;
    (
        (
            per_request(ALLOCATIONS.load(Ordering::Relaxed) - allocations),
            per_request(BYTES.load(Ordering::Relaxed) - bytes),
        ),
        std::array::from_fn(|bucket| after[bucket] - sizes[bucket]),
    )
}

/// An instant upstream answering every completion with [`ANSWER`].
async fn upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let base = format!("http://{}", listener.local_addr().expect("an address"));
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async { ([("content-type", "text/event-stream")], ANSWER) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// skyfuse with only the facade, one deployment on `upstream`; its base URL.
async fn facade(upstream: &str) -> String {
    let data = tempfile::tempdir().expect("a temporary directory");
    let config = format!(
        r#"
[server]
data_dir = "{}"
[routing]
default_model = "bench-model"
[[provider]]
id = "upstream"
kind = "openai_compat"
base_url = "{upstream}"
[[deployment]]
provider = "upstream"
model = "bench-model"
input_per_1m_usd = 0.15
output_per_1m_usd = 0.60
[facade]
listen = "127.0.0.1:0"
"#,
        data.path().display()
    );
    let config: Config = toml::from_str(&config).expect("the config");
    let service = Arc::new(
        Service::build(config, &HashMap::new())
            .await
            .expect("a service"),
    );
    let openai = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let base = format!("http://{}", openai.local_addr().expect("an address"));
    let listeners = Listeners {
        grpc: TcpListener::bind("127.0.0.1:0").await.expect("a port"),
        openai: Some(openai),
        metrics: None,
    };
    tokio::spawn(async move {
        // The directory lives as long as the server.
        let _data = data;
        skyfuse::api::serve(service, listeners, std::future::pending()).await
    });
    base
}
