//! The placement advisor: given what a workload needs (a model family, sovereignty,
//! predictable cost, fine-tuning, latency to its data, an ecosystem...), which cloud
//! should run it and why. It reads the seed's capability tables (shipped as
//! `capabilities.toml`, extended by `[[capability]]`), and what this config already
//! has: deployments, residency rules and egress prices.
//!
//! Pure: the same catalog, config and requirements give the same advice.

use serde::Deserialize;

use super::egress::EgressPrices;
use super::residency::{Place, Residency};
use crate::config::{CloudCapability, Config, Offer, any_matches};

const SHIPPED_CAPABILITIES: &str = include_str!("capabilities.toml");

/// What a workload needs. Every field is optional: an empty set of requirements
/// ranks the clouds by what is configured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Requirements {
    /// A model name (`gpt-4o`, `claude-3-5-sonnet`) or family (`claude`).
    pub model: Option<String>,
    /// The data must be processed on private, dedicated hardware.
    pub sovereignty: bool,
    /// Reserved capacity at a flat rate rather than per token.
    pub predictable_cost: bool,
    pub fine_tuning: bool,
    /// As close to the data as possible.
    pub lowest_latency: bool,
    /// Many model families behind one API (multi-model RAG).
    pub multi_model: bool,
    /// microsoft, oracle, google, aws.
    pub ecosystem: Option<String>,
    /// The embedding dimension the workload's vectors need.
    pub embedding_dims: Option<u32>,
    /// Where the workload's data lives.
    pub data_cloud: Option<String>,
    pub data_region: Option<String>,
}

/// One cloud's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    pub cloud: String,
    pub service: String,
    /// Meets every hard requirement.
    pub fits: bool,
    /// Higher is better among clouds that fit.
    pub score: i32,
    pub reasons_for: Vec<String>,
    /// For a cloud that does not fit, the first is why.
    pub reasons_against: Vec<String>,
    /// Configured deployments there that could serve the workload
    /// (`provider/deployment (region)`).
    pub deployments: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct CatalogFile {
    capability: Vec<CloudCapability>,
}

/// A chat deployment the config already has.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfiguredDeployment {
    pub label: String,
    pub model: String,
    pub cloud: String,
    pub region: String,
    pub dedicated: bool,
}

/// The capability catalog and what the config already has.
#[derive(Debug, Clone)]
pub struct Landscape {
    pub capabilities: Vec<CloudCapability>,
    pub deployments: Vec<ConfiguredDeployment>,
    pub residency: Residency,
    pub egress: EgressPrices,
}

impl Landscape {
    pub fn from_config(config: &Config) -> Self {
        let mut capabilities = shipped_capabilities();
        for extra in &config.capabilities {
            match capabilities.iter_mut().find(|row| row.cloud == extra.cloud) {
                Some(row) => *row = extra.clone(),
                None => capabilities.push(extra.clone()),
            }
        }
        let deployments = config
            .chat_deployments()
            .iter()
            .filter_map(|deployment| {
                let provider = config
                    .providers
                    .iter()
                    .find(|provider| provider.id == deployment.provider)?;
                Some(ConfiguredDeployment {
                    label: format!("{}/{}", provider.id, deployment.wire_id()),
                    model: deployment.model.clone(),
                    cloud: provider.cloud().to_string(),
                    region: provider.region().to_string(),
                    dedicated: deployment.dedicated,
                })
            })
            .collect();
        Self {
            capabilities,
            deployments,
            residency: Residency::new(config.residency.clone(), config.residency_policy.clone()),
            egress: EgressPrices::from_config(&config.egress),
        }
    }
}

/// The seed's tables as shipped.
pub fn shipped_capabilities() -> Vec<CloudCapability> {
    toml::from_str::<CatalogFile>(SHIPPED_CAPABILITIES)
        .expect("the shipped capability catalog parses")
        .capability
}

/// The family a model name belongs to (`claude-3-5-sonnet` -> `claude`); a family
/// name is its own family.
pub fn model_family(model: &str) -> String {
    let model = model.to_ascii_lowercase();
    let name = model.rsplit(['/', '.']).next().unwrap_or(&model);
    let known = [
        ("gpt", "gpt"),
        ("o1", "gpt"),
        ("o3", "gpt"),
        ("o4", "gpt"),
        ("claude", "claude"),
        ("llama", "llama"),
        ("meta-llama", "llama"),
        ("command", "cohere"),
        ("cohere", "cohere"),
        ("embed-", "cohere"),
        ("mistral", "mistral"),
        ("mixtral", "mistral"),
        ("gemini", "gemini"),
        ("titan", "titan"),
    ];
    for candidate in [name, model.as_str()] {
        if let Some((_, family)) = known
            .iter()
            .find(|(prefix, _)| candidate.starts_with(prefix))
        {
            return family.to_string();
        }
    }
    name.split(['-', ':']).next().unwrap_or(name).to_string()
}

