//! `[[caller]]`: a client that proves who it is with an API key, and its roles.

use serde::Deserialize;

use super::{Glob, SecretLocation};

/// A client of the service known by an API key. With no identity configured
/// (no caller, issuer or client certificate), calls are anonymous and unlimited.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    pub id: String,
    /// The SHA-256 of the key, hex (`skyfuse keys hash`): the config never holds the key.
    pub api_key_sha256: Option<String>,
    /// Where the key lives (`env:NAME`, `file:PATH`); hashed at startup, then dropped.
    pub api_key: Option<SecretLocation>,
    /// `[[role]]`s the caller holds; its permissions are their union.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Without `roles`: models it may ask for (exact or glob); empty = all.
    #[serde(default)]
    pub models: Vec<Glob>,
    /// Without `roles`: tiers it may ask for; empty = all.
    #[serde(default)]
    pub tiers: Vec<String>,
    /// Without `roles`: clouds its prompts may go to; empty = all.
    #[serde(default)]
    pub clouds: Vec<String>,
    /// Without `roles`: regions its prompts may go to (exact or glob: `eu-*`,
    /// `westeurope`); empty = all. Data residency per caller.
    #[serde(default)]
    pub regions: Vec<Glob>,
    /// Without `roles`: spend allowed per UTC day, in USD.
    pub budget_usd_per_day: Option<f64>,
}

impl CallerConfig {
    /// Whether the caller sets chat limits inline instead of naming roles.
    pub fn has_inline_limits(&self) -> bool {
        !self.models.is_empty()
            || !self.tiers.is_empty()
            || !self.clouds.is_empty()
            || !self.regions.is_empty()
            || self.budget_usd_per_day.is_some()
    }
}

/// Whether `text` is a SHA-256 digest in hex (64 hex digits).
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}
