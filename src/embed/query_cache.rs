//! The short-lived cache of query vectors, with single flight: identical queries that
//! arrive while one is being embedded wait for that one instead of calling the
//! provider again (a hot query under load costs one cloud call, not one per request).

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use lru::LruCache;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy)]
pub struct QueryCacheSettings {
    /// Most query embeddings kept; 0 turns keeping off (single flight stays on).
    pub entries: usize,
    /// How long one is reused: long enough for a burst of retries and pagination,
    /// short enough that a redeployed model is picked up soon.
    pub ttl: Duration,
}

/// (family key, dimension, query text).
pub type CacheKey = (String, usize, String);

/// A second tier of query vectors that replicas share (Redis), behind the
/// in-process one. It fails open: a tier that cannot answer in time reports a miss,
/// and a vector it cannot keep is simply not kept.
pub trait SharedVectors: Send + Sync {
    /// The vector of `query` at `dims` in `namespace` (a space and its model), if kept.
    fn get(
        &self,
        namespace: &str,
        dims: usize,
        query: &str,
    ) -> BoxFuture<'static, Option<Vec<f32>>>;
    /// Keeps `vector` for `query`; done when the tier has it or gave up.
    fn put(&self, namespace: &str, query: &str, vector: &[f32]) -> BoxFuture<'static, ()>;
}
type Vector = Arc<Vec<f32>>;
type Flight = Shared<BoxFuture<'static, Result<Vector>>>;

#[derive(Clone)]
pub struct QueryCache {
    state: Arc<State>,
}

struct State {
    entries: Option<Mutex<LruCache<CacheKey, (Instant, Vector)>>>,
    ttl: Duration,
    in_flight: Mutex<HashMap<CacheKey, Flight>>,
}

impl QueryCache {
    pub fn new(settings: QueryCacheSettings) -> Self {
        Self {
            state: Arc::new(State {
                entries: NonZeroUsize::new(settings.entries)
                    .map(|entries| Mutex::new(LruCache::new(entries))),
                ttl: settings.ttl,
                in_flight: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The vector kept for `key` in this process, if still fresh.
    pub fn lookup(&self, key: &CacheKey) -> Option<Vector> {
        self.state.fresh(key)
    }

    /// The vector for `key`: fresh from the cache, shared with an identical call in
    /// flight, or made by `embed`. `embed` runs as its own task, so it finishes, is
    /// cached and leaves the in-flight table even when every caller gave up waiting.
    pub async fn get_or_embed<F>(&self, key: CacheKey, embed: F) -> Result<Vector>
    where
        F: Future<Output = Result<Vector>> + Send + 'static,
    {
        if let Some(vector) = self.state.fresh(&key) {
            return Ok(vector);
        }
        let flight = {
            let mut in_flight = lock(&self.state.in_flight);
            match in_flight.get(&key) {
                Some(flight) => flight.clone(),
                None => {
                    let state = self.state.clone();
                    let task_key = key.clone();
                    let task = tokio::spawn(async move {
                        let result = embed.await;
                        if let Ok(vector) = &result {
                            state.keep(task_key.clone(), vector.clone());
                        }
                        lock(&state.in_flight).remove(&task_key);
                        result
                    });
                    let flight = async move {
                        task.await.unwrap_or_else(|error| {
                            Err(Error::internal(format!(
                                "query embedding task failed: {error}"
                            )))
                        })
                    }
                    .boxed()
                    .shared();
                    in_flight.insert(key, flight.clone());
                    flight
                }
            }
        };
        flight.await
    }
}

impl State {
    fn fresh(&self, key: &CacheKey) -> Option<Vector> {
        let mut entries = lock(self.entries.as_ref()?);
        match entries.get(key) {
            Some((at, vector)) if at.elapsed() < self.ttl => Some(vector.clone()),
            Some(_) => {
                entries.pop(key);
                None
            }
            None => None,
        }
    }

    fn keep(&self, key: CacheKey, vector: Vector) {
        if let Some(entries) = &self.entries {
            lock(entries).put(key, (Instant::now(), vector));
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Entries are whole values: safe to keep using after a panic elsewhere.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn key(query: &str) -> CacheKey {
        ("family".into(), 2, query.into())
    }

    /// An embedding that counts its calls and takes `delay`.
    fn counted(
        calls: &Arc<AtomicUsize>,
        delay: Duration,
    ) -> impl Future<Output = Result<Vector>> + Send + 'static {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            Ok(Arc::new(vec![1.0, 0.0]))
        }
    }

    #[tokio::test]
    async fn a_fresh_entry_is_reused_and_an_expired_one_is_embedded_again() {
        let calls = Arc::new(AtomicUsize::new(0));
        let settings = |ttl| QueryCacheSettings { entries: 8, ttl };
        let cache = QueryCache::new(settings(Duration::from_secs(60)));
        for _ in 0..3 {
            cache
                .get_or_embed(key("q"), counted(&calls, Duration::ZERO))
                .await
                .unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let expiring = QueryCache::new(settings(Duration::ZERO));
        for _ in 0..2 {
            expiring
                .get_or_embed(key("q"), counted(&calls, Duration::ZERO))
                .await
                .unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn identical_queries_in_flight_share_one_embedding_even_without_keeping() {
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = QueryCache::new(QueryCacheSettings {
            entries: 0,
            ttl: Duration::ZERO,
        });
        let slow = Duration::from_millis(50);
        let results = futures::future::join_all(
            (0..5).map(|_| cache.get_or_embed(key("hot"), counted(&calls, slow))),
        )
        .await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        cache
            .get_or_embed(key("hot"), counted(&calls, Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the flight ended; nothing kept"
        );
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_does_not_cancel_the_embedding() {
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = QueryCache::new(QueryCacheSettings {
            entries: 8,
            ttl: Duration::from_secs(60),
        });
        let gave_up = tokio::time::timeout(
            Duration::from_millis(5),
            cache.get_or_embed(key("q"), counted(&calls, Duration::from_millis(50))),
        )
        .await;
        assert!(gave_up.is_err());
        tokio::time::sleep(Duration::from_millis(100)).await;
        cache
            .get_or_embed(key("q"), counted(&calls, Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "finished and kept in the background"
        );
        assert!(lock(&cache.state.in_flight).is_empty());
    }
}
