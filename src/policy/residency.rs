//! Residency follows the data: a prompt may only go to an endpoint whose every region
//! every passage in it may be processed in. Pure decisions over the `[[residency]]`
//! rules; the answer path supplies the passages' places and classes and the regions
//! its deployments may use (several for a multi-region endpoint).

use crate::config::{OnConflict, ResidencyPolicy, ResidencyRule, UnmatchedData, any_matches};

/// Where a passage's data lives, and its classes (`pii`, `anonymized`...).
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub cloud: &'a str,
    pub region: &'a str,
    pub classes: &'a [String],
}

impl<'a> Place<'a> {
    /// A place with no classes.
    pub fn at(cloud: &'a str, region: &'a str) -> Self {
        Self {
            cloud,
            region,
            classes: &[],
        }
    }
}

/// The rules and what to do where they are silent or cannot all be met.
#[derive(Debug, Clone, Default)]
pub struct Residency {
    rules: Vec<ResidencyRule>,
    policy: ResidencyPolicy,
}

/// Where a prompt may go, and which passages it may carry.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// No rule restricts these passages: any region.
    Unrestricted,
    /// The prompt goes to an endpoint whose regions are all among `regions`, with the
    /// passages at `kept` (indexes into the passages given, in order); the others are
    /// withheld, each with its reason.
    Restricted {
        regions: Vec<String>,
        kept: Vec<usize>,
        withheld: Vec<(usize, String)>,
    },
    /// The policy refuses the answer (`on_conflict = "fail"`), saying why.
    Refused(String),
}

impl Residency {
    pub fn new(rules: Vec<ResidencyRule>, policy: ResidencyPolicy) -> Self {
        Self { rules, policy }
    }

    /// True when no passage can ever be restricted: nothing to decide.
    pub fn is_open(&self) -> bool {
        self.rules.is_empty() && self.policy.unmatched_data == UnmatchedData::Allow
    }

    /// The rule covering data at `place`: the first that matches.
    pub fn rule_for(&self, place: Place) -> Option<&ResidencyRule> {
        self.rules.iter().find(|rule| {
            (rule.data.clouds.is_empty() || rule.data.clouds.iter().any(|c| c == place.cloud))
                && any_matches(&rule.data.regions, place.region)
        })
    }

