//! Residency follows the data: a prompt may only go to a region that every passage
//! in it may be processed in. Pure decisions over the `[[residency]]` rules; the
//! answer path supplies the passages' places and the regions its deployments serve.

use crate::config::{OnConflict, ResidencyPolicy, ResidencyRule, UnmatchedData, any_matches};

/// Where a passage's data lives.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub cloud: &'a str,
    pub region: &'a str,
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
    /// The prompt goes to one of `regions` with the passages at `kept` (indexes into
    /// the passages given, in order); the others are withheld, each with its reason.
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

    /// Whether data at `place` may be processed in `region`, and if not, why.
    fn permits(&self, place: Place, region: &str) -> Result<(), String> {
        match self.rule_for(place) {
            Some(rule) if any_matches(&rule.inference_regions, region) => Ok(()),
            Some(rule) => Err(format!(
                "residency {:?}{}: data in {}/{} may not be processed in {region}",
                rule.id,
                reason_suffix(&rule.reason),
                place.cloud,
                place.region
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

    /// Chooses the regions a prompt carrying `passages` (best first) may go to, among
    /// `regions` (where the call's deployments are). Every region that may see all
    /// passages, when there is one; else, withholding, the region that may see the most
    /// (the better-ranked on a tie) and the passages it may see.
    pub fn decide(&self, passages: &[Place], regions: &[String]) -> Decision {
        if self.is_open() || passages.is_empty() {
            return Decision::Unrestricted;
        }
        let restricted = passages.iter().any(|&place| self.rule_for(place).is_some())
            || self.policy.unmatched_data == UnmatchedData::Deny;
        if !restricted {
            return Decision::Unrestricted;
        }
        // For each region, the passages it may see.
        let seen: Vec<Vec<usize>> = regions
            .iter()
            .map(|region| {
                (0..passages.len())
                    .filter(|&index| self.permits(passages[index], region).is_ok())
                    .collect()
            })
            .collect();
        let all: Vec<String> = regions
            .iter()
            .zip(&seen)
            .filter(|(_, seen)| seen.len() == passages.len())
            .map(|(region, _)| region.clone())
            .collect();
        if !all.is_empty() {
            return Decision::Restricted {
                regions: all,
                kept: (0..passages.len()).collect(),
                withheld: Vec::new(),
            };
        }
        if self.policy.on_conflict == OnConflict::Fail {
            return Decision::Refused(self.conflict(passages, regions));
        }
        // The region that may see the most passages; on a tie, the better-ranked ones.
        let best = seen.iter().max_by(|a, b| {
            a.len().cmp(&b.len()).then_with(|| b.cmp(a)) // lower indexes first = better ranked
        });
        let kept = best.cloned().unwrap_or_default();
        let regions_for_kept: Vec<String> = regions
            .iter()
            .zip(&seen)
            .filter(|(_, seen)| kept.iter().all(|index| seen.contains(index)))
            .map(|(region, _)| region.clone())
            .collect();
        let target = regions_for_kept
            .first()
            .map_or("any region", String::as_str);
        let withheld = (0..passages.len())
            .filter(|index| !kept.contains(index))
            .map(|index| {
                let why = self
                    .permits(passages[index], target)
                    .err()
                    .unwrap_or_default();
                (index, why)
            })
            .collect();
        Decision::Restricted {
            regions: regions_for_kept,
            kept,
            withheld,
        }
    }

    /// Why no region may see every passage: each passage's first objection.
    fn conflict(&self, passages: &[Place], regions: &[String]) -> String {
        let mut reasons: Vec<String> = Vec::new();
        for &place in passages {
            for region in regions {
                if let Err(why) = self.permits(place, region)
                    && !reasons.contains(&why)
                {
                    reasons.push(why);
                    break;
                }
            }
        }
        format!(
            "no deployment for this request may see every retrieved passage (deployments in {}): {}",
            if regions.is_empty() {
                "no region".to_string()
            } else {
                regions.join(", ")
            },
            reasons.join("; ")
        )
    }
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    }
}

#[cfg(test)]
mod tests {
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
            },
        )
    }

    const EU: Place = Place {
        cloud: "azure",
        region: "westeurope",
    };
    const US: Place = Place {
        cloud: "aws",
        region: "us-east-1",
    };

    fn regions(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn eu_data_keeps_the_prompt_on_eu_endpoints() {
        let residency = residency(OnConflict::Withhold, UnmatchedData::Allow);
        let decision = residency.decide(&[US, EU], &regions(&["us-east-1", "eu-west-1"]));
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
            open.decide(&[US], &regions(&["us-east-1"])),
            Decision::Unrestricted
        );
        let closed = residency(OnConflict::Withhold, UnmatchedData::Deny);
        let Decision::Restricted { kept, withheld, .. } =
            closed.decide(&[US, EU], &regions(&["us-east-1", "eu-west-1"]))
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
        let decision = withhold.decide(&[EU, US, EU], &regions(&["us-east-1"]));
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
        let Decision::Refused(why) = fail.decide(&[EU, US], &regions(&["us-east-1"])) else {
            panic!("refused");
        };
        assert!(why.contains("residency \"eu\" (GDPR)"), "{why}");
    }

    #[test]
    fn the_region_that_may_see_the_most_passages_is_chosen() {
        let residency = residency(OnConflict::Withhold, UnmatchedData::Deny);
        // eu-west-1 may see the EU passage; no region may see data no rule covers.
        let decision = residency.decide(&[EU, US], &regions(&["eu-west-1", "us-east-1"]));
        let Decision::Restricted { regions, kept, .. } = decision else {
            panic!("restricted");
        };
        assert_eq!((regions, kept), (vec!["eu-west-1".to_string()], vec![0]));
    }
}
