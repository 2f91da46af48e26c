//! Logging setup and the Prometheus metrics ([`metrics`]). Traces come with the rest of
//! the operate work.

pub mod metrics;

pub use metrics::Metrics;

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