    /// The class of `classes` that lets data cross regions (`cross_region_allowed`).
    pub fn crossing_class<'c>(&self, classes: &'c [String]) -> Option<&'c str> {
        classes
            .iter()
            .find(|class| self.policy.cross_region_allowed.contains(class))
            .map(String::as_str)
    }

    /// Whether data at `place` may be processed in `region`, and if not, why.
    pub fn permits(&self, place: Place, region: &str) -> Result<(), String> {
        if self.crossing_class(place.classes).is_some() {
            return Ok(());
        }
        match self.rule_for(place) {
            Some(rule) if any_matches(&rule.inference_regions, region) => Ok(()),
            Some(rule) => Err(format!(
                "residency {:?}{}: data in {}/{}{} may not be processed in {region}",
                rule.id,
                reason_suffix(&rule.reason),
                place.cloud,
                place.region,
                classes_suffix(place.classes)
            )),
            None => match self.policy.unmatched_data {
                UnmatchedData::Allow => Ok(()),
                UnmatchedData::Deny => Err(format!(
                    "no residency rule covers data in {}/{} (residency_policy.unmatched_data = \"deny\")",
                    place.cloud, place.region
                )),
            },
        }
    }

    /// Whether an endpoint that may use every region of `regions` may see data at
    /// `place`: only when each of them may (a multi-region endpoint counts as all).
    pub fn admits(&self, place: Place, regions: &[String]) -> Result<(), String> {
        if regions.is_empty() {
            return self.permits(place, "an unknown region");
        }
        regions
            .iter()
            .try_for_each(|region| self.permits(place, region))
    }

    /// Chooses where a prompt carrying `passages` (best first) may go, among
    /// `endpoints` (each the regions one candidate deployment may use). The regions
    /// of every endpoint that may see all passages, when there is one; else,
    /// withholding, those of the endpoints that may see the most (the better-ranked
    /// on a tie) and the passages they may see.
    pub fn decide(&self, passages: &[Place], endpoints: &[Vec<String>]) -> Decision {
        if self.is_open() || passages.is_empty() {
            return Decision::Unrestricted;
        }
        let restricted = passages.iter().any(|&place| {
            self.crossing_class(place.classes).is_none() && self.rule_for(place).is_some()
        }) || (self.policy.unmatched_data == UnmatchedData::Deny
            && passages
                .iter()
                .any(|place| self.crossing_class(place.classes).is_none()));
        if !restricted {
            return Decision::Unrestricted;
        }
        // For each endpoint, the passages it may see.
        let seen: Vec<Vec<usize>> = endpoints
            .iter()
            .map(|regions| {
                (0..passages.len())
                    .filter(|&index| self.admits(passages[index], regions).is_ok())
                    .collect()
            })
            .collect();
        let kept: Vec<usize> = if seen.iter().any(|seen| seen.len() == passages.len()) {
            (0..passages.len()).collect()
        } else if self.policy.on_conflict == OnConflict::Fail {
            return Decision::Refused(self.conflict(passages, endpoints));
        } else {
            // The endpoint that may see the most passages; on a tie, the better-ranked.
            seen.iter()
                .max_by(|a, b| a.len().cmp(&b.len()).then_with(|| b.cmp(a)))
                .cloned()
                .unwrap_or_default()
        };
        let mut regions: Vec<String> = Vec::new();
        let mut first_fit: Option<&Vec<String>> = None;
        for (endpoint, seen) in endpoints.iter().zip(&seen) {
            if kept.iter().all(|index| seen.contains(index)) {
                first_fit.get_or_insert(endpoint);
                for region in endpoint {
                    if !regions.contains(region) {
                        regions.push(region.clone());
                    }
                }
            }
        }
        let target = first_fit.cloned().unwrap_or_default();
        let withheld = (0..passages.len())
            .filter(|index| !kept.contains(index))
            .map(|index| {
                let why = match first_fit {
                    Some(_) => self.admits(passages[index], &target).err(),
                    None => None,
                }
                .unwrap_or_else(|| NO_DEPLOYMENT.to_string());
                (index, why)
            })
            .collect();
        Decision::Restricted {
            regions,
            kept,
            withheld,
        }
    }

    /// Why no endpoint may see every passage: each passage's first objection.
    fn conflict(&self, passages: &[Place], endpoints: &[Vec<String>]) -> String {
        let mut reasons: Vec<String> = Vec::new();
        for &place in passages {
            for regions in endpoints {
                if let Err(why) = self.admits(place, regions)
                    && !reasons.contains(&why)
                {
                    reasons.push(why);
                    break;
                }
            }
        }
        if reasons.is_empty() {
            reasons.push(NO_DEPLOYMENT.to_string());
        }
        let mut all_regions: Vec<&str> = endpoints.iter().flatten().map(String::as_str).collect();
        all_regions.dedup();
        format!(
            "no deployment for this request may see every retrieved passage (deployments in {}): {}",
            if all_regions.is_empty() {
                "no region".to_string()
            } else {
                all_regions.join(", ")
            },
            reasons.join("; ")
        )
    }
}

/// Why a passage is withheld when no deployment is left to judge it by.
const NO_DEPLOYMENT: &str = "no deployment is left for this request";

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    }
}

