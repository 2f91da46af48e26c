//! Residency at `Search`: where a search may reach. The request's and the caller's
//! cloud and region restrictions decide which sources it may query, which embedding
//! providers may see its query, and which retrieved chunks it may return; a chunk
//! of a `cross_region_allowed` class (anonymized, aggregated) may come from anywhere.
//!
//! `local` (the machine skyfuse runs on) is always within reach: the query is there
//! already. A chunk whose place is unknown (written before chunks carried one) is
//! not: a restricted search never returns data it cannot place.

use crate::config::{Glob, any_matches};
use crate::policy::egress::LOCAL_CLOUD;

/// One party's restriction: the clouds and region globs it allows (empty: any).
#[derive(Debug, Clone)]
pub struct Limit {
    /// Who set it, for reasons: `the request`, `caller "eu-app"`.
    pub by: String,
    pub clouds: Vec<String>,
    pub regions: Vec<Glob>,
}

impl Limit {
    fn is_open(&self) -> bool {
        self.clouds.is_empty() && self.regions.is_empty()
    }

    fn check(&self, cloud: &str, region: &str) -> Result<(), String> {
        if !self.clouds.is_empty() && !self.clouds.iter().any(|known| known == cloud) {
            return Err(format!(
                "{cloud}/{region} is outside the clouds {} allows ({})",
                self.by,
                self.clouds.join(", ")
            ));
        }
        if !any_matches(&self.regions, region) {
            let globs: Vec<&str> = self.regions.iter().map(Glob::as_str).collect();
            return Err(format!(
                "{cloud}/{region} is outside the regions {} allows ({})",
                self.by,
                globs.join(", ")
            ));
        }
        Ok(())
    }
}

/// Everything that restricts one search. The default restricts nothing.
#[derive(Debug, Clone, Default)]
pub struct SearchZone {
    pub limits: Vec<Limit>,
    /// Only chunks carrying one of these classes; empty: any.
    pub classes: Vec<String>,
    /// The `[residency_policy] cross_region_allowed` classes.
    pub cross_region_allowed: Vec<String>,
}

impl SearchZone {
    /// Whether the zone restricts places at all (a class filter alone does not).
    pub fn restricts_places(&self) -> bool {
        self.limits.iter().any(|limit| !limit.is_open())
    }

    pub fn is_open(&self) -> bool {
        !self.restricts_places() && self.classes.is_empty()
    }

    /// Whether the query may be sent to, or processed at, `cloud`/`region` (a store,
    /// an embedding provider), and if not, why.
    pub fn reaches(&self, cloud: &str, region: &str) -> Result<(), String> {
        if cloud == LOCAL_CLOUD {
            return Ok(());
        }
        self.limits
            .iter()
            .try_for_each(|limit| limit.check(cloud, region))
    }

    /// Whether a chunk at `cloud`/`region` carrying `classes` may be returned.
    pub fn returns(&self, cloud: &str, region: &str, classes: &[String]) -> Result<(), String> {
        if !self.classes.is_empty() && !classes.iter().any(|class| self.classes.contains(class)) {
            return Err(format!(
                "not of the classes asked for ({})",
                self.classes.join(", ")
            ));
        }
        if !self.restricts_places()
            || classes
                .iter()
                .any(|class| self.cross_region_allowed.contains(class))
        {
            return Ok(());
        }
        if cloud.is_empty() {
            return Err("its place is unknown (indexed before chunks carried one)".into());
        }
        self.reaches(cloud, region)
    }

    /// The clouds every chunk returned must live in, when stores can filter for them
    /// before ranking: every limit names clouds and no class may cross. None: filter
    /// after the stores answer only.
    pub fn store_clouds(&self) -> Option<Vec<String>> {
        if !self.cross_region_allowed.is_empty() {
            return None;
        }
        let mut allowed: Option<Vec<String>> = None;
        for limit in &self.limits {
            if limit.clouds.is_empty() {
                continue;
            }
            allowed = Some(match allowed {
                None => limit.clouds.clone(),
                Some(known) => known
                    .into_iter()
                    .filter(|cloud| limit.clouds.contains(cloud))
                    .collect(),
            });
        }
        allowed.map(|mut clouds| {
            clouds.push(LOCAL_CLOUD.to_string());
            clouds
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eu_zone() -> SearchZone {
        SearchZone {
            limits: vec![
                Limit {
                    by: "the request".into(),
                    clouds: Vec::new(),
                    regions: vec![Glob::new("eu-*").unwrap(), Glob::new("westeurope").unwrap()],
                },
                Limit {
                    by: "caller \"app\"".into(),
                    clouds: vec!["aws".into(), "azure".into()],
                    regions: Vec::new(),
                },
            ],
            classes: Vec::new(),
            cross_region_allowed: vec!["anonymized".into()],
        }
    }

    #[test]
    fn a_restricted_search_reaches_only_its_places_and_local() {
        let zone = eu_zone();
        assert!(zone.reaches("aws", "eu-west-1").is_ok());
        assert!(zone.reaches("azure", "westeurope").is_ok());
        assert!(zone.reaches("local", "local").is_ok());
        let us = zone.reaches("aws", "us-east-1").unwrap_err();
        assert!(us.contains("the request allows (eu-*, westeurope)"), "{us}");
        let gcp = zone.reaches("gcp", "europe-west4").unwrap_err();
        assert!(gcp.contains("regions"), "{gcp}");
        let gcp_eu = zone.reaches("gcp", "eu-west-9").unwrap_err();
        assert!(gcp_eu.contains("caller \"app\""), "{gcp_eu}");
    }

    #[test]
    fn chunks_from_elsewhere_come_back_only_when_their_class_may_cross() {
        let zone = eu_zone();
        let none: [String; 0] = [];
        assert!(zone.returns("aws", "us-east-1", &none).is_err());
        assert!(
            zone.returns("aws", "us-east-1", &["anonymized".into()])
                .is_ok()
        );
        assert!(zone.returns("", "", &none).unwrap_err().contains("unknown"));
        let pii_only = SearchZone {
            classes: vec!["public".into()],
            ..SearchZone::default()
        };
        assert!(
            pii_only
                .returns("aws", "us-east-1", &["pii".into()])
                .is_err()
        );
        assert!(
            pii_only
                .returns("aws", "us-east-1", &["public".into()])
                .is_ok()
        );
        assert_eq!(
            zone.store_clouds(),
            None,
            "a crossing class keeps stores unfiltered"
        );
        let strict = SearchZone {
            cross_region_allowed: Vec::new(),
            ..eu_zone()
        };
        assert_eq!(
            strict.store_clouds(),
            Some(vec!["aws".into(), "azure".into(), "local".into()])
        );
    }
}
