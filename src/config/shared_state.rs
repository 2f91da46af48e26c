//! `[shared_state]`: where replicas share budgets, rate limits and cooldowns. Absent:
//! each process keeps its own (the in-process default). Present: Redis at
//! `redis_url`, with what each kind does while Redis cannot be reached.

use serde::Deserialize;

use super::SecretLocation;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedStateConfig {
    /// Where the Redis URL lives (it may carry a password): `redis://` or `rediss://`
    /// (TLS), e.g. `env:SKYFUSE_REDIS_URL`.
    pub redis_url: SecretLocation,
    /// Every key and the cooldown channel start with `{key_prefix}:`, so several
    /// services can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// The most one Redis call may take before the kind's `on_unavailable` applies.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long a query vector of a space with `shared_query_cache` stays in Redis.
    #[serde(default = "default_query_cache_ttl_ms")]
    pub query_cache_ttl_ms: u64,
}

/// Per kind of state: what a call does when Redis does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnUnavailable {
    pub budgets: FailMode,
    pub rate_limits: FailMode,
    pub cooldowns: FailMode,
}

impl Default for OnUnavailable {
    fn default() -> Self {
        Self {
            budgets: FailMode::Closed,
            rate_limits: FailMode::Open,
            cooldowns: FailMode::Open,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// This replica decides alone, from its in-process state.
    Open,
    /// The call is refused (`UNAVAILABLE`, naming the reason).
    Closed,
}

fn default_key_prefix() -> String {
    "skyfuse".into()
}

fn default_timeout_ms() -> u64 {
    50
}

/// A day: the key names the model, so a vector never goes stale while it lives.
fn default_query_cache_ttl_ms() -> u64 {
    86_400_000
}

/// The longest `timeout_ms` allowed: a request must never wait long on Redis.
pub const MAX_SHARED_STATE_TIMEOUT_MS: u64 = 10_000;

impl SharedStateConfig {
    /// Problems with `[shared_state]`, each naming its key.
    pub fn problems(&self, problems: &mut Vec<String>) {
        if self.key_prefix.is_empty()
            || self
                .key_prefix
                .chars()
                .any(|character| character.is_whitespace() || character == '{' || character == '}')
        {
            problems.push(format!(
                "shared_state.key_prefix {:?} must be non-empty, without spaces or braces",
                self.key_prefix
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_SHARED_STATE_TIMEOUT_MS {
            problems.push(format!(
                "shared_state.timeout_ms must be between 1 and {MAX_SHARED_STATE_TIMEOUT_MS}"
            ));
        }
        if self.query_cache_ttl_ms == 0 {
            problems.push("shared_state.query_cache_ttl_ms must be at least 1".into());
        }
        if self.on_unavailable.cooldowns == FailMode::Closed {
            // A cooldown that does not arrive costs one extra upstream try, which the
            // breaker then records: refusing calls for it would be worse.
            problems.push(
                "shared_state.on_unavailable.cooldowns can only be \"open\": a missed cooldown costs one upstream try".into(),
            );
        }
    }
}
