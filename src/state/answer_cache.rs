//! Finished answers kept for replay (`[answer.cache]`): in this process, and in the
//! replicas' Redis when `[shared_state]` is set, so a question one replica answered
//! is replayed by any other without a model call.
//!
//! The key is a digest the answer service makes of everything the answer depends on
//! (the conversation, the model asked for, the caller's route restrictions, the
//! namespace and every passage sent with its content); this cache only keeps and
//! finds. Only complete answers are kept (finish reason `stop`). Redis holds one as
//! JSON under `{prefix}:answer:{digest}` with the TTL; a Redis that fails or is slow
//! is a miss (the answer is asked of the model), counted in
//! `skyfuse_shared_state_errors_total{kind="answer_cache"}`.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use serde::{Deserialize, Serialize};

use super::{RedisStore, StateKind};
use crate::config::AnswerCacheConfig;
use crate::telemetry::Metrics;

/// The name of this cache in `skyfuse_cache_lookups_total`.
const CACHE_NAME: &str = "answer";

/// The largest answer kept in Redis (its JSON): bigger ones stay in process only.
const MAX_SHARED_BYTES: usize = 1 << 20;

/// A model's complete answer, as it is replayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAnswer {
    /// The text as the model streamed it, piece by piece.
    pub tokens: Vec<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub usage_estimated: bool,
    pub finish_reason: String,
    /// The deployment that gave the answer.
    pub answered_by: AnsweredBy,
}

/// Who gave a cached answer: what the route of its replay reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnsweredBy {
    pub provider: String,
    pub model: String,
    pub deployment: String,
    pub dedicated: bool,
    pub cloud: String,
    pub region: String,
    pub regions: Vec<String>,
}

impl CachedAnswer {
    /// Whether the answer ended by itself: never one cut at its output limit, by a
    /// content filter, or broken.
    pub fn is_complete(&self) -> bool {
        self.finish_reason == "stop"
    }

    pub fn text(&self) -> String {
        self.tokens.concat()
    }
}

type Entries = LruCache<String, (Instant, Arc<CachedAnswer>)>;

pub struct AnswerCache {
    local: Mutex<Entries>,
    ttl: Duration,
    redis: Option<Arc<RedisStore>>,
    metrics: Arc<Metrics>,
}

