//! The Redis side of [`super::SharedState`]: one lazily connected, self-reconnecting
//! connection for the Lua scripts (one node, a cluster or a Sentinel primary, see
//! `redis_connection`), and a pub/sub subscriber for cooldowns.
//!
//! Keys (every one under `{key_prefix}:`; `{…}` parts are Redis Cluster hash tags,
//! so the keys one script touches share a slot; no call lists or scans the keyspace,
//! and the cooldown catch-up is one `MGET` that the cluster client splits per slot):
//!
//! | key | holds | expires |
//! |---|---|---|
//! | `budget:{caller}:DAY` | hash `spent`, `reserved`: micro-USD of UTC day DAY | 2 days after its last change |
//! | `rate:{caller}:requests`, `rate:{caller}:tokens` | a GCRA cell's theoretical arrival time, µs of Redis time | when the cell is full again |
//! | `cooldown:DEPLOYMENT` | unix ms until which DEPLOYMENT is held off | then |
//! | channel `cooldowns` | `UNTIL_UNIX_MS DEPLOYMENT` for each new cooldown | (pub/sub) |

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use redis::Script;
use tokio::time::Instant;

use super::redis_connection::{RedisBackend, RedisConnection};
use super::redis_topology::RedisTopology;
use crate::breaker::CircuitBreaker;
use crate::config::{FailMode, OnUnavailable, SharedStateConfig};
use crate::error::{Error, Result};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::SharedStateLabels;

/// A budget hash outlives its day by one, so the day's figures can still be read.
const BUDGET_TTL_SECONDS: u64 = 2 * 86_400;

/// Health is probed this often by the cooldown subscriber.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The longest wait between two attempts to resubscribe.
const MAX_RESUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

/// Holds `ARGV[2]` micro-USD of the day's budget `ARGV[1]` when it fits; returns
/// {admitted, spent, reserved} (reserved including this hold when admitted).
const RESERVE_LUA: &str = r"
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local amount = tonumber(ARGV[2])
if spent + reserved + amount > tonumber(ARGV[1]) then
  return {0, spent, reserved}
end
reserved = redis.call('HINCRBY', KEYS[1], 'reserved', amount)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, spent, reserved}
";

/// Replaces a hold of `ARGV[1]` micro-USD by the cost `ARGV[2]`.
const SETTLE_LUA: &str = r"
local reserved = redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(ARGV[1]))
if reserved < 0 then
  redis.call('HSET', KEYS[1], 'reserved', 0)
end
redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
";

/// GCRA over two cells (requests, tokens) at once: both fit and are charged, or
/// neither. ARGV: units and interval (µs per unit, 0: unlimited) of each cell, then
/// the period in µs. Returns {admitted, refused cell (1|2, 0), retry after µs (-1:
/// never fits), ahead µs of cell 1, ahead µs of cell 2}. Time is Redis's own.
const ADMIT_LUA: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local period = tonumber(ARGV[5])
local tats = {}
for i = 1, 2 do
  local stored = tonumber(redis.call('GET', KEYS[i]) or '0')
  if stored < now then stored = now end
  tats[i] = stored
end
local nexts = {tats[1], tats[2]}
for i = 1, 2 do
  local units = tonumber(ARGV[2 * i - 1])
  local interval = tonumber(ARGV[2 * i])
  if interval > 0 and units > 0 then
    local cost = units * interval
    if cost > period then
      return {0, i, -1, tats[1] - now, tats[2] - now}
    end
    local next = tats[i] + cost
    if next - now > period then
      return {0, i, next - now - period, tats[1] - now, tats[2] - now}
    end
    nexts[i] = next
  end
end
for i = 1, 2 do
  if nexts[i] > tats[i] then
    redis.call('SET', KEYS[i], string.format('%d', nexts[i]), 'PX', math.ceil((nexts[i] - now) / 1000) + 1)
  end
end
return {1, 0, 0, nexts[1] - now, nexts[2] - now}
";

/// Moves a cell back by `ARGV[1]` µs (tokens charged and not used).
const REFUND_LUA: &str = r"
local stored = redis.call('GET', KEYS[1])
if not stored then
  return 0
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(stored) - tonumber(ARGV[1])
if tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
end
return 1
";

