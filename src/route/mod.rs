//! Routing and failover for chat models across clouds.
//!
//! A [`Router`] holds every deployment (a model on a provider) with its price,
//! context window and circuit breaker, shared by all requests. For one request it
//! makes a [`plan::Plan`] (ordered candidates, and why others were skipped), then
//! [`failover`] tries the candidates in order until one produces a first token,
//! and streams the rest with its timers, budget settlement and cost.

pub mod callers;
pub mod catalog;
pub mod explain;
pub mod failover;
pub mod plan;
/// Scripted providers for tests and benches.
#[doc(hidden)]
pub mod testing;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::breaker::{BreakerSettings, CircuitBreaker};
use crate::config::{DeploymentConfig, RoutingConfig};
use crate::limits::{RateLimiter, RateLimits};
use crate::llm::{ChatProvider, ProviderInfo};
use crate::state::{Budgets, SharedState};
use crate::telemetry::metrics::DeploymentLabels;

pub use crate::state::BudgetLedger;
pub use callers::Caller;
pub use catalog::{Catalog, Price};
pub use failover::{Attempt, AttemptOutcome, RouteEvent, RouteFailure, RouteSummary, Started};
pub use plan::{Candidate, Plan, RouteRequest, Skip};

/// One model on one provider, as routing sees it.
pub struct Deployment {
    pub provider: Arc<dyn ChatProvider>,
    /// The deployment's price, else the catalog's for its model and cloud, else its
    /// provider's. None when nothing prices it: such a deployment
    /// is never chosen by cost and never serves a caller with a budget.
    pub price: Option<Price>,
    pub context_window: Option<u64>,
    pub breaker: Arc<CircuitBreaker>,
    /// Its quota at the provider (requests and tokens per minute); unlimited by
    /// default.
    pub quota: RateLimits,
    /// `[[deployment]] stop`: sent with every request to it, after the caller's.
    pub stop: Vec<String>,
    /// Its names for attempts and metrics (`deployment` is `provider/deployment`,
    /// its label), shared rather than copied per call.
    labels: DeploymentLabels,
}

impl Deployment {
    pub fn new(
        provider: Arc<dyn ChatProvider>,
        config: &DeploymentConfig,
        catalog: &Catalog,
        breaker: BreakerSettings,
    ) -> Self {
        let info = provider.info();
        let cloud = info.cloud.clone();
        let labels = DeploymentLabels {
            provider: info.id.as_str().into(),
            deployment: format!("{}/{}", info.id, info.deployment).into(),
            model: info.model.as_str().into(),
            cloud: info.cloud.as_str().into(),
            region: info.region.as_str().into(),
        };
        // The provider's own list price, when it set one, after the catalog's.
        let provider_price = (info.input_per_1m_usd > 0.0 || info.output_per_1m_usd > 0.0)
            .then_some(Price {
                input_per_1m_usd: info.input_per_1m_usd,
                output_per_1m_usd: info.output_per_1m_usd,
                cached_input_per_1m_usd: None,
            });
        Self {
            price: catalog.price(config, &cloud).or(provider_price),
            context_window: catalog.context_window(config, &cloud),
            provider,
            breaker: Arc::new(CircuitBreaker::new(breaker)),
            quota: RateLimits {
                requests_per_minute: config.requests_per_minute.map(u64::from),
                tokens_per_minute: config.tokens_per_minute,
            },
            stop: config.stop.clone(),
            labels,
        }
    }

    pub fn info(&self) -> &ProviderInfo {
        self.provider.info()
    }

    /// `provider/deployment`, how attempts and skips name it.
    pub fn label(&self) -> String {
        self.labels.deployment.to_string()
    }

    /// Its provider, label, model, cloud and region, as attempts and metrics name it.
    pub fn labels(&self) -> &DeploymentLabels {
        &self.labels
    }
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Deployment")
            .field("provider", self.info())
            .field("price", &self.price)
            .field("context_window", &self.context_window)
            .field("quota", &self.quota)
            .finish()
    }
}

/// One limiter over every deployment that has a quota, keyed by its label.
fn quotas(deployments: &[Arc<Deployment>]) -> RateLimiter {
    RateLimiter::for_deployments(
        deployments
            .iter()
            .filter(|deployment| deployment.quota != RateLimits::default())
            .map(|deployment| (deployment.label(), deployment.quota))
            .collect(),
    )
}

