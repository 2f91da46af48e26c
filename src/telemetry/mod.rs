//! Logging setup, the Prometheus metrics ([`metrics`]) and OpenTelemetry traces
//! ([`trace`] the mechanics, [`spans`] what each span of a RAG turn records).

pub mod metrics;
pub mod spans;
pub mod trace;

pub use metrics::Metrics;
pub use trace::Tracing;

use tracing_subscriber::EnvFilter;

/// Logs to stderr; `RUST_LOG` overrides `default_level` (e.g. `RUST_LOG=skyfuse=debug`).
pub fn init(default_level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},tantivy=warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
