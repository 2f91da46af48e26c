//! `[facade]`: the OpenAI-compatible HTTP port.

use serde::Deserialize;

/// The OpenAI-compatible HTTP facade.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FacadeConfig {
    /// `host:port` to serve `/v1/chat/completions` and `/v1/models` on; off when unset.
    pub listen: Option<String>,
}