/// Every cloud of the catalog, those that fit first, best first.
pub fn advise(landscape: &Landscape, requirements: &Requirements) -> Vec<Recommendation> {
    let mut advice: Vec<Recommendation> = landscape
        .capabilities
        .iter()
        .map(|capability| judge(landscape, capability, requirements))
        .collect();
    advice.sort_by(|a, b| {
        b.fits
            .cmp(&a.fits)
            .then(b.score.cmp(&a.score))
            .then(a.cloud.cmp(&b.cloud))
    });
    advice
}

fn judge(
    landscape: &Landscape,
    capability: &CloudCapability,
    requirements: &Requirements,
) -> Recommendation {
    let mut verdict = Recommendation {
        cloud: capability.cloud.clone(),
        service: capability.service.clone(),
        fits: true,
        score: 0,
        reasons_for: Vec::new(),
        reasons_against: Vec::new(),
        deployments: Vec::new(),
    };
    let family = requirements.model.as_deref().map(model_family);
    hard_requirements(&mut verdict, capability, requirements, family.as_deref());
    preferences(&mut verdict, landscape, capability, requirements);
    configured(
        &mut verdict,
        landscape,
        capability,
        requirements,
        family.as_deref(),
    );
    verdict
}

/// What rules a cloud out.
fn hard_requirements(
    verdict: &mut Recommendation,
    capability: &CloudCapability,
    requirements: &Requirements,
    family: Option<&str>,
) {
    if let Some(family) = family {
        if capability.model_families.iter().any(|f| f == family) {
            verdict.reasons_for.push(format!("offers {family} models"));
        } else {
            rule_out(verdict, format!("does not offer {family} models"));
        }
    }
    if requirements.sovereignty {
        match capability.private_deployment {
            Offer::Yes => verdict.reasons_for.push(format!(
                "private deployment on dedicated hardware{}",
                named(&capability.dedicated_capacity)
            )),
            Offer::Limited => {
                verdict.score -= 2;
                verdict
                    .reasons_against
                    .push("private deployment is limited".to_string());
            }
            Offer::No => rule_out(
                verdict,
                "no private deployment for data sovereignty".to_string(),
            ),
        }
    }
    if requirements.predictable_cost {
        if capability.dedicated_capacity.is_empty() {
            rule_out(
                verdict,
                "no reserved capacity for predictable cost".to_string(),
            );
        } else {
            verdict.reasons_for.push(format!(
                "reserved capacity at a flat rate ({})",
                capability.dedicated_capacity
            ));
        }
    }
    if requirements.fine_tuning {
        match capability.fine_tuning {
            Offer::Yes => verdict.reasons_for.push("fine-tuning".to_string()),
            Offer::Limited => {
                verdict.score -= 2;
                verdict
                    .reasons_against
                    .push("fine-tuning is limited".to_string());
            }
            Offer::No => rule_out(verdict, "no fine-tuning".to_string()),
        }
    }
    if let Some(dims) = requirements.embedding_dims {
        if capability.embedding_max_dims >= dims {
            verdict.reasons_for.push(format!(
                "embeddings up to {} dimensions",
                capability.embedding_max_dims
            ));
        } else {
            rule_out(
                verdict,
                format!(
                    "its embeddings reach {} dimensions, not {dims}",
                    capability.embedding_max_dims
                ),
            );
        }
    }
}

