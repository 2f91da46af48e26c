//! Route decision time: planning a request over a dozen deployments in four clouds
//! (rules, a tier, equivalents, cost order), and the whole routed call against an
//! instant provider (plan + attempt loop + stream pump), without any network.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use skyfuse::config::{DeploymentConfig, Glob, RouteRule, RoutingConfig, TierConfig};
use skyfuse::config::{OtlpProtocol, TracesConfig};
use skyfuse::llm::{ChatMessage, ChatProvider, ChatRequest, Role};
use skyfuse::route::testing::{Script, Scripted};
use skyfuse::route::{Caller, Catalog, Deployment, RouteEvent, RouteRequest, Router};
use skyfuse::telemetry::{Tracing, trace};

fn router() -> Router {
    let models = [
        ("gpt-4o", "azure"),
        ("gpt-4o-mini", "azure"),
        ("claude-3.5-sonnet", "aws"),
        ("claude-3.5-sonnet", "gcp"),
        ("gemini-2.5-flash", "gcp"),
        ("command-r-plus", "oci"),
    ];
    let settings = RoutingConfig {
        cost_optimize: true,
        rules: vec![
            RouteRule {
                model: Glob::new("gpt-*").unwrap(),
                providers: vec![],
                clouds: vec!["azure".into()],
            },
            RouteRule {
                model: Glob::new("claude-*").unwrap(),
                providers: vec![],
                clouds: vec!["aws".into(), "gcp".into()],
            },
        ],
        tiers: vec![TierConfig {
            name: "standard".into(),
            models: vec![
                "gpt-4o".into(),
                "claude-3.5-sonnet".into(),
                "gemini-2.5-flash".into(),
            ],
            max_usd_per_1k_tokens: 0.02,
        }],
        equivalent: vec![vec!["gpt-4o".into(), "claude-3.5-sonnet".into()]],
        ..RoutingConfig::default()
    };
    let catalog = Catalog::load(&[]).unwrap();
    let breaker = Router::breaker_settings(&settings);
    let mut deployments = Vec::new();
    for region in ["east", "west"] {
        for (model, cloud) in models {
            let provider = Arc::new(Scripted::new(
                &format!("{cloud}-{region}-{model}"),
                model,
                cloud,
                false,
                Script::answer("Paris."),
            ));
            let config = DeploymentConfig {
                provider: provider.info().id.clone(),
                model: model.into(),
                name: None,
                dedicated: region == "east" && cloud == "azure",
                context_window: None,
                input_per_1m_usd: Some(1.0),
                output_per_1m_usd: Some(4.0),
                cached_input_per_1m_usd: None,
                requests_per_minute: None,
                tokens_per_minute: None,
                regions: Vec::new(),
                stop: Vec::new(),
            };
            deployments.push(Deployment::new(provider, &config, &catalog, breaker));
        }
    }
    Router::new(deployments, settings)
}

fn bench(c: &mut Criterion) {
    let router = router();
    let caller = Caller::anonymous();
    let by_model = RouteRequest {
        model: Some("gpt-4o".into()),
        input_tokens: 2_000,
        max_output_tokens: 512,
        ..RouteRequest::default()
    };
    let by_tier = RouteRequest {
        tier: Some("standard".into()),
        input_tokens: 2_000,
        max_output_tokens: 512,
        ..RouteRequest::default()
    };
    c.bench_function("route/plan model with equivalents (12 deployments)", |b| {
        b.iter(|| router.plan(&caller, &by_model).unwrap())
    });
    c.bench_function("route/plan tier, cost-optimized (12 deployments)", |b| {
        b.iter(|| router.plan(&caller, &by_tier).unwrap())
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let request = ChatRequest {
        messages: vec![ChatMessage {
            role: Role::User,
            content: "What is the capital of France?".into(),
        }],
        max_output_tokens: 64,
        temperature: 0.0,
        stop: Vec::new(),
    };
    let start = || async {
        let plan = router.plan(&caller, &by_model).unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        router
            .start(&caller, &plan, &request, deadline)
            .await
            .unwrap()
    };
    let one_call = || async {
        let mut events = start().await.into_events();
        while let Some(event) = events.recv().await {
            if matches!(event, RouteEvent::Done(_) | RouteEvent::Failed(..)) {
                break;
            }
        }
    };
    c.bench_function("route/plan + attempt + stream, instant provider", |b| {
        b.to_async(&runtime).iter(one_call)
    });
    // The facade's shape: a whole answer collected on a current-thread runtime (a
    // facade thread), no task or channel of its own.
    let facade_thread = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    c.bench_function(
        "route/plan + attempt + collect, instant provider, current thread",
        |b| {
            b.to_async(&facade_thread)
                .iter(|| async { start().await.collect().await.unwrap() })
        },
    );
    // The same call inside a trace sampled at 100% (its spans go to a batch queue;
    // the collector address answers nothing, so a full queue drops them).
    let tracing = runtime.block_on(async {
        Tracing::from_config(
            Some(&TracesConfig {
                endpoint: "http://127.0.0.1:9".into(),
                protocol: OtlpProtocol::Grpc,
                sample_ratio: 1.0,
                service_name: "skyfuse-bench".into(),
                export_timeout_ms: 100,
                headers: Default::default(),
                ca_file: None,
            }),
            &Default::default(),
        )
        .unwrap()
    });
    let headers = http::HeaderMap::new();
    c.bench_function(
        "route/plan + attempt + stream, instant provider, traced 100%",
        |b| {
            b.to_async(&runtime).iter(|| async {
                let call = tracing.http_call("POST", "/v1/chat/completions", &headers);
                trace::within(call.as_ref(), one_call()).await
            })
        },
    );
    tracing.shutdown();
}

criterion_group!(benches, bench);
criterion_main!(benches);
