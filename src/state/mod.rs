//! State that replicas share: budgets, rate limits and deployment cooldowns.
//!
//! [`SharedState`] is the one seam: in process (the default; each replica keeps its
//! own, as a single process needs) or Redis (`[shared_state]`), so N replicas
//! behave as one service. Only this module talks to Redis.
//!
//! - Budgets ([`Budgets`]): reserve before a call, settle after, atomically across
//!   replicas (a Lua script over integer micro-USD, one hash per caller per UTC day).
//! - Rate limits: the same GCRA cells as `limits::rate`, in a Lua script timed by
//!   Redis's own clock, so replica clocks do not matter.
//! - Cooldowns: a replica whose deployment is throttled (Retry-After) or whose
//!   breaker opens publishes "hold off until"; every replica applies it to its own
//!   breaker from a background subscriber, so the hot path makes no extra round trip.
//! - Caches ([`RedisQueryVectors`], [`AnswerCache`]): query vectors of the spaces that
//!   opt in, and finished answers; a Redis that fails is a miss.
//! - Ingestion leases ([`HeldLease`]): one replica syncs an (index, bucket) at a time,
//!   and the manifest of an index whose stores are remote lives in Redis
//!   ([`SharedManifest`]), so another replica resumes when the holder dies.
//!
//! Each Redis call is bounded by `timeout_ms`; past it, or on any error, the kind
//! fails open (this replica decides alone, from its in-process state) or closed
//! (`UNAVAILABLE`), as `on_unavailable` says, and the failure is counted in
//! `skyfuse_shared_state_errors_total{kind}`.

mod answer_cache;
mod budget_ledger;
mod budgets;
mod embedding_cache;
mod leases;
mod manifests;
mod redis_connection;
mod redis_store;
mod redis_topology;

use std::collections::HashMap;
use std::sync::Arc;

pub use answer_cache::{AnswerCache, AnsweredBy, CachedAnswer};
pub use budget_ledger::{Balance, BudgetLedger, LocalReservation, until_next_day, utc_day};
pub use budgets::{BudgetRefusal, Budgets, Reservation};
pub use embedding_cache::RedisQueryVectors;
pub use leases::{HeldLease, LeaseSubject};
pub use manifests::SharedManifest;
pub use redis_store::{
    BudgetVerdict, RateCell, RateSubject, RateVerdict, RedisStore, SharedStateError, StateKind,
};
pub use redis_topology::RedisTopology;

use crate::breaker::CircuitBreaker;
use crate::config::SharedStateConfig;
use crate::error::Result;
use crate::telemetry::Metrics;

/// Where replicas keep what they share.
#[derive(Clone, Default)]
pub enum SharedState {
    /// Each process alone (one replica, or replicas that need not agree).
    #[default]
    InProcess,
    /// One Redis for every replica.
    Redis(Arc<RedisStore>),
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InProcess => formatter.write_str("SharedState::InProcess"),
            Self::Redis(store) => write!(formatter, "SharedState::Redis({})", store.prefix()),
        }
    }
}

impl SharedState {
    /// The state `[shared_state]` asks for; connects lazily, so a Redis that is down
    /// at startup delays nothing (its kinds fail open or closed until it is back).
    pub fn from_config(
        config: Option<&SharedStateConfig>,
        env: &HashMap<String, String>,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let Some(config) = config else {
            return Ok(Self::InProcess);
        };
        Ok(Self::Redis(Arc::new(RedisStore::connect(
            config, env, metrics,
        )?)))
    }

    /// The Redis store, when replicas share one.
    pub fn redis(&self) -> Option<&Arc<RedisStore>> {
        match self {
            Self::InProcess => None,
            Self::Redis(store) => Some(store),
        }
    }

    /// Budgets kept where this state keeps them.
    pub fn budgets(&self) -> Budgets {
        match self {
            Self::InProcess => Budgets::InProcess(BudgetLedger::default()),
            Self::Redis(store) => Budgets::Redis {
                store: Arc::clone(store),
                fallback: BudgetLedger::default(),
            },
        }
    }

    /// Applies every replica's cooldowns to `breakers` (by deployment label) from a
    /// background task, for as long as the process runs. In process: nothing to do.
    pub fn spawn_cooldown_listener(&self, breakers: Vec<(String, Arc<CircuitBreaker>)>) {
        if let Self::Redis(store) = self {
            tokio::spawn(Arc::clone(store).listen_for_cooldowns(breakers));
        }
    }

    /// Why this replica should not take traffic because of its shared state: Redis
    /// is unreachable and a kind fails closed.
    pub fn unready_reasons(&self) -> Vec<String> {
        match self {
            Self::InProcess => Vec::new(),
            Self::Redis(store) => store.unready_reasons(),
        }
    }
}
