//! `[routing]`: rules, tiers, equivalences and failover timers; and the checks that
//! span the routing tables (`[[deployment]]`, `[[provider]]`, `[[price]]`,
//! `[[caller]]`, `[facade]`). Pure types and checks.

use serde::Deserialize;

use super::{CallerConfig, DeploymentConfig, FacadeConfig, Glob, PriceConfig};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// The model answering requests that name none.
    pub default_model: Option<String>,
    /// The tier answering requests that name neither model nor tier.
    pub default_tier: Option<String>,
    /// Order on-demand deployments of a model (and models of a tier) by the
    /// request's estimated cost instead of configuration order.
    pub cost_optimize: bool,
    #[serde(rename = "rule")]
    pub rules: Vec<RouteRule>,
    #[serde(rename = "tier")]
    pub tiers: Vec<TierConfig>,
    /// Groups of models that may stand in for each other when every deployment
    /// of the asked model failed: `[["gpt-4o", "claude-3.5-sonnet"]]`.
    pub equivalent: Vec<Vec<String>>,
    /// Most deployments tried for one request.
    pub max_attempts: usize,
    /// One attempt's cap, inside the request deadline.
    pub attempt_timeout_ms: u64,
    /// From sending to the first token: connection, queueing and prompt reading.
    pub first_token_timeout_ms: u64,
    /// Longest silence between two chunks once tokens flow.
    pub inter_chunk_timeout_ms: u64,
    /// Longest wait to hand a chunk to a client that stopped reading: past it the
    /// upstream call is dropped, the budget settled with what was produced, and
    /// the stream ends.
    pub stream_send_timeout_ms: u64,
    /// When every deployment is throttled or cooling down, wait at most this long
    /// for the earliest to come back (within the deadline) before giving up.
    pub max_retry_wait_ms: u64,
    /// Consecutive failures that open a deployment's circuit.
    pub breaker_threshold: u32,
    pub breaker_cooldown_ms: u64,
    pub breaker_max_cooldown_ms: u64,
    /// Failure share over the last `breaker_window` calls that opens it too.
    pub breaker_error_rate: f64,
    pub breaker_window: usize,
    /// Send a one-token request to each deployment whose circuit is open this
    /// often, so it closes without waiting for live traffic; 0 = passive only.
    pub probe_interval_ms: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            default_model: None,
            default_tier: None,
            cost_optimize: false,
            rules: Vec::new(),
            tiers: Vec::new(),
            equivalent: Vec::new(),
            max_attempts: 4,
            attempt_timeout_ms: 60_000,
            first_token_timeout_ms: 15_000,
            inter_chunk_timeout_ms: 20_000,
            stream_send_timeout_ms: 30_000,
            max_retry_wait_ms: 2_000,
            breaker_threshold: 3,
            breaker_cooldown_ms: 5_000,
            breaker_max_cooldown_ms: 120_000,
            breaker_error_rate: 0.5,
            breaker_window: 20,
            probe_interval_ms: 0,
        }
    }
}

/// Models matching `model` (exact, or a glob: `gpt-*`, `{gpt,o1}-*`) go only to the
/// listed providers or clouds, in that order of preference. The first matching rule wins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    pub model: Glob,
    #[serde(default)]
    pub providers: Vec<String>,
    #[serde(default)]
    pub clouds: Vec<String>,
}

/// A budget tier: the models it may use and the most it may cost.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    pub name: String,
    /// In order of preference (unless `cost_optimize`).
    pub models: Vec<String>,
    /// Estimated cost of the request per 1,000 tokens (prompt + output).
    pub max_usd_per_1k_tokens: f64,
}

