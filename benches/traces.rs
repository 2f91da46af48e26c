//! What tracing adds to one RAG turn's hot path: the spans an `Answer` opens (its
//! entrance, two retrievals, one query embedding, two chat attempts) and the
//! `traceparent` of one cloud call, with tracing off, on at 100%, and on with nothing
//! sampled. Exporting happens on the exporter's own thread and is not measured here
//! (the collector address answers nothing; a full queue drops spans).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use skyfuse::config::{OtlpProtocol, TracesConfig};
use skyfuse::llm::{ProviderInfo, Usage};
use skyfuse::retrieve::{SourceOutcome, SourceStatus};
use skyfuse::route::RouteSummary;
use skyfuse::stores::{SourceInfo, StoreKind};
use skyfuse::telemetry::{Tracing, spans, trace};

fn source(id: &str, kind: StoreKind) -> SourceInfo {
    SourceInfo {
        id: id.into(),
        backend: "tantivy".into(),
        kind,
        space: None,
        dims: None,
        cloud: "local".into(),
        region: "local".into(),
    }
}

fn deployment(id: &str) -> ProviderInfo {
    ProviderInfo {
        id: id.into(),
        model: "llama".into(),
        deployment: "llama-3.1-8b".into(),
        dedicated: false,
        cloud: "aws".into(),
        region: "eu-west-1".into(),
        regions: vec!["eu-west-1".into()],
        input_per_1m_usd: 1.0,
        output_per_1m_usd: 2.0,
    }
}

/// The spans of one turn, opened and ended in order under the current trace.
async fn one_turn(sources: &[SourceInfo], deployments: &[ProviderInfo], summary: &RouteSummary) {
    for source in sources {
        let span = spans::retrieval(source, 20);
        let outcome = SourceOutcome {
            source: source.id.clone(),
            status: SourceStatus::Ok,
            message: String::new(),
            hits: 10,
            took: std::time::Duration::from_micros(500),
            adapted_from: None,
        };
        if let Some(span) = span {
            spans::end_retrieval(span, &outcome);
        }
    }
    if let Some(span) = spans::embeddings("minilm", "all-MiniLM-L6-v2", "local", 384) {
        spans::end_with(span, &Ok::<(), skyfuse::error::Error>(()));
    }
    for deployment in deployments {
        let span = spans::chat(deployment, 256, 0.2);
        let mut headers = http::HeaderMap::new();
        trace::run_in(span.as_ref(), async {
            trace::inject_traceparent(&mut headers);
        })
        .await;
        black_box(&headers);
        if let Some(span) = span {
            spans::end_chat(span, summary);
        }
    }
}

fn tracing(sample_ratio: f64) -> Tracing {
    Tracing::from_config(
        Some(&TracesConfig {
            endpoint: "http://127.0.0.1:9".into(),
            protocol: OtlpProtocol::Grpc,
            sample_ratio,
            service_name: "skyfuse-bench".into(),
            export_timeout_ms: 100,
            headers: Default::default(),
            ca_file: None,
        }),
        &Default::default(),
    )
    .unwrap()
}

fn bench_traces(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let sources = [
        source("local-bm25", StoreKind::Lexical),
        source("local-dense", StoreKind::Dense),
    ];
    let deployments = [deployment("primary"), deployment("secondary")];
    let summary = RouteSummary {
        usage: Usage {
            input_tokens: 1000,
            output_tokens: 500,
            ..Usage::default()
        },
        finish_reason: "stop".into(),
        ..RouteSummary::default()
    };
    let headers = http::HeaderMap::new();
    for (name, tracing) in [
        ("turn_spans/off", Tracing::default()),
        ("turn_spans/on_100pct", tracing(1.0)),
        ("turn_spans/on_0pct", tracing(0.0)),
    ] {
        criterion.bench_function(name, |bencher| {
            bencher.iter(|| {
                runtime.block_on(async {
                    let call = tracing.http_call("POST", "/v1/chat/completions", &headers);
                    trace::within(call.as_ref(), one_turn(&sources, &deployments, &summary)).await;
                })
            });
        });
        tracing.shutdown();
    }
}

criterion_group!(benches, bench_traces);
criterion_main!(benches);
