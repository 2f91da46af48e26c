//! `[shared_state]`: where replicas share budgets, rate limits and cooldowns. Absent:
//! each process keeps its own (the in-process default). Present: Redis at
//! `redis_url` (one node, a cluster or Sentinel), with what each kind does while Redis
//! cannot be reached.

use serde::Deserialize;

use super::SecretLocation;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedStateConfig {
    /// Where the Redis URL lives (it may carry a password), e.g. `env:SKYFUSE_REDIS_URL`:
    /// `redis://` or `rediss://` (TLS) for one node, `redis+cluster://` for a Redis
    /// Cluster, `redis+sentinel://…/MASTER_NAME` for Sentinel (`state::RedisTopology`).
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
    /// How long an ingestion lease lives without renewal: how long a bucket waits for
    /// another replica after its syncing replica died. The holder renews it every third.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
}

/// Per kind of state: what a call does when Redis does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnUnavailable {
    pub budgets: FailMode,
    pub rate_limits: FailMode,
    pub cooldowns: FailMode,
    /// Ingestion leases and the shared manifests they guard: only `closed`.
    pub leases: FailMode,
}

impl Default for OnUnavailable {
    fn default() -> Self {
        Self {
            budgets: FailMode::Closed,
            rate_limits: FailMode::Open,
            cooldowns: FailMode::Open,
            leases: FailMode::Closed,
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

fn default_lease_ttl_ms() -> u64 {
    DEFAULT_LEASE_TTL_MS
}

/// Half a minute: a dead replica's bucket waits that long, and a live one renews its
/// lease every 10 s, which rides out a Redis failover.
pub const DEFAULT_LEASE_TTL_MS: u64 = 30_000;

/// The shortest lease: below it a renewal round trip may not fit in a third of it.
pub const MIN_LEASE_TTL_MS: u64 = 300;

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
        if self.on_unavailable.leases == FailMode::Open {
            // A lease nobody can check is no lease, and the manifest a sync resumes
            // from lives in the same Redis: a sync retried later beats two writers.
            problems.push(
                "shared_state.on_unavailable.leases can only be \"closed\": without redis a sync can neither know it is alone nor read its manifest".into(),
            );
        }
        if self.lease_ttl_ms < MIN_LEASE_TTL_MS.max(3 * self.timeout_ms) {
            problems.push(format!(
                "shared_state.lease_ttl_ms must be at least {MIN_LEASE_TTL_MS} and at least 3 x timeout_ms (a renewal every third of it must fit)"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(toml_text: &str) -> Vec<String> {
        let config: SharedStateConfig =
            toml::from_str(&format!("redis_url = \"env:R\"\n{toml_text}")).unwrap();
        let mut problems = Vec::new();
        config.problems(&mut problems);
        problems
    }

    #[test]
    fn leases_fail_closed_and_live_long_enough_to_be_renewed() {
        let defaults: SharedStateConfig = toml::from_str("redis_url = \"env:R\"").unwrap();
        assert_eq!(defaults.lease_ttl_ms, DEFAULT_LEASE_TTL_MS);
        assert_eq!(defaults.on_unavailable.leases, FailMode::Closed);
        assert!(problems_of("").is_empty());

        let open = problems_of("on_unavailable = { leases = \"open\" }");
        assert!(
            open[0].contains("leases can only be \"closed\""),
            "{open:?}"
        );

        let short = problems_of("timeout_ms = 200\nlease_ttl_ms = 500");
        assert!(
            short[0].contains("lease_ttl_ms must be at least"),
            "{short:?}"
        );
        assert!(problems_of("timeout_ms = 200\nlease_ttl_ms = 600").is_empty());
    }
}
