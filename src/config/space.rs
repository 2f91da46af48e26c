//! `[[space]]`: an embedding space, a model at a dimension and metric.

use serde::Deserialize;

/// The built-in provider: the in-process model, its directory in `model`.
pub const LOCAL_PROVIDER: &str = "local";

/// How vectors of a space are compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Cosine similarity: vectors are L2-normalized on the way in and out.
    #[default]
    Cosine,
    /// Inner product on vectors as the model produced them.
    Dot,
    /// Euclidean distance on vectors as the model produced them.
    L2,
}

/// How the in-process model multiplies its matrices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalPrecision {
    /// bf16 where the CPU multiplies it natively (AVX512_BF16), else f32.
    #[default]
    Auto,
    /// Weights and activations in f32: the reference model's vectors to ~1e-6.
    F32,
    /// Weights and each product's input rounded to bf16, sums in f32: about twice the
    /// speed, vectors within ~1e-3 cosine of f32's. Refused at startup on a CPU without
    /// AVX512_BF16.
    Bf16,
}

/// An embedding space: a model at a dimension and metric. Vectors of different spaces
/// never meet; a space fails over only to the same model served elsewhere.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpaceConfig {
    pub id: String,
    /// `local` (in-process; `model` is the model directory) or a `[[provider]]` id.
    pub provider: String,
    /// More providers serving the same model, tried in order when the ones before
    /// are throttled, down or open-circuited.
    #[serde(default)]
    pub fallback: Vec<String>,
    /// The model; its identity is what makes two providers interchangeable.
    pub model: String,
    /// The model's id at a provider where it differs from `model` (Cohere Embed is
    /// `cohere.embed-english-v3` on Bedrock, `cohere.embed-english-v3.0` on OCI).
    #[serde(default)]
    pub model_ids: std::collections::BTreeMap<String, String>,
    pub dims: usize,
    #[serde(default)]
    pub metric: Metric,
    /// A Matryoshka model (text-embedding-3, gemini-embedding, nomic): its vectors may
    /// be truncated to `dims` and re-normalized. Spaces of one model that are all
    /// `matryoshka` share one query embedding at the largest dimension among them.
    #[serde(default)]
    pub matryoshka: bool,
    /// Keeps this space's query vectors in the shared state (`[shared_state]`'s
    /// Redis) too, so a query embedded by one replica is not embedded again by
    /// another. In a Matryoshka family, the space embedded (the largest) decides.
    #[serde(default)]
    pub shared_query_cache: bool,
    /// The in-process model's arithmetic (`provider = "local"` only).
    #[serde(default)]
    pub precision: LocalPrecision,
}

impl SpaceConfig {
    /// The providers of this space in the order they are tried.
    pub fn providers(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.provider.as_str()).chain(self.fallback.iter().map(String::as_str))
    }

    /// The model's id at `provider`.
    pub fn model_at<'a>(&'a self, provider: &str) -> &'a str {
        self.model_ids.get(provider).unwrap_or(&self.model)
    }
}
