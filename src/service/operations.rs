//! What an operator reads: the metrics scrape and readiness.

use super::Service;
use crate::state::SharedState;
use crate::telemetry::metrics::{CallerLabels, EgressLabels, SourceLabels};

/// Whether each part of the service can do its job now (see [`Service::health`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Some source can be searched: not every source's circuit is open.
    pub retrieval: bool,
    /// Every configured model has a deployment whose circuit is closed.
    pub generation: bool,
}

impl Service {
    /// The state health checks report, from the breakers of stores and deployments.
    pub fn health(&self) -> Health {
        let sources = self.retriever.sources();
        Health {
            retrieval: sources.is_empty()
                || sources.iter().any(|source| !source.backend.breaker_open()),
            generation: self.unready_reasons().is_empty(),
        }
    }

    /// Why this service should not take traffic now, if anything: a configured model
    /// whose every deployment has an open circuit. (Stores that fail to open stop the
    /// service at startup; a store whose breaker is open degrades searches instead.)
    pub fn unready_reasons(&self) -> Vec<String> {
        // Redis unreachable while a kind fails closed: calls of that kind fail.
        let mut reasons = self.shared_state.unready_reasons();
        let Some(router) = &self.router else {
            return reasons;
        };
        let cooling = router
            .models()
            .into_iter()
            .filter(|model| {
                router
                    .deployments()
                    .iter()
                    .filter(|deployment| &deployment.info().model == model)
                    .all(|deployment| deployment.breaker.is_open())
            })
            .map(|model| format!("model {model:?}: every deployment's circuit is open"));
        reasons.extend(cooling);
        reasons
    }

    /// Where budgets, rate limits and cooldowns are kept.
    pub fn shared_state(&self) -> &SharedState {
        &self.shared_state
    }

    /// The OpenMetrics text for a scrape: state kept elsewhere (breakers, calls in
    /// flight) is copied into its gauges first.
    pub fn render_metrics(&self) -> String {
        let metrics = &self.metrics;
        if let Some(router) = &self.router {
            for (caller, spent, reserved) in router.budgets_today() {
                let labels = CallerLabels { caller };
                metrics.budget_spent.get_or_create(&labels).set(spent);
                metrics.budget_reserved.get_or_create(&labels).set(reserved);
            }
            for deployment in router.deployments() {
                let labels = deployment.labels();
                let open = deployment.breaker.is_open();
                metrics
                    .breaker_open
                    .get_or_create(labels)
                    .set(i64::from(open));
                metrics
                    .provider_availability
                    .get_or_create(labels)
                    .set(if open { 0.0 } else { 1.0 });
            }
        }
        for source in self.retriever.sources() {
            let info = source.info();
            let labels = SourceLabels {
                source: info.id.clone(),
                cloud: info.cloud.clone(),
                region: info.region.clone(),
            };
            let open = source.backend.breaker_open();
            metrics
                .source_breaker_open
                .get_or_create(&labels)
                .set(i64::from(open));
        }
        // Zero until the egress policy prices what crosses: one series per pair of a
        // source's cloud and a deployment's cloud that differ, so the pairs are visible.
        if let Some(router) = &self.router {
            for source in self.retriever.sources() {
                for deployment in router.deployments() {
                    let (from, to) = (&source.info().cloud, &deployment.info().cloud);
                    if from != to {
                        let pair = EgressLabels {
                            from_cloud: from.clone(),
                            to_cloud: to.clone(),
                        };
                        metrics.egress_cost_total.get_or_create(&pair).inc_by(0.0);
                    }
                }
            }
        }
        metrics
            .calls_in_flight
            .set(i64::try_from(self.call_limit.in_flight()).unwrap_or(i64::MAX));
        metrics.encode()
    }
}
