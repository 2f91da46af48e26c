//! The transfer side of an answer's cost: the bytes of its retrieved context, from
//! each store's cloud to where the model runs, priced by `[egress]`.

use std::sync::Arc;

use crate::policy::egress::{EgressBill, EgressPrices, LOCAL_CLOUD};
use crate::retrieve::FusedHit;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::EgressLabels;

/// The context one answer moves: bytes per passage, by the cloud they live in.
#[derive(Debug, Clone)]
pub(super) struct AnswerTransfer {
    prices: Arc<EgressPrices>,
    passages: Vec<(String, u64)>,
}

impl AnswerTransfer {
    /// The passages that go into the prompt.
    pub(super) fn of(prices: Arc<EgressPrices>, passages: &[FusedHit]) -> Self {
        let passages = passages
            .iter()
            .map(|fused| {
                let hit = &fused.hit;
                // Chunks written before clouds were recorded live where skyfuse runs.
                let cloud = if hit.cloud.is_empty() {
                    LOCAL_CLOUD.to_string()
                } else {
                    hit.cloud.clone()
                };
                (cloud, (hit.title.len() + hit.text.len()) as u64)
            })
            .collect();
        Self { prices, passages }
    }

    /// What moving the context to each of `clouds` costs, for routing by total cost.
    pub(super) fn usd_by_cloud<'a>(
        &self,
        clouds: impl Iterator<Item = &'a str>,
    ) -> Vec<(String, f64)> {
        let mut priced: Vec<(String, f64)> = Vec::new();
        for cloud in clouds {
            if priced.iter().all(|(known, _)| known != cloud) {
                let usd = self.prices.context_usd_to(&self.passages, cloud);
                priced.push((cloud.to_string(), usd));
            }
        }
        priced
    }

    /// The bill once the model's cloud is known (`local` for an extractive answer,
    /// which goes no further than skyfuse): the passages, and the prompt of
    /// `prompt_bytes` from skyfuse's home when one is set.
    pub(super) fn bill(&self, model_cloud: &str, prompt_bytes: u64) -> EgressBill {
        self.prices.bill(
            &self
                .prices
                .answer_flows(&self.passages, prompt_bytes, model_cloud),
        )
    }
}

/// Adds an answer's transfers to `egress_cost_usd_total`.
pub(super) fn record(metrics: &Metrics, bill: &EgressBill) {
    for leg in &bill.legs {
        metrics
            .egress_cost_total
            .get_or_create(&EgressLabels {
                from_cloud: leg.from_cloud.clone(),
                to_cloud: leg.to_cloud.clone(),
            })
            .inc_by(leg.usd);
    }
}
