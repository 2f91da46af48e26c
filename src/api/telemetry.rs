//! The operator's port (`[telemetry] metrics_listen`): `/metrics` for Prometheus,
//! `/healthz` (the process answers) and `/readyz` (it should take traffic).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::service::Service;

/// OpenMetrics 1.0, which Prometheus asks for in its `Accept` header.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic text format, for everyone else (curl, promtool).
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(super) fn app(service: Arc<Service>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(service)
}

async fn metrics(
    State(service): State<Arc<Service>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/openmetrics-text"));
    let text = service.render_metrics();
    if openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], text)
    } else {
        (
            [(header::CONTENT_TYPE, CLASSIC)],
            crate::telemetry::metrics::to_classic_text(&text),
        )
    }
}

async fn readyz(State(service): State<Arc<Service>>) -> impl IntoResponse {
    let reasons = service.unready_reasons();
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{}\n", reasons.join("\n")),
        )
    }
}
