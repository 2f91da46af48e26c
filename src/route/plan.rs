//! Choosing candidates for one request: the asked model (or a tier's models, or the
//! default), then its equivalents; per model its deployments that the rules, the
//! caller, the allowed clouds, the context window and the tier's price allow;
//! dedicated capacity first, then on-demand by rule order or by estimated cost.
//! Pure: the same router and request always give the same plan.

use std::sync::Arc;

use super::{Caller, Deployment, Router};
use crate::config::{Glob, RouteRule, TierConfig, any_matches};
use crate::error::{Error, Result};

/// What a request asks of routing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteRequest {
    /// A model by name; None: the tier's models, else the default model.
    pub model: Option<String>,
    pub tier: Option<String>,
    /// Clouds the prompt may go to; empty = any the caller may use.
    pub clouds: Vec<String>,
    /// Regions the prompt may go to (exact or glob, `eu-*`, `eu-{west,central}-*`);
    /// empty = any the caller may use. An invalid glob fails the plan.
    pub regions: Vec<String>,
    /// Estimated prompt tokens.
    pub input_tokens: u64,
    pub max_output_tokens: u64,
    /// What moving this request's retrieved context to each place would cost in USD
    /// (the egress policy's figure), keyed `cloud/region` or `cloud`; a place not
    /// listed costs nothing to reach.
    pub egress_usd_by_cloud: Vec<(String, f64)>,
}

impl RouteRequest {
    fn total_tokens(&self) -> u64 {
        self.input_tokens + self.max_output_tokens
    }

    /// The context's transfer cost to `region` of `cloud`: its own figure, else the
    /// cloud's.
    pub fn egress_usd_to(&self, cloud: &str, region: &str) -> f64 {
        let place = format!("{cloud}/{region}");
        let find = |key: &str| {
            self.egress_usd_by_cloud
                .iter()
                .find(|(known, _)| known == key)
        };
        find(&place)
            .or_else(|| find(cloud))
            .map_or(0.0, |(_, usd)| *usd)
    }
}

/// A request with its region globs compiled, once per plan.
struct Asked<'a> {
    request: &'a RouteRequest,
    regions: Vec<Glob>,
}

/// A deployment the request may go to, in the order they are tried.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub deployment: Arc<Deployment>,
    /// The most this request can cost there (whole prompt, every output token).
    pub max_cost_usd: Option<f64>,
    /// What moving the request's context to its cloud costs (0 when it stays put).
    pub egress_usd: f64,
    /// Why it is in the list, in this place.
    pub why: String,
}

/// A deployment left out, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skip {
    pub deployment: String,
    pub model: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub candidates: Vec<Candidate>,
    pub skipped: Vec<Skip>,
    pub tier: Option<String>,
}

impl Router {
    /// The ordered candidates for `request` by `caller`. Errors: an unknown model
    /// or tier (naming the known ones), a model or tier the caller may not use.
    pub fn plan(&self, caller: &Caller, request: &RouteRequest) -> Result<Plan> {
        let asked = Asked {
            regions: Glob::all(&request.regions)
                .map_err(|error| error.context("allowed regions"))?,
            request,
        };
        let tier = self.requested_tier(caller, request)?;
        let primary = self.primary_models(caller, request, tier)?;
        let mut models: Vec<(String, String)> = primary
            .iter()
            .map(|model| (model.clone(), requested_why(request, tier)))
            .collect();
        for model in &primary {
            for equivalent in self.equivalents(model) {
                if models.iter().all(|(known, _)| known != equivalent)
                    && caller.may_use_model(equivalent)
                {
                    models.push((equivalent.clone(), format!("stands in for {model}")));
                }
            }
        }

        let mut skipped = Vec::new();
        let mut groups: Vec<Vec<Candidate>> = models
            .iter()
            .map(|(model, why)| {
                self.model_candidates(caller, &asked, tier, model, why, &mut skipped)
            })
            .collect();
        if self.settings.cost_optimize && tier.is_some() {
            // Cheapest model of the tier first; stand-ins stay behind the tier's own.
            let primary_count = primary.len().min(groups.len());
            groups[..primary_count].sort_by(|a, b| cheapest(a).total_cmp(&cheapest(b)));
        }
        Ok(Plan {
            candidates: groups.into_iter().flatten().collect(),
            skipped,
            tier: tier.map(|tier| tier.name.clone()),
        })
    }

