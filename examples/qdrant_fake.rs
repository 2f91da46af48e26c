//! The in-process Qdrant of the tests (`tests/stores/support/qdrant_fake.rs`) as a
//! process: Qdrant's gRPC Collections and Points services over an exact in-memory
//! index. For `skyfuse eval` through the Qdrant adapter where no Qdrant can run:
//!
//! ```sh
//! cargo run --release --example qdrant_fake -- 127.0.0.1:6334 &
//! target/release/skyfuse eval --config docs/eval/scifact-qdrant.toml \
//!     --dataset ../shared/datasets/scifact --data-dir /tmp/eval-scifact-qdrant
//! ```
//!
//! Set `QDRANT_API_KEY` to require that key. Stops on Ctrl-C; nothing is persisted.

#[path = "../tests/stores/support/qdrant_fake.rs"]
mod qdrant_fake;

#[tokio::main]
async fn main() {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:6334".to_string())
        .parse()
        .expect("the first argument is an ip:port address to listen on");
    let api_key = std::env::var("QDRANT_API_KEY").ok();
    let fake = qdrant_fake::FakeQdrant::new(api_key.as_deref());
    let bound = fake.serve(address).await;
    println!("fake qdrant (gRPC) listening on {bound}");
    tokio::signal::ctrl_c()
        .await
        .expect("waiting for ctrl-c failed");
}
