//! `[telemetry]`: where Prometheus scrapes skyfuse.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `host:port` serving `/metrics` (OpenMetrics text), `/healthz` and `/readyz` over
    /// plain HTTP; off when unset. Keep it on a private address: it needs no key.
    pub metrics_listen: Option<String>,
}
