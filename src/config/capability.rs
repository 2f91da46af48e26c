//! `[[capability]]`: what a cloud's model service offers, for the placement advisor.
//! The seed's tables ship as `src/policy/capabilities.toml`; a table here with the
//! same `cloud` replaces that row, another adds a cloud.

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudCapability {
    pub cloud: String,
    /// The model service, as people call it ("Azure OpenAI").
    #[serde(default)]
    pub service: String,
    /// Model families served: gpt, claude, llama, cohere, mistral, gemini, titan...
    #[serde(default)]
    pub model_families: Vec<String>,
    #[serde(default)]
    pub private_deployment: Offer,
    #[serde(default)]
    pub fine_tuning: Offer,
    /// The reserved-capacity offer (Azure PTU, OCI DAC); empty when there is none.
    #[serde(default)]
    pub dedicated_capacity: String,
    #[serde(default)]
    pub embedding_models: Vec<String>,
    /// The largest embedding dimension its embedding models give.
    #[serde(default)]
    pub embedding_max_dims: u32,
    #[serde(default)]
    pub vector_db: String,
    /// Ecosystems it belongs to: microsoft, oracle, google, aws.
    #[serde(default)]
    pub ecosystems: Vec<String>,
}

/// Whether a service offers something.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Offer {
    Yes,
    Limited,
    #[default]
    No,
}
