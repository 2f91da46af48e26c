//! The spans of a RAG turn and what each records, after the OpenTelemetry GenAI
//! semantic conventions (retrieval, embeddings and chat spans) and the database and
//! cloud ones for where a store lives. Attributes carry ids, models, counts and
//! error kinds, never a query, a prompt, a key or a document.

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

use super::trace::{ChildSpan, child};
use crate::error::Error;
use crate::ingest::IndexReport;
use crate::llm::ProviderInfo;
use crate::retrieve::{SourceOutcome, SourceStatus};
use crate::route::{AttemptOutcome, RouteSummary};
use crate::stores::SourceInfo;

/// One source's search: `retrieval {source}`.
pub fn retrieval(source: &SourceInfo, top_k: usize) -> Option<ChildSpan> {
    child(SpanKind::Client, || {
        let name = format!("retrieval {}", source.id);
        let attributes = vec![
            KeyValue::new("gen_ai.operation.name", "retrieval"),
            KeyValue::new("gen_ai.data_source.id", source.id.clone()),
            KeyValue::new("gen_ai.retrieval.top_k", top_k as i64),
            KeyValue::new("db.system.name", source.backend.clone()),
            KeyValue::new("cloud.provider", source.cloud.clone()),
            KeyValue::new("cloud.region", source.region.clone()),
        ];
        (name, attributes)
    })
}

pub fn end_retrieval(span: ChildSpan, outcome: &SourceOutcome) {
    span.set(KeyValue::new("skyfuse.hits", outcome.hits as i64));
    match outcome.status {
        SourceStatus::Ok => {}
        status => span.fail(status.as_str(), &outcome.message),
    }
    span.end();
}

/// One embedding call for a query: `embeddings {model}`, for the space it serves.
pub fn embeddings(space: &str, model: &str, provider: &str, dims: usize) -> Option<ChildSpan> {
    child(SpanKind::Client, || {
        // A local model is named by its directory: its name, not where it lies.
        let model = std::path::Path::new(model)
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or(model);
        let name = format!("embeddings {model}");
        let attributes = vec![
            KeyValue::new("gen_ai.operation.name", "embeddings"),
            KeyValue::new("gen_ai.request.model", model.to_owned()),
            KeyValue::new("gen_ai.embeddings.dimension.count", dims as i64),
            KeyValue::new("skyfuse.provider", provider.to_owned()),
            KeyValue::new("skyfuse.space", space.to_owned()),
        ];
        (name, attributes)
    })
}

/// Ends a span with the error it failed with, if any.
pub fn end_with<T>(span: ChildSpan, result: &Result<T, Error>) {
    if let Err(error) = result {
        span.fail(error.kind.as_str(), &error.message);
    }
    span.end();
}

/// One chat attempt on one deployment: `chat {model}`. A failover makes several.
pub fn chat(
    deployment: &ProviderInfo,
    max_output_tokens: u32,
    temperature: f32,
) -> Option<ChildSpan> {
    child(SpanKind::Client, || {
        let name = format!("chat {}", deployment.model);
        let attributes = vec![
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.provider.name", provider_name(&deployment.cloud)),
            KeyValue::new("gen_ai.request.model", deployment.model.clone()),
            KeyValue::new("gen_ai.request.max_tokens", i64::from(max_output_tokens)),
            KeyValue::new("gen_ai.request.temperature", f64::from(temperature)),
            KeyValue::new("skyfuse.provider", deployment.id.clone()),
            KeyValue::new("skyfuse.deployment", deployment.deployment.clone()),
            KeyValue::new("cloud.provider", deployment.cloud.clone()),
            KeyValue::new("cloud.region", deployment.region.clone()),
        ];
        (name, attributes)
    })
}

/// Ends the answering attempt's span when its stream ends: tokens, finish reason,
/// cost, or the error that broke it.
pub fn end_chat(span: ChildSpan, summary: &RouteSummary) {
    if let Some(chosen) = &summary.chosen {
        span.set(KeyValue::new("gen_ai.response.model", chosen.model.clone()));
    }
    let usage = &summary.usage;
    span.set(KeyValue::new(
        "gen_ai.usage.input_tokens",
        usage.input_tokens as i64,
    ));
    span.set(KeyValue::new(
        "gen_ai.usage.output_tokens",
        usage.output_tokens as i64,
    ));
    span.set(KeyValue::new("skyfuse.cost_usd", summary.cost_usd));
    if !summary.finish_reason.is_empty() {
        span.set(KeyValue::new(
            "gen_ai.response.finish_reasons",
            opentelemetry::Value::Array(opentelemetry::Array::String(vec![
                summary.finish_reason.clone().into(),
            ])),
        ));
    }
    if let Some(attempt) = summary.attempts.last()
        && let AttemptOutcome::Failed(kind) = attempt.outcome
    {
        span.fail(kind.as_str(), &attempt.message);
    }
    span.end();
}

/// One sync of a bucket or folder into an index: `index {index}`. Its counts are set
/// when it ends; objects are counted, never named (a key may say what a document is).
pub fn index_run(index: &str) -> Option<ChildSpan> {
    child(SpanKind::Internal, || {
        (
            format!("index {index}"),
            vec![
                KeyValue::new("skyfuse.operation.name", "index"),
                KeyValue::new("skyfuse.index", index.to_owned()),
            ],
        )
    })
}

pub fn end_index_run(span: ChildSpan, report: &Result<IndexReport, Error>) {
    match report {
        Ok(report) => {
            let progress = &report.progress;
            for (name, value) in [
                ("skyfuse.objects.listed", progress.listed),
                ("skyfuse.objects.indexed", progress.indexed),
                ("skyfuse.objects.unchanged", progress.unchanged),
                ("skyfuse.objects.deleted", progress.deleted),
                ("skyfuse.objects.pruned", progress.pruned),
                ("skyfuse.objects.skipped", progress.skipped),
                ("skyfuse.objects.failed", progress.failed),
                ("skyfuse.chunks.written", progress.chunks_written),
                ("skyfuse.bytes.read", progress.bytes_read),
            ] {
                span.set(KeyValue::new(
                    name,
                    i64::try_from(value).unwrap_or(i64::MAX),
                ));
            }
            span.set(KeyValue::new(
                "cloud.provider",
                report.location.cloud.clone(),
            ));
            span.set(KeyValue::new(
                "cloud.region",
                report.location.region.clone(),
            ));
            if progress.failed > 0 || !report.listing_errors.is_empty() {
                span.fail(
                    "partial",
                    &format!(
                        "{} objects failed, {} listing errors",
                        progress.failed,
                        report.listing_errors.len()
                    ),
                );
            }
            span.end();
        }
        Err(_) => end_with(span, report),
    }
}

/// `gen_ai.provider.name` for a deployment's cloud (the registry's names).
fn provider_name(cloud: &str) -> &'static str {
    match cloud {
        "azure" => "azure.ai.openai",
        "aws" => "aws.bedrock",
        "gcp" => "gcp.vertex_ai",
        "oci" => "oci.genai",
        _ => "openai",
    }
}