    fn requested_tier(
        &self,
        caller: &Caller,
        request: &RouteRequest,
    ) -> Result<Option<&TierConfig>> {
        let name = match (&request.model, &request.tier) {
            (_, Some(tier)) => tier,
            (Some(_), None) => return Ok(None),
            (None, None) => match (&self.settings.default_model, &self.settings.default_tier) {
                (None, Some(tier)) => tier,
                _ => return Ok(None),
            },
        };
        let tier = self
            .settings
            .tiers
            .iter()
            .find(|tier| &tier.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self
                    .settings
                    .tiers
                    .iter()
                    .map(|tier| tier.name.as_str())
                    .collect();
                Error::not_found(format!(
                    "unknown tier {name:?}; tiers: {}",
                    known.join(", ")
                ))
            })?;
        if !caller.may_use_tier(name) {
            return Err(Error::forbidden(format!(
                "caller {:?} may not use tier {name:?}",
                caller.id
            )));
        }
        Ok(Some(tier))
    }

    fn primary_models(
        &self,
        caller: &Caller,
        request: &RouteRequest,
        tier: Option<&TierConfig>,
    ) -> Result<Vec<String>> {
        let model = match (&request.model, tier) {
            (Some(model), _) => model.clone(),
            (None, Some(tier)) => {
                let allowed: Vec<String> = tier
                    .models
                    .iter()
                    .filter(|model| caller.may_use_model(model))
                    .cloned()
                    .collect();
                if allowed.is_empty() {
                    return Err(Error::forbidden(format!(
                        "caller {:?} may use none of tier {:?}'s models",
                        caller.id, tier.name
                    )));
                }
                return Ok(allowed);
            }
            (None, None) => self.settings.default_model.clone().ok_or_else(|| {
                Error::invalid("no model asked for, and no routing.default_model or default_tier")
            })?,
        };
        if !self
            .deployments
            .iter()
            .any(|deployment| deployment.info().model == model)
        {
            return Err(Error::not_found(format!(
                "unknown model {model:?}; models: {}",
                self.models().join(", ")
            )));
        }
        if !caller.may_use_model(&model) {
            return Err(Error::forbidden(format!(
                "caller {:?} may not use model {model:?}",
                caller.id
            )));
        }
        if let Some(tier) = tier
            && !tier.models.contains(&model)
        {
            return Err(Error::invalid(format!(
                "model {model:?} is not in tier {:?} ({})",
                tier.name,
                tier.models.join(", ")
            )));
        }
        Ok(vec![model])
    }

    fn equivalents(&self, model: &str) -> impl Iterator<Item = &String> {
        self.settings
            .equivalent
            .iter()
            .filter(move |group| group.iter().any(|member| member == model))
            .flatten()
            .filter(move |member| *member != model)
    }

    /// The deployments of `model` this request may use, in trying order.
    fn model_candidates(
        &self,
        caller: &Caller,
        asked: &Asked<'_>,
        tier: Option<&TierConfig>,
        model: &str,
        why: &str,
        skipped: &mut Vec<Skip>,
    ) -> Vec<Candidate> {
        let request = asked.request;
        let rule = self
            .settings
            .rules
            .iter()
            .find(|rule| rule.model.matches(model));
        let mut ranked = Vec::new();
        for (position, deployment) in self.deployments.iter().enumerate() {
            let info = deployment.info();
            if info.model != model {
                continue;
            }
            let mut skip = |reason: String| {
                skipped.push(Skip {
                    deployment: deployment.label(),
                    model: model.to_string(),
                    reason,
                })
            };
            let rank = match rule.map(|rule| rule_rank(rule, deployment)) {
                None => position,
                Some(Some(rank)) => rank,
                Some(None) => {
                    let rule = rule.map(describe_rule).unwrap_or_default();
                    skip(format!("routing rule {rule} does not allow it"));
                    continue;
                }
            };
            if !caller.may_use_cloud(&info.cloud) {
                skip(format!(
                    "caller {:?} may not send prompts to {}",
                    caller.id, info.cloud
                ));
                continue;
            }
            if !request.clouds.is_empty() && !request.clouds.contains(&info.cloud) {
                skip(format!(
                    "the request allows clouds {}, not {}",
                    request.clouds.join(", "),
                    info.cloud
                ));
                continue;
            }
            // A multi-region endpoint may use each of its regions: all must be allowed.
            let regions = deployment_regions(info);
            if let Some(region) = regions.iter().find(|r| !caller.may_use_region(r)) {
                skip(format!(
                    "caller {:?} may not send prompts to region {region}{}",
                    caller.id,
                    multi_region_note(regions)
                ));
                continue;
            }
            if let Some(region) = regions.iter().find(|r| !any_matches(&asked.regions, r)) {
                skip(format!(
                    "the request allows regions {}, not {region}{}",
                    request.regions.join(", "),
                    multi_region_note(regions)
                ));
                continue;
            }
            if let Some(window) = deployment.context_window
                && request.total_tokens() > window
            {
                skip(format!(
                    "~{} prompt + {} output tokens exceed its context window of {window}",
                    request.input_tokens, request.max_output_tokens
                ));
                continue;
            }
            let max_cost = deployment
                .price
                .map(|price| price.max_cost_usd(request.input_tokens, request.max_output_tokens));
            if let Some(tier) = tier {
                let Some(cost) = max_cost else {
                    skip(format!("no price known to hold it to tier {:?}", tier.name));
                    continue;
                };
                let per_1k = cost / request.total_tokens().max(1) as f64 * 1_000.0;
                if per_1k > tier.max_usd_per_1k_tokens {
                    skip(format!(
                        "${per_1k:.5} per 1k tokens is above tier {:?}'s ${}",
                        tier.name, tier.max_usd_per_1k_tokens
                    ));
                    continue;
                }
            }
            ranked.push((rank, max_cost, deployment.clone()));
        }
        let cost_optimize = self.settings.cost_optimize;
        // By cost, a deployment's cost is its tokens' and the transfer of the context.
        let total = |cost: Option<f64>, deployment: &Deployment| {
            cost.map(|cost| {
                cost + request.egress_usd_to(&deployment.info().cloud, &deployment.info().region)
            })
        };
        ranked.sort_by(|(rank_a, cost_a, a), (rank_b, cost_b, b)| {
            let by_cost = if cost_optimize {
                cost_or_max(total(*cost_a, a)).total_cmp(&cost_or_max(total(*cost_b, b)))
            } else {
                std::cmp::Ordering::Equal
            };
            b.info()
                .dedicated
                .cmp(&a.info().dedicated)
                .then(by_cost)
                .then(rank_a.cmp(rank_b))
        });
        ranked
            .into_iter()
            .map(|(_, max_cost_usd, deployment)| {
                let capacity = if deployment.info().dedicated {
                    "dedicated capacity first"
                } else if cost_optimize {
                    "on demand, by estimated cost"
                } else {
                    "on demand"
                };
                let egress_usd =
                    request.egress_usd_to(&deployment.info().cloud, &deployment.info().region);
                let moved = if egress_usd > 0.0 {
                    format!(
                        "; moving the context to {} costs ${egress_usd:.6}",
                        deployment.info().cloud
                    )
                } else {
                    String::new()
                };
                Candidate {
                    why: format!("{why}; {capacity}{moved}"),
                    max_cost_usd,
                    egress_usd,
                    deployment,
                }
            })
            .collect()
    }
}

