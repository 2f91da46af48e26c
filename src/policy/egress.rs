//! What the bytes of a request cost as they cross clouds: a price per GB for every
//! ordered pair of clouds, private links that replace it, the seed's optimizer
//! (straight there, or through one other cloud when that is cheaper), and the bill
//! of one answer's context and prompt. Moves between two regions of one cloud are
//! priced too (`inter_region_usd_per_gb`), when both regions are known.
//!
//! Pure: the service says which bytes went where, this prices them.

use std::collections::{BTreeSet, HashMap};

use crate::config::{EgressConfig, SEED_USD_PER_GB};

/// Transfer is billed per GiB (2^30 bytes), as the clouds' price lists count a GB.
pub const BYTES_PER_GB: f64 = 1_073_741_824.0;

/// The cloud of data kept on the machine skyfuse runs on, and of local models.
pub const LOCAL_CLOUD: &str = "local";

/// The clouds the optimizer always considers as a stop on the way.
const KNOWN_CLOUDS: [&str; 4] = ["aws", "azure", "gcp", "oci"];

#[derive(Debug, Clone)]
pub struct EgressPrices {
    per_gb: HashMap<(String, String), Price>,
    default_usd_per_gb: f64,
    /// Where skyfuse runs; None: passages are priced straight from store to model.
    home_cloud: Option<String>,
    home_region: Option<String>,
    inter_region_usd_per_gb: f64,
    inter_region_by_cloud: HashMap<String, f64>,
    clouds: Vec<String>,
}

/// Where bytes are: a cloud and its region (empty when unknown).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Spot {
    pub cloud: String,
    pub region: String,
}

impl Spot {
    pub fn new(cloud: &str, region: &str) -> Self {
        Self {
            cloud: cloud.to_string(),
            region: region.to_string(),
        }
    }
}

/// The price of one direction between two clouds, and where it comes from.
#[derive(Debug, Clone, PartialEq)]
struct Price {
    usd_per_gb: f64,
    /// The private link that sets it, if any.
    link: Option<String>,
}

/// How the optimizer would move data from one cloud to another.
#[derive(Debug, Clone, PartialEq)]
pub struct EgressRoute {
    /// From, any stop, to.
    pub clouds: Vec<String>,
    pub usd_per_gb: f64,
    /// What the direct transfer costs per GB (equal to `usd_per_gb` when direct wins).
    pub direct_usd_per_gb: f64,
}

impl EgressRoute {
    pub fn is_direct(&self) -> bool {
        self.clouds.len() == 2
    }
}

/// Bytes a request moved from one place to another.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    pub from: Spot,
    pub to: Spot,
    pub bytes: u64,
}

/// One priced transfer of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct EgressLeg {
    pub from_cloud: String,
    pub to_cloud: String,
    /// The regions, when known; a leg inside one cloud is between two of its regions.
    pub from_region: String,
    pub to_region: String,
    pub bytes: u64,
    /// What it cost, moved directly (as skyfuse moves it).
    pub usd: f64,
    /// The private link that priced it, if any.
    pub link: Option<String>,
    /// A cheaper way for this data, through another cloud, and what it would save.
    pub cheaper_via: Option<String>,
    pub saving_usd: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EgressBill {
    pub legs: Vec<EgressLeg>,
}

impl EgressBill {
    pub fn total_usd(&self) -> f64 {
        self.legs.iter().map(|leg| leg.usd).sum()
    }
}

impl Default for EgressPrices {
    fn default() -> Self {
        Self::from_config(&EgressConfig::default())
    }
}

