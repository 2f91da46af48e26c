//! A circuit breaker per remote endpoint, shared by every request that uses it.
//!
//! Closed: calls go through and consecutive failures are counted. After `threshold`
//! of them it opens: calls are refused without touching the endpoint until the
//! cooldown passes. Then it is half-open: one call goes through as a probe; success
//! closes it, failure opens it again with a doubled cooldown (up to `max_cooldown`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    pub threshold: u32,
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            threshold: 3,
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
        cooldown: Duration,
    },
    /// A probe is out; everyone else waits for its verdict.
    HalfOpen {
        cooldown: Duration,
    },
}

#[derive(Debug)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    state: Mutex<State>,
}

impl CircuitBreaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// Whether a call may go out now. Past the cooldown of an open breaker, the first
    /// caller becomes the probe and the breaker turns half-open.
    pub fn try_acquire(&self) -> bool {
        self.try_acquire_at(Instant::now())
    }

    pub fn record_success(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    /// Counts a failure of the endpoint (not of the caller's input).
    pub fn record_failure(&self) {
        self.record_failure_at(Instant::now());
    }

    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }

    fn try_acquire_at(&self, now: Instant) -> bool {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until, cooldown } if now >= until => {
                *state = State::HalfOpen { cooldown };
                true
            }
            State::Open { .. } | State::HalfOpen { .. } => false,
        }
    }

    fn record_failure_at(&self, now: Instant) {
        let settings = self.settings;
        let mut state = self.lock();
        *state = match *state {
            State::Closed { failures } if failures + 1 < settings.threshold => State::Closed {
                failures: failures + 1,
            },
            State::Closed { .. } => State::Open {
                until: now + settings.cooldown,
                cooldown: settings.cooldown,
            },
            // The probe failed: stay away twice as long.
            State::HalfOpen { cooldown } | State::Open { cooldown, .. } => {
                let cooldown = (cooldown * 2).min(settings.max_cooldown);
                State::Open {
                    until: now + cooldown,
                    cooldown,
                }
            }
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value: a panic elsewhere cannot leave it half-written.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerSettings {
            threshold: 2,
            cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(30),
        })
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let breaker = breaker();
        let now = Instant::now();
        breaker.record_failure_at(now);
        breaker.record_success();
        breaker.record_failure_at(now);
        assert!(breaker.try_acquire_at(now), "one failure since the success");
        breaker.record_failure_at(now);
        assert!(!breaker.try_acquire_at(now + Duration::from_secs(9)));
    }

    #[test]
    fn half_open_lets_one_probe_through_and_its_verdict_decides() {
        let breaker = breaker();
        let now = Instant::now();
        breaker.record_failure_at(now);
        breaker.record_failure_at(now);
        let after = now + Duration::from_secs(10);
        assert!(breaker.try_acquire_at(after), "the probe");
        assert!(!breaker.try_acquire_at(after), "only one probe at a time");
        breaker.record_success();
        assert!(breaker.try_acquire_at(after) && !breaker.is_open());
    }

    #[test]
    fn a_failed_probe_doubles_the_cooldown_up_to_the_maximum() {
        let breaker = breaker();
        let now = Instant::now();
        breaker.record_failure_at(now);
        breaker.record_failure_at(now);
        let probe = now + Duration::from_secs(10);
        assert!(breaker.try_acquire_at(probe));
        breaker.record_failure_at(probe);
        assert!(!breaker.try_acquire_at(probe + Duration::from_secs(19)));
        let second_probe = probe + Duration::from_secs(20);
        assert!(breaker.try_acquire_at(second_probe));
        breaker.record_failure_at(second_probe);
        assert!(!breaker.try_acquire_at(second_probe + Duration::from_secs(29)));
        assert!(breaker.try_acquire_at(second_probe + Duration::from_secs(30)));
    }
}
