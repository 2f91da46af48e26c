//! What the embedding provider tests share: the loopback server and credential
//! checks of `tests/common/loopback.rs`, and request and vector helpers.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use skyfuse::config::{Config, ProviderConfig};
use skyfuse::embed::{EmbedRequest, EmbeddingProvider, Purpose};
use skyfuse::error::{Error, ErrorKind};

#[path = "../common/live.rs"]
pub mod live;
#[path = "../common/loopback.rs"]
mod loopback;
pub use loopback::*;

/// The one `[[provider]]` of a TOML snippet, validated.
pub fn provider_config(toml: &str) -> ProviderConfig {
    let config = Config::parse(toml, std::path::Path::new("/")).unwrap();
    config.validate().unwrap();
    config.providers.into_iter().next().unwrap()
}

pub fn build(toml: &str, env: &HashMap<String, String>) -> Arc<dyn EmbeddingProvider> {
    skyfuse::embed::providers::build(&provider_config(toml), env, reqwest::Client::new()).unwrap()
}

pub fn texts(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

pub fn request<'a>(
    model: &'a str,
    texts: &'a [String],
    purpose: Purpose,
    dims: Option<usize>,
) -> EmbedRequest<'a> {
    EmbedRequest {
        model,
        texts,
        purpose,
        dims,
    }
}

/// A vector the server derives from a text, so tests can see order is kept.
pub fn vector_for(text: &str, dims: usize) -> Vec<f32> {
    let seed = text.len() as f32;
    (0..dims)
        .map(|index| seed + index as f32 / 1000.0)
        .collect()
}

pub fn field<'a>(body: &'a Value, name: &str) -> Result<&'a Value, String> {
    body.get(name)
        .ok_or_else(|| format!("body has no {name:?}: {body}"))
}

pub fn assert_kind(result: skyfuse::error::Result<Vec<Vec<f32>>>, kind: ErrorKind) -> Error {
    match result {
        Ok(vectors) => panic!("expected {kind:?}, got {} vectors", vectors.len()),
        Err(error) => {
            assert_eq!(error.kind, kind, "{}", error.message);
            error
        }
    }
}