/// What makes a fitting cloud better or worse.
fn preferences(
    verdict: &mut Recommendation,
    landscape: &Landscape,
    capability: &CloudCapability,
    requirements: &Requirements,
) {
    let cloud = capability.cloud.as_str();
    if let Some(ecosystem) = &requirements.ecosystem
        && capability.ecosystems.iter().any(|e| e == ecosystem)
    {
        verdict.score += 3;
        verdict
            .reasons_for
            .push(format!("part of the {ecosystem} ecosystem"));
    }
    if requirements.multi_model && capability.model_families.len() >= 4 {
        verdict.score += 2;
        verdict.reasons_for.push(format!(
            "{} model families behind one API",
            capability.model_families.len()
        ));
    }
    if let Some(data_cloud) = &requirements.data_cloud {
        let per_gb = landscape.egress.usd_per_gb(data_cloud, cloud);
        if data_cloud == cloud {
            verdict.score += if requirements.lowest_latency { 4 } else { 2 };
            verdict
                .reasons_for
                .push("beside the data: no transfer charge, no cross-cloud hop".to_string());
        } else if per_gb == 0.0 {
            verdict.score += if requirements.lowest_latency { 2 } else { 1 };
            verdict.reasons_for.push(format!(
                "moving the data from {data_cloud} costs nothing (a private link)"
            ));
        } else {
            verdict.score -= (per_gb * 20.0).round() as i32;
            let route = landscape.egress.cheapest_route(data_cloud, cloud);
            let cheaper = if route.is_direct() {
                String::new()
            } else {
                format!(
                    " (${:.2} through {})",
                    route.usd_per_gb,
                    route.clouds[1..route.clouds.len() - 1].join(", ")
                )
            };
            verdict.reasons_against.push(format!(
                "moving the data from {data_cloud} costs ${per_gb:.2} per GB{cheaper}"
            ));
            if requirements.lowest_latency {
                verdict.score -= 2;
                verdict
                    .reasons_against
                    .push(format!("every request crosses from {data_cloud}"));
            }
        }
    }
}

/// What the config already has there, and whether residency lets it see the data.
fn configured(
    verdict: &mut Recommendation,
    landscape: &Landscape,
    capability: &CloudCapability,
    requirements: &Requirements,
    family: Option<&str>,
) {
    let data_place = match (&requirements.data_cloud, &requirements.data_region) {
        (Some(cloud), Some(region)) => Some((cloud.as_str(), region.as_str())),
        _ => None,
    };
    let rule = data_place
        .and_then(|(cloud, region)| landscape.residency.rule_for(Place::at(cloud, region)));
    let mut kept_out = Vec::new();
    for deployment in &landscape.deployments {
        if deployment.cloud != capability.cloud
            || family.is_some_and(|family| model_family(&deployment.model) != family)
        {
            continue;
        }
        if let Some(rule) = rule
            && !any_matches(&rule.inference_regions, &deployment.region)
        {
            kept_out.push(format!("{} ({})", deployment.label, deployment.region));
            continue;
        }
        let dedicated = if deployment.dedicated {
            ", dedicated"
        } else {
            ""
        };
        verdict.deployments.push(format!(
            "{} ({}{dedicated})",
            deployment.label, deployment.region
        ));
    }
    if !verdict.deployments.is_empty() {
        verdict.score += 2;
        verdict.reasons_for.push(format!(
            "already configured: {}",
            verdict.deployments.join(", ")
        ));
    }
    if let Some(rule) = rule {
        let regions: Vec<&str> = rule.inference_regions.iter().map(|g| g.as_str()).collect();
        if kept_out.is_empty() {
            verdict.reasons_for.push(format!(
                "residency {:?} allows {}: use a region there",
                rule.id,
                regions.join(", ")
            ));
        } else {
            verdict.score -= 1;
            verdict.reasons_against.push(format!(
                "residency {:?} keeps this data off {} (allowed: {})",
                rule.id,
                kept_out.join(", "),
                regions.join(", ")
            ));
        }
    }
}

/// A hard requirement it misses: out, and that is the first thing it says.
fn rule_out(verdict: &mut Recommendation, why: String) {
    verdict.fits = false;
    verdict.reasons_against.insert(0, why);
}

