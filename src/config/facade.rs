//! `[facade]`: the OpenAI-compatible HTTP port.

use serde::Deserialize;

/// The OpenAI-compatible HTTP facade.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FacadeConfig {
    /// `host:port` to serve `/v1/chat/completions` and `/v1/models` on; off when unset.
    pub listen: Option<String>,
    /// Host names (no port) the facade answers to besides loopback ones, when the
    /// server is anonymous: a browser page on another name (DNS rebinding) is refused.
    pub allowed_hosts: Vec<String>,
}
