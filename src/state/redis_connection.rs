//! One connection for every [`RedisTopology`], so [`super::RedisStore`] and its
//! scripts make the same calls on one Redis, a Redis Cluster or a Sentinel primary.
//!
//! - One node: the redis crate's `ConnectionManager` (reconnects by itself).
//! - Cluster: the crate's async `ClusterConnection`, which routes each command to the
//!   primary of its key's slot, follows `MOVED`/`ASK` and refreshes the slot map after a
//!   failover. Every script's keys share one hash tag, so each runs on one primary.
//! - Sentinel: the crate resolves the primary but gives no self-healing connection, so
//!   [`SentinelPrimary`] keeps a `ConnectionManager` to the resolved primary and asks the
//!   sentinels again once a call says that node is gone or no longer primary.
//!
//! Subscribers (the cooldown channel) take a plain pub/sub connection: on a cluster,
//! `PUBLISH` reaches every node, so one node will do, a different seed after each break.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    Client, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, Pipeline, RedisError, RedisFuture,
    RedisResult, ServerErrorKind, TlsMode, Value,
};

use super::redis_topology::RedisTopology;

/// The longest wait for the sentinels to name a primary: resolution runs in a task of
/// its own, so a caller that gives up at `timeout_ms` does not cancel it.
const MAX_RESOLVE_WAIT: Duration = Duration::from_secs(5);

/// After a failed lookup, calls fail at once for this long instead of asking the
/// sentinels again (a primary that is down until the failover would be asked per call).
const RESOLVE_PAUSE: Duration = Duration::from_millis(100);

/// Where the store's calls go.
pub enum RedisBackend {
    Single {
        client: Client,
        connection: ConnectionManager,
    },
    Cluster {
        connection: ClusterConnection,
        /// Seed nodes, in turn, for the subscriber.
        nodes: Vec<ConnectionInfo>,
        next_subscriber: AtomicUsize,
    },
    Sentinel(Arc<SentinelPrimary>),
}

impl RedisBackend {
    /// Sets up the connection for `topology`; nothing connects before the first call.
    pub fn open(topology: RedisTopology, timeout: Duration) -> Result<Self, String> {
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let setup = |error: RedisError| format!("shared_state: cannot set up redis: {error}");
        match topology {
            RedisTopology::Single(info) => {
                let client = Client::open(info).map_err(|error| {
                    format!(
                        "shared_state.redis_url is not a usable redis URL ({:?})",
                        error.kind()
                    )
                })?;
                let connection =
                    ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
                        .map_err(setup)?;
                Ok(Self::Single { client, connection })
            }
            RedisTopology::Cluster { nodes } => {
                let client = ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2)
                    .max_retry_wait(1_000)
                    .build()
                    .map_err(setup)?;
                let connection = client.get_pending_async_connection_with_config(
                    redis::cluster::ClusterConfig::new()
                        .set_connection_timeout(timeout)
                        .set_response_timeout(timeout),
                );
                // Replicas start at different seeds, so their subscribers spread out.
                let first = RandomState::new().hash_one(std::process::id());
                Ok(Self::Cluster {
                    connection,
                    nodes,
                    next_subscriber: AtomicUsize::new(first as usize),
                })
            }
            RedisTopology::Sentinel {
                sentinels,
                master_name,
                data,
            } => {
                let mut primary = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(data.redis_settings().clone());
                if matches!(data.addr(), ConnectionAddr::TcpTls { .. }) {
                    primary = primary.set_tls_mode(TlsMode::Secure);
                }
                let sentinel = SentinelClient::build(
                    sentinels,
                    master_name,
                    Some(primary),
                    SentinelServerType::Master,
                )
                .map_err(setup)?;
                Ok(Self::Sentinel(Arc::new(SentinelPrimary::new(
                    sentinel,
                    manager_config,
                ))))
            }
        }
    }

    /// A handle for calls; cheap to clone, shares the underlying connections.
    pub fn connection(&self) -> RedisConnection {
        match self {
            Self::Single { connection, .. } => RedisConnection::Single(connection.clone()),
            Self::Cluster { connection, .. } => RedisConnection::Cluster(connection.clone()),
            Self::Sentinel(primary) => RedisConnection::Sentinel(Arc::clone(primary)),
        }
    }

    /// A fresh subscriber connection: the node, the next seed of a cluster, or the
    /// primary the sentinels name now.
    pub async fn pubsub(&self) -> RedisResult<PubSub> {
        match self {
            Self::Single { client, .. } => client.get_async_pubsub().await,
            Self::Cluster {
                nodes,
                next_subscriber,
                ..
            } => {
                let turn = next_subscriber.fetch_add(1, Ordering::Relaxed) % nodes.len();
                Client::open(nodes[turn].clone())?.get_async_pubsub().await
            }
            Self::Sentinel(primary) => {
                let current = primary.current().await?;
                let subscribed = current.client.get_async_pubsub().await;
                if subscribed.as_ref().is_err_and(points_elsewhere) {
                    primary.forget(current.generation);
                }
                subscribed
            }
        }
    }
}

/// Runs `call` on the Sentinel's current primary. A call that finds the node gone or no
/// longer primary makes the next one ask the sentinels again, and is sent once more only
/// when it surely did not run (so a budget is never charged twice).
async fn on_primary<T, Call, Answer>(primary: &Arc<SentinelPrimary>, call: Call) -> RedisResult<T>
where
    Call: Fn(ConnectionManager) -> Answer,
    Answer: std::future::Future<Output = RedisResult<T>>,
{
    let mut retried = false;
    loop {
        let current = primary.current().await?;
        match call(current.connection.clone()).await {
            Err(error) if points_elsewhere(&error) => {
                primary.forget(current.generation);
                if retried || !surely_not_run(&error) {
                    return Err(error);
                }
                retried = true;
            }
            answer => return answer,
        }
    }
}