fn requested_why(request: &RouteRequest, tier: Option<&TierConfig>) -> String {
    match (&request.model, tier) {
        (Some(_), _) => "the requested model".into(),
        (None, Some(tier)) => format!("in tier {:?}", tier.name),
        (None, None) => "the default model".into(),
    }
}

/// Where a rule puts a deployment: its provider's, else its cloud's, position in
/// the rule's lists; None when the rule does not allow it.
fn rule_rank(rule: &RouteRule, deployment: &Deployment) -> Option<usize> {
    let info = deployment.info();
    let by_provider = rule.providers.iter().position(|id| id == &info.id);
    let by_cloud = rule.clouds.iter().position(|cloud| cloud == &info.cloud);
    by_provider.or(by_cloud.map(|rank| rule.providers.len() + rank))
}

fn describe_rule(rule: &RouteRule) -> String {
    let mut targets = rule.providers.clone();
    targets.extend(rule.clouds.iter().cloned());
    format!("{} -> {}", rule.model, targets.join(" | "))
}

fn cost_or_max(cost: Option<f64>) -> f64 {
    cost.unwrap_or(f64::MAX)
}

fn cheapest(group: &[Candidate]) -> f64 {
    group
        .iter()
        .map(|candidate| cost_or_max(candidate.max_cost_usd))
        .fold(f64::MAX, f64::min)
}

/// The regions a deployment may process a prompt in: its own when it lists none.
pub fn deployment_regions(info: &crate::llm::ProviderInfo) -> &[String] {
    if info.regions.is_empty() {
        std::slice::from_ref(&info.region)
    } else {
        &info.regions
    }
}

fn multi_region_note(regions: &[String]) -> String {
    if regions.len() > 1 {
        format!(" (a multi-region endpoint: {})", regions.join(", "))
    } else {
        String::new()
    }
}
