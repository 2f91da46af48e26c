//! `route explain` for an answer's context: per candidate, the residency verdict for
//! each kind of passage, the token and transfer costs, the capacity, and why it would
//! be chosen or skipped. Pure: the CLI supplies the plan and the passages.

use crate::policy::egress::{EgressPrices, Spot};
use crate::policy::residency::{Decision, Place, Residency};
use crate::route::plan::{Plan, deployment_regions};

/// A kind of passage the answer would carry: where its data lives, its classes, and
/// its size.
#[derive(Debug, Clone, PartialEq)]
pub struct PassageSpec {
    pub cloud: String,
    pub region: String,
    pub classes: Vec<String>,
    pub bytes: u64,
}

/// Bytes of a passage whose size is not given: a typical retrieved chunk.
pub const DEFAULT_PASSAGE_BYTES: u64 = 2_000;

impl PassageSpec {
    /// `cloud/region[:class,class][@bytes]`, e.g. `azure/westeurope:pii@4000`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("passage {text:?} is not cloud/region[:class,...][@bytes]");
        let (rest, bytes) = match text.rsplit_once('@') {
            Some((rest, bytes)) => (rest, bytes.parse::<u64>().map_err(|_| bad())?),
            None => (text, DEFAULT_PASSAGE_BYTES),
        };
        let (place, classes) = rest.split_once(':').unwrap_or((rest, ""));
        let (cloud, region) = place.split_once('/').ok_or_else(bad)?;
        if cloud.is_empty() || region.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            cloud: cloud.to_string(),
            region: region.to_string(),
            classes: classes
                .split(',')
                .filter(|class| !class.is_empty())
                .map(str::to_string)
                .collect(),
            bytes,
        })
    }

    pub fn label(&self) -> String {
        if self.classes.is_empty() {
            format!("{}/{}", self.cloud, self.region)
        } else {
            format!(
                "{}/{} [{}]",
                self.cloud,
                self.region,
                self.classes.join(",")
            )
        }
    }

    fn place(&self) -> Place<'_> {
        Place {
            cloud: &self.cloud,
            region: &self.region,
            classes: &self.classes,
        }
    }
}

/// What moving the passages to each (cloud, region) costs, keyed as
/// `RouteRequest::egress_usd_by_cloud` reads it.
pub fn egress_by_place<'a>(
    prices: &EgressPrices,
    passages: &[PassageSpec],
    places: impl Iterator<Item = (&'a str, &'a str)>,
) -> Vec<(String, f64)> {
    let moved: Vec<(Spot, u64)> = passages
        .iter()
        .map(|passage| (Spot::new(&passage.cloud, &passage.region), passage.bytes))
        .collect();
    let mut priced: Vec<(String, f64)> = Vec::new();
    for (cloud, region) in places {
        let key = format!("{cloud}/{region}");
        if priced.iter().all(|(known, _)| *known != key) {
            let usd = prices.context_usd_to(&moved, &Spot::new(cloud, region));
            priced.push((key, usd));
        }
    }
    priced
}

/// One candidate as explained.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateView {
    pub label: String,
    pub cloud: String,
    /// Every region it may use (several for a multi-region endpoint).
    pub regions: Vec<String>,
    pub capacity: &'static str,
    /// Its quota at the provider, e.g. `600 requests/min, 90000 tokens/min`; None
    /// when unlimited.
    pub quota: Option<String>,
    pub token_usd: Option<f64>,
    pub egress_usd: f64,
    /// Per passage kind: its label and, when refused, why.
    pub verdicts: Vec<(String, Option<String>)>,
    /// `chosen: ...`, `fallback: ...` or `skipped: ...`.
    pub outcome: String,
}

/// What residency does to the whole answer, and each candidate's part in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub residency: String,
    pub candidates: Vec<CandidateView>,
}

pub fn explain(plan: &Plan, residency: &Residency, passages: &[PassageSpec]) -> Explanation {
    let places: Vec<Place> = passages.iter().map(PassageSpec::place).collect();
    let endpoints: Vec<Vec<String>> = plan
        .candidates
        .iter()
        .map(|candidate| deployment_regions(candidate.deployment.info()).to_vec())
        .collect();
    let decision = residency.decide(&places, &endpoints);
    let (summary, allowed): (String, Option<Vec<String>>) = match &decision {
        Decision::Unrestricted => ("no rule restricts these passages".into(), None),
        Decision::Refused(why) => (format!("refused: {why}"), Some(Vec::new())),
        Decision::Restricted {
            regions, withheld, ..
        } => {
            let mut summary = format!("prompt kept to {}", regions.join(", "));
            for (index, why) in withheld {
                summary.push_str(&format!("; withheld {}: {why}", passages[*index].label()));
            }
            (summary, Some(regions.clone()))
        }
    };
    let mut chosen = false;
    let candidates = plan
        .candidates
        .iter()
        .zip(&endpoints)
        .map(|(candidate, regions)| {
            let info = candidate.deployment.info();
            let verdicts = passages
                .iter()
                .map(|passage| {
                    let refusal = residency.admits(passage.place(), regions).err();
                    (passage.label(), refusal)
                })
                .collect::<Vec<_>>();
            let in_reach = allowed
                .as_ref()
                .is_none_or(|allowed| regions.iter().all(|region| allowed.contains(region)));
            let outcome = if !in_reach {
                let why = verdicts
                    .iter()
                    .find_map(|(_, refusal)| refusal.clone())
                    .unwrap_or_else(|| "outside the regions the prompt is kept to".into());
                format!("skipped (residency): {why}")
            } else if !chosen {
                chosen = true;
                format!("chosen: {}", candidate.why)
            } else {
                format!("fallback: {}", candidate.why)
            };
            CandidateView {
                label: candidate.deployment.label(),
                cloud: info.cloud.clone(),
                regions: regions.clone(),
                capacity: if info.dedicated {
                    "dedicated"
                } else {
                    "on-demand"
                },
                quota: quota_text(&candidate.deployment.quota),
                token_usd: candidate.max_cost_usd,
                egress_usd: candidate.egress_usd,
                verdicts,
                outcome,
            }
        })
        .collect();
    Explanation {
        residency: summary,
        candidates,
    }
}

