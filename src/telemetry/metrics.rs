//! Every Prometheus metric skyfuse exports, declared once, with bounded labels.
//!
//! Labels are ids from the config (`source`, `provider`, `deployment`, `model`, `index`,
//! `cloud`, `region`) or closed sets (`outcome`, `kind`, `phase`, `entrance`); never a
//! query, a key, a caller-chosen string or a document id. docs/operations.md says what
//! each one means and the query that reads it.
//!
//! Recording is a hash lookup and an atomic add; gauges that mirror state elsewhere
//! (breakers, calls in flight) are set when `/metrics` is scraped, not on the hot path.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ingest::IndexProgress;
use crate::retrieve::{SourceOutcome, SourceStatus};
use crate::route::{Attempt, AttemptOutcome, RouteSummary};

/// Where a source or deployment lives.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
    pub cloud: String,
    pub region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceOutcomeLabels {
    pub source: String,
    pub cloud: String,
    pub region: String,
    /// ok | error | timeout | skipped
    pub outcome: &'static str,
}

/// One chat deployment. Built once per deployment (`route::Deployment::labels`):
/// recording a call copies pointers, not its names.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    pub provider: Arc<str>,
    pub deployment: Arc<str>,
    pub model: Arc<str>,
    pub cloud: Arc<str>,
    pub region: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub provider: Arc<str>,
    pub deployment: Arc<str>,
    pub model: Arc<str>,
    pub cloud: Arc<str>,
    pub region: Arc<str>,
    /// ok | skipped | an error kind (THROTTLED, UNAVAILABLE, ...)
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseTimeLabels {
    pub provider: Arc<str>,
    pub deployment: Arc<str>,
    pub model: Arc<str>,
    /// first_token | total
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub provider: Arc<str>,
    pub deployment: Arc<str>,
    /// input | output
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallerLabels {
    /// The principal's id (a configured caller, `<issuer>:<subject>`, a certificate id).
    pub caller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CitationLabels {
    pub provider: Arc<str>,
    pub deployment: Arc<str>,
    pub model: Arc<str>,
    /// true | false
    pub valid: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EgressLabels {
    pub from_cloud: String,
    pub to_cloud: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EntranceLabels {
    /// search | answer | chat (every model call: the facade's, or inside an Answer) | index
    pub entrance: &'static str,
    /// ok | degraded | error
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IndexLabels {
    pub index: String,
    /// listed | fetched | indexed | unchanged | deleted | pruned | skipped | failed | known_bad
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IndexVolumeLabels {
    pub index: String,
}

/// A kind of state replicas share (`[shared_state]`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SharedStateLabels {
    /// budgets | rate_limits | cooldowns | embedding_cache | answer_cache
    pub kind: &'static str,
}

/// A lookup in one of the caches.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// query_embedding | answer
    pub cache: &'static str,
    /// Where it was found: process | redis; miss when nowhere.
    pub tier: &'static str,
}

type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Latencies from 0.5 ms to ~16 s: store calls, first tokens and whole answers.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Feedback scores in tenths.
fn score_histogram() -> Histogram {
    Histogram::new((1..=10).map(|tenth| f64::from(tenth) / 10.0))
}

/// Costs from a hundredth of a cent to ~$10 per request.
fn cost_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

/// The registry and every family in it.
pub struct Metrics {
    registry: Registry,
    // Search and retrieval.
    pub requests: Family<EntranceLabels, Counter>,
    pub overhead: Family<EntranceLabels, Histogram>,
    pub source_latency: Family<SourceLabels, Histogram>,
    pub source_outcomes: Family<SourceOutcomeLabels, Counter>,
    // Chat routing: the seed's list.
    pub provider_availability: Family<DeploymentLabels, FloatGauge>,
    pub breaker_open: Family<DeploymentLabels, Gauge>,
    pub failover_count: Counter,
    pub attempts: Family<AttemptLabels, Counter>,
    pub attempt_latency: Family<DeploymentLabels, Histogram>,
    pub response_time: Family<ResponseTimeLabels, Histogram>,
    pub cost_per_request: Family<DeploymentLabels, Histogram>,
    pub cost_total: Family<DeploymentLabels, FloatCounter>,
    pub tokens: Family<TokenLabels, Counter>,
    pub egress_cost_total: Family<EgressLabels, FloatCounter>,
    pub quality_score: Family<DeploymentLabels, Histogram>,
    pub answer_citations: Family<CitationLabels, Counter>,
    // Ingestion.
    pub index_objects: Family<IndexLabels, Counter>,
    pub index_chunks: Family<IndexVolumeLabels, Counter>,
    pub index_bytes: Family<IndexVolumeLabels, Counter>,
    // State mirrored at scrape time.
    pub source_breaker_open: Family<SourceLabels, Gauge>,
    pub calls_in_flight: Gauge,
    pub budget_spent: Family<CallerLabels, FloatGauge>,
    pub budget_reserved: Family<CallerLabels, FloatGauge>,
    // Shared state (Redis), recorded as calls fail and as the subscriber probes.
    pub shared_state_errors: Family<SharedStateLabels, Counter>,
    pub shared_state_up: Gauge,
    // Caches: query embeddings and answers, by the tier that answered.
    pub cache_lookups: Family<CacheLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("skyfuse"),
            requests: Family::default(),
            overhead: Family::new_with_constructor(latency_histogram),
            source_latency: Family::new_with_constructor(latency_histogram),
            source_outcomes: Family::default(),
            provider_availability: Family::default(),
            breaker_open: Family::default(),
            failover_count: Counter::default(),
            attempts: Family::default(),
            attempt_latency: Family::new_with_constructor(latency_histogram),
            response_time: Family::new_with_constructor(latency_histogram),
            cost_per_request: Family::new_with_constructor(cost_histogram),
            cost_total: Family::default(),
            tokens: Family::default(),
            egress_cost_total: Family::default(),
            quality_score: Family::new_with_constructor(score_histogram),
            answer_citations: Family::default(),
            index_objects: Family::default(),
            index_chunks: Family::default(),
            index_bytes: Family::default(),
            source_breaker_open: Family::default(),
            calls_in_flight: Gauge::default(),
            budget_spent: Family::default(),
            budget_reserved: Family::default(),
            shared_state_errors: Family::default(),
            shared_state_up: Gauge::default(),
            cache_lookups: Family::default(),
        };
        // In process until a Redis store says otherwise.
        metrics.shared_state_up.set(1);
        metrics.register_all();
        metrics
    }

    fn register_all(&mut self) {
        let mut registry = std::mem::take(&mut self.registry);
        let m = &*self;
        registry.register(
            "requests",
            "Calls at each entrance, by outcome (degraded: some source did not answer)",
            m.requests.clone(),
        );
        registry.register(
            "overhead_seconds",
            "Time a call spent in skyfuse itself: its total minus the time waiting on stores and models",
            m.overhead.clone(),
        );
        registry.register(
            "cross_cloud_latency_seconds",
            "Time of each source's search, wherever it runs (p99: histogram_quantile)",
            m.source_latency.clone(),
        );
        registry.register(
            "source_searches",
            "Searches of each source by outcome",
            m.source_outcomes.clone(),
        );
        registry.register(
            "provider_availability",
            "Per deployment: 1 while its breaker lets calls through, 0 while open",
            m.provider_availability.clone(),
        );
        registry.register(
            "breaker_open",
            "Per deployment: 1 while its circuit breaker is open",
            m.breaker_open.clone(),
        );
        registry.register(
            "failover_count",
            "Chat calls that needed more than one attempt",
            m.failover_count.clone(),
        );
        registry.register(
            "chat_attempts",
            "Chat attempts by deployment and outcome (ok, skipped or the error kind); error_rate_by_provider is the error share of these",
            m.attempts.clone(),
        );
        registry.register(
            "chat_attempt_latency_seconds",
            "Time of each chat attempt until its first token or its failure",
            m.attempt_latency.clone(),
        );
        registry.register(
            "model_response_time_by_provider_seconds",
            "Chat response time by deployment: to the first token and in total",
            m.response_time.clone(),
        );
        registry.register(
            "cost_per_request_by_provider_usd",
            "Cost of each chat call, in USD, by the deployment that answered",
            m.cost_per_request.clone(),
        );
        registry.register(
            "cost_usd",
            "Chat spend in USD by deployment",
            m.cost_total.clone(),
        );
        registry.register(
            "chat_tokens",
            "Tokens billed by deployment and direction",
            m.tokens.clone(),
        );
        registry.register(
            "egress_cost_usd",
            "Data transfer cost in USD between clouds (filled by the residency and egress policy)",
            m.egress_cost_total.clone(),
        );
        registry.register(
            "model_quality_score_by_provider",
            "Scores callers gave answers with Feedback (0 to 1), by the deployment that answered",
            m.quality_score.clone(),
        );
        registry.register(
            "answer_citations",
            "Model answers by whether every [n] they cite is a passage that was sent (valid) or not",
            m.answer_citations.clone(),
        );
        registry.register(
            "index_objects",
            "Objects seen by index runs, by what happened to them",
            m.index_objects.clone(),
        );
        registry.register(
            "index_chunks",
            "Chunks written by index runs",
            m.index_chunks.clone(),
        );
        registry.register(
            "index_read_bytes",
            "Bytes read from buckets and folders by index runs",
            m.index_bytes.clone(),
        );
        registry.register(
            "source_breaker_open",
            "Per source: 1 while its circuit breaker is open",
            m.source_breaker_open.clone(),
        );
        registry.register(
            "calls_in_flight",
            "Calls being served on both edges (server.max_concurrent_calls is the cap)",
            m.calls_in_flight.clone(),
        );
        registry.register(
            "budget_spent_usd",
            "Spend settled today (UTC) per caller with a daily budget",
            m.budget_spent.clone(),
        );
        registry.register(
            "budget_reserved_usd",
            "Spend held right now by calls in flight, per caller with a daily budget",
            m.budget_reserved.clone(),
        );
        registry.register(
            "shared_state_errors",
            "Redis calls of the shared state that failed or timed out, by kind (each then failed open or closed as configured)",
            m.shared_state_errors.clone(),
        );
        registry.register(
            "shared_state_up",
            "1 while the shared state answers: always in process; with Redis, whether its last call or probe got an answer",
            m.shared_state_up.clone(),
        );
        registry.register(
            "cache_lookups",
            "Lookups in the query-embedding and answer caches, by the tier that had the entry (process, redis) or miss",
            m.cache_lookups.clone(),
        );
        self.registry = registry;
    }

    /// A lookup in `cache` answered by `tier` (process | redis | miss).
    pub fn record_cache_lookup(&self, cache: &'static str, tier: &'static str) {
        self.cache_lookups
            .get_or_create(&CacheLabels { cache, tier })
            .inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// One call at `entrance` ended with `outcome` (its time is in its own metrics).
    pub fn record_request(&self, entrance: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&EntranceLabels { entrance, outcome })
            .inc();
    }

    /// One call at `entrance` ended with `outcome` after `total`, of which `waited` was
    /// spent on stores and models.
    pub fn record_call(
        &self,
        entrance: &'static str,
        outcome: &'static str,
        total: Duration,
        waited: Duration,
    ) {
        let labels = EntranceLabels { entrance, outcome };
        self.requests.get_or_create(&labels).inc();
        self.overhead
            .get_or_create(&labels)
            .observe(total.saturating_sub(waited).as_secs_f64());
    }

    /// A source's part in one search.
    pub fn record_source(&self, outcome: &SourceOutcome, cloud: &str, region: &str) {
        let labels = SourceLabels {
            source: outcome.source.clone(),
            cloud: cloud.to_owned(),
            region: region.to_owned(),
        };
        let status = outcome.status.as_str();
        if outcome.status != SourceStatus::Skipped {
            self.source_latency
                .get_or_create(&labels)
                .observe(outcome.took.as_secs_f64());
        }
        self.source_outcomes
            .get_or_create(&SourceOutcomeLabels {
                source: labels.source,
                cloud: labels.cloud,
                region: labels.region,
                outcome: status,
            })
            .inc();
    }

    /// The attempts of one chat call, and whether it failed over.
    pub fn record_attempts(&self, attempts: &[Attempt]) {
        let sent = attempts
            .iter()
            .filter(|attempt| attempt.outcome != AttemptOutcome::Skipped)
            .count();
        if sent > 1 {
            self.failover_count.inc();
        }
        for attempt in attempts {
            let outcome = match attempt.outcome {
                AttemptOutcome::Ok => "ok",
                AttemptOutcome::Skipped => "skipped",
                AttemptOutcome::Failed(kind) => kind.as_str(),
            };
            if attempt.outcome != AttemptOutcome::Skipped {
                self.attempt_latency
                    .get_or_create(&deployment_of(attempt))
                    .observe(attempt.took.as_secs_f64());
            }
            self.attempts
                .get_or_create(&AttemptLabels {
                    provider: attempt.provider.clone(),
                    deployment: attempt.deployment.clone(),
                    model: attempt.model.clone(),
                    cloud: attempt.cloud.clone(),
                    region: attempt.region.clone(),
                    outcome,
                })
                .inc();
        }
    }

    /// A chat call that produced tokens and ended: its first-token and total times,
    /// usage and cost, under the deployment that answered.
    pub fn record_answered(&self, summary: &RouteSummary, first_token: Duration, total: Duration) {
        let Some(deployment) = answered_by(summary) else {
            return;
        };
        for (phase, took) in [("first_token", first_token), ("total", total)] {
            self.response_time
                .get_or_create(&ResponseTimeLabels {
                    provider: deployment.provider.clone(),
                    deployment: deployment.deployment.clone(),
                    model: deployment.model.clone(),
                    phase,
                })
                .observe(took.as_secs_f64());
        }
        for (direction, tokens) in [
            ("input", summary.usage.input_tokens),
            ("output", summary.usage.output_tokens),
        ] {
            self.tokens
                .get_or_create(&TokenLabels {
                    provider: deployment.provider.clone(),
                    deployment: deployment.deployment.clone(),
                    direction,
                })
                .inc_by(tokens);
        }
        self.cost_per_request
            .get_or_create(&deployment)
            .observe(summary.cost_usd);
        self.cost_total
            .get_or_create(&deployment)
            .inc_by(summary.cost_usd);
    }

    /// Whether a model's answer cited only passages it was given.
    pub fn record_citations(&self, deployment: &DeploymentLabels, valid: bool) {
        self.answer_citations
            .get_or_create(&CitationLabels {
                provider: deployment.provider.clone(),
                deployment: deployment.deployment.clone(),
                model: deployment.model.clone(),
                valid: if valid { "true" } else { "false" },
            })
            .inc();
    }

    /// The counts of one finished index run.
    pub fn record_index_run(&self, index: &str, progress: &IndexProgress) {
        for (outcome, count) in [
            ("listed", progress.listed),
            ("fetched", progress.fetched),
            ("indexed", progress.indexed),
            ("unchanged", progress.unchanged),
            ("deleted", progress.deleted),
            ("pruned", progress.pruned),
            ("skipped", progress.skipped),
            ("failed", progress.failed),
            ("known_bad", progress.known_bad),
        ] {
            self.index_objects
                .get_or_create(&IndexLabels {
                    index: index.to_owned(),
                    outcome,
                })
                .inc_by(count);
        }
        let labels = IndexVolumeLabels {
            index: index.to_owned(),
        };
        self.index_chunks
            .get_or_create(&labels)
            .inc_by(progress.chunks_written);
        self.index_bytes
            .get_or_create(&labels)
            .inc_by(progress.bytes_read);
    }
}

/// The deployment that answered a call, if one did.
pub fn answered_by(summary: &RouteSummary) -> Option<DeploymentLabels> {
    summary
        .attempts
        .iter()
        .rev()
        .find(|attempt| attempt.outcome == AttemptOutcome::Ok)
        .map(deployment_of)
}

fn deployment_of(attempt: &Attempt) -> DeploymentLabels {
    DeploymentLabels {
        provider: attempt.provider.clone(),
        deployment: attempt.deployment.clone(),
        model: attempt.model.clone(),
        cloud: attempt.cloud.clone(),
        region: attempt.region.clone(),
    }
}

/// OpenMetrics text to the classic format: a counter family is named by its samples'
/// `_total` name there, and the text has no `# EOF` or `# UNIT` lines.
pub fn to_classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => text.push_str(&line),
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_text_names_counters_by_their_samples_and_has_no_eof() {
        let metrics = Metrics::new();
        metrics.record_request("search", "ok");
        let classic = to_classic_text(&metrics.encode());
        assert!(
            classic.contains("# TYPE skyfuse_requests_total counter\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP skyfuse_requests_total Calls"),
            "{classic}"
        );
        assert!(classic.contains("skyfuse_requests_total{entrance=\"search\",outcome=\"ok\"} 1"));
        assert!(!classic.contains("# EOF"));
        // Histograms and gauges keep their names.
        assert!(
            classic.contains("# TYPE skyfuse_calls_in_flight gauge"),
            "{classic}"
        );
    }

    #[test]
    fn a_source_outcome_is_labelled_by_ids_only() {
        let metrics = Metrics::new();
        let outcome = SourceOutcome {
            source: "bm25".into(),
            status: SourceStatus::Timeout,
            message: "the query \"secret plans\" timed out".into(),
            hits: 0,
            took: Duration::from_millis(40),
            adapted_from: None,
        };
        metrics.record_source(&outcome, "aws", "eu-west-1");
        let text = metrics.encode();
        assert!(text.contains(
            "skyfuse_source_searches_total{source=\"bm25\",cloud=\"aws\",region=\"eu-west-1\",outcome=\"timeout\"} 1"
        ), "{text}");
        assert!(text.contains("skyfuse_cross_cloud_latency_seconds_count{source=\"bm25\",cloud=\"aws\",region=\"eu-west-1\"} 1"), "{text}");
        assert!(!text.contains("secret plans"));
    }
}
