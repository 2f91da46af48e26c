//! The wrapper every backend is served through: a time limit per call, retries of
//! transient failures only ([`ErrorKind::is_retryable`]: throttled, unavailable,
//! timed out) with backoff that honours the store's `retry-after`, a circuit
//! breaker per source that blames the store as the failure policy says
//! ([`ErrorKind::counts_against_endpoint`]), and counters.
//!
//! The project has no metrics registry yet (`telemetry` only sets up logs), so the
//! counters live in [`SourceMetrics`], one per source, readable through
//! [`ResilientBackend::metrics`]; a Prometheus exporter can read the same numbers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::breaker::{BreakerSettings, CircuitBreaker};
use crate::document::{EmbeddedChunk, Hit};
use crate::error::{Error, ErrorKind, Result};
use crate::stores::{SearchBackend, SourceInfo, StoreQuery};

/// How the wrapper treats one source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResilienceSettings {
    /// Retries after the first attempt, for transient failures only.
    pub max_retries: u32,
    /// The first backoff; it doubles per retry. A `retry-after` from the store wins.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Limit of one write, commit or count call (searches use the query's deadline).
    pub write_timeout: Duration,
    pub breaker: BreakerSettings,
}

impl Default for ResilienceSettings {
    fn default() -> Self {
        Self {
            max_retries: 2,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            write_timeout: Duration::from_secs(30),
            breaker: BreakerSettings::default(),
        }
    }
}

/// Latency buckets of [`SourceMetrics::latency`], upper bounds in microseconds; the
/// last bucket counts everything slower.
pub const LATENCY_BUCKETS_MICROS: [u64; 12] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000,
];

/// Counters of one source; bounded by construction (one set per source).
#[derive(Debug, Default)]
pub struct SourceMetrics {
    pub calls: AtomicU64,
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub throttled: AtomicU64,
    pub retries: AtomicU64,
    /// Calls refused without reaching the store because the breaker was open.
    pub rejected_open: AtomicU64,
    /// Search latency histogram, one count per bucket of [`LATENCY_BUCKETS_MICROS`] plus
    /// the overflow bucket.
    pub latency: [AtomicU64; LATENCY_BUCKETS_MICROS.len() + 1],
}

