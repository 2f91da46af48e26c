//! The price catalog: list prices per model and cloud, shipped as data
//! (`prices.toml`), overridden by `[[price]]` tables and per deployment.

use std::collections::HashMap;

use serde::Deserialize;

use crate::config::{DeploymentConfig, PriceConfig};
use crate::error::{Error, Result};
use crate::llm::Usage;

const BUILTIN_PRICES: &str = include_str!("prices.toml");

/// What a deployment charges, per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input_per_1m_usd: f64,
    pub output_per_1m_usd: f64,
    /// Cached prompt tokens, where the cloud discounts them.
    pub cached_input_per_1m_usd: Option<f64>,
}

impl Price {
    /// The bill for `usage`: cached input at its own rate (`input_tokens` includes it).
    pub fn cost_usd(&self, usage: &Usage) -> f64 {
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let cached_rate = self
            .cached_input_per_1m_usd
            .unwrap_or(self.input_per_1m_usd);
        ((usage.input_tokens - cached) as f64 * self.input_per_1m_usd
            + cached as f64 * cached_rate
            + usage.output_tokens as f64 * self.output_per_1m_usd)
            / 1_000_000.0
    }

    /// The most a call can cost: the whole prompt uncached and every output token.
    pub fn max_cost_usd(&self, input_tokens: u64, max_output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.input_per_1m_usd
            + max_output_tokens as f64 * self.output_per_1m_usd)
            / 1_000_000.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    price: Price,
    context_window: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct CatalogFile {
    price: Vec<CatalogRow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogRow {
    model: String,
    cloud: String,
    input_per_1m_usd: f64,
    output_per_1m_usd: f64,
    cached_input_per_1m_usd: Option<f64>,
    context_window: Option<u64>,
    #[expect(dead_code, reason = "provenance, for people reading the file")]
    effective: String,
    #[expect(dead_code, reason = "provenance, for people reading the file")]
    source: String,
}

/// Prices and context windows by (model, cloud).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    entries: HashMap<(String, String), Entry>,
}

impl Catalog {
    /// The shipped catalog with the config's `[[price]]` tables over it.
    pub fn load(overrides: &[PriceConfig]) -> Result<Self> {
        let file: CatalogFile = toml::from_str(BUILTIN_PRICES)
            .map_err(|error| Error::internal(format!("the built-in price catalog: {error}")))?;
        let mut catalog = Self::default();
        for row in file.price {
            catalog.entries.insert(
                (row.model, row.cloud),
                Entry {
                    price: Price {
                        input_per_1m_usd: row.input_per_1m_usd,
                        output_per_1m_usd: row.output_per_1m_usd,
                        cached_input_per_1m_usd: row.cached_input_per_1m_usd,
                    },
                    context_window: row.context_window,
                },
            );
        }
        for row in overrides {
            let key = (row.model.clone(), row.cloud.clone());
            let context_window = row
                .context_window
                .or_else(|| catalog.entries.get(&key)?.context_window);
            catalog.entries.insert(
                key,
                Entry {
                    price: Price {
                        input_per_1m_usd: row.input_per_1m_usd,
                        output_per_1m_usd: row.output_per_1m_usd,
                        cached_input_per_1m_usd: row.cached_input_per_1m_usd,
                    },
                    context_window,
                },
            );
        }
        Ok(catalog)
    }

    /// A deployment's price: its own, else the catalog's for its model and cloud.
    /// A deployment that sets only some prices takes the rest from the catalog.
    pub fn price(&self, deployment: &DeploymentConfig, cloud: &str) -> Option<Price> {
        let listed = self
            .entries
            .get(&(deployment.model.clone(), cloud.to_string()))
            .map(|entry| entry.price);
        let input = deployment
            .input_per_1m_usd
            .or(listed.map(|price| price.input_per_1m_usd))?;
        let output = deployment
            .output_per_1m_usd
            .or(listed.map(|price| price.output_per_1m_usd))?;
        Some(Price {
            input_per_1m_usd: input,
            output_per_1m_usd: output,
            cached_input_per_1m_usd: deployment
                .cached_input_per_1m_usd
                .or(listed.and_then(|price| price.cached_input_per_1m_usd)),
        })
    }

    /// The model's context window: the deployment's, else the catalog's for any cloud.
    pub fn context_window(&self, deployment: &DeploymentConfig, cloud: &str) -> Option<u64> {
        deployment.context_window.or_else(|| {
            self.entries
                .get(&(deployment.model.clone(), cloud.to_string()))
                .and_then(|entry| entry.context_window)
                .or_else(|| {
                    self.entries
                        .iter()
                        .filter(|((model, _), _)| model == &deployment.model)
                        .find_map(|(_, entry)| entry.context_window)
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(model: &str) -> DeploymentConfig {
        DeploymentConfig {
            provider: "p".into(),
            model: model.into(),
            name: None,
            dedicated: false,
            context_window: None,
            input_per_1m_usd: None,
            output_per_1m_usd: None,
            cached_input_per_1m_usd: None,
            requests_per_minute: None,
            tokens_per_minute: None,
            regions: Vec::new(),
            stop: Vec::new(),
        }
    }

    #[test]
    fn the_shipped_catalog_prices_models_per_cloud_and_config_overrides_it() {
        let catalog = Catalog::load(&[]).unwrap();
        let gpt = catalog.price(&deployment("gpt-4o"), "azure").unwrap();
        assert_eq!((gpt.input_per_1m_usd, gpt.output_per_1m_usd), (2.5, 10.0));
        assert!(catalog.price(&deployment("gpt-4o"), "aws").is_none());
        assert_eq!(
            catalog.context_window(&deployment("claude-3.5-sonnet"), "aws"),
            Some(200_000)
        );

        let overridden = Catalog::load(&[PriceConfig {
            model: "gpt-4o".into(),
            cloud: "azure".into(),
            input_per_1m_usd: 2.0,
            output_per_1m_usd: 8.0,
            cached_input_per_1m_usd: None,
            context_window: None,
        }])
        .unwrap();
        let price = overridden.price(&deployment("gpt-4o"), "azure").unwrap();
        assert_eq!(
            (price.input_per_1m_usd, price.output_per_1m_usd),
            (2.0, 8.0)
        );
        assert_eq!(
            overridden.context_window(&deployment("gpt-4o"), "azure"),
            Some(128_000),
            "an override without a window keeps the catalog's"
        );

        let mut own = deployment("gpt-4o");
        own.output_per_1m_usd = Some(12.0);
        let price = catalog.price(&own, "azure").unwrap();
        assert_eq!(
            (price.input_per_1m_usd, price.output_per_1m_usd),
            (2.5, 12.0)
        );
    }

    #[test]
    fn cached_prompt_tokens_are_billed_at_their_own_rate() {
        let price = Price {
            input_per_1m_usd: 2.0,
            output_per_1m_usd: 10.0,
            cached_input_per_1m_usd: Some(1.0),
        };
        let usage = Usage {
            input_tokens: 1_000_000,
            output_tokens: 100_000,
            cached_input_tokens: 400_000,
            estimated: false,
        };
        // 600k at 2 + 400k at 1 + 100k at 10 = 1.2 + 0.4 + 1.0
        assert!((price.cost_usd(&usage) - 2.6).abs() < 1e-9);
        assert!((price.max_cost_usd(1_000_000, 100_000) - 3.0).abs() < 1e-9);
    }
}