/// Counters for what routing did, for metrics and tests.
#[derive(Debug, Default)]
pub struct RouteStats {
    pub requests: AtomicU64,
    pub attempts: AtomicU64,
    /// Attempts after the first of a request: each is one failover.
    pub failovers: AtomicU64,
    pub failed_requests: AtomicU64,
}

impl RouteStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The routing and failover core, shared by the gRPC `Answer` and the HTTP facade.
pub struct Router {
    deployments: Vec<Arc<Deployment>>,
    settings: RoutingConfig,
    budgets: Budgets,
    /// Where cooldowns are shared with the other replicas.
    shared: SharedState,
    /// The deployments' quotas at their providers, counted across replicas when
    /// the state is shared.
    quotas: Arc<RateLimiter>,
    stats: RouteStats,
}

impl Router {
    pub fn new(deployments: Vec<Deployment>, settings: RoutingConfig) -> Self {
        let deployments: Vec<Arc<Deployment>> = deployments.into_iter().map(Arc::new).collect();
        Self {
            quotas: Arc::new(quotas(&deployments)),
            deployments,
            settings,
            budgets: Budgets::default(),
            shared: SharedState::InProcess,
            stats: RouteStats::default(),
        }
    }

    /// Keeps budgets in `shared` and shares every cooldown this router learns (a
    /// throttle's retry-after, a breaker opening) with the other replicas, which apply
    /// them to their breakers ([`SharedState::spawn_cooldown_listener`]).
    pub fn share_state(&mut self, shared: SharedState) {
        self.budgets = shared.budgets();
        self.quotas = Arc::new(quotas(&self.deployments).sharing(shared.clone()));
        shared.spawn_cooldown_listener(
            self.deployments
                .iter()
                .map(|deployment| (deployment.label(), Arc::clone(&deployment.breaker)))
                .collect(),
        );
        self.shared = shared;
    }

    /// Today's spend and holds per caller with a budget (for metrics).
    pub fn budgets_today(&self) -> Vec<(String, f64, f64)> {
        self.budgets.today()
    }

    /// Every deployment, in config order (for metrics and health).
    pub fn deployments(&self) -> &[Arc<Deployment>] {
        &self.deployments
    }

    /// The breaker settings `[routing]` asks for.
    pub fn breaker_settings(settings: &RoutingConfig) -> BreakerSettings {
        BreakerSettings {
            threshold: settings.breaker_threshold,
            cooldown: Duration::from_millis(settings.breaker_cooldown_ms),
            max_cooldown: Duration::from_millis(
                settings
                    .breaker_max_cooldown_ms
                    .max(settings.breaker_cooldown_ms),
            ),
            window: settings.breaker_window,
            error_rate: settings.breaker_error_rate,
        }
    }

    /// Whether a request that names neither a model nor a tier has somewhere to go
    /// (`routing.default_model` or `routing.default_tier`).
    pub fn has_default(&self) -> bool {
        self.settings.default_model.is_some() || self.settings.default_tier.is_some()
    }

    /// One attempt's cap (`routing.attempt_timeout_ms`).
    pub fn attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.attempt_timeout_ms)
    }

    /// The budget tiers' names, in config order.
    pub fn tiers(&self) -> Vec<String> {
        self.settings
            .tiers
            .iter()
            .map(|tier| tier.name.clone())
            .collect()
    }

    /// Models with at least one deployment, sorted, each once.
    pub fn models(&self) -> Vec<String> {
        let mut models: Vec<String> = self
            .deployments
            .iter()
            .map(|deployment| deployment.info().model.clone())
            .collect();
        models.sort();
        models.dedup();
        models
    }

    /// Starts the active health probe when `probe_interval_ms` is set: every
    /// interval, each deployment whose circuit is open and due for a probe gets a
    /// one-token request, so it closes without risking a caller's request.
    pub fn spawn_probe(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let interval = Duration::from_millis(self.settings.probe_interval_ms);
        if interval.is_zero() {
            return None;
        }
        let router = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(router) = router.upgrade() else {
                    return;
                };
                // Whatever one round does, the next one runs.
                let round = std::panic::AssertUnwindSafe(failover::probe_open_deployments(&router));
                if let Err(panic) = futures::FutureExt::catch_unwind(round).await {
                    tracing::error!(
                        panic = failover::panic_text(panic.as_ref()),
                        "a probe round panicked; probing goes on"
                    );
                }
            }
        }))
    }
}
