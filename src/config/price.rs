//! `[[price]]`: a price catalog entry, overriding or adding to `route/prices.toml`.

use serde::Deserialize;

/// A catalog entry override or addition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    pub model: String,
    pub cloud: String,
    pub input_per_1m_usd: f64,
    pub output_per_1m_usd: f64,
    pub cached_input_per_1m_usd: Option<f64>,
    pub context_window: Option<u64>,
}
