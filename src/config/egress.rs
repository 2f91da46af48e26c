//! `[egress]`: what moving a gigabyte between two clouds costs, the private links
//! between clouds, and where skyfuse itself runs. Prices override the shipped table
//! (the seed's `EGRESS_COSTS_PER_GB`) pair by pair.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// The cloud skyfuse runs in. Set: retrieved passages travel store -> here ->
    /// model. Unset: they are priced as if they went from the store straight to the
    /// model (skyfuse beside the model, or an operator who does not pay for the hop).
    pub home_cloud: Option<String>,
    /// The region skyfuse runs in, so passages from another region of `home_cloud`
    /// are priced as an inter-region transfer; unset: such moves are not priced.
    pub home_region: Option<String>,
    /// USD per GB between two regions of one cloud (the clouds charge about 0.02).
    pub inter_region_usd_per_gb: f64,
    /// Per cloud, over `inter_region_usd_per_gb`: `{ gcp = 0.01 }`.
    pub inter_region_usd_per_gb_by_cloud: BTreeMap<String, f64>,
    /// USD per GB for a pair no table entry names.
    pub default_usd_per_gb: f64,
    /// `"<from>_to_<to>" = USD per GB`, e.g. `aws_to_azure = 0.09`; merged over the
    /// shipped table.
    pub usd_per_gb: BTreeMap<String, f64>,
    /// Private links between two clouds (ExpressRoute + FastConnect, Interconnect...):
    /// their price replaces the table's in both directions. Replaces the shipped
    /// Azure-OCI link when given.
    #[serde(rename = "link")]
    pub links: Option<Vec<EgressLink>>,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            home_cloud: None,
            home_region: None,
            inter_region_usd_per_gb: SEED_INTER_REGION_USD_PER_GB,
            inter_region_usd_per_gb_by_cloud: BTreeMap::new(),
            default_usd_per_gb: SEED_DEFAULT_USD_PER_GB,
            usd_per_gb: BTreeMap::new(),
            links: None,
        }
    }
}

/// A private link between two clouds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressLink {
    /// What to call it in explanations.
    #[serde(default)]
    pub name: String,
    /// The two clouds it joins, in either direction.
    pub clouds: [String; 2],
    pub usd_per_gb: f64,
    /// One-way latency, for the placement advisor and explanations.
    #[serde(default)]
    pub latency_ms: Option<f64>,
}

/// Between two regions of one cloud: AWS, Azure and GCP list about 0.02 per GB
/// within a continent.
pub const SEED_INTER_REGION_USD_PER_GB: f64 = 0.02;

/// The seed's price for a pair its table does not name.
pub const SEED_DEFAULT_USD_PER_GB: f64 = 0.10;

/// The seed's `EGRESS_COSTS_PER_GB`, shipped as the default table.
pub const SEED_USD_PER_GB: [(&str, &str, f64); 5] = [
    ("aws", "azure", 0.09),
    ("aws", "gcp", 0.09),
    ("azure", "oci", 0.00),
    ("oci", "azure", 0.00),
    ("gcp", "aws", 0.12),
];

impl EgressConfig {
    /// The private links in force: the configured ones, else the seed's OCI-Azure
    /// interconnect (FastConnect + ExpressRoute, no transfer charge, under 2 ms).
    pub fn links_in_force(&self) -> Vec<EgressLink> {
        self.links.clone().unwrap_or_else(|| {
            vec![EgressLink {
                name: "OCI-Azure interconnect (FastConnect + ExpressRoute)".to_string(),
                clouds: ["azure".to_string(), "oci".to_string()],
                usd_per_gb: 0.0,
                latency_ms: Some(2.0),
            }]
        })
    }

    /// The configured pairs as (from, to, price); a key not of the form
    /// `<from>_to_<to>` is an error naming it.
    pub fn configured_pairs(&self) -> Result<Vec<(String, String, f64)>, String> {
        self.usd_per_gb
            .iter()
            .map(|(key, price)| {
                let (from, to) = key
                    .split_once("_to_")
                    .filter(|(from, to)| !from.is_empty() && !to.is_empty())
                    .ok_or_else(|| {
                        format!("egress.usd_per_gb: {key:?} is not \"<from>_to_<to>\" (e.g. \"aws_to_azure\")")
                    })?;
                Ok((from.to_string(), to.to_string(), *price))
            })
            .collect()
    }

    /// Problems a config check reports.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let valid_price = |price: f64| price.is_finite() && price >= 0.0;
        if !valid_price(self.default_usd_per_gb) {
            problems.push(format!(
                "egress.default_usd_per_gb must be a finite number >= 0, not {}",
                self.default_usd_per_gb
            ));
        }
        if !valid_price(self.inter_region_usd_per_gb) {
            problems.push(format!(
                "egress.inter_region_usd_per_gb must be a finite number >= 0, not {}",
                self.inter_region_usd_per_gb
            ));
        }
        for (cloud, price) in &self.inter_region_usd_per_gb_by_cloud {
            if !valid_price(*price) {
                problems.push(format!(
                    "egress.inter_region_usd_per_gb_by_cloud.{cloud} must be a finite number >= 0, not {price}"
                ));
            }
        }
        match self.configured_pairs() {
            Ok(pairs) => {
                for (from, to, price) in pairs {
                    if !valid_price(price) {
                        problems.push(format!(
                            "egress.usd_per_gb.{from}_to_{to} must be a finite number >= 0, not {price}"
                        ));
                    }
                }
            }
            Err(problem) => problems.push(problem),
        }
        for link in self.links_in_force() {
            if link.clouds[0] == link.clouds[1] {
                problems.push(format!(
                    "egress link {:?} joins {} to itself",
                    link.name, link.clouds[0]
                ));
            }
            if !valid_price(link.usd_per_gb) {
                problems.push(format!(
                    "egress link {:?}: usd_per_gb must be a finite number >= 0",
                    link.name
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_links_and_their_mistakes_are_read_from_toml() {
        let config: EgressConfig = toml::from_str(
            r#"
            home_cloud = "aws"
            usd_per_gb = { aws_to_gcp = 0.08, gcp_to_oci = 0.11 }
            [[link]]
            name = "partner interconnect"
            clouds = ["gcp", "oci"]
            usd_per_gb = 0.01
            latency_ms = 3
            "#,
        )
        .unwrap();
        assert_eq!(config.home_cloud.as_deref(), Some("aws"));
        assert_eq!(
            config.configured_pairs().unwrap(),
            [
                ("aws".to_string(), "gcp".to_string(), 0.08),
                ("gcp".to_string(), "oci".to_string(), 0.11)
            ]
        );
        assert_eq!(config.links_in_force()[0].name, "partner interconnect");
        assert!(config.problems().is_empty());

        let bad: EgressConfig =
            toml::from_str("usd_per_gb = { aws = 0.1, gcp_to_aws = -1.0 }").unwrap();
        let problems = bad.problems().join("\n");
        assert!(
            problems.contains("\"aws\" is not \"<from>_to_<to>\""),
            "{problems}"
        );

        let negative: EgressConfig = toml::from_str("usd_per_gb = { gcp_to_aws = -1.0 }").unwrap();
        assert!(negative.problems()[0].contains("gcp_to_aws must be a finite number >= 0"));
    }

    #[test]
    fn the_seed_interconnect_is_in_force_unless_links_are_configured() {
        let shipped = EgressConfig::default();
        let links = shipped.links_in_force();
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].usd_per_gb, 0.0);
        let none: EgressConfig = toml::from_str("link = []").unwrap();
        assert!(none.links_in_force().is_empty());
    }
}