impl SourceMetrics {
    fn observe_latency(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(LATENCY_BUCKETS_MICROS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
    }

    fn count_outcome<T>(&self, result: &Result<T>) {
        let counter = match result {
            Ok(_) => &self.ok,
            Err(error) => match error.kind {
                ErrorKind::Timeout => &self.timeouts,
                ErrorKind::Throttled => &self.throttled,
                _ => &self.errors,
            },
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A backend behind time limits, retries, a breaker and counters.
pub struct ResilientBackend {
    inner: Arc<dyn SearchBackend>,
    settings: ResilienceSettings,
    breaker: Arc<CircuitBreaker>,
    metrics: Arc<SourceMetrics>,
}

impl ResilientBackend {
    pub fn new(inner: Arc<dyn SearchBackend>, settings: ResilienceSettings) -> Self {
        Self {
            inner,
            breaker: Arc::new(CircuitBreaker::new(settings.breaker)),
            settings,
            metrics: Arc::new(SourceMetrics::default()),
        }
    }

    pub fn metrics(&self) -> Arc<SourceMetrics> {
        Arc::clone(&self.metrics)
    }

    pub fn breaker_is_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Runs `attempt` until it succeeds, fails for good, runs out of retries, or the
    /// next wait would pass `deadline`.
    async fn call<T, F, Fut>(&self, what: &str, deadline: Instant, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let source = &self.inner.describe().id;
        self.metrics.calls.fetch_add(1, Ordering::Relaxed);
        let mut retries = 0;
        loop {
            let Some(permit) = self.breaker.try_acquire() else {
                self.metrics.rejected_open.fetch_add(1, Ordering::Relaxed);
                return Err(Error::unavailable(format!(
                    "source {source:?}: circuit open after repeated failures, not calling the store"
                )));
            };
            let result = match tokio::time::timeout_at(deadline.into(), attempt()).await {
                Ok(result) => result,
                Err(_elapsed) => Err(Error::timeout(format!(
                    "source {source:?}: {what} did not finish in time"
                ))),
            };
            let error = match result {
                Ok(value) => {
                    permit.succeeded();
                    return Ok(value);
                }
                Err(error) => error,
            };
            permit.failed(&error);
            if !error.kind.is_retryable() || retries >= self.settings.max_retries {
                return Err(error);
            }
            let backoff = self
                .settings
                .initial_backoff
                .saturating_mul(1 << retries.min(16))
                .min(self.settings.max_backoff);
            let wait = error.retry_after.unwrap_or(backoff);
            if crate::time_caps::later(Instant::now(), wait) >= deadline {
                return Err(error);
            }
            retries += 1;
            self.metrics.retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(source, what, retries, ?wait, %error, "retrying a transient failure");
            tokio::time::sleep(wait).await;
        }
    }

    fn write_deadline(&self) -> Instant {
        crate::time_caps::later(Instant::now(), self.settings.write_timeout)
    }
}

#[async_trait]
impl SearchBackend for ResilientBackend {
    fn describe(&self) -> &SourceInfo {
        self.inner.describe()
    }

    fn breaker_open(&self) -> bool {
        self.breaker.is_open() || self.inner.breaker_open()
    }

    async fn search(&self, query: &StoreQuery) -> Result<Vec<Hit>> {
        let started = Instant::now();
        let result = self
            .call("search", query.deadline, || self.inner.search(query))
            .await;
        self.metrics.observe_latency(started.elapsed());
        self.metrics.count_outcome(&result);
        result
    }

    async fn upsert(&self, chunks: &[EmbeddedChunk]) -> Result<()> {
        let result = self
            .call("upsert", self.write_deadline(), || {
                self.inner.upsert(chunks)
            })
            .await;
        self.metrics.count_outcome(&result);
        result
    }

    async fn delete_objects(&self, object_keys: &[String]) -> Result<()> {
        let result = self
            .call("delete", self.write_deadline(), || {
                self.inner.delete_objects(object_keys)
            })
            .await;
        self.metrics.count_outcome(&result);
        result
    }

    async fn commit(&self) -> Result<()> {
        let result = self
            .call("commit", self.write_deadline(), || self.inner.commit())
            .await;
        self.metrics.count_outcome(&result);
        result
    }

    async fn count(&self) -> Result<u64> {
        let result = self
            .call("count", self.write_deadline(), || self.inner.count())
            .await;
        self.metrics.count_outcome(&result);
        result
    }

    async fn sample_texts(&self, n: usize) -> Result<Vec<(String, String)>> {
        self.inner.sample_texts(n).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::stores::StoreKind;

    /// Answers each search with the next scripted result, counting calls.
    struct Scripted {
        info: SourceInfo,
        script: Mutex<Vec<Result<Vec<Hit>>>>,
        calls: AtomicU64,
    }

    impl Scripted {
        fn new(mut script: Vec<Result<Vec<Hit>>>) -> Arc<Self> {
            script.reverse();
            Arc::new(Self {
                info: SourceInfo {
                    id: "scripted".into(),
                    backend: "test".into(),
                    kind: StoreKind::Lexical,
                    space: None,
                    dims: None,
                    cloud: "local".into(),
                    region: "local".into(),
                },
                script: Mutex::new(script),
                calls: AtomicU64::new(0),
            })
        }
    }

    #[async_trait]
    impl SearchBackend for Scripted {
        fn describe(&self) -> &SourceInfo {
            &self.info
        }
        async fn search(&self, _query: &StoreQuery) -> Result<Vec<Hit>> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.script
                .lock()
                .unwrap()
                .pop()
                .unwrap_or_else(|| Err(Error::internal("script exhausted")))
        }
        async fn upsert(&self, _chunks: &[EmbeddedChunk]) -> Result<()> {
            Ok(())
        }
        async fn delete_objects(&self, _object_keys: &[String]) -> Result<()> {
            Ok(())
        }
        async fn commit(&self) -> Result<()> {
            Ok(())
        }
        async fn count(&self) -> Result<u64> {
            Ok(0)
        }
    }

    fn settings() -> ResilienceSettings {
        ResilienceSettings {
            max_retries: 2,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            write_timeout: Duration::from_secs(1),
            breaker: BreakerSettings {
                threshold: 3,
                cooldown: Duration::from_secs(60),
                max_cooldown: Duration::from_secs(60),
                ..BreakerSettings::default()
            },
        }
    }

    fn query(within: Duration) -> StoreQuery {
        StoreQuery {
            text: "q".into(),
            vector: None,
            top_k: 3,
            deadline: Instant::now() + within,
            filter: Default::default(),
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_and_the_retry_after_is_waited() {
        let inner = Scripted::new(vec![
            Err(Error::throttled("429", Some(Duration::from_millis(80)))),
            Err(Error::unavailable("503")),
            Ok(Vec::new()),
        ]);
        let backend = ResilientBackend::new(inner.clone(), settings());
        let started = Instant::now();
        backend
            .search(&query(Duration::from_secs(5)))
            .await
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(80),
            "waited retry-after"
        );
        assert_eq!(inner.calls.load(Ordering::Relaxed), 3);
        let metrics = backend.metrics();
        assert_eq!(SourceMetrics::get(&metrics.retries), 2);
        assert_eq!(SourceMetrics::get(&metrics.ok), 1);
    }

    #[tokio::test]
    async fn permanent_failures_are_not_retried() {
        let inner = Scripted::new(vec![
            Err(Error::new(ErrorKind::Auth, "wrong api key")),
            Ok(Vec::new()),
        ]);
        let backend = ResilientBackend::new(inner.clone(), settings());
        let error = backend
            .search(&query(Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Auth);
        assert_eq!(inner.calls.load(Ordering::Relaxed), 1);
        assert!(
            !backend.breaker_is_open(),
            "one refused key is one failure, below the threshold"
        );
    }

    /// The store follows the one failure policy: it retries what
    /// `ErrorKind::is_retryable` allows, and its breaker counts what
    /// `ErrorKind::counts_against_endpoint` blames on the endpoint.
    #[tokio::test]
    async fn retries_and_breaker_follow_the_failure_policy_for_every_kind() {
        for kind in ErrorKind::ALL {
            let inner = Scripted::new(vec![Err(Error::new(kind, "scripted")), Ok(Vec::new())]);
            let retrying = ResilienceSettings {
                max_retries: 1,
                ..settings()
            };
            let backend = ResilientBackend::new(inner.clone(), retrying);
            let result = backend.search(&query(Duration::from_secs(5))).await;
            assert_eq!(result.is_ok(), kind.is_retryable(), "{kind}");
            let calls = inner.calls.load(Ordering::Relaxed);
            assert_eq!(calls, 1 + u64::from(kind.is_retryable()), "{kind}");

            let failing =
                Scripted::new((0..2).map(|_| Err(Error::new(kind, "scripted"))).collect());
            let once = ResilienceSettings {
                max_retries: 0,
                breaker: BreakerSettings {
                    threshold: 2,
                    ..settings().breaker
                },
                ..settings()
            };
            let backend = ResilientBackend::new(failing, once);
            for _ in 0..2 {
                let _ = backend.search(&query(Duration::from_secs(5))).await;
            }
            assert_eq!(
                backend.breaker_is_open(),
                kind.counts_against_endpoint(),
                "{kind}"
            );
        }
    }

    #[tokio::test]
    async fn a_retry_after_past_the_deadline_gives_up_at_once() {
        let inner = Scripted::new(vec![
            Err(Error::throttled("429", Some(Duration::from_secs(30)))),
            Ok(Vec::new()),
        ]);
        let backend = ResilientBackend::new(inner.clone(), settings());
        let started = Instant::now();
        let error = backend
            .search(&query(Duration::from_millis(500)))
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Throttled);
        assert!(started.elapsed() < Duration::from_millis(400));
        assert_eq!(inner.calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn repeated_outages_open_the_breaker_and_later_calls_skip_the_store() {
        let inner = Scripted::new((0..10).map(|_| Err(Error::unavailable("down"))).collect());
        let backend = ResilientBackend::new(inner.clone(), settings());
        // One call makes three attempts: the breaker's threshold.
        assert!(
            backend
                .search(&query(Duration::from_secs(5)))
                .await
                .is_err()
        );
        assert!(backend.breaker_is_open());
        let error = backend
            .search(&query(Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(error.message.contains("circuit open"), "{}", error.message);
        assert_eq!(inner.calls.load(Ordering::Relaxed), 3);
        assert_eq!(SourceMetrics::get(&backend.metrics().rejected_open), 1);
    }

    #[tokio::test]
    async fn a_store_slower_than_the_deadline_times_out() {
        struct Stalled(SourceInfo);
        #[async_trait]
        impl SearchBackend for Stalled {
            fn describe(&self) -> &SourceInfo {
                &self.0
            }
            async fn search(&self, _query: &StoreQuery) -> Result<Vec<Hit>> {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok(Vec::new())
            }
            async fn upsert(&self, _chunks: &[EmbeddedChunk]) -> Result<()> {
                Ok(())
            }
            async fn delete_objects(&self, _object_keys: &[String]) -> Result<()> {
                Ok(())
            }
            async fn commit(&self) -> Result<()> {
                Ok(())
            }
            async fn count(&self) -> Result<u64> {
                Ok(0)
            }
        }
        let info = Scripted::new(Vec::new()).info.clone();
        let backend = ResilientBackend::new(Arc::new(Stalled(info)), settings());
        let started = Instant::now();
        let error = backend
            .search(&query(Duration::from_millis(100)))
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Timeout);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(SourceMetrics::get(&backend.metrics().timeouts), 1);
    }
}