fn classes_suffix(classes: &[String]) -> String {
    if classes.is_empty() {
        String::new()
    } else {
        format!(" [{}]", classes.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::config::{DataPlace, Glob};

    fn globs(texts: &[&str]) -> Vec<Glob> {
        texts.iter().map(|text| Glob::new(text).unwrap()).collect()
    }

    fn eu_rule() -> ResidencyRule {
        ResidencyRule {
            id: "eu".into(),
            data: DataPlace {
                clouds: vec![],
                regions: globs(&["westeurope", "eu-*", "europe-*"]),
            },
            inference_regions: globs(&["eu-*", "westeurope", "francecentral"]),
            reason: "GDPR".into(),
        }
    }

    fn residency(on_conflict: OnConflict, unmatched_data: UnmatchedData) -> Residency {
        Residency::new(
            vec![eu_rule()],
            ResidencyPolicy {
                unmatched_data,
                on_conflict,
                cross_region_allowed: vec!["anonymized".into(), "aggregated".into()],
            },
        )
    }

    const EU: Place = Place {
        cloud: "azure",
        region: "westeurope",
        classes: &[],
    };
    const US: Place = Place {
        cloud: "aws",
        region: "us-east-1",
        classes: &[],
    };

    fn regions(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    /// One single-region endpoint per name.
    fn endpoints(names: &[&str]) -> Vec<Vec<String>> {
        names.iter().map(|name| vec![name.to_string()]).collect()
    }

    #[test]
    fn eu_data_keeps_the_prompt_on_eu_endpoints() {
        let residency = residency(OnConflict::Withhold, UnmatchedData::Allow);
        let decision = residency.decide(&[US, EU], &endpoints(&["us-east-1", "eu-west-1"]));
        assert_eq!(
            decision,
            Decision::Restricted {
                regions: regions(&["eu-west-1"]),
                kept: vec![0, 1],
                withheld: vec![],
            }
        );
    }

    #[test]
    fn data_no_rule_covers_follows_the_default() {
        let open = residency(OnConflict::Withhold, UnmatchedData::Allow);
        assert_eq!(
            open.decide(&[US], &endpoints(&["us-east-1"])),
            Decision::Unrestricted
        );
        let closed = residency(OnConflict::Withhold, UnmatchedData::Deny);
        let Decision::Restricted { kept, withheld, .. } =
            closed.decide(&[US, EU], &endpoints(&["us-east-1", "eu-west-1"]))
        else {
            panic!("restricted");
        };
        assert_eq!(kept, vec![1]);
        assert_eq!(withheld.len(), 1);
        assert!(
            withheld[0].1.contains("no residency rule"),
            "{}",
            withheld[0].1
        );
    }

    #[test]
    fn with_only_us_deployments_eu_passages_are_withheld_or_the_answer_refused() {
        let withhold = residency(OnConflict::Withhold, UnmatchedData::Allow);
        let decision = withhold.decide(&[EU, US, EU], &endpoints(&["us-east-1"]));
        assert_eq!(
            decision,
            Decision::Restricted {
                regions: regions(&["us-east-1"]),
                kept: vec![1],
                withheld: vec![
                    (0, "residency \"eu\" (GDPR): data in azure/westeurope may not be processed in us-east-1".into()),
                    (2, "residency \"eu\" (GDPR): data in azure/westeurope may not be processed in us-east-1".into()),
                ],
            }
        );
        let fail = residency(OnConflict::Fail, UnmatchedData::Allow);
        let Decision::Refused(why) = fail.decide(&[EU, US], &endpoints(&["us-east-1"])) else {
            panic!("refused");
        };
        assert!(why.contains("residency \"eu\" (GDPR)"), "{why}");
    }

    #[test]
    fn the_region_that_may_see_the_most_passages_is_chosen() {
        let residency = residency(OnConflict::Withhold, UnmatchedData::Deny);
        // eu-west-1 may see the EU passage; no region may see data no rule covers.
        let decision = residency.decide(&[EU, US], &endpoints(&["eu-west-1", "us-east-1"]));
        let Decision::Restricted { regions, kept, .. } = decision else {
            panic!("restricted");
        };
        assert_eq!((regions, kept), (vec!["eu-west-1".to_string()], vec![0]));
    }

    #[test]
    fn anonymized_eu_data_may_cross_but_pii_may_not() {
        let residency = residency(OnConflict::Withhold, UnmatchedData::Deny);
        let anonymized = ["anonymized".to_string()];
        let pii = ["pii".to_string()];
        let crossing = Place {
            classes: &anonymized,
            ..EU
        };
        let staying = Place {
            classes: &pii,
            ..EU
        };
        assert_eq!(
            residency.decide(&[crossing], &endpoints(&["us-east-1"])),
            Decision::Unrestricted,
            "only a crossing class: nothing to restrict"
        );
        let Decision::Restricted {
            regions, withheld, ..
        } = residency.decide(&[crossing, staying], &endpoints(&["us-east-1"]))
        else {
            panic!("restricted");
        };
        assert_eq!(regions, ["us-east-1"]);
        assert_eq!(withheld.len(), 1);
        assert_eq!(withheld[0].0, 1);
        assert!(withheld[0].1.contains("[pii]"), "{}", withheld[0].1);
    }

    #[test]
    fn a_multi_region_endpoint_counts_as_every_region_it_may_use() {
        let residency = residency(OnConflict::Withhold, UnmatchedData::Allow);
        // A Bedrock `eu.` profile may stay in the EU; a global one may go anywhere.
        let eu_profile = regions(&["eu-central-1", "eu-west-1", "eu-west-3"]);
        let global = regions(&["eu-central-1", "us-east-1", "ap-northeast-1"]);
        assert!(residency.admits(EU, &eu_profile).is_ok());
        let refused = residency.admits(EU, &global).unwrap_err();
        assert!(refused.contains("us-east-1"), "{refused}");
        let decision = residency.decide(&[EU], &[global, eu_profile.clone()]);
        assert_eq!(
            decision,
            Decision::Restricted {
                regions: eu_profile,
                kept: vec![0],
                withheld: vec![],
            }
        );
    }

    /// The seed's three residency examples, and data no rule covers.
    fn seed_residency(policy: ResidencyPolicy) -> Residency {
        let rule = |id: &str, clouds: &[&str], data: &[&str], inference: &[&str]| ResidencyRule {
            id: id.into(),
            data: DataPlace {
                clouds: clouds.iter().map(|c| c.to_string()).collect(),
                regions: globs(data),
            },
            inference_regions: globs(inference),
            reason: format!("{id} law"),
        };
        Residency::new(
            vec![
                rule(
                    "eu",
                    &["azure", "oci", "aws"],
                    &["westeurope", "eu-*", "europe-*"],
                    &["eu-*", "westeurope", "francecentral", "europe-*"],
                ),
                rule("us", &["aws"], &["us-*"], &["us-*"]),
                rule(
                    "apac",
                    &["oci"],
                    &["ap-tokyo-1"],
                    &["ap-tokyo-1", "ap-osaka-1"],
                ),
            ],
            policy,
        )
    }

    #[test]
    fn the_seed_examples_keep_each_region_s_data_at_home() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/residency.toml");
        let config = crate::config::Config::load(&path).unwrap();
        config.validate().unwrap();
        let residency = Residency::new(config.residency.clone(), config.residency_policy.clone());
        // The example's deployments: OCI Frankfurt, OCI Osaka, Bedrock us-east-1 and a
        // Bedrock `us.` profile.
        let endpoints: Vec<Vec<String>> = [
            vec!["eu-frankfurt-1".to_string()],
            vec!["ap-osaka-1".to_string()],
            vec!["us-east-1".to_string()],
            crate::llm::regions::regions_used("aws", "us-east-1", "us.anthropic.claude", &[]),
        ]
        .into();
        let decided = |place: Place| match residency.decide(&[place], &endpoints) {
            Decision::Restricted { regions, kept, .. } if kept == [0] => regions,
            other => panic!("{place:?}: {other:?}"),
        };
        // eu: stored in Azure West Europe, answered in Frankfurt.
        assert_eq!(
            decided(Place::at("azure", "westeurope")),
            ["eu-frankfurt-1"]
        );
        // us: stored in AWS us-east-1, answered by Bedrock there or the US profile.
        let us = decided(Place::at("aws", "us-east-1"));
        assert!(us.contains(&"us-east-1".to_string()) && us.contains(&"us-west-2".to_string()));
        assert!(
            !us.iter()
                .any(|region| region.starts_with("eu") || region.starts_with("ap"))
        );
        // apac: stored in OCI Tokyo, answered in Osaka.
        assert_eq!(decided(Place::at("oci", "ap-tokyo-1")), ["ap-osaka-1"]);
        // Aggregated US data may cross; data no rule covers may go nowhere.
        let aggregated = ["aggregated".to_string()];
        assert_eq!(
            residency.decide(
                &[Place {
                    classes: &aggregated,
                    ..Place::at("aws", "us-east-1")
                }],
                &endpoints
            ),
            Decision::Unrestricted
        );
        let Decision::Restricted { kept, withheld, .. } =
            residency.decide(&[Place::at("gcp", "us-central1")], &endpoints)
        else {
            panic!("restricted");
        };
        assert!(
            kept.is_empty() && withheld[0].1.contains("no residency rule"),
            "{withheld:?}"
        );
    }

    const CLOUDS: [&str; 4] = ["aws", "azure", "oci", "gcp"];
    const REGIONS: [&str; 9] = [
        "us-east-1",
        "us-west-2",
        "eu-west-1",
        "westeurope",
        "europe-west4",
        "ap-tokyo-1",
        "ap-osaka-1",
        "eastus",
        "global",
    ];
    const CLASSES: [&str; 4] = ["pii", "public", "anonymized", "aggregated"];

    prop_compose! {
        fn passage()(cloud in 0..CLOUDS.len(), region in 0..REGIONS.len(),
                     classes in prop::collection::vec(0..CLASSES.len(), 0..3))
                     -> (usize, usize, Vec<String>) {
            (cloud, region, classes.into_iter().map(|c| CLASSES[c].to_string()).collect())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        /// 10,000 random requests: random passages (places and classes), random
        /// deployments (one or several regions each), random policies. No passage
        /// reaches an endpoint one of whose regions its rule forbids, and every
        /// refusal or withheld passage names its reason.
        #[test]
        fn no_passage_reaches_an_endpoint_outside_its_inference_regions(
            passages in prop::collection::vec(passage(), 1..8),
            endpoint_regions in prop::collection::vec(
                prop::collection::vec(0..REGIONS.len(), 1..4), 0..5),
            deny_unmatched in any::<bool>(),
            fail_on_conflict in any::<bool>(),
            anonymized_crosses in any::<bool>(),
        ) {
            let residency = seed_residency(ResidencyPolicy {
                unmatched_data: if deny_unmatched { UnmatchedData::Deny } else { UnmatchedData::Allow },
                on_conflict: if fail_on_conflict { OnConflict::Fail } else { OnConflict::Withhold },
                cross_region_allowed: if anonymized_crosses {
                    vec!["anonymized".into(), "aggregated".into()]
                } else {
                    Vec::new()
                },
            });
            let places: Vec<Place> = passages
                .iter()
                .map(|(cloud, region, classes)| Place {
                    cloud: CLOUDS[*cloud],
                    region: REGIONS[*region],
                    classes,
                })
                .collect();
            let endpoints: Vec<Vec<String>> = endpoint_regions
                .iter()
                .map(|regions| regions.iter().map(|r| REGIONS[*r].to_string()).collect())
                .collect();
            // What the route planner then does: an endpoint is a candidate only when
            // every region it may use is among the decided ones.
            let reached = |allowed: &[String]| -> Vec<&Vec<String>> {
                endpoints
                    .iter()
                    .filter(|regions| regions.iter().all(|r| allowed.contains(r)))
                    .collect()
            };
            match residency.decide(&places, &endpoints) {
                Decision::Unrestricted => {
                    for place in &places {
                        for regions in &endpoints {
                            prop_assert!(residency.admits(*place, regions).is_ok());
                        }
                    }
                }
                Decision::Refused(why) => {
                    prop_assert!(fail_on_conflict);
                    prop_assert!(
                        why.contains("residency \"") || why.contains("no residency rule")
                            || why.contains(NO_DEPLOYMENT),
                        "{}", why
                    );
                }
                Decision::Restricted { regions, kept, withheld } => {
                    prop_assert_eq!(kept.len() + withheld.len(), places.len());
                    for endpoint in reached(&regions) {
                        for &index in &kept {
                            prop_assert!(
                                residency.admits(places[index], endpoint).is_ok(),
                                "{:?} reached {:?}", places[index], endpoint
                            );
                        }
                    }
                    for (index, why) in &withheld {
                        prop_assert!(!kept.contains(index));
                        prop_assert!(
                            why.contains("residency \"") || why.contains("no residency rule")
                            || why.contains(NO_DEPLOYMENT),
                            "{}", why
                        );
                    }
                    if !withheld.is_empty() {
                        prop_assert!(!fail_on_conflict, "fail refuses instead of withholding");
                    }
                }
            }
        }
    }
}