/// The kinds of shared state, each with its own `on_unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    Budgets,
    RateLimits,
    Cooldowns,
    /// Query vectors (`[[space]] shared_query_cache`); always fails open (a miss).
    EmbeddingCache,
    /// Finished answers (`[answer.cache]`); always fails open (a miss).
    AnswerCache,
    /// Ingestion leases and the shared manifests they guard (see `leases`, `manifests`).
    Leases,
}

impl StateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Budgets => "budgets",
            StateKind::RateLimits => "rate_limits",
            StateKind::Cooldowns => "cooldowns",
            StateKind::EmbeddingCache => "embedding_cache",
            StateKind::AnswerCache => "answer_cache",
            StateKind::Leases => "leases",
        }
    }
}

/// Why a Redis call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum SharedStateError {
    #[error("redis did not answer within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis answered {0}")]
    Reply(String),
}

/// A budget script's answer, in micro-USD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetVerdict {
    pub admitted: bool,
    pub spent_micro_usd: i64,
    pub reserved_micro_usd: i64,
}

/// Whose rate limit a cell belongs to: a caller's own, or a deployment's quota at
/// its provider (each in its own key space, so no caller id can name a deployment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateSubject<'a> {
    Caller(&'a str),
    Deployment(&'a str),
}

/// One GCRA cell of a rate-limit admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateCell {
    pub units: u64,
    /// Microseconds one unit costs; 0: the cell is unlimited.
    pub interval_us: u64,
}

/// The rate script's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateVerdict {
    pub admitted: bool,
    /// The refusing cell: 0 requests, 1 tokens.
    pub refused_cell: Option<usize>,
    /// When the refused call would fit; None: it never fits.
    pub retry_after: Option<Duration>,
    /// How far each cell is ahead of now (0: full), after the admission.
    pub ahead: [Duration; 2],
}

pub struct RedisStore {
    backend: RedisBackend,
    prefix: String,
    timeout: Duration,
    on_unavailable: OnUnavailable,
    up: AtomicBool,
    metrics: Arc<Metrics>,
    reserve: Script,
    settle: Script,
    admit: Script,
    refund: Script,
}

