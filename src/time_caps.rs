//! Durations an upstream chooses (a `retry-after`, a token's `expires_in`) are
//! capped before they meet a clock, and `Instant + Duration` is done without
//! panicking: an endpoint must never be able to kill a request (or the probe task)
//! by sending a huge number.

use std::time::Duration;

/// The longest wait a `retry-after` (or a store's `retry_after_seconds`) may ask for.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The longest a cached access token is kept, whatever `expires_in` said.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(86_400);

/// An upstream's retry hint, capped at [`MAX_RETRY_AFTER`].
pub fn cap_retry_after(wait: Duration) -> Duration {
    wait.min(MAX_RETRY_AFTER)
}

/// An upstream's retry hint in whole seconds, capped at [`MAX_RETRY_AFTER`].
pub fn retry_after_secs(seconds: u64) -> Duration {
    cap_retry_after(Duration::from_secs(seconds))
}

/// A token's lifetime, capped at [`MAX_TOKEN_LIFETIME`].
pub fn cap_token_lifetime(lifetime: Duration) -> Duration {
    lifetime.min(MAX_TOKEN_LIFETIME)
}

/// An instant that can move forward without overflowing (std's and tokio's).
pub trait Later: Copy {
    /// `self + wait`, or the latest representable instant near it: never panics.
    fn later_by(self, wait: Duration) -> Self;
}

impl Later for std::time::Instant {
    fn later_by(self, wait: Duration) -> Self {
        self.checked_add(wait)
            .or_else(|| self.checked_add(MAX_TOKEN_LIFETIME))
            .unwrap_or(self)
    }
}

impl Later for tokio::time::Instant {
    fn later_by(self, wait: Duration) -> Self {
        tokio::time::Instant::from_std(self.into_std().later_by(wait))
    }
}

/// `base + wait` without the panic `Instant + Duration` has on overflow.
pub fn later<I: Later>(base: I, wait: Duration) -> I {
    base.later_by(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_hints_are_capped() {
        assert_eq!(retry_after_secs(u64::MAX), MAX_RETRY_AFTER);
        assert_eq!(retry_after_secs(7), Duration::from_secs(7));
        assert_eq!(cap_token_lifetime(Duration::MAX), MAX_TOKEN_LIFETIME);
        assert_eq!(
            cap_token_lifetime(Duration::from_secs(3599)),
            Duration::from_secs(3599)
        );
    }

    #[test]
    fn adding_the_largest_duration_does_not_panic() {
        let now = std::time::Instant::now();
        assert!(later(now, Duration::MAX) >= now);
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        let tokio_now = tokio::time::Instant::now();
        assert!(later(tokio_now, Duration::MAX) >= tokio_now);
    }
}