impl AnswerCache {
    /// A cache as `config` says, sharing through `redis` when replicas have one.
    pub fn new(
        config: &AnswerCacheConfig,
        redis: Option<Arc<RedisStore>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            local: Mutex::new(LruCache::new(
                NonZeroUsize::new(config.entries).unwrap_or(NonZeroUsize::MIN),
            )),
            ttl: Duration::from_millis(config.ttl_ms),
            redis,
            metrics,
        }
    }

    /// The answer kept under `key`: this process's first, then Redis's (kept here
    /// too once found). Counted by the tier that had it, or as a miss.
    pub async fn get(&self, key: &str) -> Option<Arc<CachedAnswer>> {
        if let Some(answer) = self.fresh(key) {
            self.count("process");
            return Some(answer);
        }
        if let Some(answer) = self.shared(key).await {
            let answer = Arc::new(answer);
            lock(&self.local).put(key.to_string(), (Instant::now(), answer.clone()));
            self.count("redis");
            return Some(answer);
        }
        self.count("miss");
        None
    }

    /// Keeps a complete `answer` under `key` here and in Redis; an incomplete one is
    /// ignored. Returns once Redis has it or gave up (bounded by its timeout).
    pub async fn keep(&self, key: &str, answer: CachedAnswer) {
        if !answer.is_complete() {
            return;
        }
        let answer = Arc::new(answer);
        lock(&self.local).put(key.to_string(), (Instant::now(), answer.clone()));
        let Some(store) = &self.redis else {
            return;
        };
        let bytes = match serde_json::to_vec(&*answer) {
            Ok(bytes) if bytes.len() <= MAX_SHARED_BYTES => bytes,
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(%error, "could not encode an answer for the shared cache");
                return;
            }
        };
        if let Err(error) = store
            .set_bytes(
                StateKind::AnswerCache,
                &self.redis_key(store, key),
                &bytes,
                self.ttl,
            )
            .await
        {
            tracing::debug!(%error, "could not share an answer");
        }
    }

    fn fresh(&self, key: &str) -> Option<Arc<CachedAnswer>> {
        let mut local = lock(&self.local);
        match local.get(key) {
            Some((at, answer)) if at.elapsed() < self.ttl => Some(answer.clone()),
            Some(_) => {
                local.pop(key);
                None
            }
            None => None,
        }
    }

    async fn shared(&self, key: &str) -> Option<CachedAnswer> {
        let store = self.redis.as_ref()?;
        let bytes = match store
            .get_bytes(StateKind::AnswerCache, &self.redis_key(store, key))
            .await
        {
            Ok(bytes) => bytes?,
            Err(error) => {
                tracing::debug!(%error, "shared answer lookup failed; asking the model");
                return None;
            }
        };
        match serde_json::from_slice::<CachedAnswer>(&bytes) {
            Ok(answer) if answer.is_complete() => Some(answer),
            Ok(_) => None,
            Err(error) => {
                // Another build's shape, or damage: asking the model again is safe.
                tracing::warn!(%error, "a shared answer could not be read; asking the model");
                None
            }
        }
    }

    fn redis_key(&self, store: &RedisStore, key: &str) -> String {
        format!("{}:answer:{key}", store.prefix())
    }

    fn count(&self, tier: &'static str) {
        self.metrics.record_cache_lookup(CACHE_NAME, tier);
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
    use super::*;

    fn answer(finish_reason: &str) -> CachedAnswer {
        CachedAnswer {
            tokens: vec!["Cold archives ".into(), "are in Dublin [1].".into()],
            input_tokens: 120,
            output_tokens: 9,
            cached_input_tokens: 0,
            usage_estimated: false,
            finish_reason: finish_reason.into(),
            answered_by: AnsweredBy {
                provider: "azure-eastus".into(),
                model: "gpt-4o".into(),
                deployment: "gpt4o".into(),
                dedicated: false,
                cloud: "azure".into(),
                region: "eastus".into(),
                regions: vec!["eastus".into()],
            },
        }
    }

    fn new_cache(ttl_ms: u64) -> (AnswerCache, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let config = AnswerCacheConfig { ttl_ms, entries: 8 };
        (AnswerCache::new(&config, None, metrics.clone()), metrics)
    }

    #[tokio::test]
    async fn a_complete_answer_is_replayed_in_process_until_it_expires() {
        let (cache, metrics) = new_cache(60_000);
        assert!(cache.get("k").await.is_none());
        cache.keep("k", answer("stop")).await;
        let replayed = cache.get("k").await.unwrap();
        assert_eq!(replayed.text(), "Cold archives are in Dublin [1].");
        assert_eq!(replayed.tokens.len(), 2, "the pieces as streamed");
        let text = metrics.encode();
        assert!(text.contains(r#"skyfuse_cache_lookups_total{cache="answer",tier="process"} 1"#));
        assert!(text.contains(r#"skyfuse_cache_lookups_total{cache="answer",tier="miss"} 1"#));

        let (expiring, _) = new_cache(0);
        expiring.keep("k", answer("stop")).await;
        assert!(
            expiring.get("k").await.is_none(),
            "a zero TTL keeps nothing"
        );
    }

    #[tokio::test]
    async fn an_answer_cut_short_or_filtered_is_never_kept() {
        let (cache, _) = new_cache(60_000);
        for reason in ["length", "content_filter", "error", ""] {
            cache.keep(reason, answer(reason)).await;
            assert!(cache.get(reason).await.is_none(), "{reason:?} was kept");
        }
    }
}