/// A deployment's quota as `route explain` shows it.
fn quota_text(quota: &crate::limits::rate::RateLimits) -> Option<String> {
    let parts: Vec<String> = [
        quota
            .requests_per_minute
            .map(|n| format!("{n} requests/min")),
        quota.tokens_per_minute.map(|n| format!("{n} tokens/min")),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::route::testing::{Script, Scripted};
    use crate::route::{Caller, Deployment, RouteRequest, Router};

    #[test]
    fn a_passage_is_read_from_its_short_form_and_bad_ones_say_how() {
        assert_eq!(
            PassageSpec::parse("azure/westeurope:pii,hr@4000").unwrap(),
            PassageSpec {
                cloud: "azure".into(),
                region: "westeurope".into(),
                classes: vec!["pii".into(), "hr".into()],
                bytes: 4000,
            }
        );
        assert_eq!(
            PassageSpec::parse("aws/us-east-1").unwrap().bytes,
            DEFAULT_PASSAGE_BYTES
        );
        let bad = PassageSpec::parse("westeurope").unwrap_err();
        assert!(bad.contains("cloud/region"), "{bad}");
        assert!(PassageSpec::parse("aws/us-east-1@lots").is_err());
    }

    #[test]
    fn each_candidate_shows_its_verdicts_costs_capacity_and_outcome() {
        let deployment = |id: &str, cloud: &str, region: &str, dedicated: bool, input: f64| {
            let quota = dedicated.then_some(600);
            let provider: Arc<Scripted> = Arc::new(
                Scripted::new(id, "m", cloud, dedicated, Script::answer("hi")).in_region(region),
            );
            let config = crate::config::DeploymentConfig {
                provider: id.into(),
                model: "m".into(),
                name: None,
                dedicated,
                context_window: None,
                input_per_1m_usd: Some(input),
                output_per_1m_usd: Some(input),
                cached_input_per_1m_usd: None,
                regions: Vec::new(),
                requests_per_minute: quota,
                tokens_per_minute: quota.map(|requests| u64::from(requests) * 150),
            };
            let catalog = crate::route::Catalog::default();
            let breaker = Router::breaker_settings(&Default::default());
            Deployment::new(provider, &config, &catalog, breaker)
        };
        let router = Router::new(
            vec![
                deployment("us", "aws", "us-east-1", false, 1.0),
                deployment("eu", "azure", "westeurope", true, 3.0),
            ],
            Default::default(),
        );
        let passages = [
            PassageSpec::parse("aws/us-east-1@1000").unwrap(),
            PassageSpec::parse("azure/westeurope:pii@1000").unwrap(),
            PassageSpec::parse("azure/westeurope:anonymized@1000").unwrap(),
        ];
        let prices = EgressPrices::default();
        let request = RouteRequest {
            model: Some("m".into()),
            input_tokens: 1000,
            max_output_tokens: 100,
            egress_usd_by_cloud: egress_by_place(
                &prices,
                &passages,
                [("aws", "us-east-1"), ("azure", "westeurope")].into_iter(),
            ),
            ..Default::default()
        };
        let plan = router.plan(&Caller::anonymous(), &request).unwrap();
        let rules: toml::Table = toml::from_str(
            r#"
            [[residency]]
            id = "eu"
            data = { regions = ["westeurope"] }
            inference_regions = ["westeurope", "eu-*"]
            reason = "GDPR"
            [residency_policy]
            cross_region_allowed = ["anonymized"]
            "#,
        )
        .unwrap();
        let config: crate::config::Config = crate::config::Config::parse(
            &toml::to_string(&rules).unwrap(),
            std::path::Path::new("."),
        )
        .unwrap();
        let residency = Residency::new(config.residency, config.residency_policy);
        let explanation = explain(&plan, &residency, &passages);
        assert_eq!(explanation.residency, "prompt kept to westeurope");
        let view = |label: &str| {
            explanation
                .candidates
                .iter()
                .find(|view| view.label.starts_with(label))
                .unwrap()
        };
        let eu = view("eu/");
        assert!(eu.outcome.starts_with("chosen"), "{eu:?}");
        assert_eq!(eu.capacity, "dedicated");
        assert_eq!(
            eu.quota.as_deref(),
            Some("600 requests/min, 90000 tokens/min")
        );
        assert!(eu.verdicts.iter().all(|(_, refusal)| refusal.is_none()));
        assert!(eu.egress_usd > 0.0, "the US passage moves to Azure");
        let us = view("us/");
        assert!(us.outcome.starts_with("skipped (residency)"), "{us:?}");
        assert!(us.outcome.contains("GDPR"), "{}", us.outcome);
        assert_eq!(us.capacity, "on-demand");
        assert_eq!(us.quota, None, "no quota: unlimited");
        let refused: Vec<&str> = us
            .verdicts
            .iter()
            .filter(|(_, refusal)| refusal.is_some())
            .map(|(label, _)| label.as_str())
            .collect();
        assert_eq!(
            refused,
            ["azure/westeurope [pii]"],
            "anonymized data may cross"
        );
        assert!(us.token_usd.is_some() && eu.token_usd.is_some());
    }
}
