//! Routing and failover against scripted providers on a paused clock.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::testing::{Script, Scripted, Step};
use super::*;
use crate::config::{DeploymentConfig, Glob, RouteRule, RoutingConfig, TierConfig};
use crate::error::{Error, ErrorKind, Failover};
use crate::limits::RateLimits;
use crate::llm::{ChatMessage, ChatRequest, Role, Usage};

struct Fixture {
    router: Router,
    providers: Vec<Arc<Scripted>>,
}

/// (provider, input price, output price, context window)
fn fixture(specs: Vec<(Scripted, f64, f64, Option<u64>)>, settings: RoutingConfig) -> Fixture {
    fixture_with_quotas(specs, settings, &[])
}

/// [`fixture`] where the first deployments have these quotas at their providers.
fn fixture_with_quotas(
    specs: Vec<(Scripted, f64, f64, Option<u64>)>,
    settings: RoutingConfig,
    quotas: &[RateLimits],
) -> Fixture {
    let catalog = Catalog::default();
    let breaker = Router::breaker_settings(&settings);
    let mut providers = Vec::new();
    let mut deployments = Vec::new();
    for (provider, input, output, window) in specs {
        let provider = Arc::new(provider);
        let config = DeploymentConfig {
            provider: provider.info().id.clone(),
            model: provider.info().model.clone(),
            name: None,
            dedicated: provider.info().dedicated,
            context_window: window,
            input_per_1m_usd: Some(input),
            output_per_1m_usd: Some(output),
            cached_input_per_1m_usd: None,
            requests_per_minute: None,
            tokens_per_minute: None,
            regions: Vec::new(),
            stop: Vec::new(),
        };
        let mut deployment = Deployment::new(provider.clone(), &config, &catalog, breaker);
        if let Some(quota) = quotas.get(deployments.len()) {
            deployment.quota = *quota;
        }
        deployments.push(deployment);
        providers.push(provider);
    }
    Fixture {
        router: Router::new(deployments, settings),
        providers,
    }
}

fn ok(id: &str, model: &str, cloud: &str) -> Scripted {
    Scripted::new(id, model, cloud, false, Script::answer("hello"))
}

fn chat() -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage {
            role: Role::User,
            content: "what is up".into(),
        }],
        max_output_tokens: 100,
        temperature: 0.0,
        stop: Vec::new(),
    }
}

fn ask(model: &str) -> RouteRequest {
    RouteRequest {
        model: Some(model.into()),
        input_tokens: 1_000,
        max_output_tokens: 100,
        ..RouteRequest::default()
    }
}

fn labels(plan: &Plan) -> Vec<String> {
    plan.candidates
        .iter()
        .map(|candidate| candidate.deployment.label())
        .collect()
}

/// Runs one request to its end: the text, and the summary or the error.
async fn run(
    fixture: &Fixture,
    request: RouteRequest,
) -> (String, Result<RouteSummary, (Error, RouteSummary)>) {
    let caller = Caller::anonymous();
    let plan = fixture.router.plan(&caller, &request).expect("a plan");
    let deadline = Instant::now() + Duration::from_secs(120);
    let started = match fixture
        .router
        .start(&caller, &plan, &chat(), deadline)
        .await
    {
        Ok(started) => started,
        Err(failure) => return (String::new(), Err((failure.error, *failure.summary))),
    };
    let mut events = started.into_events();
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            RouteEvent::Token(token) => text.push_str(&token),
            RouteEvent::Done(summary) => return (text, Ok(*summary)),
            RouteEvent::Failed(error, summary) => return (text, Err((error, *summary))),
        }
    }
    panic!("the stream ended without Done or Failed");
}

/// The first token of model "m" for `caller`, within `within`.
async fn started(fixture: &Fixture, caller: &Caller, within: Duration) -> Started {
    let plan = fixture.router.plan(caller, &ask("m")).unwrap();
    let deadline = Instant::now() + within;
    fixture
        .router
        .start(caller, &plan, &chat(), deadline)
        .await
        .unwrap()
}

fn outcomes(summary: &RouteSummary) -> Vec<(String, AttemptOutcome)> {
    summary
        .attempts
        .iter()
        .map(|attempt| (attempt.deployment.to_string(), attempt.outcome.clone()))
        .collect()
}

fn throttled(retry_after: Option<u64>) -> Error {
    Error::throttled(
        "429 too many requests",
        retry_after.map(Duration::from_secs),
    )
}