fn named(offer: &str) -> String {
    if offer.is_empty() {
        String::new()
    } else {
        format!(" ({offer})")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn landscape(toml: &str) -> Landscape {
        Landscape::from_config(&Config::parse(toml, Path::new(".")).unwrap())
    }

    fn ask(requirements: Requirements) -> Vec<Recommendation> {
        advise(&landscape(""), &requirements)
    }

    fn fitting(advice: &[Recommendation]) -> Vec<&str> {
        advice
            .iter()
            .filter(|verdict| verdict.fits)
            .map(|verdict| verdict.cloud.as_str())
            .collect()
    }

    #[test]
    fn models_go_where_the_seed_places_them() {
        let gpt = ask(Requirements {
            model: Some("gpt-4o".into()),
            ..Requirements::default()
        });
        assert_eq!(fitting(&gpt), ["azure"]);
        let claude = ask(Requirements {
            model: Some("claude-3-5-sonnet".into()),
            ..Requirements::default()
        });
        assert_eq!(fitting(&claude), ["aws", "gcp"]);
        let gemini = ask(Requirements {
            model: Some("gemini".into()),
            ..Requirements::default()
        });
        assert_eq!(fitting(&gemini), ["gcp"]);
        let refused = gpt.iter().find(|v| v.cloud == "aws").unwrap();
        assert_eq!(refused.reasons_against[0], "does not offer gpt models");
    }

    #[test]
    fn sovereignty_predictable_cost_and_fine_tuning_narrow_the_field() {
        let sovereign = ask(Requirements {
            sovereignty: true,
            ..Requirements::default()
        });
        assert_eq!(fitting(&sovereign)[0], "oci", "OCI DAC: private GPUs");
        let predictable = ask(Requirements {
            predictable_cost: true,
            ..Requirements::default()
        });
        let mut clouds = fitting(&predictable);
        clouds.sort();
        assert_eq!(clouds, ["azure", "oci"], "Azure PTU or OCI DAC");
        let tuned_gpt = ask(Requirements {
            model: Some("gpt-4o".into()),
            fine_tuning: true,
            ecosystem: Some("microsoft".into()),
            ..Requirements::default()
        });
        assert_eq!(tuned_gpt[0].cloud, "azure");
        assert!(
            tuned_gpt[0]
                .reasons_for
                .contains(&"fine-tuning".to_string())
        );
        let wide = ask(Requirements {
            embedding_dims: Some(3072),
            ..Requirements::default()
        });
        assert_eq!(fitting(&wide), ["azure"]);
    }

    #[test]
    fn the_data_and_the_config_weigh_in_with_egress_and_residency() {
        let landscape = landscape(
            r#"
            [[provider]]
            id = "bedrock-us"
            kind = "bedrock"
            region = "us-east-1"
            [[deployment]]
            provider = "bedrock-us"
            model = "claude-3-5-sonnet"
            [[provider]]
            id = "vertex-eu"
            kind = "vertex"
            project = "p"
            region = "europe-west4"
            [[deployment]]
            provider = "vertex-eu"
            model = "claude-3-5-sonnet"
            [[residency]]
            id = "eu"
            data = { regions = ["eu-*", "europe-*"] }
            inference_regions = ["eu-*", "europe-*"]
            reason = "GDPR"
            "#,
        );
        let advice = advise(
            &landscape,
            &Requirements {
                model: Some("claude".into()),
                data_cloud: Some("aws".into()),
                data_region: Some("eu-west-1".into()),
                ..Requirements::default()
            },
        );
        let aws = advice.iter().find(|v| v.cloud == "aws").unwrap();
        assert!(aws.deployments.is_empty(), "{aws:?}");
        assert!(
            aws.reasons_against
                .iter()
                .any(|why| why.contains("residency \"eu\" keeps this data off bedrock-us")),
            "{aws:?}"
        );
        let gcp = advice.iter().find(|v| v.cloud == "gcp").unwrap();
        assert_eq!(gcp.deployments.len(), 1, "{gcp:?}");
        assert!(
            gcp.reasons_against
                .iter()
                .any(|why| why.contains("moving the data from aws costs $0.09 per GB")),
            "{gcp:?}"
        );
        // The data sits beside Bedrock, but only the EU Vertex deployment may see it.
        assert!(aws.fits && gcp.fits);
    }

    #[test]
    fn model_names_map_to_their_families() {
        for (model, family) in [
            ("gpt-4o-mini", "gpt"),
            ("anthropic.claude-3-5-sonnet-20240620-v1:0", "claude"),
            ("meta.llama3-1-70b-instruct-v1:0", "llama"),
            ("command-r-plus", "cohere"),
            ("cohere.command-r-plus", "cohere"),
            ("mistral-large", "mistral"),
            ("gemini-1.5-pro", "gemini"),
            ("claude", "claude"),
        ] {
            assert_eq!(model_family(model), family, "{model}");
        }
    }

    #[test]
    fn a_capability_table_in_the_config_replaces_or_adds_a_cloud() {
        let landscape = landscape(
            r#"
            [[capability]]
            cloud = "oci"
            service = "OCI Generative AI"
            model_families = ["llama", "cohere", "grok"]
            private_deployment = "yes"
            fine_tuning = "yes"
            dedicated_capacity = "DAC"
            embedding_max_dims = 1024
            [[capability]]
            cloud = "onprem"
            service = "vLLM cluster"
            model_families = ["llama"]
            private_deployment = "yes"
            "#,
        );
        let grok = advise(
            &landscape,
            &Requirements {
                model: Some("grok".into()),
                ..Requirements::default()
            },
        );
        assert_eq!(fitting(&grok), ["oci"]);
        assert_eq!(landscape.capabilities.len(), 5);
    }
}
