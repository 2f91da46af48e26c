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
//! A call goes out only with a [`Permit`], and the permit is how it reports back:
//! [`Permit::succeeded`] or [`Permit::failed`] (which applies the one failure
//! policy, [`ErrorKind::counts_against_endpoint`]). A permit dropped without a
//! report (its caller was cancelled) is "lost": it says nothing about the
//! endpoint, except that a lost probe reopens the breaker until the probe's
//! cooldown ends, so a half-open breaker is never left waiting for a verdict.
//!
//! Time is tokio's clock, so tests can pause it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, ErrorKind};

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
    /// A probe is out; everyone else waits for its verdict. A lost probe reopens
    /// the breaker; one silent for a cooldown (its permit leaked) is presumed lost.
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
    /// A throttled endpoint asked for no calls before then (its `retry-after`).
    /// Unlike an open state it ends without a probe: the endpoint said when.
    not_before: Option<Instant>,
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
                not_before: None,
            }),
        }
    }

    /// A permit for one call, when one may go out now. Past the cooldown of an
    /// open breaker, the first caller's permit is the probe and the breaker turns
    /// half-open.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let probe = self.try_acquire_at(Instant::now())?;
        Some(Permit {
            breaker: Arc::clone(self),
            probe,
            reported: false,
        })
    }

    fn record_success(&self) {
        let mut inner = self.lock();
        inner.state = State::Closed { failures: 0 };
        inner.not_before = None;
        self.remember(&mut inner, false);
    }

    /// Counts a failure of the endpoint (not of the caller's input).
    fn record_failure(&self) {
        self.record_failure_at(Instant::now());
    }

    /// Counts a throttle: a failure, and when the endpoint said how long to wait,
    /// no call goes out before then (the cooldown itself is not doubled for it).
    fn record_throttle(&self, retry_after: Option<Duration>) {
        let now = Instant::now();
        self.record_failure_at(now);
        let Some(retry_after) = retry_after else {
            return;
        };
        let mut inner = self.lock();
        let until = crate::time_caps::later(now, retry_after);
        inner.not_before = Some(
            inner
                .not_before
                .map_or(until, |not_before| not_before.max(until)),
        );
        if let State::Open {
            until: open,
            cooldown,
        } = inner.state
        {
            inner.state = State::Open {
                until: open.max(until),
                cooldown,
            };
        }
    }

    /// Refuses calls until `until` without counting a failure: another replica saw
    /// this endpoint throttled or its breaker open (`[shared_state]` cooldowns). Like
    /// a throttle's `retry-after`, it ends without a probe; a later one never
    /// shortens an earlier one.
    pub fn hold_open_until(&self, until: Instant) {
        let mut inner = self.lock();
        inner.not_before = Some(
            inner
                .not_before
                .map_or(until, |not_before| not_before.max(until)),
        );
    }

    /// A permit dropped without a verdict: only a probe's loss changes the state.
    fn record_lost(&self, probe: bool) {
        if !probe {
            return;
        }
        let mut inner = self.lock();
        if let State::HalfOpen { cooldown, since } = inner.state {
            inner.state = State::Open {
                until: since + cooldown,
                cooldown,
            };
        }
    }

    /// Refusing calls now: open, a probe out, or asked by the endpoint to wait.
    pub fn is_open(&self) -> bool {
        let inner = self.lock();
        !matches!(inner.state, State::Closed { .. })
            || inner.not_before.is_some_and(|at| at > Instant::now())
    }

    /// When an open (or throttled) breaker lets its next call through; None when
    /// closed or a probe is already out.
    pub fn reopens_at(&self) -> Option<Instant> {
        let inner = self.lock();
        match inner.state {
            State::Open { until, .. } => Some(inner.not_before.map_or(until, |at| at.max(until))),
            State::Closed { .. } => inner.not_before.filter(|at| *at > Instant::now()),
            State::HalfOpen { .. } => None,
        }
    }

    /// Whether a call may go out at `now`: None if not, else whether it is the probe.
    fn try_acquire_at(&self, now: Instant) -> Option<bool> {
        let mut inner = self.lock();
        if inner.not_before.is_some_and(|at| now < at) {
            return None;
        }
        match inner.state {
            State::Closed { .. } => Some(false),
            State::Open { until, cooldown } if now >= until => {
                inner.state = State::HalfOpen {
                    cooldown,
                    since: now,
                };
                Some(true)
            }
            State::HalfOpen { cooldown, since } if now >= since + cooldown => {
                inner.state = State::HalfOpen {
                    cooldown,
                    since: now,
                };
                Some(true)
            }
            State::Open { .. } | State::HalfOpen { .. } => None,
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

/// The right to make one call past the breaker, and the duty to say how it went.
/// Dropped without [`succeeded`](Permit::succeeded) or [`failed`](Permit::failed),
/// the call counts as lost (see the module doc).
#[must_use = "a permit reports the call's outcome; dropped, the call counts as lost"]
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    /// This call is the half-open breaker's probe.
    probe: bool,
    reported: bool,
}

impl Permit {
    /// The endpoint answered.
    pub fn succeeded(mut self) {
        self.reported = true;
        self.breaker.record_success();
    }

    /// The call failed with `error`: the endpoint is blamed only when the failure
    /// policy says it is its failure, and a throttle's `retry_after` is honoured.
    pub fn failed(mut self, error: &Error) {
        self.reported = true;
        if error.local_refusal || !error.kind.counts_against_endpoint() {
            // It answered, if only to refuse this request (or skyfuse itself refused it
            // for its own load, which says nothing of the endpoint): it is up.
            self.breaker.record_success();
            return;
        }
        match error.kind {
            ErrorKind::Throttled => self.breaker.record_throttle(error.retry_after),
            _ => self.breaker.record_failure(),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.record_lost(self.probe);
        }
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
        assert!(
            breaker.try_acquire_at(now).is_some(),
            "one failure since the success"
        );
        breaker.record_failure_at(now);
        assert!(
            breaker
                .try_acquire_at(now + Duration::from_secs(9))
                .is_none()
        );
    }

    #[test]
    fn half_open_lets_one_probe_through_and_its_verdict_decides() {
        let breaker = breaker();
        let now = Instant::now();
        breaker.record_failure_at(now);
        breaker.record_failure_at(now);
        let after = now + Duration::from_secs(10);
        assert!(breaker.try_acquire_at(after).is_some(), "the probe");
        assert!(
            breaker.try_acquire_at(after).is_none(),
            "only one probe at a time"
        );
        let lost = after + Duration::from_secs(10);
        assert!(
            breaker.try_acquire_at(lost).is_some(),
            "a probe silent for a cooldown is presumed lost: another goes"
        );
        breaker.record_success();
        assert!(breaker.try_acquire_at(after).is_some() && !breaker.is_open());
    }

    #[test]
    fn a_failed_probe_doubles_the_cooldown_up_to_the_maximum() {
        let breaker = breaker();
        let now = Instant::now();
        breaker.record_failure_at(now);
        breaker.record_failure_at(now);
        let probe = now + Duration::from_secs(10);
        assert!(breaker.try_acquire_at(probe).is_some());
        breaker.record_failure_at(probe);
        assert!(
            breaker
                .try_acquire_at(probe + Duration::from_secs(19))
                .is_none()
        );
        let second_probe = probe + Duration::from_secs(20);
        assert!(breaker.try_acquire_at(second_probe).is_some());
        breaker.record_failure_at(second_probe);
        assert!(
            breaker
                .try_acquire_at(second_probe + Duration::from_secs(29))
                .is_none()
        );
        assert!(
            breaker
                .try_acquire_at(second_probe + Duration::from_secs(30))
                .is_some()
        );
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
        let breaker = Arc::new(CircuitBreaker::new(BreakerSettings::default()));
        breaker.record_throttle(Some(Duration::from_secs(30)));
        assert!(breaker.try_acquire().is_none(), "asked to wait 30 s");
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(breaker.try_acquire().is_none());
        tokio::time::advance(Duration::from_secs(1)).await;
        breaker
            .try_acquire()
            .expect("the call after the wait")
            .succeeded();
        assert!(!breaker.is_open());
        // Without a hint, one throttle is one failure among the threshold.
        breaker.record_throttle(None);
        assert!(breaker.try_acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_below_the_threshold_pauses_without_a_probe_afterwards() {
        let breaker = Arc::new(CircuitBreaker::new(BreakerSettings::default()));
        breaker
            .try_acquire()
            .unwrap()
            .failed(&Error::throttled("429", Some(Duration::from_secs(1))));
        assert!(breaker.is_open());
        tokio::time::advance(Duration::from_secs(1)).await;
        let first = breaker.try_acquire().expect("the wait is over");
        let second = breaker.try_acquire();
        assert!(second.is_some(), "closed again: not one probe at a time");
        first.failed(&Error::unavailable("503"));
        assert!(!breaker.is_open(), "two failures of three");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_of_the_request_is_not_counted_against_the_endpoint() {
        let breaker = Arc::new(CircuitBreaker::new(BreakerSettings {
            threshold: 1,
            ..BreakerSettings::default()
        }));
        for kind in [
            ErrorKind::InvalidArgument,
            ErrorKind::ContextLength,
            ErrorKind::Forbidden,
            ErrorKind::Config,
            ErrorKind::Internal,
        ] {
            breaker
                .try_acquire()
                .unwrap()
                .failed(&Error::new(kind, "refused"));
            assert!(!breaker.is_open(), "{kind}");
        }
        breaker
            .try_acquire()
            .unwrap()
            .failed(&Error::new(ErrorKind::Auth, "401"));
        assert!(
            breaker.is_open(),
            "an endpoint refusing our key is its failure"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_is_lost_and_reopens_until_its_cooldown_ends() {
        let breaker = Arc::new(breaker());
        breaker.record_failure();
        breaker.record_failure();
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = breaker.try_acquire().expect("the probe");
        assert!(breaker.try_acquire().is_none(), "only one probe at a time");
        assert_eq!(breaker.reopens_at(), None, "a probe is out");
        drop(probe);
        assert_eq!(
            breaker.reopens_at(),
            Some(Instant::now() + Duration::from_secs(10)),
            "lost: open again, visibly, for the probe's cooldown"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        breaker.try_acquire().expect("the next probe").succeeded();
        assert!(!breaker.is_open());
        // A lost call that was not the probe says nothing about the endpoint.
        drop(breaker.try_acquire().unwrap());
        assert!(!breaker.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_from_another_replica_refuses_calls_until_it_ends_without_a_probe() {
        let breaker = Arc::new(breaker());
        let until = Instant::now() + Duration::from_secs(30);
        breaker.hold_open_until(until);
        breaker.hold_open_until(until - Duration::from_secs(20));
        assert!(breaker.is_open());
        assert_eq!(
            breaker.reopens_at(),
            Some(until),
            "a shorter hold does not shorten it"
        );
        assert!(breaker.try_acquire().is_none());
        tokio::time::advance(Duration::from_secs(30)).await;
        let permit = breaker.try_acquire().expect("the hold ended");
        assert!(!permit.probe, "no failure was counted: no probe needed");
        assert!(!breaker.is_open());
    }
}