impl RedisStore {
    /// Opens the store `[shared_state]` names; the first call connects.
    pub fn connect(
        config: &SharedStateConfig,
        env: &HashMap<String, String>,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let url = config
            .redis_url
            .resolve(env)
            .map_err(|error| error.context("shared_state.redis_url"))?;
        // Errors never print the URL: it may hold a password.
        let topology = RedisTopology::parse(url.expose()).map_err(Error::config)?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let backend = RedisBackend::open(topology, timeout).map_err(Error::config)?;
        metrics.shared_state_up.set(0);
        Ok(Self {
            backend,
            prefix: config.key_prefix.clone(),
            timeout,
            on_unavailable: config.on_unavailable,
            up: AtomicBool::new(false),
            metrics,
            reserve: Script::new(RESERVE_LUA),
            settle: Script::new(SETTLE_LUA),
            admit: Script::new(ADMIT_LUA),
            refund: Script::new(REFUND_LUA),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// What `kind` does while Redis is unreachable.
    pub fn fail_mode(&self, kind: StateKind) -> FailMode {
        match kind {
            StateKind::Budgets => self.on_unavailable.budgets,
            StateKind::RateLimits => self.on_unavailable.rate_limits,
            StateKind::Cooldowns => self.on_unavailable.cooldowns,
            // A cache that cannot answer is a miss: the work is done again.
            StateKind::EmbeddingCache | StateKind::AnswerCache => FailMode::Open,
            StateKind::Leases => self.on_unavailable.leases,
        }
    }

    /// Whether the last Redis call (or health probe) got an answer.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The error a call of `kind` that fails closed gets.
    pub fn unavailable(&self, kind: StateKind, error: &SharedStateError) -> Error {
        Error::unavailable(format!(
            "shared state unavailable: {} fail closed (shared_state.on_unavailable.{}): {error}",
            kind.as_str(),
            kind.as_str()
        ))
    }

    pub fn unready_reasons(&self) -> Vec<String> {
        if self.is_up() {
            return Vec::new();
        }
        [StateKind::Budgets, StateKind::RateLimits]
            .into_iter()
            .filter(|kind| self.fail_mode(*kind) == FailMode::Closed)
            .map(|kind| {
                format!(
                    "shared state: redis is unreachable and {} fail closed",
                    kind.as_str()
                )
            })
            .collect()
    }

    /// The hash of `caller`'s budget on UTC day `day`.
    pub fn budget_key(&self, caller: &str, day: u64) -> String {
        format!("{}:budget:{{{caller}}}:{day}", self.prefix)
    }

    /// Holds `amount` of `budget` (micro-USD) in `key` when it fits.
    pub async fn reserve_budget(
        &self,
        key: &str,
        budget_micro_usd: i64,
        amount_micro_usd: i64,
    ) -> std::result::Result<BudgetVerdict, SharedStateError> {
        let mut connection = self.backend.connection();
        let mut invocation = self.reserve.key(key);
        invocation
            .arg(budget_micro_usd)
            .arg(amount_micro_usd)
            .arg(BUDGET_TTL_SECONDS);
        let (admitted, spent, reserved): (i64, i64, i64) = self
            .call(StateKind::Budgets, invocation.invoke_async(&mut connection))
            .await?;
        Ok(BudgetVerdict {
            admitted: admitted == 1,
            spent_micro_usd: spent,
            reserved_micro_usd: reserved,
        })
    }

    /// Replaces a hold in `key` by what the call cost (micro-USD).
    pub async fn settle_budget(
        &self,
        key: &str,
        held_micro_usd: i64,
        cost_micro_usd: i64,
    ) -> std::result::Result<(), SharedStateError> {
        let mut connection = self.backend.connection();
        let mut invocation = self.settle.key(key);
        invocation
            .arg(held_micro_usd)
            .arg(cost_micro_usd)
            .arg(BUDGET_TTL_SECONDS);
        let _: i64 = self
            .call(StateKind::Budgets, invocation.invoke_async(&mut connection))
            .await?;
        Ok(())
    }

    /// Spent and reserved (micro-USD) in a budget hash, for tests and operators.
    pub async fn budget_figures(
        &self,
        key: &str,
    ) -> std::result::Result<(i64, i64), SharedStateError> {
        let mut connection = self.backend.connection();
        let mut command = redis::cmd("HMGET");
        command.arg(key).arg("spent").arg("reserved");
        let (spent, reserved): (Option<i64>, Option<i64>) = self
            .call(StateKind::Budgets, command.query_async(&mut connection))
            .await?;
        Ok((spent.unwrap_or(0), reserved.unwrap_or(0)))
    }

    fn rate_keys(&self, subject: RateSubject<'_>) -> [String; 2] {
        let (space, id) = match subject {
            RateSubject::Caller(id) => ("rate", id),
            RateSubject::Deployment(id) => ("deployment-rate", id),
        };
        [
            format!("{}:{space}:{{{id}}}:requests", self.prefix),
            format!("{}:{space}:{{{id}}}:tokens", self.prefix),
        ]
    }

    /// Admits `cells` (requests, tokens) for `subject` over `period`, or refuses both.
    pub async fn admit_rate(
        &self,
        subject: RateSubject<'_>,
        cells: [RateCell; 2],
        period: Duration,
    ) -> std::result::Result<RateVerdict, SharedStateError> {
        let [requests_key, tokens_key] = self.rate_keys(subject);
        let mut connection = self.backend.connection();
        let mut invocation = self.admit.key(requests_key);
        invocation
            .key(tokens_key)
            .arg(cells[0].units)
            .arg(cells[0].interval_us)
            .arg(cells[1].units)
            .arg(cells[1].interval_us)
            .arg(u64::try_from(period.as_micros()).unwrap_or(u64::MAX));
        let reply: Vec<i64> = self
            .call(
                StateKind::RateLimits,
                invocation.invoke_async(&mut connection),
            )
            .await?;
        let [
            admitted,
            refused,
            retry_after_us,
            ahead_requests,
            ahead_tokens,
        ] = reply[..]
        else {
            return Err(SharedStateError::Reply(format!(
                "{} values from the rate script, not 5",
                reply.len()
            )));
        };
        let micros = |value: i64| Duration::from_micros(u64::try_from(value).unwrap_or(0));
        Ok(RateVerdict {
            admitted: admitted == 1,
            refused_cell: usize::try_from(refused - 1).ok(),
            retry_after: (retry_after_us >= 0).then(|| micros(retry_after_us)),
            ahead: [micros(ahead_requests), micros(ahead_tokens)],
        })
    }

    /// Gives back `refund` of `caller`'s token cell (tokens × interval).
    pub async fn refund_rate_tokens(
        &self,
        subject: RateSubject<'_>,
        refund: Duration,
    ) -> std::result::Result<(), SharedStateError> {
        let [_, tokens_key] = self.rate_keys(subject);
        let mut connection = self.backend.connection();
        let mut invocation = self.refund.key(tokens_key);
        invocation.arg(u64::try_from(refund.as_micros()).unwrap_or(u64::MAX));
        let _: i64 = self
            .call(
                StateKind::RateLimits,
                invocation.invoke_async(&mut connection),
            )
            .await?;
        Ok(())
    }

    /// The bytes a cache of `kind` keeps under `key`; None when absent or expired.
    pub async fn get_bytes(
        &self,
        kind: StateKind,
        key: &str,
    ) -> std::result::Result<Option<Vec<u8>>, SharedStateError> {
        let mut connection = self.backend.connection();
        let mut command = redis::cmd("GET");
        command.arg(key);
        self.call(kind, command.query_async(&mut connection)).await
    }

    /// Keeps `value` under `key` for `ttl` (at least a millisecond).
    pub async fn set_bytes(
        &self,
        kind: StateKind,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> std::result::Result<(), SharedStateError> {
        let mut connection = self.backend.connection();
        let mut command = redis::cmd("SET");
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        command.arg(key).arg(value).arg("PX").arg(ttl_ms);
        self.call(kind, command.query_async(&mut connection)).await
    }

    fn cooldown_key(&self, deployment: &str) -> String {
        format!("{}:cooldown:{deployment}", self.prefix)
    }

    fn cooldown_channel(&self) -> String {
        format!("{}:cooldowns", self.prefix)
    }

    /// Tells every replica to hold off `deployment` until `until` (this replica's
    /// clock), in the background: the request that learned it does not wait.
    pub fn publish_cooldown(self: &Arc<Self>, deployment: &str, until: Instant) {
        let wait = until.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return;
        }
        let until_unix_ms = unix_ms().saturating_add(u64::try_from(wait.as_millis()).unwrap_or(0));
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let store = Arc::clone(self);
        let deployment = deployment.to_string();
        tokio::spawn(async move {
            // Two calls, not one pipeline: on a cluster the key and the channel name
            // hash to different slots. The key first, so a replica that subscribes
            // meanwhile finds it when it catches up.
            let mut set = redis::cmd("SET");
            set.arg(store.cooldown_key(&deployment))
                .arg(until_unix_ms)
                .arg("PX")
                .arg(wait_ms);
            let mut publish = redis::cmd("PUBLISH");
            publish
                .arg(store.cooldown_channel())
                .arg(format!("{until_unix_ms} {deployment}"));
            let mut connection = store.backend.connection();
            let mut sent: std::result::Result<(), _> = store
                .call(StateKind::Cooldowns, set.query_async(&mut connection))
                .await;
            if sent.is_ok() {
                sent = store
                    .call(StateKind::Cooldowns, publish.query_async(&mut connection))
                    .await;
            }
            if let Err(error) = sent {
                tracing::warn!(%deployment, %error, "could not share a cooldown with the other replicas");
            }
        });
    }

    /// Runs for the life of the process: subscribes to the cooldown channel, catches
    /// up with cooldowns set before, applies each to the breaker of its deployment,
    /// and probes Redis's health; resubscribes after any break.
    pub async fn listen_for_cooldowns(
        self: Arc<Self>,
        breakers: Vec<(String, Arc<CircuitBreaker>)>,
    ) {
        let breakers: HashMap<String, Arc<CircuitBreaker>> = breakers.into_iter().collect();
        let mut wait = Duration::from_millis(100);
        loop {
            let error = self.cooldown_session(&breakers, &mut wait).await;
            self.record_failure(StateKind::Cooldowns, &error);
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_RESUBSCRIBE_WAIT);
        }
    }

    /// One subscription, until it breaks.
    async fn cooldown_session(
        &self,
        breakers: &HashMap<String, Arc<CircuitBreaker>>,
        wait: &mut Duration,
    ) -> SharedStateError {
        let (mut subscriber, mut messages) = match self.bounded(self.backend.pubsub()).await {
            Ok(pubsub) => pubsub.split(),
            Err(error) => return error,
        };
        if let Err(error) = self
            .bounded(subscriber.subscribe(self.cooldown_channel()))
            .await
        {
            return error;
        }
        // Subscribed first, then read what was set before: nothing falls between.
        if let Err(error) = self.catch_up_cooldowns(breakers).await {
            return error;
        }
        *wait = Duration::from_millis(100);
        let mut probe = tokio::time::interval(PROBE_EVERY);
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        return SharedStateError::Reply("the cooldown subscription ended".into());
                    };
                    let payload = String::from_utf8_lossy(message.get_payload_bytes()).into_owned();
                    apply_cooldown(breakers, &payload);
                }
                _ = probe.tick() => {
                    // The subscriber's own node too: one that hangs without closing the
                    // connection is left for another (the next seed of a cluster).
                    if let Err(error) = self.bounded(subscriber.ping::<redis::Value>()).await {
                        return error;
                    }
                    // Health: one node, the Sentinel primary, or every cluster primary.
                    let mut connection = self.backend.connection();
                    let ping = redis::cmd("PING");
                    let answer: std::result::Result<String, _> =
                        self.bounded(ping.query_async(&mut connection)).await;
                    match answer {
                        Ok(_) => self.mark_up(),
                        Err(error) => self.mark_down(&error),
                    }
                }
            }
        }
    }

    async fn catch_up_cooldowns(
        &self,
        breakers: &HashMap<String, Arc<CircuitBreaker>>,
    ) -> std::result::Result<(), SharedStateError> {
        if breakers.is_empty() {
            return Ok(());
        }
        let names: Vec<&String> = breakers.keys().collect();
        let mut command = redis::cmd("MGET");
        for name in &names {
            command.arg(self.cooldown_key(name));
        }
        let mut connection = self.backend.connection();
        let untils: Vec<Option<u64>> = self
            .call(StateKind::Cooldowns, command.query_async(&mut connection))
            .await?;
        for (name, until) in names.into_iter().zip(untils) {
            if let Some(until) = until {
                apply_cooldown(breakers, &format!("{until} {name}"));
            }
        }
        Ok(())
    }

    /// `call` within the timeout, counted against `kind` when it fails.
    async fn call<T>(
        &self,
        kind: StateKind,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> std::result::Result<T, SharedStateError> {
        let outcome = self.bounded(call).await;
        match &outcome {
            Ok(_) => self.mark_up(),
            Err(error) => self.record_failure(kind, error),
        }
        outcome
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> std::result::Result<T, SharedStateError> {
        self.bounded_by(self.timeout, call).await
    }

    /// [`Self::call`] for the other parts of `state`, bounded by `timeout`: a manifest
    /// page may take longer than one budget script.
    pub(super) async fn call_within<T>(
        &self,
        kind: StateKind,
        timeout: Duration,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> std::result::Result<T, SharedStateError> {
        let outcome = self.bounded_by(timeout, call).await;
        match &outcome {
            Ok(_) => self.mark_up(),
            Err(error) => self.record_failure(kind, error),
        }
        outcome
    }

    /// The shared connection, for the other parts of `state`.
    pub(super) fn connection(&self) -> RedisConnection {
        self.backend.connection()
    }

    /// The most one call may take (`timeout_ms`).
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn bounded_by<T>(
        &self,
        timeout: Duration,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> std::result::Result<T, SharedStateError> {
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(SharedStateError::Redis(error)),
            Err(_) => Err(SharedStateError::Timeout {
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    fn record_failure(&self, kind: StateKind, error: &SharedStateError) {
        self.metrics
            .shared_state_errors
            .get_or_create(&SharedStateLabels {
                kind: kind.as_str(),
            })
            .inc();
        self.mark_down(error);
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(prefix = %self.prefix, "shared state: redis is reachable");
        }
        self.metrics.shared_state_up.set(1);
    }

    fn mark_down(&self, error: &SharedStateError) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(prefix = %self.prefix, %error, "shared state: redis is unreachable");
        }
        self.metrics.shared_state_up.set(0);
    }
}

/// Applies `UNTIL_UNIX_MS DEPLOYMENT` to that deployment's breaker, if it is ours
/// and still in the future (by this replica's wall clock).
fn apply_cooldown(breakers: &HashMap<String, Arc<CircuitBreaker>>, payload: &str) {
    let Some((until, deployment)) = payload.split_once(' ') else {
        return;
    };
    let (Ok(until_unix_ms), Some(breaker)) = (until.parse::<u64>(), breakers.get(deployment))
    else {
        return;
    };
    let wait_ms = until_unix_ms.saturating_sub(unix_ms());
    if wait_ms == 0 {
        return;
    }
    breaker.hold_open_until(Instant::now() + Duration::from_millis(wait_ms));
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store on the test Redis under a fresh prefix; None (the test skips) without
    /// one, unless `CI` or `SKYFUSE_REQUIRE_TOOLS` says it must be there.
    fn test_store() -> Option<Arc<RedisStore>> {
        let Ok(url) = std::env::var("SKYFUSE_TEST_REDIS_URL") else {
            let required = ["CI", "SKYFUSE_REQUIRE_TOOLS"].iter().any(|name| {
                std::env::var(name).is_ok_and(|value| !value.is_empty() && value != "0")
            });
            assert!(!required, "SKYFUSE_TEST_REDIS_URL must name a redis here");
            eprintln!("SKIPPED: SKYFUSE_TEST_REDIS_URL is not set (run scripts/test.sh)");
            return None;
        };
        let prefix = format!("skyfuse-unit-{}-{}", std::process::id(), unix_ms());
        let config: SharedStateConfig = toml::from_str(&format!(
            "redis_url = \"env:URL\"\nkey_prefix = \"{prefix}\"\ntimeout_ms = 5000"
        ))
        .unwrap();
        let env = HashMap::from([("URL".to_string(), url)]);
        Some(Arc::new(
            RedisStore::connect(&config, &env, Arc::new(Metrics::new())).unwrap(),
        ))
    }

    #[tokio::test]
    async fn the_keys_of_each_script_share_one_cluster_slot() {
        use crate::state::LeaseSubject;
        use redis::cluster_routing::Slot;

        // Nothing connects: the store is only asked for key names.
        let config: SharedStateConfig =
            toml::from_str("redis_url = \"env:URL\"\nkey_prefix = \"skyfuse\"").unwrap();
        let env = HashMap::from([("URL".to_string(), "redis://127.0.0.1:1".to_string())]);
        let store = RedisStore::connect(&config, &env, Arc::new(Metrics::new())).unwrap();
        for id in [
            "team-a",
            "anonymous",
            "aws-bedrock/llama",
            "a}b",
            "{x",
            "a b:c",
        ] {
            for subject in [RateSubject::Caller(id), RateSubject::Deployment(id)] {
                let [requests, tokens] = store.rate_keys(subject);
                assert_eq!(Slot::for_key(&requests), Slot::for_key(&tokens), "{id}");
            }
        }
        for index in ["docs", "a}b", "{x"] {
            let subject = LeaseSubject {
                index: index.into(),
                bucket: "s3://b".into(),
                slot: format!("{index}:0123456789abcdef"),
            };
            assert_eq!(
                Slot::for_key(subject.lease_key(&store)),
                Slot::for_key(subject.manifest_key(&store)),
                "{index}"
            );
        }
        // Different callers may live on different primaries.
        assert_ne!(
            Slot::for_key(store.budget_key("team-a", 1)),
            Slot::for_key(store.budget_key("team-b", 1))
        );
    }

    async fn ttl_ms(store: &RedisStore, key: &str) -> i64 {
        let mut connection = store.backend.connection();
        redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut connection)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn budget_scripts_hold_refuse_and_settle_with_a_two_day_ttl() {
        let Some(store) = test_store() else {
            return;
        };
        let key = store.budget_key("caller:a", 20_000);
        let first = store.reserve_budget(&key, 1_000, 600).await.unwrap();
        assert!(first.admitted);
        let refused = store.reserve_budget(&key, 1_000, 600).await.unwrap();
        assert_eq!(
            (
                refused.admitted,
                refused.spent_micro_usd,
                refused.reserved_micro_usd
            ),
            (false, 0, 600),
            "a refusal returns the balance"
        );
        store.settle_budget(&key, 600, 100).await.unwrap();
        assert_eq!(store.budget_figures(&key).await.unwrap(), (100, 0));
        // A settle larger than what is held never leaves a negative hold.
        store.settle_budget(&key, 50, 0).await.unwrap();
        assert_eq!(store.budget_figures(&key).await.unwrap(), (100, 0));
        let ttl = ttl_ms(&store, &key).await;
        assert!(ttl > 86_400_000 && ttl <= 172_800_000, "{ttl}");
    }

    #[tokio::test]
    async fn the_rate_script_is_gcra_on_redis_time_with_refunds() {
        let Some(store) = test_store() else {
            return;
        };
        let minute = Duration::from_secs(60);
        // 3 requests per minute: one every 20 s, a burst of 3.
        let requests = |units| {
            [
                RateCell {
                    units,
                    interval_us: 20_000_000,
                },
                RateCell {
                    units: 0,
                    interval_us: 0,
                },
            ]
        };
        for _ in 0..3 {
            assert!(
                store
                    .admit_rate(RateSubject::Caller("a"), requests(1), minute)
                    .await
                    .unwrap()
                    .admitted
            );
        }
        let refused = store
            .admit_rate(RateSubject::Caller("a"), requests(1), minute)
            .await
            .unwrap();
        assert!(!refused.admitted);
        assert_eq!(refused.refused_cell, Some(0));
        let wait = refused.retry_after.unwrap();
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        let never = store
            .admit_rate(RateSubject::Caller("b"), requests(4), minute)
            .await
            .unwrap();
        assert_eq!((never.admitted, never.retry_after), (false, None));
        let ttl = ttl_ms(&store, &store.rate_keys(RateSubject::Caller("a"))[0]).await;
        assert!(
            ttl > 0 && ttl <= 61_000,
            "the cell expires when it is full again: {ttl}"
        );

        // Tokens: 1000 per minute (60 ms each); 600 then 600 does not fit, the
        // request is not counted either; a refund of 500 makes room.
        let both = |tokens| {
            [
                RateCell {
                    units: 1,
                    interval_us: 1_000,
                },
                RateCell {
                    units: tokens,
                    interval_us: 60_000,
                },
            ]
        };
        assert!(
            store
                .admit_rate(RateSubject::Caller("c"), both(600), minute)
                .await
                .unwrap()
                .admitted
        );
        let refused = store
            .admit_rate(RateSubject::Caller("c"), both(600), minute)
            .await
            .unwrap();
        assert_eq!((refused.admitted, refused.refused_cell), (false, Some(1)));
        store
            .refund_rate_tokens(
                RateSubject::Caller("c"),
                Duration::from_micros(500 * 60_000),
            )
            .await
            .unwrap();
        let admitted = store
            .admit_rate(RateSubject::Caller("c"), both(600), minute)
            .await
            .unwrap();
        assert!(admitted.admitted);
        assert!(
            admitted.ahead[0] <= Duration::from_millis(2),
            "one request counted"
        );
    }
}