/// What the routing sections get wrong, each naming its key. `deployments` includes
/// the one `answer.provider` implies.
pub fn routing_problems(
    routing: &RoutingConfig,
    deployments: &[DeploymentConfig],
    providers: &[super::ProviderConfig],
    prices: &[PriceConfig],
    callers: &[CallerConfig],
    facade: &FacadeConfig,
    problems: &mut Vec<String>,
) {
    let served = |model: &str| {
        deployments
            .iter()
            .any(|deployment| deployment.model == model)
    };
    let mut seen = std::collections::HashSet::new();
    for deployment in deployments {
        let name = format!(
            "deployment {:?} on {:?}",
            deployment.model, deployment.provider
        );
        if !providers
            .iter()
            .any(|provider| provider.id == deployment.provider)
        {
            problems.push(format!("{name}: provider is not a defined [[provider]]"));
        }
        if !seen.insert((deployment.provider.as_str(), deployment.wire_id())) {
            problems.push(format!("{name}: defined twice"));
        }
        if deployment.context_window == Some(0) {
            problems.push(format!("{name}: context_window must be at least 1"));
        }
        if deployment.stop.len() > crate::llm::MAX_STOP_SEQUENCES
            || deployment.stop.iter().any(String::is_empty)
        {
            problems.push(format!(
                "{name}: stop takes at most {} non-empty sequences",
                crate::llm::MAX_STOP_SEQUENCES
            ));
        }
        if deployment.requests_per_minute == Some(0) || deployment.tokens_per_minute == Some(0) {
            problems.push(format!(
                "{name}: requests_per_minute and tokens_per_minute must be at least 1 (leave them out for no quota)"
            ));
        }
        for (key, price) in [
            ("input_per_1m_usd", deployment.input_per_1m_usd),
            ("output_per_1m_usd", deployment.output_per_1m_usd),
            (
                "cached_input_per_1m_usd",
                deployment.cached_input_per_1m_usd,
            ),
        ] {
            if price.is_some_and(|price| !(price >= 0.0 && price.is_finite())) {
                problems.push(format!("{name}: {key} must be a price of 0 or more"));
            }
        }
    }
    for price in prices {
        if !(price.input_per_1m_usd >= 0.0 && price.output_per_1m_usd >= 0.0) {
            problems.push(format!(
                "price {:?} on {:?}: prices must be 0 or more",
                price.model, price.cloud
            ));
        }
    }
    if let Some(model) = &routing.default_model
        && !served(model)
    {
        problems.push(format!(
            "routing.default_model: no [[deployment]] serves {model:?}"
        ));
    }
    let tier_names: Vec<&str> = routing
        .tiers
        .iter()
        .map(|tier| tier.name.as_str())
        .collect();
    if let Some(tier) = &routing.default_tier
        && !tier_names.contains(&tier.as_str())
    {
        problems.push(format!(
            "routing.default_tier: {tier:?} is not a [[routing.tier]]"
        ));
    }
    for rule in &routing.rules {
        for provider in &rule.providers {
            if !providers.iter().any(|known| &known.id == provider) {
                problems.push(format!(
                    "routing rule {:?}: provider {provider:?} is not a defined [[provider]]",
                    rule.model
                ));
            }
        }
        if rule.providers.is_empty() && rule.clouds.is_empty() {
            problems.push(format!(
                "routing rule {:?}: needs `providers` or `clouds`",
                rule.model
            ));
        }
    }
    for (index, tier) in routing.tiers.iter().enumerate() {
        let name = format!("routing tier {:?}", tier.name);
        if tier_names[..index].contains(&tier.name.as_str()) {
            problems.push(format!("{name}: defined twice"));
        }
        if tier.models.is_empty() {
            problems.push(format!("{name}: lists no models"));
        }
        for model in tier.models.iter().filter(|model| !served(model)) {
            problems.push(format!("{name}: no [[deployment]] serves {model:?}"));
        }
        if tier.max_usd_per_1k_tokens.is_nan() || tier.max_usd_per_1k_tokens <= 0.0 {
            problems.push(format!("{name}: max_usd_per_1k_tokens must be above 0"));
        }
    }
    let mut grouped = std::collections::HashSet::new();
    for group in &routing.equivalent {
        for model in group {
            if !served(model) {
                problems.push(format!(
                    "routing.equivalent: no [[deployment]] serves {model:?}"
                ));
            }
            if !grouped.insert(model.as_str()) {
                problems.push(format!(
                    "routing.equivalent: {model:?} is in more than one group"
                ));
            }
        }
    }
    for (key, value) in [
        ("attempt_timeout_ms", routing.attempt_timeout_ms),
        ("first_token_timeout_ms", routing.first_token_timeout_ms),
        ("inter_chunk_timeout_ms", routing.inter_chunk_timeout_ms),
        ("stream_send_timeout_ms", routing.stream_send_timeout_ms),
        ("breaker_cooldown_ms", routing.breaker_cooldown_ms),
        ("breaker_threshold", u64::from(routing.breaker_threshold)),
        ("max_attempts", routing.max_attempts as u64),
    ] {
        if value == 0 {
            problems.push(format!("routing.{key} must be at least 1"));
        }
    }
    if !(routing.breaker_error_rate > 0.0 && routing.breaker_error_rate <= 1.0) {
        problems.push("routing.breaker_error_rate must be in (0, 1]".into());
    }
    let mut caller_ids = std::collections::HashSet::new();
    for caller in callers {
        let name = format!("caller {:?}", caller.id);
        if !caller_ids.insert(caller.id.as_str()) {
            problems.push(format!("{name}: defined twice"));
        }
        for tier in caller
            .tiers
            .iter()
            .filter(|tier| !tier_names.contains(&tier.as_str()))
        {
            problems.push(format!("{name}: tier {tier:?} is not a [[routing.tier]]"));
        }
        if caller
            .budget_usd_per_day
            .is_some_and(|budget| !(budget >= 0.0 && budget.is_finite()))
        {
            problems.push(format!("{name}: budget_usd_per_day must be 0 or more"));
        }
    }
    if let Some(listen) = &facade.listen
        && listen.parse::<std::net::SocketAddr>().is_err()
    {
        problems.push(format!(
            "facade.listen: {listen:?} is not an ip:port address"
        ));
    }
}