impl EgressPrices {
    /// The shipped table with the config's prices and links over it. Expects a
    /// validated config: a malformed pair key is skipped.
    pub fn from_config(config: &EgressConfig) -> Self {
        let mut per_gb = HashMap::new();
        let mut set = |from: &str, to: &str, usd_per_gb: f64, link: Option<String>| {
            per_gb.insert(
                (from.to_string(), to.to_string()),
                Price { usd_per_gb, link },
            );
        };
        for (from, to, price) in SEED_USD_PER_GB {
            set(from, to, price, None);
        }
        for (from, to, price) in config.configured_pairs().unwrap_or_default() {
            set(&from, &to, price, None);
        }
        for link in config.links_in_force() {
            let [one, other] = &link.clouds;
            let name = Some(link.name.clone()).filter(|name| !name.is_empty());
            set(one, other, link.usd_per_gb, name.clone());
            set(other, one, link.usd_per_gb, name);
        }
        let mut clouds: BTreeSet<String> = KNOWN_CLOUDS.iter().map(|c| c.to_string()).collect();
        for (from, to) in per_gb.keys() {
            clouds.insert(from.clone());
            clouds.insert(to.clone());
        }
        clouds.remove(LOCAL_CLOUD);
        Self {
            per_gb,
            default_usd_per_gb: config.default_usd_per_gb,
            home_cloud: config.home_cloud.clone(),
            home_region: config.home_region.clone(),
            inter_region_usd_per_gb: config.inter_region_usd_per_gb,
            inter_region_by_cloud: config
                .inter_region_usd_per_gb_by_cloud
                .iter()
                .map(|(cloud, price)| (cloud.clone(), *price))
                .collect(),
            clouds: clouds.into_iter().collect(),
        }
    }

    /// Where skyfuse runs, as far as prices go.
    pub fn home_cloud(&self) -> Option<&str> {
        self.home_cloud.as_deref()
    }

    /// USD per GB from one cloud to another, moved directly. Staying in a cloud is
    /// free, and so is anything leaving the machine skyfuse runs on (clouds do not
    /// charge ingress).
    pub fn usd_per_gb(&self, from_cloud: &str, to_cloud: &str) -> f64 {
        self.price(from_cloud, to_cloud).usd_per_gb
    }

    fn price(&self, from_cloud: &str, to_cloud: &str) -> Price {
        let from_cloud = self.resolve(from_cloud);
        let to_cloud = self.resolve(to_cloud);
        if from_cloud == to_cloud || from_cloud == LOCAL_CLOUD {
            return Price {
                usd_per_gb: 0.0,
                link: None,
            };
        }
        self.per_gb
            .get(&(from_cloud.to_string(), to_cloud.to_string()))
            .cloned()
            .unwrap_or(Price {
                usd_per_gb: self.default_usd_per_gb,
                link: None,
            })
    }

    /// USD per GB between two regions of `cloud`.
    pub fn inter_region_usd_per_gb(&self, cloud: &str) -> f64 {
        self.inter_region_by_cloud
            .get(self.resolve(cloud))
            .copied()
            .unwrap_or(self.inter_region_usd_per_gb)
    }

