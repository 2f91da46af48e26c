//! One cached bearer token and when to fetch the next: what the Azure and GCP
//! identity sources share. A token is kept until less than [`REFRESH_MARGIN`] (or
//! half its life, for short-lived ones) is left; concurrent callers wait for one
//! fetch; a failed renewal keeps serving the current token until it expires.
//! Time comes from a [`Clock`] so tests move it instead of sleeping.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::cloud::aws_credentials::Clock;
use crate::config::Secret;
use crate::error::Result;

/// A token is replaced once less than this is left of its life.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

pub struct TokenCache {
    /// Held across a fetch so concurrent callers share it.
    cached: tokio::sync::Mutex<Option<Cached>>,
    clock: Clock,
}

struct Cached {
    token: Secret,
    refresh_at: SystemTime,
    expires_at: SystemTime,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("TokenCache([redacted])")
    }
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(Arc::new(SystemTime::now))
    }
}

impl TokenCache {
    pub fn new(clock: Clock) -> Self {
        Self {
            cached: tokio::sync::Mutex::new(None),
            clock,
        }
    }

    pub fn now(&self) -> SystemTime {
        (self.clock)()
    }

    /// The cached token while it is fresh, else the one `fetch` returns with its
    /// lifetime. `source` names the identity in the warning of a failed renewal.
    pub async fn get<F, Fut>(&self, source: &str, fetch: F) -> Result<Secret>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Secret, Duration)>>,
    {
        let mut cached = self.cached.lock().await;
        let now = self.now();
        if let Some(current) = cached.as_ref()
            && now < current.refresh_at
        {
            return Ok(current.token.clone());
        }
        match fetch().await {
            Ok((token, lifetime)) => {
                let lifetime = crate::time_caps::cap_token_lifetime(lifetime);
                let keep = lifetime.saturating_sub(REFRESH_MARGIN).max(lifetime / 2);
                let now = self.now();
                *cached = Some(Cached {
                    token: token.clone(),
                    refresh_at: now.checked_add(keep).unwrap_or(now),
                    expires_at: now.checked_add(lifetime).unwrap_or(now),
                });
                Ok(token)
            }
            Err(error) => match cached.as_mut() {
                Some(current) if now < current.expires_at => {
                    tracing::warn!(
                        source,
                        %error,
                        "token not renewed; the current one is used until it expires"
                    );
                    // The next caller tries again, but not before a short pause.
                    current.refresh_at = now
                        .checked_add(Duration::from_secs(10))
                        .unwrap_or(now)
                        .min(current.expires_at);
                    Ok(current.token.clone())
                }
                _ => Err(error),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::error::Error;

    fn clock() -> (Clock, Arc<Mutex<SystemTime>>) {
        let now = Arc::new(Mutex::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1e9 as u64),
        ));
        let shared = now.clone();
        (Arc::new(move || *shared.lock().unwrap()), now)
    }

    async fn fetched(cache: &TokenCache, token: &str, lifetime_seconds: u64) -> Result<String> {
        let token = token.to_string();
        cache
            .get("test", || async move {
                Ok((Secret::new(token), Duration::from_secs(lifetime_seconds)))
            })
            .await
            .map(|secret| secret.expose().to_string())
    }

    #[tokio::test]
    async fn a_token_is_kept_until_the_margin_then_renewed_and_kept_through_a_failed_renewal() {
        let (clock, now) = clock();
        let cache = TokenCache::new(clock);
        assert_eq!(fetched(&cache, "one", 3600).await.unwrap(), "one");
        *now.lock().unwrap() += Duration::from_secs(3600 - 301);
        assert_eq!(fetched(&cache, "two", 3600).await.unwrap(), "one");
        *now.lock().unwrap() += Duration::from_secs(2);
        assert_eq!(fetched(&cache, "two", 3600).await.unwrap(), "two");
        // Renewal due but failing: the current token serves until it expires.
        *now.lock().unwrap() += Duration::from_secs(3400);
        let failing = cache
            .get("test", || async { Err(Error::unavailable("down")) })
            .await;
        assert_eq!(failing.unwrap().expose(), "two");
        *now.lock().unwrap() += Duration::from_secs(300);
        let failing = cache
            .get("test", || async { Err(Error::unavailable("down")) })
            .await;
        assert!(failing.is_err());
    }
}
