//! The transfer side of an answer's cost: the bytes of its retrieved context, from
//! each store's cloud and region to where the model runs, priced by `[egress]`.

use std::sync::Arc;

use crate::policy::egress::{EgressBill, EgressPrices, LOCAL_CLOUD, Spot};
use crate::retrieve::FusedHit;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::EgressLabels;

/// The context one answer moves: bytes per passage, by the cloud they live in.
#[derive(Debug, Clone)]
pub(super) struct AnswerTransfer {
    prices: Arc<EgressPrices>,
    passages: Vec<(Spot, u64)>,
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
                let spot = Spot {
                    cloud,
                    region: hit.region.clone(),
                };
                (spot, (hit.title.len() + hit.text.len()) as u64)
            })
            .collect();
        Self { prices, passages }
    }

    /// What moving the context to each of `places` (cloud, region) costs, for routing
    /// by total cost; keyed `cloud/region` as `RouteRequest::egress_usd_to` reads it.
    pub(super) fn usd_by_place<'a>(
        &self,
        places: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Vec<(String, f64)> {
        let mut priced: Vec<(String, f64)> = Vec::new();
        for (cloud, region) in places {
            let key = format!("{cloud}/{region}");
            if priced.iter().all(|(known, _)| *known != key) {
                let usd = self
                    .prices
                    .context_usd_to(&self.passages, &Spot::new(cloud, region));
                priced.push((key, usd));
            }
        }
        priced
    }

    /// The bill once the model's cloud is known (`local` for an extractive answer,
    /// which goes no further than skyfuse): the passages, and the prompt of
    /// `prompt_bytes` from skyfuse's home when one is set.
    pub(super) fn bill(&self, model: &Spot, prompt_bytes: u64) -> EgressBill {
        self.prices.bill(
            &self
                .prices
                .answer_flows(&self.passages, prompt_bytes, model),
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
