//! `[[caller]]`: a client of the service, its key and what it may use.

use serde::Deserialize;

use super::{Glob, SecretLocation};

/// A client of the service. With none configured, calls are anonymous and unlimited.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    pub id: String,
    /// Presented as `authorization: Bearer <key>` (gRPC metadata or HTTP header).
    pub api_key: SecretLocation,
    /// Models it may ask for (exact or glob); empty = all.
    #[serde(default)]
    pub models: Vec<Glob>,
    /// Tiers it may ask for; empty = all.
    #[serde(default)]
    pub tiers: Vec<String>,
    /// Clouds its prompts may go to; empty = all.
    #[serde(default)]
    pub clouds: Vec<String>,
    /// Regions its prompts may go to (exact or glob: `eu-*`, `europe-*`,
    /// `eu-{west,central}-*`, `westeurope`); empty = all. Data residency per caller.
    #[serde(default)]
    pub regions: Vec<Glob>,
    /// Spend allowed per UTC day, in USD.
    pub budget_usd_per_day: Option<f64>,
}