    /// A spot with `local` resolved to skyfuse's home (its cloud and region, when set).
    fn resolve_spot<'a>(&'a self, spot: &'a Spot) -> (&'a str, &'a str) {
        match (&self.home_cloud, spot.cloud.as_str()) {
            (Some(home), LOCAL_CLOUD) => (home, self.home_region.as_deref().unwrap_or("")),
            _ => (spot.cloud.as_str(), spot.region.as_str()),
        }
    }

    /// The price of moving a GB from one spot to another: across clouds the pair's
    /// price; inside one cloud, the inter-region price when both regions are known and
    /// differ, else nothing.
    fn price_between(&self, from: &Spot, to: &Spot) -> Price {
        let (from_cloud, from_region) = self.resolve_spot(from);
        let (to_cloud, to_region) = self.resolve_spot(to);
        if from_cloud != to_cloud || from_cloud == LOCAL_CLOUD {
            return self.price(from_cloud, to_cloud);
        }
        let known = |region: &str| !region.is_empty() && region != LOCAL_CLOUD;
        let usd_per_gb = if known(from_region) && known(to_region) && from_region != to_region {
            self.inter_region_usd_per_gb(from_cloud)
        } else {
            0.0
        };
        Price {
            usd_per_gb,
            link: None,
        }
    }

    /// `local` is the machine skyfuse runs on: the home cloud when one is set.
    fn resolve<'a>(&'a self, cloud: &'a str) -> &'a str {
        match (&self.home_cloud, cloud) {
            (Some(home), LOCAL_CLOUD) => home,
            _ => cloud,
        }
    }

    /// The seed's optimizer: the direct price against every route through one other
    /// cloud; the direct one on a tie.
    pub fn cheapest_route(&self, from_cloud: &str, to_cloud: &str) -> EgressRoute {
        let direct = self.usd_per_gb(from_cloud, to_cloud);
        let mut best = EgressRoute {
            clouds: vec![from_cloud.to_string(), to_cloud.to_string()],
            usd_per_gb: direct,
            direct_usd_per_gb: direct,
        };
        let ends = [self.resolve(from_cloud), self.resolve(to_cloud)];
        for stop in &self.clouds {
            if ends.contains(&stop.as_str()) {
                continue;
            }
            let through = self.usd_per_gb(from_cloud, stop) + self.usd_per_gb(stop, to_cloud);
            if through < best.usd_per_gb {
                best.clouds = vec![from_cloud.to_string(), stop.clone(), to_cloud.to_string()];
                best.usd_per_gb = through;
            }
        }
        best
    }

    /// The flows of one answer: each passage from its store's place to skyfuse's
    /// home (when set), then the whole prompt from there to the model's place; with
    /// no home, each passage straight to the model's place.
    pub fn answer_flows(
        &self,
        passages: &[(Spot, u64)],
        prompt_bytes: u64,
        model: &Spot,
    ) -> Vec<Flow> {
        let mut by_spot: Vec<(Spot, u64)> = Vec::new();
        for (spot, bytes) in passages {
            match by_spot.iter_mut().find(|(known, _)| known == spot) {
                Some((_, total)) => *total += bytes,
                None => by_spot.push((spot.clone(), *bytes)),
            }
        }
        let home = self.home_cloud.as_ref().map(|cloud| Spot {
            cloud: cloud.clone(),
            region: self.home_region.clone().unwrap_or_default(),
        });
        let hop_to = home.clone().unwrap_or_else(|| model.clone());
        let mut flows: Vec<Flow> = by_spot
            .into_iter()
            .map(|(spot, bytes)| Flow {
                from: spot,
                to: hop_to.clone(),
                bytes,
            })
            .collect();
        if let Some(home) = home {
            flows.push(Flow {
                from: home,
                to: model.clone(),
                bytes: prompt_bytes,
            });
        }
        flows
    }

    /// Prices each flow that moves data (across clouds, or between two known regions
    /// of one); flows that stay put are left out.
    pub fn bill(&self, flows: &[Flow]) -> EgressBill {
        let legs = flows
            .iter()
            .filter(|flow| flow.bytes > 0 && self.moves(&flow.from, &flow.to))
            .map(|flow| {
                let gigabytes = flow.bytes as f64 / BYTES_PER_GB;
                let price = self.price_between(&flow.from, &flow.to);
                let (cheaper_via, saving_usd) = if self.crosses(&flow.from.cloud, &flow.to.cloud) {
                    let route = self.cheapest_route(&flow.from.cloud, &flow.to.cloud);
                    (
                        (!route.is_direct()).then(|| route.clouds[1].clone()),
                        (route.direct_usd_per_gb - route.usd_per_gb) * gigabytes,
                    )
                } else {
                    (None, 0.0)
                };
                EgressLeg {
                    from_cloud: flow.from.cloud.clone(),
                    to_cloud: flow.to.cloud.clone(),
                    from_region: flow.from.region.clone(),
                    to_region: flow.to.region.clone(),
                    bytes: flow.bytes,
                    usd: price.usd_per_gb * gigabytes,
                    link: price.link,
                    saving_usd,
                    cheaper_via,
                }
            })
            .collect();
        EgressBill { legs }
    }

    fn crosses(&self, from_cloud: &str, to_cloud: &str) -> bool {
        self.resolve(from_cloud) != self.resolve(to_cloud)
    }

    /// Whether a flow leaves its place: another cloud, or a priced inter-region move.
    fn moves(&self, from: &Spot, to: &Spot) -> bool {
        self.crosses(&from.cloud, &to.cloud) || self.price_between(from, to).usd_per_gb > 0.0
    }

    /// What moving `passages` to a model at `model` would cost, for ordering
    /// candidates before the prompt exists (the prompt's own hop is left out: it is
    /// the same size wherever it goes, only its price differs, and `bill` counts it).
    pub fn context_usd_to(&self, passages: &[(Spot, u64)], model: &Spot) -> f64 {
        let prompt_bytes: u64 = passages.iter().map(|(_, bytes)| bytes).sum();
        self.bill(&self.answer_flows(passages, prompt_bytes, model))
            .total_usd()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GIB: u64 = 1 << 30;

    fn prices(toml: &str) -> EgressPrices {
        EgressPrices::from_config(&toml::from_str(toml).unwrap())
    }

    #[test]
    fn the_seed_table_prices_pairs_and_the_interconnect_is_free() {
        let shipped = EgressPrices::default();
        assert_eq!(shipped.usd_per_gb("aws", "azure"), 0.09);
        assert_eq!(shipped.usd_per_gb("gcp", "aws"), 0.12);
        assert_eq!(shipped.usd_per_gb("azure", "oci"), 0.0);
        assert_eq!(shipped.usd_per_gb("oci", "azure"), 0.0);
        assert_eq!(
            shipped.usd_per_gb("oci", "gcp"),
            0.10,
            "unnamed pair: the default"
        );
        assert_eq!(shipped.usd_per_gb("aws", "aws"), 0.0, "staying in a cloud");
        assert_eq!(shipped.usd_per_gb("local", "aws"), 0.0, "ingress is free");
    }

    #[test]
    fn the_optimizer_goes_through_another_cloud_only_when_cheaper() {
        // The seed's own example: GCP -> OCI costs the default 0.10 direct, while
        // GCP -> Azure is configured at 0.02 and Azure -> OCI rides the interconnect.
        let prices = prices("usd_per_gb = { gcp_to_azure = 0.02 }");
        let route = prices.cheapest_route("gcp", "oci");
        assert_eq!(route.clouds, ["gcp", "azure", "oci"]);
        assert!((route.usd_per_gb - 0.02).abs() < 1e-12);
        assert_eq!(route.direct_usd_per_gb, 0.10);

        let direct = prices.cheapest_route("aws", "azure");
        assert!(
            direct.is_direct(),
            "0.09 direct beats any two hops: {direct:?}"
        );
    }

    #[test]
    fn an_answer_is_billed_per_crossing_with_the_link_and_the_cheaper_way_named() {
        let prices = prices("usd_per_gb = { gcp_to_azure = 0.02 }");
        let passages = [
            (Spot::new("gcp", ""), 2 * GIB),
            (Spot::new("oci", ""), GIB),
            (Spot::new("gcp", ""), GIB),
            (Spot::new("azure", ""), GIB),
        ];
        let bill = prices.bill(&prices.answer_flows(&passages, 0, &Spot::new("oci", "")));
        assert_eq!(bill.legs.len(), 2, "oci stays put: {:?}", bill.legs);
        let from_gcp = &bill.legs[0];
        assert_eq!(
            (from_gcp.from_cloud.as_str(), from_gcp.bytes),
            ("gcp", 3 * GIB)
        );
        assert!(
            (from_gcp.usd - 0.30).abs() < 1e-9,
            "3 GiB at the default 0.10"
        );
        assert_eq!(from_gcp.cheaper_via.as_deref(), Some("azure"));
        assert!((from_gcp.saving_usd - 0.24).abs() < 1e-9);
        let from_azure = &bill.legs[1];
        assert_eq!(from_azure.usd, 0.0);
        assert!(from_azure.link.as_deref().unwrap().contains("interconnect"));
        assert!((bill.total_usd() - 0.30).abs() < 1e-9);
    }

    #[test]
    fn with_a_home_cloud_passages_go_home_and_the_prompt_goes_on() {
        let prices = prices("home_cloud = \"aws\"");
        let flows = prices.answer_flows(
            &[(Spot::new("gcp", ""), GIB), (Spot::new("local", ""), GIB)],
            3 * GIB,
            &Spot::new("azure", ""),
        );
        let bill = prices.bill(&flows);
        let legs: Vec<(&str, &str, u64)> = bill
            .legs
            .iter()
            .map(|leg| (leg.from_cloud.as_str(), leg.to_cloud.as_str(), leg.bytes))
            .collect();
        assert_eq!(legs, [("gcp", "aws", GIB), ("aws", "azure", 3 * GIB)]);
        assert!((bill.total_usd() - (0.12 + 3.0 * 0.09)).abs() < 1e-9);
    }

    #[test]
    fn moving_between_regions_of_one_cloud_is_priced_and_overridable() {
        let shipped = EgressPrices::default();
        let passages = [
            (Spot::new("aws", "eu-west-1"), GIB),
            (Spot::new("aws", "us-east-1"), GIB),
            (Spot::new("aws", ""), GIB),
        ];
        let bill =
            shipped.bill(&shipped.answer_flows(&passages, 0, &Spot::new("aws", "us-east-1")));
        let legs: Vec<(&str, &str, f64)> = bill
            .legs
            .iter()
            .map(|leg| (leg.from_region.as_str(), leg.to_region.as_str(), leg.usd))
            .collect();
        assert_eq!(
            legs,
            [("eu-west-1", "us-east-1", 0.02)],
            "one region to another at the default 0.02; same region and unknown region free"
        );
        let cheaper = prices(
            "inter_region_usd_per_gb = 0.01\ninter_region_usd_per_gb_by_cloud = { aws = 0.015 }",
        );
        assert_eq!(cheaper.inter_region_usd_per_gb("aws"), 0.015);
        assert_eq!(cheaper.inter_region_usd_per_gb("gcp"), 0.01);
        // With skyfuse at home in aws/us-east-1, a local passage is there already.
        let home = prices("home_cloud = \"aws\"\nhome_region = \"us-east-1\"");
        let flows = home.answer_flows(
            &[
                (Spot::new("local", "local"), GIB),
                (Spot::new("aws", "eu-west-1"), GIB),
            ],
            2 * GIB,
            &Spot::new("aws", "us-west-2"),
        );
        let bill = home.bill(&flows);
        assert_eq!(bill.legs.len(), 2, "{:?}", bill.legs);
        assert!(
            (bill.total_usd() - 0.02 * 3.0).abs() < 1e-9,
            "{:?}",
            bill.legs
        );
    }

    proptest! {
        #[test]
        fn the_chosen_route_never_costs_more_than_going_direct(
            from in prop::sample::select(vec!["aws", "azure", "gcp", "oci", "local"]),
            to in prop::sample::select(vec!["aws", "azure", "gcp", "oci", "local"]),
            gcp_to_azure in 0.0f64..0.2,
            aws_to_oci in 0.0f64..0.2,
        ) {
            let prices = prices(&format!(
                "usd_per_gb = {{ gcp_to_azure = {gcp_to_azure}, aws_to_oci = {aws_to_oci} }}"
            ));
            let route = prices.cheapest_route(from, to);
            prop_assert!(route.usd_per_gb <= prices.usd_per_gb(from, to));
            let hops: f64 = route
                .clouds
                .windows(2)
                .map(|pair| prices.usd_per_gb(&pair[0], &pair[1]))
                .sum();
            prop_assert!((hops - route.usd_per_gb).abs() < 1e-12, "the route's price is its hops'");
        }
    }
}
