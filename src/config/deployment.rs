//! `[[deployment]]`: one model served by one `[[provider]]`, what routing chooses
//! between.

use serde::Deserialize;

/// One model on one provider: what routing chooses between.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// A `[[provider]]` id.
    pub provider: String,
    /// The model's canonical name (`gpt-4o`, `claude-3.5-sonnet`), as callers,
    /// rules, tiers and the price catalog know it.
    pub model: String,
    /// The name the provider knows it by, when not `model`: an Azure deployment, a
    /// Bedrock model or inference-profile id, an OCI model id or dedicated endpoint
    /// OCID.
    pub name: Option<String>,
    /// Reserved capacity (Azure PTU, OCI dedicated AI cluster): tried before
    /// on-demand deployments of the same model, which take the burst.
    #[serde(default)]
    pub dedicated: bool,
    /// Tokens the model accepts (prompt + output); default from the catalog.
    pub context_window: Option<u64>,
    /// Prices per million tokens; default from the catalog for the model and cloud.
    pub input_per_1m_usd: Option<f64>,
    pub output_per_1m_usd: Option<f64>,
    pub cached_input_per_1m_usd: Option<f64>,
    /// The deployment's quota at its provider (an Azure deployment's RPM and TPM,
    /// a Bedrock or OCI service limit): routing keeps every replica under it
    /// together and sends what would overflow to the next candidate, rather than
    /// collecting the provider's 429s. Unlimited when unset.
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    /// Every region the endpoint may process a prompt in, when it is multi-region and
    /// its id does not say so: an Azure Global Standard deployment (`["global"]`) or
    /// Data Zone one (the zone's regions). Bedrock profiles (`eu.`, `us.`, `global.`)
    /// and Vertex's `global` region are recognised without it.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Text at which this model stops, added to the caller's: a base model prompted
    /// `Question: ... Answer:` goes on with the next question unless told to stop at
    /// it (`stop = ["\nQuestion:"]`). At most 4.
    #[serde(default)]
    pub stop: Vec<String>,
}

impl DeploymentConfig {
    pub fn wire_id(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.model)
    }
}
