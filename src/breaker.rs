//! A circuit breaker per remote endpoint, shared by every request that uses it.
//!
//! Closed: calls go through and consecutive failures are counted. After `threshold`
//! of them it opens: calls are refused without touching the endpoint until the
//! cooldown passes. Then it is half-open: one call goes through as a probe; success
//! closes it, failure opens it again with a doubled cooldown (up to `max_cooldown`).
//! It also opens when the error rate over the last `window` calls reaches
//! `error_rate` (so an endpoint failing every other call is not kept forever), and
//! a throttled endpoint that said when to come back is left alone until then.
//!
//! Time is tokio's clock, so tests can pause it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub threshold: u32,
    pub cooldown: Duration,
    pub max_cooldown: Duration,
    /// Calls remembered for the error rate; 0 turns the rate check off.
    pub window: usize,
    /// Failure share over a full window that opens the breaker.
    pub error_rate: f64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            threshold: 3,
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(120),
            window: 20,
            error_rate: 0.5,
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
    /// A probe is out; everyone else waits for its verdict. A probe that never
    /// reports (its caller was cancelled) is presumed lost after one cooldown.
    HalfOpen {
        cooldown: Duration,
        since: Instant,
    },
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Recent outcomes, `true` for a failure; at most `settings.window`.
    recent: VecDeque<bool>,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            inner: Mutex::new(Inner {
                state: State::Closed { failures: 0 },
                recent: VecDeque::with_capacity(settings.window),
            }),
        }
    }

    /// Whether a call may go out now. Past the cooldown of an open breaker, the first
    /// caller becomes the probe and the breaker turns half-open.
    pub fn try_acquire(&self) -> bool {
        self.try_acquire_at(Instant::now())
    }

    pub fn record_success(&self) {
        let mut inner = self.lock();
        inner.state = State::Closed { failures: 0 };
        self.remember(&mut inner, false);
    }

    /// Counts a failure of the endpoint (not of the caller's input).
    pub fn record_failure(&self) {
        self.record_failure_at(Instant::now());
    }

    /// Counts a throttle: a failure, and when the endpoint said how long to wait,
    /// no call goes out before then (the cooldown itself is not doubled for it).
    pub fn record_throttle(&self, retry_after: Option<Duration>) {
        let now = Instant::now();
        self.record_failure_at(now);
        let Some(retry_after) = retry_after else {
            return;
        };
        let mut inner = self.lock();
        let until = now + retry_after;
        inner.state = match inner.state {
            State::Open {
                until: open,
                cooldown,
            } => State::Open {
                until: open.max(until),
                cooldown,
            },
            State::Closed { .. } | State::HalfOpen { .. } => State::Open {
                until,
                cooldown: self.settings.cooldown,
            },
        };
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.lock().state, State::Closed { .. })
    }

    /// When an open breaker lets its next probe through; None when closed or a
    /// probe is already out.
    pub fn reopens_at(&self) -> Option<Instant> {
        match self.lock().state {
            State::Open { until, .. } => Some(until),
            State::Closed { .. } | State::HalfOpen { .. } => None,
        }
    }

    fn try_acquire_at(&self, now: Instant) -> bool {
        let mut inner = self.lock();
        match inner.state {
            State::Closed { .. } => true,
            State::Open { until, cooldown } if now >= until => {
                inner.state = State::HalfOpen {
                    cooldown,
                    since: now,
                };
                true
            }
            State::HalfOpen { cooldown, since } if now >= since + cooldown => {
                inner.state = State::HalfOpen {
                    cooldown,
                    since: now,
                };
                true
            }
            State::Open { .. } | State::HalfOpen { .. } => false,
        }
    }

    fn record_failure_at(&self, now: Instant) {
        let settings = self.settings;
        let mut inner = self.lock();
        let rate_exceeded = self.remember(&mut inner, true);
        inner.state = match inner.state {
            State::Closed { failures } if failures + 1 < settings.threshold && !rate_exceeded => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            State::Closed { .. } => {
                // Opening starts a fresh window: the old outcomes led here already.
                inner.recent.clear();
                State::Open {
                    until: now + settings.cooldown,
                    cooldown: settings.cooldown,
                }
            }
            // The probe failed (or a call that was out when the breaker opened):
            // stay away twice as long.
            State::HalfOpen { cooldown, .. } | State::Open { cooldown, .. } => {
                let cooldown = (cooldown * 2).min(settings.max_cooldown);
                State::Open {
                    until: now + cooldown,
                    cooldown,
                }
            }
        };
    }

    /// Records an outcome; whether the failure share over a full window reached
    /// the configured rate.
    fn remember(&self, inner: &mut Inner, failed: bool) -> bool {
        let window = self.settings.window;
        if window == 0 {
            return false;
        }
        if inner.recent.len() == window {
            inner.recent.pop_front();
        }
        inner.recent.push_back(failed);
        let failures = inner.recent.iter().filter(|failed| **failed).count();
        inner.recent.len() == window && failures as f64 >= self.settings.error_rate * window as f64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is plain values: a panic elsewhere cannot leave it half-written.
        self.inner
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
            window: 0,
            error_rate: 1.0,
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
        let lost = after + Duration::from_secs(10);
        assert!(
            breaker.try_acquire_at(lost),
            "a probe silent for a cooldown is presumed lost: another goes"
        );
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

    #[test]
    fn an_error_rate_over_a_full_window_opens_it_without_consecutive_failures() {
        let breaker = CircuitBreaker::new(BreakerSettings {
            threshold: 3,
            window: 10,
            error_rate: 0.5,
            ..BreakerSettings::default()
        });
        // Every other call fails: never 3 in a row, but half of all calls.
        for _ in 0..4 {
            breaker.record_failure();
            breaker.record_success();
        }
        assert!(!breaker.is_open(), "9 calls are not a full window yet");
        breaker.record_failure();
        assert!(!breaker.is_open(), "4 of the last 9 failed");
        breaker.record_success();
        breaker.record_failure();
        assert!(breaker.is_open(), "5 of the last 10 failed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_with_retry_after_keeps_calls_away_until_then() {
        let breaker = CircuitBreaker::new(BreakerSettings::default());
        breaker.record_throttle(Some(Duration::from_secs(30)));
        assert!(!breaker.try_acquire(), "asked to wait 30 s");
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!breaker.try_acquire());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(breaker.try_acquire(), "the probe after the wait");
        breaker.record_success();
        assert!(!breaker.is_open());
        // Without a hint, one throttle is one failure among the threshold.
        breaker.record_throttle(None);
        assert!(breaker.try_acquire());
    }
}
