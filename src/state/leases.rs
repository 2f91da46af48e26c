//! Ingestion leases: one replica syncs an (index, bucket) at a time.
//!
//! A lease is a Redis key holding its holder (`REPLICA/RUN`) with a TTL, taken with
//! `SET NX PX`. The holder renews it every third of the TTL from a background task
//! (compare-and-extend) and releases it when the run ends (compare-and-delete). A
//! replica that dies stops renewing, so its lease expires and another replica takes
//! the bucket over. A holder that cannot confirm its lease within two thirds of the
//! TTL after sending its last confirmed renewal counts it lost and stops writing; and every
//! manifest save checks the holder in the same script ([`super::SharedManifest`]), so a
//! holder that lost its lease cannot overwrite the new holder's progress.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use redis::Script;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{RedisStore, StateKind};
use crate::error::{Error, Result};

/// Takes the lease when free; else answers who holds it and for how many more ms.
const ACQUIRE_LUA: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, ARGV[1], tonumber(ARGV[2])}
end
return {0, redis.call('GET', KEYS[1]) or '', redis.call('PTTL', KEYS[1])}
";

/// Extends the lease by `ARGV[2]` ms when `ARGV[1]` still holds it.
const EXTEND_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Deletes the lease when `ARGV[1]` still holds it.
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// What a lease is for, and its keys' shared hash tag.
#[derive(Debug, Clone)]
pub struct LeaseSubject {
    pub index: String,
    /// The bucket or root's identity, for messages.
    pub bucket: String,
    /// `INDEX:HASH` of the bucket: the hash tag of the lease and manifest keys.
    pub slot: String,
}

impl LeaseSubject {
    pub fn lease_key(&self, store: &RedisStore) -> String {
        format!("{}:lease:{{{}}}", store.prefix(), self.slot)
    }

    pub fn manifest_key(&self, store: &RedisStore) -> String {
        format!("{}:manifest:{{{}}}", store.prefix(), self.slot)
    }
}

/// This process's name in lease holders: the host name (a pod's name) and the pid.
pub fn replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|name| name.trim().to_owned())
        })
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "replica".to_owned());
    format!("{host}:{}", std::process::id())
}

/// Why a lease is lost, shared by the holder and its renewal task.
#[derive(Default)]
struct LossSignal {
    lost: AtomicBool,
    notify: Notify,
}

impl LossSignal {
    fn mark(&self) {
        self.lost.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

/// A lease this replica holds; renewed in the background until released or dropped.
pub struct HeldLease {
    store: Arc<RedisStore>,
    subject: LeaseSubject,
    key: String,
    holder: String,
    signal: Arc<LossSignal>,
    renewal: tokio::task::JoinHandle<()>,
    released: bool,
}

impl HeldLease {
    /// Takes the lease on `subject` for `ttl`, or says who holds it and until when.
    /// Redis unreachable: `UNAVAILABLE` (leases fail closed).
    pub async fn acquire(
        store: &Arc<RedisStore>,
        subject: LeaseSubject,
        ttl: Duration,
    ) -> Result<Self> {
        let key = subject.lease_key(store);
        let holder = format!("{}/{}", replica_id(), &crate::ids::random_id()[..12]);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        // The lease expires no sooner than a TTL after this: the renewal counts from here.
        let sent = Instant::now();
        let mut connection = store.connection();
        let script = Script::new(ACQUIRE_LUA);
        let mut invocation = script.key(&key);
        invocation.arg(&holder).arg(ttl_ms);
        let (taken, current, left_ms): (i64, String, i64) = store
            .call_within(
                StateKind::Leases,
                store.timeout(),
                invocation.invoke_async(&mut connection),
            )
            .await
            .map_err(|error| store.unavailable(StateKind::Leases, &error))?;
        if taken != 1 {
            return Err(held_elsewhere(&subject, &current, left_ms));
        }
        tracing::info!(index = %subject.index, bucket = %subject.bucket, %holder, "ingestion lease taken");
        let signal = Arc::new(LossSignal::default());
        let renewal = tokio::spawn(renew(
            Arc::clone(store),
            key.clone(),
            holder.clone(),
            ttl,
            sent,
            Arc::clone(&signal),
        ));
        Ok(Self {
            store: Arc::clone(store),
            subject,
            key,
            holder,
            signal,
            renewal,
            released: false,
        })
    }

    /// `REPLICA/RUN`: what the lease key holds while this replica syncs.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    pub fn subject(&self) -> &LeaseSubject {
        &self.subject
    }

    pub fn store(&self) -> &Arc<RedisStore> {
        &self.store
    }

    pub fn is_lost(&self) -> bool {
        self.signal.lost.load(Ordering::SeqCst)
    }

    /// Resolves once the lease is lost (taken over, or not renewed in time).
    pub async fn lost(&self) {
        loop {
            let notified = self.signal.notify.notified();
            if self.is_lost() {
                return;
            }
            notified.await;
        }
    }

    /// The error of a run that stopped because its lease was lost.
    pub fn lost_error(&self) -> Error {
        refusal(format!(
            "index {:?}: the ingestion lease on {} was lost (not renewed in time or taken over); this run stopped writing, and the next run resumes from the last saved manifest",
            self.subject.index, self.subject.bucket
        ))
    }

    /// Stops renewing and deletes the lease if this run still holds it.
    pub async fn release(mut self) {
        self.released = true;
        self.renewal.abort();
        release(&self.store, &self.key, &self.holder).await;
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        self.renewal.abort();
        if self.released {
            return;
        }
        // A run dropped mid-way (its caller went away): free the bucket now rather than
        // after the TTL. Any manifest save it had sent goes first on the same connection.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, key, holder) = (
                Arc::clone(&self.store),
                self.key.clone(),
                self.holder.clone(),
            );
            runtime.spawn(async move { release(&store, &key, &holder).await });
        }
    }
}