/// A connection to whichever topology `redis_url` names.
#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelPrimary>),
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, command: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(command),
            Self::Cluster(connection) => connection.req_packed_command(command),
            Self::Sentinel(primary) => {
                Box::pin(on_primary(primary, move |mut connection| async move {
                    connection.req_packed_command(command).await
                }))
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(primary) => {
                Box::pin(on_primary(primary, move |mut connection| async move {
                    connection
                        .req_packed_commands(pipeline, offset, count)
                        .await
                }))
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
            Self::Sentinel(_) => 0,
        }
    }
}

/// The primary a set of sentinels names, and a connection to it until a call says it
/// is gone or was demoted; then the next call asks the sentinels again.
pub struct SentinelPrimary {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<Primary>>,
    /// The lookup under way: every caller that needs the primary meanwhile awaits it.
    lookup: Mutex<Option<Lookup>>,
    /// The last failed lookup: callers get its error until [`RESOLVE_PAUSE`] has passed.
    failed: Mutex<Option<(Instant, RedisError)>>,
    generations: AtomicU64,
    manager_config: ConnectionManagerConfig,
}

type Lookup = Shared<BoxFuture<'static, RedisResult<Primary>>>;

#[derive(Clone)]
struct Primary {
    /// Which lookup found it, so a late failure of an old primary forgets nothing newer.
    generation: u64,
    client: Client,
    connection: ConnectionManager,
}

impl SentinelPrimary {
    fn new(sentinel: SentinelClient, manager_config: ConnectionManagerConfig) -> Self {
        Self {
            sentinel: tokio::sync::Mutex::new(sentinel),
            current: Mutex::new(None),
            lookup: Mutex::new(None),
            failed: Mutex::new(None),
            generations: AtomicU64::new(0),
            manager_config,
        }
    }

    /// The known primary, or the one the sentinels name now. The lookup runs in a task
    /// of its own, so a caller that gives up at `timeout_ms` does not cancel it, and
    /// one lookup serves every caller that arrives while it runs.
    async fn current(self: &Arc<Self>) -> RedisResult<Primary> {
        if let Some(primary) = lock(&self.current).clone() {
            return Ok(primary);
        }
        if let Some((at, error)) = lock(&self.failed).as_ref()
            && at.elapsed() < RESOLVE_PAUSE
        {
            return Err(error.clone());
        }
        let lookup = {
            let mut lookup = lock(&self.lookup);
            match lookup.as_ref() {
                Some(under_way) => under_way.clone(),
                None => {
                    let this = Arc::clone(self);
                    let task = tokio::spawn(async move { this.resolve().await });
                    let started = async move {
                        task.await.map_err(|error| {
                            RedisError::from(std::io::Error::other(error.to_string()))
                        })?
                    }
                    .boxed()
                    .shared();
                    *lookup = Some(started.clone());
                    started
                }
            }
        };
        lookup.await
    }

    /// Asks the sentinels; records the answer (or the failure) before the lookup ends.
    async fn resolve(&self) -> RedisResult<Primary> {
        let outcome = self.ask_sentinels().await;
        match &outcome {
            Ok(primary) => {
                tracing::info!(
                    generation = primary.generation,
                    "shared state: the sentinels named the redis primary"
                );
                *lock(&self.current) = Some(primary.clone());
                *lock(&self.failed) = None;
            }
            Err(error) => {
                tracing::warn!(%error, "shared state: the sentinels named no reachable redis primary");
                *lock(&self.failed) = Some((Instant::now(), error.clone()));
            }
        }
        *lock(&self.lookup) = None;
        outcome
    }

    async fn ask_sentinels(&self) -> RedisResult<Primary> {
        let mut sentinel = self.sentinel.lock().await;
        let client = tokio::time::timeout(MAX_RESOLVE_WAIT, sentinel.async_get_client())
            .await
            .map_err(|_| {
                RedisError::from((
                    ErrorKind::Io,
                    "the sentinels did not name a primary in time",
                ))
            })??;
        let connection =
            ConnectionManager::new_lazy_with_config(client.clone(), self.manager_config.clone())?;
        Ok(Primary {
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
            client,
            connection,
        })
    }

    fn forget(&self, generation: u64) {
        let mut current = lock(&self.current);
        if current
            .as_ref()
            .is_some_and(|primary| primary.generation == generation)
        {
            tracing::warn!(
                generation,
                "shared state: the redis primary is gone or demoted; asking the sentinels again"
            );
            *current = None;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether `error` says the node is no longer the primary to talk to.
fn points_elsewhere(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_timeout()
        || matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

/// Whether the server surely did not run the command, so sending it again is safe.
fn surely_not_run(error: &RedisError) -> bool {
    error.is_connection_refusal()
        || matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_call_that_surely_did_not_run_is_sent_again_to_a_new_primary() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let demoted = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            "You can't write against a read only replica.",
        ));
        let dropped = RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        let script_error = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "ERR user script failed",
        ));
        for error in [&refused, &demoted, &dropped] {
            assert!(points_elsewhere(error), "{error}");
        }
        assert!(surely_not_run(&refused) && surely_not_run(&demoted));
        assert!(
            !surely_not_run(&dropped),
            "a dropped connection may have run the call: sending it again could count it twice"
        );
        assert!(!points_elsewhere(&script_error), "the primary answered");
    }
}
