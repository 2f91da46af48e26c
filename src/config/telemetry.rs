//! `[telemetry]`: where Prometheus scrapes skyfuse, and where its traces go.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::SecretLocation;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `host:port` serving `/metrics` (OpenMetrics text), `/healthz` and `/readyz` over
    /// plain HTTP; off when unset. Keep it on a private address: it needs no key.
    pub metrics_listen: Option<String>,
    /// OpenTelemetry traces over OTLP; off when the table is absent.
    pub traces: Option<TracesConfig>,
}

/// `[telemetry.traces]`: one trace per call at an entrance (`Answer`, `Search`, a facade
/// chat completion), exported in batches to an OTLP collector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracesConfig {
    /// The collector: `http://host:4317` for gRPC, `http://host:4318` for HTTP (the
    /// path `/v1/traces` is added when the URL has none).
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// The share of new traces kept, 0.0 to 1.0. A caller's `traceparent` decides for
    /// its own trace: sampled upstream, sampled here.
    #[serde(default = "full_sampling")]
    pub sample_ratio: f64,
    /// `service.name` of the exported resource.
    #[serde(default = "service_name")]
    pub service_name: String,
    /// Longest wait for the collector per batch.
    #[serde(default = "export_timeout_ms")]
    pub export_timeout_ms: u64,
    /// Sent with every export (a hosted collector's key): name -> an `env:` or `file:`
    /// location, read once at startup, never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, SecretLocation>,
    /// PEM file of the CA that signed an `https` collector's certificate, trusted
    /// besides the system's roots (either protocol).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

fn full_sampling() -> f64 {
    1.0
}

fn service_name() -> String {
    "skyfuse".into()
}

fn export_timeout_ms() -> u64 {
    10_000
}