#[test]
fn rules_send_model_families_to_their_clouds_in_rule_order() {
    let settings = RoutingConfig {
        rules: vec![
            RouteRule {
                model: Glob::new("gpt-*").unwrap(),
                providers: vec![],
                clouds: vec!["azure".into()],
            },
            RouteRule {
                model: Glob::new("claude-*").unwrap(),
                providers: vec!["vertex-eu".into(), "bedrock-us".into()],
                clouds: vec![],
            },
        ],
        ..RoutingConfig::default()
    };
    let fixture = fixture(
        vec![
            (
                ok("bedrock-us", "claude-3.5-sonnet", "aws"),
                3.0,
                15.0,
                None,
            ),
            (ok("vertex-eu", "claude-3.5-sonnet", "gcp"), 3.0, 15.0, None),
            (ok("azure-east", "gpt-4o", "azure"), 2.5, 10.0, None),
            (ok("openai-proxy", "gpt-4o", "local"), 1.0, 1.0, None),
        ],
        settings,
    );
    let caller = Caller::anonymous();
    let claude = fixture
        .router
        .plan(&caller, &ask("claude-3.5-sonnet"))
        .unwrap();
    assert_eq!(
        labels(&claude),
        [
            "vertex-eu/claude-3.5-sonnet",
            "bedrock-us/claude-3.5-sonnet"
        ]
    );
    let gpt = fixture.router.plan(&caller, &ask("gpt-4o")).unwrap();
    assert_eq!(labels(&gpt), ["azure-east/gpt-4o"]);
    assert_eq!(gpt.skipped.len(), 1);
    assert!(
        gpt.skipped[0].reason.contains("gpt-* -> azure"),
        "{:?}",
        gpt.skipped
    );

    let unknown = fixture.router.plan(&caller, &ask("gpt-5")).unwrap_err();
    assert_eq!(unknown.kind, ErrorKind::NotFound);
    assert!(
        unknown.message.contains("claude-3.5-sonnet, gpt-4o"),
        "{}",
        unknown.message
    );
}

#[test]
fn dedicated_capacity_comes_first_and_cost_orders_the_on_demand_rest() {
    let settings = RoutingConfig {
        cost_optimize: true,
        ..RoutingConfig::default()
    };
    let fixture = fixture(
        vec![
            (ok("pricey", "m", "aws"), 3.0, 15.0, None),
            (ok("cheap", "m", "gcp"), 1.0, 5.0, None),
            (
                Scripted::new("ptu", "m", "azure", true, Script::answer("x")),
                9.0,
                9.0,
                None,
            ),
        ],
        settings,
    );
    let plan = fixture
        .router
        .plan(&Caller::anonymous(), &ask("m"))
        .unwrap();
    assert_eq!(labels(&plan), ["ptu/m", "cheap/m", "pricey/m"]);
    assert!(plan.candidates[0].why.contains("dedicated"));
    let cost = plan.candidates[1].max_cost_usd.unwrap();
    assert!((cost - (1_000.0 * 1.0 + 100.0 * 5.0) / 1e6).abs() < 1e-12);
}

#[test]
fn by_cost_moving_the_context_counts_beside_the_tokens() {
    let settings = RoutingConfig {
        cost_optimize: true,
        ..RoutingConfig::default()
    };
    let fixture = fixture(
        vec![
            (ok("far", "m", "aws"), 1.0, 5.0, None),
            (ok("near", "m", "gcp"), 2.0, 5.0, None),
        ],
        settings,
    );
    // Tokens alone: far costs $0.0015, near $0.0025.
    let plan = fixture
        .router
        .plan(&Caller::anonymous(), &ask("m"))
        .unwrap();
    assert_eq!(labels(&plan), ["far/m", "near/m"]);
    // The passages live in GCP: reaching AWS costs $0.002 more, so near wins.
    let request = RouteRequest {
        egress_usd_by_cloud: vec![("aws".into(), 0.002), ("gcp".into(), 0.0)],
        ..ask("m")
    };
    let plan = fixture.router.plan(&Caller::anonymous(), &request).unwrap();
    assert_eq!(labels(&plan), ["near/m", "far/m"]);
    assert_eq!(plan.candidates[1].egress_usd, 0.002);
    assert!(
        plan.candidates[1]
            .why
            .contains("moving the context to aws costs $0.002000"),
        "{}",
        plan.candidates[1].why
    );
}

#[test]
fn tiers_hold_models_to_their_price_and_callers_to_their_permissions() {
    let settings = RoutingConfig {
        cost_optimize: true,
        tiers: vec![TierConfig {
            name: "economy".into(),
            models: vec!["big".into(), "small".into(), "mid".into()],
            max_usd_per_1k_tokens: 0.004,
        }],
        ..RoutingConfig::default()
    };
    let fixture = fixture(
        vec![
            (ok("a", "big", "aws"), 3.0, 15.0, None),
            (ok("b", "small", "gcp"), 0.15, 0.6, None),
            (ok("c", "mid", "azure"), 2.5, 10.0, None),
        ],
        settings,
    );
    let request = RouteRequest {
        tier: Some("economy".into()),
        ..ask("unused")
    };
    let request = RouteRequest {
        model: None,
        ..request
    };
    let plan = fixture.router.plan(&Caller::anonymous(), &request).unwrap();
    // big: (1000*3 + 100*15)/1e6 / 1.1k tokens = $0.0041 per 1k: above the tier.
    assert_eq!(labels(&plan), ["b/small", "c/mid"]);
    assert!(
        plan.skipped[0].reason.contains("above tier \"economy\""),
        "{:?}",
        plan.skipped
    );

    let limited = Caller {
        id: "team".into(),
        models: vec![Glob::new("small").unwrap()],
        clouds: vec!["aws".into()],
        ..Caller::anonymous()
    };
    let forbidden = fixture.router.plan(&limited, &ask("big")).unwrap_err();
    assert_eq!(forbidden.kind, ErrorKind::Forbidden);
    let plan = fixture.router.plan(&limited, &ask("small")).unwrap();
    assert!(
        plan.candidates.is_empty(),
        "small runs on gcp, the caller allows aws only"
    );
    assert!(
        plan.skipped[0]
            .reason
            .contains("may not send prompts to gcp")
    );
}

