//! What recording metrics adds to a call: a search's recording (one call and two
//! sources), a chat's (two attempts, one failover, the answer's times, tokens and cost),
//! and a scrape of the resulting registry.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use skyfuse::error::ErrorKind;
use skyfuse::llm::Usage;
use skyfuse::retrieve::{SourceOutcome, SourceStatus};
use skyfuse::route::{Attempt, AttemptOutcome, RouteSummary};
use skyfuse::telemetry::Metrics;

fn outcome(source: &str) -> SourceOutcome {
    SourceOutcome {
        source: source.into(),
        status: SourceStatus::Ok,
        message: String::new(),
        hits: 10,
        took: Duration::from_micros(800),
        adapted_from: None,
    }
}

fn attempt(provider: &str, outcome: AttemptOutcome) -> Attempt {
    Attempt {
        provider: provider.into(),
        deployment: format!("{provider}/llama").into(),
        model: "llama".into(),
        cloud: "aws".into(),
        region: "eu-west-1".into(),
        outcome,
        message: String::new(),
        took: Duration::from_millis(3),
    }
}

fn bench_metrics(criterion: &mut Criterion) {
    let metrics = Metrics::new();
    let sources = [outcome("local-bm25"), outcome("local-dense")];
    criterion.bench_function("record_search", |bencher| {
        bencher.iter(|| {
            for source in &sources {
                metrics.record_source(source, "local", "local");
            }
            metrics.record_call(
                "search",
                "ok",
                Duration::from_millis(2),
                Duration::from_micros(800),
            );
        });
    });
    let summary = RouteSummary {
        attempts: vec![
            attempt("primary", AttemptOutcome::Failed(ErrorKind::Throttled)),
            attempt("secondary", AttemptOutcome::Ok),
        ],
        usage: Usage {
            input_tokens: 1000,
            output_tokens: 500,
            ..Usage::default()
        },
        cost_usd: 0.002,
        finish_reason: "stop".into(),
        ..RouteSummary::default()
    };
    criterion.bench_function("record_chat", |bencher| {
        bencher.iter(|| {
            metrics.record_attempts(&summary.attempts);
            metrics.record_answered(
                &summary,
                Duration::from_millis(5),
                Duration::from_millis(40),
            );
            metrics.record_call(
                "chat",
                "ok",
                Duration::from_millis(5),
                Duration::from_millis(4),
            );
        });
    });
    criterion.bench_function("encode_scrape", |bencher| {
        bencher.iter(|| metrics.encode().len());
    });
}

criterion_group!(benches, bench_metrics);
criterion_main!(benches);
