//! `[[residency]]` rules: where data of a kind lives, and where it may be processed;
//! `[residency_policy]`: what happens to data no rule covers, and to a prompt whose
//! passages no deployment may see together.

use serde::Deserialize;

use super::Glob;

/// Data living in `data` may only be sent to models in `inference_regions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidencyRule {
    pub id: String,
    pub data: DataPlace,
    /// Region globs of the endpoints that may see such data (`eu-*`, `westeurope`).
    pub inference_regions: Vec<Glob>,
    /// Why, for the people reading refusals and logs ("GDPR - data stays in EU").
    #[serde(default)]
    pub reason: String,
}

/// Where data lives: a chunk matches when its cloud is listed (or none are) and its
/// region matches one of the globs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataPlace {
    #[serde(default)]
    pub clouds: Vec<String>,
    pub regions: Vec<Glob>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResidencyPolicy {
    pub unmatched_data: UnmatchedData,
    pub on_conflict: OnConflict,
    /// Classes of data that may cross regions whatever its rule says (the seed's
    /// `cross_region_allowed`: `anonymized`, `aggregated`). A passage carrying one of
    /// them may go to any region and is served to any caller.
    pub cross_region_allowed: Vec<String>,
}

/// Data that no rule covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmatchedData {
    /// May go to any region.
    #[default]
    Allow,
    /// May go nowhere: it is never put in a prompt.
    Deny,
}

/// An answer whose passages cannot all be sent to one region a deployment serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    /// Answer from the passages the best region may see; the others are withheld and
    /// listed in the answer.
    #[default]
    Withhold,
    /// Refuse the answer (`PERMISSION_DENIED`), naming the rules.
    Fail,
}