#[test]
fn a_prompt_longer_than_a_context_window_skips_that_deployment() {
    let fixture = fixture(
        vec![
            (ok("short", "m", "aws"), 1.0, 1.0, Some(1_000)),
            (ok("long", "m", "gcp"), 1.0, 1.0, Some(100_000)),
        ],
        RoutingConfig::default(),
    );
    let plan = fixture
        .router
        .plan(&Caller::anonymous(), &ask("m"))
        .unwrap();
    assert_eq!(labels(&plan), ["long/m"]);
    assert!(plan.skipped[0].reason.contains("context window of 1000"));
}

#[tokio::test(start_paused = true)]
async fn a_throttled_dedicated_deployment_bursts_to_on_demand_and_is_left_alone_for_its_retry_after()
 {
    let ptu = Scripted::new("ptu", "m", "azure", true, Script::answer("dedicated"))
        .then(Script::refuse(throttled(Some(30))));
    let fixture = fixture(
        vec![
            (ptu, 0.0, 0.0, None),
            (ok("paygo", "m", "azure"), 2.0, 8.0, None),
        ],
        RoutingConfig::default(),
    );
    let (text, summary) = run(&fixture, ask("m")).await;
    let summary = summary.unwrap();
    assert_eq!(text, "hello");
    assert_eq!(
        outcomes(&summary),
        [
            ("ptu/m".into(), AttemptOutcome::Failed(ErrorKind::Throttled)),
            ("paygo/m".into(), AttemptOutcome::Ok)
        ]
    );
    assert_eq!(summary.failover_count(), 1);
    assert_eq!(summary.chosen.unwrap().id, "paygo");
    // Within the 30 s the dedicated deployment asked for, requests go straight on.
    tokio::time::advance(Duration::from_secs(10)).await;
    let (_, summary) = run(&fixture, ask("m")).await;
    assert_eq!(
        fixture.providers[0].calls(),
        1,
        "not called again before its Retry-After"
    );
    assert_eq!(
        summary.unwrap().attempts[0].outcome,
        AttemptOutcome::Skipped
    );
    tokio::time::advance(Duration::from_secs(21)).await;
    let (text, _) = run(&fixture, ask("m")).await;
    assert_eq!(
        text, "dedicated",
        "back on dedicated capacity after the wait"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deployment_at_its_quota_sends_the_overflow_on_without_calling_it() {
    let quota = RateLimits {
        requests_per_minute: Some(2),
        tokens_per_minute: None,
    };
    let fixture = fixture_with_quotas(
        vec![
            (ok("ptu", "m", "azure"), 0.0, 0.0, None),
            (ok("paygo", "m", "azure"), 2.0, 8.0, None),
        ],
        RoutingConfig::default(),
        &[quota],
    );
    for _ in 0..2 {
        let (_, summary) = run(&fixture, ask("m")).await;
        assert_eq!(summary.unwrap().chosen.unwrap().id, "ptu");
    }
    let (text, summary) = run(&fixture, ask("m")).await;
    let summary = summary.unwrap();
    assert_eq!(text, "hello");
    assert_eq!(summary.chosen.unwrap().id, "paygo");
    assert_eq!(summary.attempts[0].outcome, AttemptOutcome::Skipped);
    assert!(
        summary.attempts[0]
            .message
            .contains("quota of 2 requests per minute"),
        "{}",
        summary.attempts[0].message
    );
    assert_eq!(
        fixture.providers[0].calls(),
        2,
        "never called over its quota"
    );
    // Half a minute later one request's worth (60 s / 2) has come back.
    tokio::time::advance(Duration::from_secs(30)).await;
    let (_, summary) = run(&fixture, ask("m")).await;
    assert_eq!(summary.unwrap().chosen.unwrap().id, "ptu");
}

#[tokio::test(start_paused = true)]
async fn tokens_a_call_did_not_use_go_back_to_the_deployment_quota() {
    // Each call is charged its prompt estimate plus the 100 output tokens it may
    // use; the scripted answer uses far fewer, and the rest goes back.
    let quota = RateLimits {
        requests_per_minute: None,
        tokens_per_minute: Some(250),
    };
    let short = Script::Stream(vec![
        Step::Text("hi"),
        Step::Finish(Some(Usage {
            input_tokens: 1,
            output_tokens: 1,
            cached_input_tokens: 0,
            estimated: false,
        })),
    ]);
    let fixture = fixture_with_quotas(
        vec![(
            Scripted::new("only", "m", "azure", false, short),
            1.0,
            1.0,
            None,
        )],
        RoutingConfig::default(),
        &[quota],
    );
    // Without the refund the third call would not fit (3 x 100+ > 250).
    for round in 0..5 {
        let (text, summary) = run(&fixture, ask("m")).await;
        assert_eq!(text, "hi", "round {round}: {summary:?}");
    }
    assert_eq!(fixture.providers[0].calls(), 5);
}

#[tokio::test(start_paused = true)]
async fn when_every_deployment_is_at_its_quota_the_caller_is_told_when_to_retry() {
    let quota = RateLimits {
        requests_per_minute: Some(1),
        tokens_per_minute: None,
    };
    let settings = RoutingConfig {
        max_retry_wait_ms: 0,
        ..RoutingConfig::default()
    };
    let fixture = fixture_with_quotas(
        vec![(ok("only", "m", "azure"), 1.0, 1.0, None)],
        settings,
        &[quota],
    );
    let (_, first) = run(&fixture, ask("m")).await;
    assert!(first.is_ok());
    let (_, second) = run(&fixture, ask("m")).await;
    let (error, summary) = second.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Throttled);
    assert!(error.local_refusal, "skyfuse refused it, not the provider");
    let wait = error.retry_after.expect("a retry-after");
    assert!(
        wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
        "{wait:?}"
    );
    assert_eq!(summary.attempts[0].outcome, AttemptOutcome::Skipped);
    assert_eq!(fixture.providers[0].calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn outages_and_connection_errors_before_the_first_token_fail_over() {
    let fixture = fixture(
        vec![
            (
                ok("a", "m", "aws").then(Script::refuse(Error::unavailable("503"))),
                1.0,
                1.0,
                None,
            ),
            // Headers came, then the connection dropped before any text.
            (
                ok("b", "m", "gcp").then(Script::Stream(vec![Step::Fail(Error::unavailable(
                    "connection reset",
                ))])),
                1.0,
                1.0,
                None,
            ),
            // A "successful" stream without a single token.
            (
                ok("c", "m", "oci").then(Script::Stream(vec![Step::Finish(None)])),
                1.0,
                1.0,
                None,
            ),
            (ok("d", "m", "azure"), 1.0, 1.0, None),
        ],
        RoutingConfig::default(),
    );
    let (text, summary) = run(&fixture, ask("m")).await;
    let summary = summary.unwrap();
    assert_eq!(text, "hello");
    assert_eq!(summary.chosen.as_ref().unwrap().id, "d");
    assert_eq!(summary.failover_count(), 3);
    assert!(
        summary.attempts[2]
            .message
            .contains("without producing any text")
    );
}

#[tokio::test(start_paused = true)]
async fn bad_requests_do_not_fail_over() {
    for error in [
        Error::invalid("400 bad request"),
        Error::forbidden("403 not for this caller"),
    ] {
        let fixture = fixture(
            vec![
                (
                    ok("a", "m", "aws").then(Script::refuse(error.clone())),
                    1.0,
                    1.0,
                    None,
                ),
                (ok("b", "m", "gcp"), 1.0, 1.0, None),
            ],
            RoutingConfig::default(),
        );
        let (_, result) = run(&fixture, ask("m")).await;
        let (returned, summary) = result.unwrap_err();
        assert_eq!(returned.kind, error.kind);
        assert_eq!(summary.attempts.len(), 1);
        assert_eq!(
            fixture.providers[1].calls(),
            0,
            "{error}: no second attempt"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_context_length_refusal_moves_to_a_longer_context_equivalent() {
    let settings = RoutingConfig {
        equivalent: vec![vec!["small-ctx".into(), "big-ctx".into()]],
        ..RoutingConfig::default()
    };
    let too_long = Error::new(ErrorKind::ContextLength, "prompt is too long");
    let fixture = fixture(
        vec![
            (
                ok("a", "small-ctx", "azure").then(Script::refuse(too_long.clone())),
                1.0,
                1.0,
                Some(8_000),
            ),
            (ok("b", "small-ctx", "azure"), 1.0, 1.0, Some(8_000)),
            (ok("c", "big-ctx", "aws"), 1.0, 1.0, Some(200_000)),
        ],
        settings,
    );
    let (_, summary) = run(&fixture, ask("small-ctx")).await;
    let summary = summary.unwrap();
    assert_eq!(summary.chosen.unwrap().id, "c");
    assert_eq!(
        summary.attempts[1].outcome,
        AttemptOutcome::Skipped,
        "same window as the refusal"
    );
    assert_eq!(fixture.providers[1].calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_slow_first_token_times_out_and_fails_over() {
    let settings = RoutingConfig {
        first_token_timeout_ms: 2_000,
        ..RoutingConfig::default()
    };
    let slow = Script::Stream(vec![
        Step::Wait(Duration::from_secs(5)),
        Step::Text("late"),
        Step::Finish(None),
    ]);
    let fixture = fixture(
        vec![
            (ok("slow", "m", "aws").then(slow), 1.0, 1.0, None),
            (ok("fast", "m", "gcp"), 1.0, 1.0, None),
        ],
        settings,
    );
    let began = Instant::now();
    let (text, summary) = run(&fixture, ask("m")).await;
    let summary = summary.unwrap();
    assert_eq!(text, "hello");
    assert_eq!(
        summary.attempts[0].outcome,
        AttemptOutcome::Failed(ErrorKind::Timeout)
    );
    assert_eq!(
        began.elapsed(),
        Duration::from_secs(2),
        "waited the first-token timeout, not 5 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stall_after_the_first_token_is_an_in_band_error_not_a_clean_end() {
    let settings = RoutingConfig {
        inter_chunk_timeout_ms: 3_000,
        ..RoutingConfig::default()
    };
    let stall = Script::Stream(vec![
        Step::Text("partial "),
        Step::Text("answer"),
        Step::Wait(Duration::from_secs(60)),
        Step::Text("never"),
        Step::Finish(None),
    ]);
    let fixture = fixture(
        vec![
            (ok("a", "m", "aws").then(stall), 1.0, 1.0, None),
            (ok("b", "m", "gcp"), 1.0, 1.0, None),
        ],
        settings,
    );
    let (text, result) = run(&fixture, ask("m")).await;
    assert_eq!(text, "partial answer");
    let (error, summary) = result.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Timeout);
    assert!(
        error.message.contains("silent for 3000 ms"),
        "{}",
        error.message
    );
    assert_eq!(
        fixture.providers[1].calls(),
        0,
        "no failover after tokens went out"
    );
    assert!(
        summary.attempts[0]
            .message
            .starts_with("after the first token")
    );
    assert!(
        summary.usage.estimated && summary.usage.output_tokens > 0,
        "the partial answer is billed"
    );
}

#[tokio::test(start_paused = true)]
async fn an_upstream_error_mid_stream_is_surfaced_after_the_tokens() {
    let broken = Script::Stream(vec![
        Step::Text("half"),
        Step::Fail(Error::unavailable("modelStreamErrorException")),
    ]);
    let fixture = fixture(
        vec![(ok("a", "m", "aws").then(broken), 1.0, 1.0, None)],
        RoutingConfig::default(),
    );
    let (text, result) = run(&fixture, ask("m")).await;
    assert_eq!(text, "half");
    assert!(
        result
            .unwrap_err()
            .0
            .message
            .contains("modelStreamErrorException")
    );
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_after_consecutive_failures_and_a_later_probe_closes_it() {
    let settings = RoutingConfig {
        breaker_threshold: 2,
        breaker_cooldown_ms: 10_000,
        ..RoutingConfig::default()
    };
    let flaky = ok("flaky", "m", "aws")
        .then(Script::refuse(Error::unavailable("503")))
        .then(Script::refuse(Error::unavailable("503")));
    let fixture = fixture(
        vec![
            (flaky, 1.0, 1.0, None),
            (ok("steady", "m", "gcp"), 1.0, 1.0, None),
        ],
        settings,
    );
    for _ in 0..2 {
        let (text, _) = run(&fixture, ask("m")).await;
        assert_eq!(text, "hello");
    }
    assert_eq!(fixture.providers[0].calls(), 2);
    let (_, summary) = run(&fixture, ask("m")).await;
    assert_eq!(fixture.providers[0].calls(), 2, "open: not called");
    assert_eq!(
        summary.unwrap().attempts[0].outcome,
        AttemptOutcome::Skipped
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    let (_, summary) = run(&fixture, ask("m")).await;
    assert_eq!(
        summary.unwrap().chosen.unwrap().id,
        "flaky",
        "the half-open probe succeeded"
    );
    assert!(!fixture.router.deployments[0].breaker.is_open());
}

#[tokio::test(start_paused = true)]
async fn when_every_deployment_is_throttled_the_router_waits_for_the_earliest_retry_after() {
    let settings = RoutingConfig {
        max_retry_wait_ms: 2_000,
        ..RoutingConfig::default()
    };
    let fixture = fixture(
        vec![
            (
                ok("a", "m", "aws").then(Script::refuse(throttled(Some(1)))),
                1.0,
                1.0,
                None,
            ),
            (
                ok("b", "m", "gcp").then(Script::refuse(throttled(Some(60)))),
                1.0,
                1.0,
                None,
            ),
        ],
        settings,
    );
    let began = Instant::now();
    let (text, summary) = run(&fixture, ask("m")).await;
    assert_eq!(text, "hello");
    assert_eq!(summary.unwrap().chosen.unwrap().id, "a");
    assert_eq!(
        began.elapsed(),
        Duration::from_secs(1),
        "waited for a's Retry-After only"
    );

    // Too long a wait: give up at once with the hint.
    let fixture2 = fixture_all_throttled(120);
    let (_, result) = run(&fixture2, ask("m")).await;
    let (error, _) = result.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Throttled);
    assert_eq!(error.retry_after, Some(Duration::from_secs(120)));
}

fn fixture_all_throttled(seconds: u64) -> Fixture {
    fixture(
        vec![(
            ok("a", "m", "aws").then(Script::refuse(throttled(Some(seconds)))),
            1.0,
            1.0,
            None,
        )],
        RoutingConfig::default(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_budget_skips_what_it_cannot_cover_and_settles_the_real_cost() {
    let fixture = fixture(
        vec![
            (ok("pricey", "m", "aws"), 1_000.0, 1_000.0, None),
            (ok("cheap", "m", "gcp"), 1.0, 1.0, None),
        ],
        RoutingConfig::default(),
    );
    let caller = Caller {
        id: "team".into(),
        budget_usd_per_day: Some(0.5),
        ..Caller::anonymous()
    };
    let started = started(&fixture, &caller, Duration::from_secs(60)).await;
    let mut events = started.into_events();
    let mut summary = None;
    while let Some(event) = events.recv().await {
        if let RouteEvent::Done(done) = event {
            summary = Some(done);
        }
    }
    let summary = summary.unwrap();
    assert_eq!(summary.attempts[0].outcome, AttemptOutcome::Skipped);
    assert!(summary.attempts[0].message.contains("over budget"));
    // 1000 input + 100 output tokens at $1 per 1M each.
    assert!((summary.cost_usd - 0.0011).abs() < 1e-12);
    assert!((fixture.router.budgets.spent_today("team") - 0.0011).abs() < 1e-12);
}

fn budgeted(budget: f64) -> Caller {
    Caller {
        id: "team".into(),
        budget_usd_per_day: Some(budget),
        ..Caller::anonymous()
    }
}

#[tokio::test(start_paused = true)]
async fn absurd_reported_usage_is_capped_and_cannot_lock_a_caller_out() {
    let absurd = Script::Stream(vec![
        Step::Text("hi"),
        Step::Finish(Some(Usage {
            input_tokens: 200_000_000_000_000,
            output_tokens: u64::MAX,
            cached_input_tokens: 0,
            estimated: false,
        })),
    ]);
    let liar = Scripted::new("liar", "m", "aws", false, absurd);
    let fixture = fixture(vec![(liar, 1.0, 1.0, None)], RoutingConfig::default());
    let caller = budgeted(0.5);
    let plan = fixture.router.plan(&caller, &ask("m")).unwrap();
    for round in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(60);
        let started = fixture
            .router
            .start(&caller, &plan, &chat(), deadline)
            .await
            .unwrap_or_else(|failure| panic!("round {round}: {}", failure.error.message));
        let mut events = started.into_events();
        let mut summary = None;
        while let Some(event) = events.recv().await {
            if let RouteEvent::Done(done) = event {
                summary = Some(done);
            }
        }
        let summary = summary.expect("done");
        // chat() is 3 estimated prompt tokens: at most 3*4 + 1024 in, 100 + 1024 out.
        assert_eq!(summary.usage.input_tokens, 1_036);
        assert_eq!(summary.usage.output_tokens, 1_124);
        assert!(summary.cost_usd < 0.01, "{}", summary.cost_usd);
    }
    assert!(fixture.router.budgets.spent_today("team") < 0.01);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_releases_the_upstream_call_and_the_budget() {
    let mut steps: Vec<Step> = (0..500).map(|_| Step::Text("word ")).collect();
    steps.push(Step::Finish(None));
    let chatty = Scripted::new("chatty", "m", "aws", false, Script::Stream(steps));
    let settings = RoutingConfig {
        stream_send_timeout_ms: 5_000,
        ..RoutingConfig::default()
    };
    let fixture = fixture(vec![(chatty, 1_000.0, 1_000.0, None)], settings);
    let caller = budgeted(2.0);
    let plan = fixture.router.plan(&caller, &ask("m")).unwrap();
    let started = started(&fixture, &caller, Duration::from_secs(600)).await;
    let mut events = started.into_events();
    // The client reads nothing for a minute (well within the request deadline).
    tokio::time::sleep(Duration::from_secs(60)).await;
    let held = fixture.router.budgets.reserve("team", 2.0, 1.5).await;
    assert!(
        held.is_ok(),
        "the stalled call's hold (${:.2}) was settled",
        plan.candidates[0].max_cost_usd.unwrap()
    );
    held.unwrap().release();
    let spent = fixture.router.budgets.spent_today("team");
    assert!(spent > 0.0, "what was produced is charged");
    let mut tokens = 0;
    while let Some(event) = events.recv().await {
        match event {
            RouteEvent::Token(_) => tokens += 1,
            other => panic!("a stalled stream ends without {other:?}"),
        }
    }
    assert!(
        tokens < 100,
        "{tokens} tokens: the upstream call was dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn collect_gathers_the_whole_answer_on_the_callers_task() {
    let fixture = fixture(
        vec![(ok("only", "m", "aws"), 1.0, 1.0, None)],
        RoutingConfig::default(),
    );
    let caller = Caller::anonymous();
    let started = started(&fixture, &caller, Duration::from_secs(60)).await;
    let (text, summary) = started.collect().await.expect("a whole answer");
    assert_eq!(text, "hello");
    assert_eq!(summary.finish_reason, "stop");
    assert_eq!(
        outcomes(&summary),
        [("only/m".to_string(), AttemptOutcome::Ok)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_collect_dropped_midway_settles_the_budget_and_tells_the_finish_hook() {
    let mut steps: Vec<Step> = vec![Step::Text("word ")];
    steps.push(Step::Wait(Duration::from_secs(30)));
    steps.push(Step::Text("late "));
    steps.push(Step::Finish(None));
    let slow = Scripted::new("slow", "m", "aws", false, Script::Stream(steps));
    let fixture = fixture(
        vec![(slow, 1_000.0, 1_000.0, None)],
        RoutingConfig::default(),
    );
    let caller = budgeted(2.0);
    let mut started = started(&fixture, &caller, Duration::from_secs(600)).await;
    let (told, ended) = tokio::sync::oneshot::channel();
    started.on_finish(move |summary| {
        let _ = told.send((summary.usage, summary.finish_reason.clone()));
    });
    // The client leaves while the model is still generating.
    let gathered = tokio::time::timeout(Duration::from_secs(5), started.collect()).await;
    assert!(gathered.is_err(), "the answer was still coming");
    let (usage, finish_reason) = ended.await.expect("the finish hook ran");
    assert!(usage.estimated, "what was produced is charged by estimate");
    assert!(usage.output_tokens > 0);
    assert_eq!(finish_reason, "", "the call did not finish");
    let spent = fixture.router.budgets.spent_today("team");
    assert!(spent > 0.0, "what was produced is charged");
    let held = fixture.router.budgets.reserve("team", 2.0, 1.9).await;
    assert!(held.is_ok(), "the hold was settled, not kept");
}

#[tokio::test(start_paused = true)]
async fn a_half_open_probe_refused_for_its_input_still_closes_the_circuit() {
    let settings = RoutingConfig {
        breaker_threshold: 1,
        breaker_cooldown_ms: 1_000,
        max_retry_wait_ms: 0,
        ..RoutingConfig::default()
    };
    let single = ok("only", "m", "aws")
        .then(Script::refuse(Error::unavailable("503")))
        .then(Script::refuse(Error::invalid("400 bad request")));
    let fixture = fixture(vec![(single, 1.0, 1.0, None)], settings);
    let (_, first) = run(&fixture, ask("m")).await;
    assert!(first.is_err());
    assert!(fixture.router.deployments[0].breaker.is_open());
    tokio::time::advance(Duration::from_secs(2)).await;
    // The probe: the deployment answers, if only with a 400 for this request.
    let (_, probe) = run(&fixture, ask("m")).await;
    assert_eq!(probe.unwrap_err().0.kind, ErrorKind::InvalidArgument);
    assert!(
        !fixture.router.deployments[0].breaker.is_open(),
        "decided, not stuck half-open"
    );
    let (text, _) = run(&fixture, ask("m")).await;
    assert_eq!(text, "hello");
}

#[tokio::test(start_paused = true)]
async fn the_active_probe_closes_a_recovered_deployments_circuit_without_live_traffic() {
    let settings = RoutingConfig {
        breaker_threshold: 1,
        breaker_cooldown_ms: 5_000,
        max_retry_wait_ms: 0,
        probe_interval_ms: 1_000,
        ..RoutingConfig::default()
    };
    let flaky = ok("flaky", "m", "aws").then(Script::refuse(Error::unavailable("503")));
    let Fixture { router, providers } = fixture(vec![(flaky, 1.0, 1.0, None)], settings);
    let router = Arc::new(router);
    let caller = Caller::anonymous();
    let plan = router.plan(&caller, &ask("m")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    assert!(
        router
            .start(&caller, &plan, &chat(), deadline)
            .await
            .is_err()
    );
    assert!(router.deployments[0].breaker.is_open());
    let probe = router.spawn_probe().expect("probing is on");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(providers[0].calls(), 1, "not probed before its cooldown");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(providers[0].calls(), 2, "probed once the cooldown passed");
    assert!(
        !router.deployments[0].breaker.is_open(),
        "the probe closed it"
    );
    probe.abort();
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_panics_does_not_stop_probing() {
    let settings = RoutingConfig {
        breaker_threshold: 1,
        breaker_cooldown_ms: 5_000,
        breaker_max_cooldown_ms: 5_000,
        max_retry_wait_ms: 0,
        probe_interval_ms: 1_000,
        ..RoutingConfig::default()
    };
    let flaky = ok("flaky", "m", "aws")
        .then(Script::refuse(Error::unavailable("503")))
        .then(Script::Panic);
    let Fixture { router, providers } = fixture(vec![(flaky, 1.0, 1.0, None)], settings);
    let router = Arc::new(router);
    let caller = Caller::anonymous();
    let plan = router.plan(&caller, &ask("m")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    assert!(
        router
            .start(&caller, &plan, &chat(), deadline)
            .await
            .is_err()
    );
    let probe = router.spawn_probe().expect("probing is on");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        providers[0].calls(),
        2,
        "the first probe ran (and panicked)"
    );
    assert!(
        router.deployments[0].breaker.is_open(),
        "a panic is a failure"
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(providers[0].calls(), 3, "probing went on after the panic");
    assert!(
        !router.deployments[0].breaker.is_open(),
        "the next probe closed it"
    );
    assert!(!probe.is_finished());
    probe.abort();
}

#[test]
fn residency_keeps_prompts_in_the_allowed_regions() {
    let fixture = fixture(
        vec![
            (
                ok("bedrock-us", "m", "aws").in_region("us-east-1"),
                1.0,
                1.0,
                None,
            ),
            (
                ok("bedrock-eu", "m", "aws").in_region("eu-central-1"),
                2.0,
                2.0,
                None,
            ),
            (
                ok("vertex-eu", "m", "gcp").in_region("europe-west4"),
                2.0,
                2.0,
                None,
            ),
        ],
        RoutingConfig::default(),
    );
    let eu_only = Caller {
        id: "eu-team".into(),
        regions: Glob::all(&["eu-*".into(), "europe-*".into()]).unwrap(),
        ..Caller::anonymous()
    };
    let plan = fixture.router.plan(&eu_only, &ask("m")).unwrap();
    assert_eq!(labels(&plan), ["bedrock-eu/m", "vertex-eu/m"]);
    assert!(
        plan.skipped[0].reason.contains("region us-east-1"),
        "{:?}",
        plan.skipped
    );

    // A request can narrow further than its caller, never widen.
    let request = RouteRequest {
        regions: vec!["europe-*".into()],
        ..ask("m")
    };
    let plan = fixture.router.plan(&eu_only, &request).unwrap();
    assert_eq!(labels(&plan), ["vertex-eu/m"]);
    let widen = RouteRequest {
        regions: vec!["us-*".into()],
        ..ask("m")
    };
    assert!(
        fixture
            .router
            .plan(&eu_only, &widen)
            .unwrap()
            .candidates
            .is_empty()
    );
}

/// A deployment refusing our credential is that deployment's failure, not the
/// caller's: the next deployment answers, and the refusal is counted and shown.
#[tokio::test(start_paused = true)]
async fn refused_credentials_fail_over_and_count_against_the_deployment() {
    let settings = RoutingConfig {
        breaker_threshold: 1,
        ..RoutingConfig::default()
    };
    let fixture = fixture(
        vec![
            (
                ok("a", "m", "aws").then(Script::refuse(Error::new(
                    ErrorKind::Auth,
                    "401 unauthorized",
                ))),
                1.0,
                1.0,
                None,
            ),
            (ok("b", "m", "gcp"), 1.0, 1.0, None),
        ],
        settings,
    );
    let (text, summary) = run(&fixture, ask("m")).await;
    let summary = summary.unwrap();
    assert_eq!(text, "hello");
    assert_eq!(
        outcomes(&summary),
        [
            ("a/m".into(), AttemptOutcome::Failed(ErrorKind::Auth)),
            ("b/m".into(), AttemptOutcome::Ok)
        ]
    );
    assert!(summary.attempts[0].message.contains("401"));
    assert!(fixture.router.deployments[0].breaker.is_open());
}

/// The router follows the one failure policy: the next candidate is tried only
/// as `ErrorKind::failover` says, and the breaker counts, before and after the
/// first token, what `ErrorKind::counts_against_endpoint` blames on the deployment.
#[tokio::test(start_paused = true)]
async fn failover_and_breaker_follow_the_failure_policy_for_every_kind() {
    let settings = RoutingConfig {
        breaker_threshold: 1,
        max_retry_wait_ms: 0,
        ..RoutingConfig::default()
    };
    for kind in ErrorKind::ALL {
        let failing = ok("a", "m", "aws").then(Script::refuse(Error::new(kind, "scripted")));
        // Both have the same window: a longer-context failover has nowhere to go.
        let before = fixture(
            vec![
                (failing, 1.0, 1.0, Some(8_000)),
                (ok("b", "m", "gcp"), 1.0, 1.0, Some(8_000)),
            ],
            settings.clone(),
        );
        let (_, result) = run(&before, ask("m")).await;
        let failed_over = kind.failover() == Failover::Next;
        assert_eq!(result.is_ok(), failed_over, "{kind}");
        assert_eq!(
            before.providers[1].calls(),
            usize::from(failed_over),
            "{kind}"
        );
        if let Err((error, _)) = result {
            assert_eq!(error.kind, kind);
        }
        assert_eq!(
            before.router.deployments[0].breaker.is_open(),
            kind.counts_against_endpoint(),
            "{kind}: before the first token"
        );

        let broken = ok("a", "m", "aws").then(Script::Stream(vec![
            Step::Text("half"),
            Step::Fail(Error::new(kind, "scripted")),
        ]));
        let after = fixture(vec![(broken, 1.0, 1.0, None)], settings.clone());
        let (text, result) = run(&after, ask("m")).await;
        assert_eq!(text, "half");
        assert_eq!(result.unwrap_err().0.kind, kind);
        assert_eq!(
            after.router.deployments[0].breaker.is_open(),
            kind.counts_against_endpoint(),
            "{kind}: after the first token"
        );
    }
}

#[test]
fn a_deployments_stop_sequences_follow_the_callers_without_repeats_and_within_four() {
    let request = |stop: &[&str]| ChatRequest {
        messages: Vec::new(),
        max_output_tokens: 8,
        temperature: 0.0,
        stop: stop.iter().map(|text| text.to_string()).collect(),
    };
    let deployment_stop = ["\nQuestion:".to_string(), "###".to_string()];
    let merged = super::failover::with_deployment_stop(&request(&["END"]), &deployment_stop);
    assert_eq!(merged.stop, ["END", "\nQuestion:", "###"]);
    let repeated = super::failover::with_deployment_stop(&request(&["###"]), &deployment_stop);
    assert_eq!(repeated.stop, ["###", "\nQuestion:"]);
    let full = super::failover::with_deployment_stop(&request(&["a", "b", "c"]), &deployment_stop);
    assert_eq!(
        full.stop,
        ["a", "b", "c", "\nQuestion:"],
        "the caller's come first"
    );
}
