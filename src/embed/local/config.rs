//! The model's shape: the parts of `config.json` the forward pass depends on, read once and
//! checked so the rest of the runtime can index by them.

#![forbid(unsafe_code)]

use std::path::Path;

use crate::error::{Error, Result};

/// The parts of `config.json` the forward pass depends on.
#[derive(Debug, Clone, Copy)]
pub(super) struct ModelShape {
    pub(super) vocab_size: usize,
    pub(super) hidden_size: usize,
    pub(super) num_hidden_layers: usize,
    pub(super) num_attention_heads: usize,
    pub(super) intermediate_size: usize,
    pub(super) max_position_embeddings: usize,
    pub(super) layer_norm_eps: f32,
}

#[derive(serde::Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_layer_norm_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_hidden_act")]
    hidden_act: String,
    #[serde(default = "default_position_embedding_type")]
    position_embedding_type: String,
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}

fn default_hidden_act() -> String {
    "gelu".to_owned()
}

fn default_position_embedding_type() -> String {
    "absolute".to_owned()
}

impl ModelShape {
    pub(super) fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            Error::config(format!(
                "could not read {}: {error}; run scripts/fetch-model.sh",
                path.display()
            ))
        })?;
        let raw: RawConfig = serde_json::from_str(&text).map_err(|error| {
            Error::config(format!(
                "{} is not a bert config: {error}; run scripts/fetch-model.sh",
                path.display()
            ))
        })?;
        let invalid = |why: String| Error::config(format!("{}: {why}", path.display()));
        if raw.hidden_act != "gelu" {
            return Err(invalid(format!(
                "hidden_act {} is not supported, only gelu",
                raw.hidden_act
            )));
        }
        if raw.position_embedding_type != "absolute" {
            return Err(invalid(format!(
                "position_embedding_type {} is not supported, only absolute",
                raw.position_embedding_type
            )));
        }
        if raw.num_attention_heads == 0 || !raw.hidden_size.is_multiple_of(raw.num_attention_heads)
        {
            return Err(invalid(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                raw.hidden_size, raw.num_attention_heads
            )));
        }
        if raw.vocab_size == 0
            || raw.hidden_size == 0
            || raw.intermediate_size == 0
            || raw.max_position_embeddings < 2
        {
            return Err(invalid(
                "vocab_size, hidden_size, intermediate_size and max_position_embeddings must be positive".to_owned(),
            ));
        }
        Ok(Self {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            max_position_embeddings: raw.max_position_embeddings,
            layer_norm_eps: raw.layer_norm_eps as f32,
        })
    }

    pub(super) fn head_size(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}