async fn release(store: &RedisStore, key: &str, holder: &str) {
    let mut connection = store.connection();
    let script = Script::new(RELEASE_LUA);
    let mut invocation = script.key(key);
    invocation.arg(holder);
    let released: std::result::Result<i64, _> = store
        .call_within(
            StateKind::Leases,
            store.timeout(),
            invocation.invoke_async(&mut connection),
        )
        .await;
    match released {
        Ok(_) => tracing::info!(%holder, "ingestion lease released"),
        // It expires by itself after its TTL.
        Err(error) => tracing::warn!(%holder, %error, "could not release an ingestion lease"),
    }
}

/// Renews every third of `ttl` (a quarter of that after a failed try); marks the
/// lease lost when Redis says another holds it (or nobody), or when no renewal was
/// confirmed for two thirds of `ttl` since one was sent (`confirmed`): past that the
/// lease may expire before this replica learns of it.
async fn renew(
    store: Arc<RedisStore>,
    key: String,
    holder: String,
    ttl: Duration,
    mut confirmed: Instant,
    signal: Arc<LossSignal>,
) {
    let every = ttl / 3;
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let script = Script::new(EXTEND_LUA);
    let mut pause = every;
    loop {
        let attempt = async {
            tokio::time::sleep(pause).await;
            let sent = Instant::now();
            let mut connection = store.connection();
            let mut invocation = script.key(&key);
            invocation.arg(&holder).arg(ttl_ms);
            let outcome: std::result::Result<i64, _> = store
                .call_within(
                    StateKind::Leases,
                    store.timeout().min(every),
                    invocation.invoke_async(&mut connection),
                )
                .await;
            (sent, outcome)
        };
        let (sent, outcome) = tokio::select! {
            () = tokio::time::sleep_until(confirmed + every * 2) => {
                tracing::error!(%holder, "ingestion lease not renewed in time: the run stops");
                signal.mark();
                return;
            }
            attempt = attempt => attempt,
        };
        match outcome {
            Ok(1) => {
                confirmed = sent;
                pause = every;
            }
            Ok(_) => {
                tracing::error!(%holder, "ingestion lease taken over or expired: the run stops");
                signal.mark();
                return;
            }
            Err(error) => {
                tracing::warn!(%holder, %error, "could not renew an ingestion lease");
                pause = every / 4;
            }
        }
    }
}

/// The refusal a replica gets for a bucket another run holds.
fn held_elsewhere(subject: &LeaseSubject, holder: &str, left_ms: i64) -> Error {
    let until = match u64::try_from(left_ms) {
        Ok(left_ms) => httpdate::fmt_http_date(SystemTime::now() + Duration::from_millis(left_ms)),
        Err(_) => "its lease expires".to_owned(),
    };
    let (replica, run) = holder.rsplit_once('/').unwrap_or((holder, "?"));
    let retry_after = u64::try_from(left_ms).ok().map(Duration::from_millis);
    let refused = refusal(format!(
        "index {:?}: {} is being synced by replica {replica} (run {run}) until {until} unless it renews its lease; retry after that",
        subject.index, subject.bucket
    ));
    // Also as the `retry-after` metadata of the gRPC status.
    Error {
        retry_after,
        ..refused
    }
}

/// skyfuse's own word about the bucket, with no upstream detail: the edge shows it to
/// the caller as it is (see `api::redact`).
fn refusal(message: String) -> Error {
    Error {
        local_refusal: true,
        ..Error::unavailable(message)
    }
}
