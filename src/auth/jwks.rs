//! An issuer's signing keys (JWKS): found by OpenID discovery or configured,
//! fetched with a bounded body, cached, and refetched when a token names an
//! unknown `kid`, at most once per [`MIN_REFETCH`] so random kids cannot make us
//! hammer the issuer.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};

/// Least time between two refetches caused by unknown kids.
pub const MIN_REFETCH: Duration = Duration::from_secs(60);
/// Keys older than this are refetched on their next use.
const MAX_AGE: Duration = Duration::from_secs(3600);
/// Largest discovery document or key set we read.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// The key set of one issuer.
pub struct Jwks {
    http: reqwest::Client,
    issuer: String,
    jwks_url: Option<String>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    keys: Option<Arc<JwkSet>>,
    fetched_at: Option<Instant>,
    /// When an unknown kid last caused a refetch.
    refetched_at: Option<Instant>,
    fetches: u64,
}

impl Jwks {
    /// Keys of `issuer`, from `jwks_url` or the issuer's discovery document.
    pub fn new(http: reqwest::Client, issuer: &str, jwks_url: Option<&str>) -> Self {
        Self {
            http,
            issuer: issuer.trim_end_matches('/').to_string(),
            jwks_url: jwks_url.map(str::to_string),
            state: Mutex::new(State::default()),
        }
    }

    /// How many times the key set was fetched (for tests and logs).
    pub async fn fetches(&self) -> u64 {
        self.state.lock().await.fetches
    }

    /// The key `kid` names (or the only key, for a token without kid). An unknown
    /// kid refetches the set once per [`MIN_REFETCH`].
    pub async fn key(&self, kid: Option<&str>) -> Result<Jwk> {
        let mut state = self.state.lock().await;
        let stale = state
            .fetched_at
            .is_none_or(|fetched| fetched.elapsed() >= MAX_AGE);
        if stale {
            self.refresh(&mut state).await?;
        }
        if let Some(key) = state.keys.as_deref().and_then(|keys| find(keys, kid)) {
            return Ok(key);
        }
        let may_refetch = state
            .refetched_at
            .is_none_or(|refetched| refetched.elapsed() >= MIN_REFETCH);
        if stale || !may_refetch {
            return Err(unknown_key());
        }
        state.refetched_at = Some(Instant::now());
        self.refresh(&mut state).await?;
        state
            .keys
            .as_deref()
            .and_then(|keys| find(keys, kid))
            .ok_or_else(unknown_key)
    }

    async fn refresh(&self, state: &mut State) -> Result<()> {
        state.fetches += 1;
        let url = match &self.jwks_url {
            Some(url) => url.clone(),
            None => self.discover().await?,
        };
        let body = self.get(&url).await?;
        let keys: JwkSet = serde_json::from_slice(&body)
            .map_err(|error| issuer_down(format!("the issuer's key set is not a JWKS: {error}")))?;
        state.keys = Some(Arc::new(keys));
        state.fetched_at = Some(Instant::now());
        Ok(())
    }

    async fn discover(&self) -> Result<String> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let body = self.get(&url).await?;
        let document: serde_json::Value = serde_json::from_slice(&body).map_err(|error| {
            issuer_down(format!(
                "the issuer's discovery document is not JSON: {error}"
            ))
        })?;
        let jwks_uri = document
            .get("jwks_uri")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| issuer_down("the issuer's discovery document has no jwks_uri"))?;
        super::check_issuer_url(jwks_uri)
            .map_err(|problem| issuer_down(format!("the issuer's jwks_uri: {problem}")))?;
        Ok(jwks_uri.to_string())
    }

    /// GETs `url`, reading at most [`MAX_BODY_BYTES`].
    async fn get(&self, url: &str) -> Result<Vec<u8>> {
        let mut response = self
            .http
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|error| issuer_down(format!("cannot reach the token issuer: {error}")))?;
        if !response.status().is_success() {
            return Err(issuer_down(format!(
                "the token issuer answered {}",
                response.status()
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| issuer_down(format!("reading from the token issuer: {error}")))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(issuer_down("the token issuer's answer is too large"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

fn find(keys: &JwkSet, kid: Option<&str>) -> Option<Jwk> {
    match kid {
        Some(kid) => keys.find(kid).cloned(),
        None if keys.keys.len() == 1 => keys.keys.first().cloned(),
        None => None,
    }
}

fn unknown_key() -> Error {
    Error::new(
        ErrorKind::Unauthenticated,
        "authentication failed: the token is not signed by a known key",
    )
}

/// The issuer could not be asked: our trouble, logged; the caller is told only
/// that its token could not be checked.
fn issuer_down(detail: impl Into<String>) -> Error {
    let detail = detail.into();
    tracing::warn!(%detail, "token issuer");
    Error::unavailable("the token issuer cannot be reached to check the token; retry later")
}
