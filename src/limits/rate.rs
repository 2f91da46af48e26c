//! Per-caller rate limits: requests per minute and tokens per minute, each a GCRA
//! cell (the "generic cell rate algorithm": one timestamp per caller and limit, the
//! theoretical arrival time, instead of a token count refilled by a timer).
//!
//! A limit of `n` per minute lets a caller spend one unit every `60 s / n`, with a
//! burst of the whole minute: an idle caller may use all `n` at once, then one more
//! every `60 s / n`. Tokens are charged up front (the prompt estimate plus the
//! output asked for) and the unused part can be given back when the call ends
//! ([`RateLimiter::refund_tokens`]).
//!
//! Keyed by the caller's id. Anonymous callers share the one key `anonymous`: the
//! server is anonymous only on loopback (or when the operator says so), a peer
//! address is not known at the service seam, and one shared key keeps the map
//! bounded. The map is swept of callers whose cells are full again when it grows
//! past [`SWEEP_ABOVE_CALLERS`], so many distinct ids (OIDC subjects) cost memory
//! only while they are active.
//!
//! Times come from tokio's clock, so tests drive it with a paused clock.
//!
//! With `[shared_state]`, [`RateLimiter::admit_shared`] runs the same cells in
//! Redis (timed by Redis's clock) so every replica counts against one limit; the
//! in-process cells then serve only while Redis is unreachable and rate limits
//! fail open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{FailMode, LimitsConfig};
use crate::error::Error;
use crate::state::{RateCell, RateSubject, SharedState, StateKind};

/// The window every limit is stated over.
const PERIOD: Duration = Duration::from_secs(60);

/// Above this many tracked callers, an admission first drops the idle ones.
const SWEEP_ABOVE_CALLERS: usize = 4096;

/// What one caller (or one deployment, as its quota) may use per minute; None: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

/// Where a caller stands against one limit, as OpenAI's `x-ratelimit-*` headers say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Units per minute.
    pub limit: u64,
    /// Units that could be used right now.
    pub remaining: u64,
    /// Until the caller is back to the whole `limit`.
    pub reset: Duration,
}

/// Where a caller stands after an admission; a None part is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitStatus {
    pub requests: Option<Quota>,
    pub tokens: Option<Quota>,
}

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    Requests,
    Tokens,
}

impl RateKind {
    pub fn noun(self) -> &'static str {
        match self {
            RateKind::Requests => "requests",
            RateKind::Tokens => "tokens",
        }
    }
}

/// A refused admission: nothing was charged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub kind: RateKind,
    /// When the same call would fit; None: it never fits (it asks for more tokens
    /// than a whole minute allows).
    pub retry_after: Option<Duration>,
    /// What the call asked for, and the limit it met.
    pub asked: u64,
    pub limit: u64,
    /// Where the caller stands (unchanged by the refusal).
    pub status: RateLimitStatus,
}

impl Limited {
    /// `RESOURCE_EXHAUSTED` with `retry-after` (HTTP 429), or `INVALID_ARGUMENT` for
    /// a call that can never fit.
    pub fn into_error(self) -> Error {
        let noun = self.kind.noun();
        match self.retry_after {
            Some(wait) => {
                // Whole seconds, rounded up: retrying at the hint must succeed.
                let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
                Error::rate_limited(
                    format!(
                        "rate limit: over {} {noun} per minute (limits.{noun}_per_minute); retry in {seconds} s",
                        self.limit
                    ),
                    Duration::from_secs(seconds),
                )
            }
            None => Error::invalid(format!(
                "this call may use {} {noun}, more than the {} per minute its caller is allowed (limits.{noun}_per_minute)",
                self.asked, self.limit
            )),
        }
    }
}

/// One GCRA cell: `tat` is when the cell would be full again, in nanoseconds
/// since the limiter's epoch; at or before now means full.
#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    tat: u128,
}

impl Cell {
    /// Nanoseconds one unit costs under `limit` per minute (at least 1).
    fn interval(limit: u64) -> u128 {
        (PERIOD.as_nanos() / u128::from(limit.max(1))).max(1)
    }

    /// Where the next `units` would move `tat`, or the refusal.
    fn check(&self, now: u128, units: u64, limit: u64) -> Result<u128, Option<Duration>> {
        let period = PERIOD.as_nanos();
        let cost = u128::from(units).saturating_mul(Self::interval(limit));
        if cost > period {
            return Err(None);
        }
        let next = self.tat.max(now).saturating_add(cost);
        let ahead = next - now;
        if ahead > period {
            return Err(Some(nanos(ahead - period)));
        }
        Ok(next)
    }

    fn quota(&self, now: u128, limit: u64) -> Quota {
        let ahead = self.tat.saturating_sub(now);
        let free = PERIOD.as_nanos().saturating_sub(ahead);
        let remaining = (free / Self::interval(limit)).min(u128::from(limit));
        Quota {
            limit,
            remaining: u64::try_from(remaining).unwrap_or(limit),
            reset: nanos(ahead),
        }
    }
}

fn nanos(value: u128) -> Duration {
    Duration::from_nanos(u64::try_from(value).unwrap_or(u64::MAX))
}

#[derive(Debug, Clone, Copy, Default)]
struct CallerCells {
    requests: Cell,
    tokens: Cell,
}

/// Rate limits for every caller: a default and overrides by id.
#[derive(Debug)]
pub struct RateLimiter {
    defaults: RateLimits,
    overrides: HashMap<String, RateLimits>,
    epoch: Instant,
    cells: Mutex<HashMap<String, CallerCells>>,
    /// Where replicas count together; in process: these cells alone.
    shared: SharedState,
    /// What the ids name, which keeps their shared cells apart.
    scope: RateScope,
}

/// What a limiter's ids name: callers (`[limits]`), or deployments (each one's
/// quota at its provider, `[[deployment]] requests_per_minute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateScope {
    Callers,
    Deployments,
}

/// Why a call was not admitted.
#[derive(Debug, Clone)]
pub enum RateRefusal {
    /// Over a limit.
    Limited(Limited),
    /// Redis did not answer and rate limits fail closed (`UNAVAILABLE`).
    Unavailable(Error),
}

impl RateRefusal {
    /// Where the caller stands, when known.
    pub fn status(&self) -> Option<RateLimitStatus> {
        match self {
            RateRefusal::Limited(limited) => Some(limited.status),
            RateRefusal::Unavailable(_) => None,
        }
    }

    pub fn into_error(self) -> Error {
        match self {
            RateRefusal::Limited(limited) => limited.into_error(),
            RateRefusal::Unavailable(error) => error,
        }
    }
}

impl RateLimiter {
    /// The limits `[limits]` describes.
    pub fn from_config(config: &LimitsConfig) -> Self {
        let defaults = RateLimits {
            requests_per_minute: config.requests_per_minute.map(u64::from),
            tokens_per_minute: config.tokens_per_minute,
        };
        let overrides = config
            .callers
            .iter()
            .map(|caller| {
                let limits = RateLimits {
                    requests_per_minute: caller
                        .requests_per_minute
                        .map(u64::from)
                        .or(defaults.requests_per_minute),
                    tokens_per_minute: caller.tokens_per_minute.or(defaults.tokens_per_minute),
                };
                (caller.id.clone(), limits)
            })
            .collect();
        Self::new(defaults, overrides)
    }

    pub fn new(defaults: RateLimits, overrides: HashMap<String, RateLimits>) -> Self {
        Self {
            defaults,
            overrides,
            epoch: Instant::now(),
            cells: Mutex::new(HashMap::new()),
            shared: SharedState::InProcess,
            scope: RateScope::Callers,
        }
    }

    /// Deployments' quotas at their providers, by deployment label; a deployment
    /// without one is unlimited.
    pub fn for_deployments(quotas: HashMap<String, RateLimits>) -> Self {
        Self {
            scope: RateScope::Deployments,
            ..Self::new(RateLimits::default(), quotas)
        }
    }

    fn subject<'a>(&self, id: &'a str) -> RateSubject<'a> {
        match self.scope {
            RateScope::Callers => RateSubject::Caller(id),
            RateScope::Deployments => RateSubject::Deployment(id),
        }
    }

    /// Counts across replicas through `shared` ([`RateLimiter::admit_shared`]).
    pub fn sharing(mut self, shared: SharedState) -> Self {
        self.shared = shared;
        self
    }

    /// [`RateLimiter::admit`] across every replica when the state is shared (one
    /// Redis round trip, skipped for unlimited callers); in process otherwise, and
    /// while Redis is unreachable and rate limits fail open.
    pub async fn admit_shared(
        &self,
        caller_id: &str,
        requests: u64,
        tokens: u64,
    ) -> Result<RateLimitStatus, RateRefusal> {
        let limits = self.limits(caller_id);
        let Some(store) = self.shared.redis() else {
            return self
                .admit(caller_id, requests, tokens)
                .map_err(RateRefusal::Limited);
        };
        if limits == RateLimits::default() {
            return Ok(RateLimitStatus::default());
        }
        let cells = [
            shared_cell(limits.requests_per_minute, requests),
            shared_cell(limits.tokens_per_minute, tokens),
        ];
        let verdict = match store
            .admit_rate(self.subject(caller_id), cells, PERIOD)
            .await
        {
            Ok(verdict) => verdict,
            Err(error) => {
                return match store.fail_mode(StateKind::RateLimits) {
                    FailMode::Open => self
                        .admit(caller_id, requests, tokens)
                        .map_err(RateRefusal::Limited),
                    FailMode::Closed => Err(RateRefusal::Unavailable(
                        store.unavailable(StateKind::RateLimits, &error),
                    )),
                };
            }
        };
        let quota = |limit: Option<u64>, ahead: Duration| {
            limit.map(|limit| {
                let interval =
                    Duration::from_nanos(u64::try_from(Cell::interval(limit)).unwrap_or(u64::MAX));
                let free = PERIOD.saturating_sub(ahead);
                Quota {
                    limit,
                    remaining: u64::try_from(free.as_nanos() / interval.as_nanos().max(1))
                        .unwrap_or(limit)
                        .min(limit),
                    reset: ahead,
                }
            })
        };
        let status = RateLimitStatus {
            requests: quota(limits.requests_per_minute, verdict.ahead[0]),
            tokens: quota(limits.tokens_per_minute, verdict.ahead[1]),
        };
        if verdict.admitted {
            return Ok(status);
        }
        let (kind, asked, limit) = match verdict.refused_cell {
            Some(1) => (RateKind::Tokens, tokens, limits.tokens_per_minute),
            _ => (RateKind::Requests, requests, limits.requests_per_minute),
        };
        Err(RateRefusal::Limited(Limited {
            kind,
            retry_after: verdict.retry_after,
            asked,
            limit: limit.unwrap_or(0),
            status,
        }))
    }

    /// [`RateLimiter::refund_tokens_shared`] from code that cannot wait (the end of an
    /// answer's stream): at once in process, on a task when it is a Redis round trip.
    pub fn refund_tokens_soon(self: &Arc<Self>, caller_id: &str, tokens: u64) {
        if self.shared.redis().is_none() {
            return self.refund_tokens(caller_id, tokens);
        }
        let (limiter, caller_id) = (Arc::clone(self), caller_id.to_string());
        tokio::spawn(async move { limiter.refund_tokens_shared(&caller_id, tokens).await });
    }

    /// [`RateLimiter::refund_tokens`] where [`RateLimiter::admit_shared`] charged them.
    pub async fn refund_tokens_shared(&self, caller_id: &str, tokens: u64) {
        let Some(store) = self.shared.redis() else {
            return self.refund_tokens(caller_id, tokens);
        };
        let Some(limit) = self.limits(caller_id).tokens_per_minute else {
            return;
        };
        let back = shared_cell(Some(limit), tokens);
        let refund = Duration::from_micros(back.units.saturating_mul(back.interval_us));
        if let Err(error) = store
            .refund_rate_tokens(self.subject(caller_id), refund)
            .await
        {
            // Not given back: the caller waits a little longer than it should.
            tracing::debug!(%error, "could not refund rate-limit tokens");
            self.refund_tokens(caller_id, tokens);
        }
    }

    /// Whether any caller has a limit at all.
    pub fn is_unlimited(&self) -> bool {
        self.defaults == RateLimits::default()
            && self
                .overrides
                .values()
                .all(|limits| *limits == RateLimits::default())
    }

    /// The limits that apply to `caller_id`.
    pub fn limits(&self, caller_id: &str) -> RateLimits {
        self.overrides
            .get(caller_id)
            .copied()
            .unwrap_or(self.defaults)
    }

    /// Counts one request of `caller_id`, or refuses it.
    pub fn admit_request(&self, caller_id: &str) -> Result<RateLimitStatus, Limited> {
        self.admit(caller_id, 1, 0)
    }

    /// Charges `tokens` to `caller_id`, or refuses them.
    pub fn admit_tokens(&self, caller_id: &str, tokens: u64) -> Result<RateLimitStatus, Limited> {
        self.admit(caller_id, 0, tokens)
    }

    /// Counts `requests` and `tokens` together: both fit and are charged, or
    /// neither is.
    pub fn admit(
        &self,
        caller_id: &str,
        requests: u64,
        tokens: u64,
    ) -> Result<RateLimitStatus, Limited> {
        let limits = self.limits(caller_id);
        let now = self.now();
        let mut cells = self.lock();
        if cells.len() > SWEEP_ABOVE_CALLERS {
            cells.retain(|_, cell| cell.requests.tat > now || cell.tokens.tat > now);
        }
        let cell = cells.entry(caller_id.to_string()).or_default();
        let refuse = |kind, retry_after, asked, limit, cell: &CallerCells| Limited {
            kind,
            retry_after,
            asked,
            limit,
            status: status(cell, limits, now),
        };
        let mut next = *cell;
        if let Some(limit) = limits.requests_per_minute
            && requests > 0
        {
            next.requests.tat = cell
                .requests
                .check(now, requests, limit)
                .map_err(|wait| refuse(RateKind::Requests, wait, requests, limit, cell))?;
        }
        if let Some(limit) = limits.tokens_per_minute
            && tokens > 0
        {
            next.tokens.tat = cell
                .tokens
                .check(now, tokens, limit)
                .map_err(|wait| refuse(RateKind::Tokens, wait, tokens, limit, cell))?;
        }
        *cell = next;
        Ok(status(cell, limits, now))
    }

    /// Gives back tokens charged but not used (the output a call asked for and
    /// did not produce).
    pub fn refund_tokens(&self, caller_id: &str, tokens: u64) {
        let Some(limit) = self.limits(caller_id).tokens_per_minute else {
            return;
        };
        if let Some(cell) = self.lock().get_mut(caller_id) {
            let back = u128::from(tokens).saturating_mul(Cell::interval(limit));
            cell.tokens.tat = cell.tokens.tat.saturating_sub(back);
        }
    }

    /// Where `caller_id` stands, charging nothing.
    pub fn status(&self, caller_id: &str) -> RateLimitStatus {
        let limits = self.limits(caller_id);
        let now = self.now();
        let cell = self.lock().get(caller_id).copied().unwrap_or_default();
        status(&cell, limits, now)
    }

    fn now(&self) -> u128 {
        Instant::now().duration_since(self.epoch).as_nanos()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CallerCells>> {
        // Plain timestamps: a panic elsewhere cannot leave them half-written.
        self.cells
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A cell of the Redis script: `units` against `limit` per minute (None: unlimited).
fn shared_cell(limit: Option<u64>, units: u64) -> RateCell {
    RateCell {
        units,
        interval_us: limit.map_or(0, |limit| {
            u64::try_from(PERIOD.as_micros() / u128::from(limit.max(1)))
                .unwrap_or(u64::MAX)
                .max(1)
        }),
    }
}

fn status(cell: &CallerCells, limits: RateLimits, now: u128) -> RateLimitStatus {
    RateLimitStatus {
        requests: limits
            .requests_per_minute
            .map(|limit| cell.requests.quota(now, limit)),
        tokens: limits
            .tokens_per_minute
            .map(|limit| cell.tokens.quota(now, limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn limiter(requests: Option<u64>, tokens: Option<u64>) -> RateLimiter {
        RateLimiter::new(
            RateLimits {
                requests_per_minute: requests,
                tokens_per_minute: tokens,
            },
            HashMap::new(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_gets_its_burst_then_one_request_per_interval() {
        let limiter = limiter(Some(3), None);
        for left in [2, 1, 0] {
            let status = limiter.admit_request("a").unwrap();
            assert_eq!(status.requests.unwrap().remaining, left);
        }
        let refused = limiter.admit_request("a").unwrap_err();
        assert_eq!(refused.kind, RateKind::Requests);
        // One request every 20 s: the next fits 20 s after the first.
        assert_eq!(refused.retry_after, Some(Duration::from_secs(20)));
        assert_eq!(
            refused.status.requests.unwrap().reset,
            Duration::from_secs(60)
        );
        tokio::time::advance(Duration::from_secs(19)).await;
        assert!(limiter.admit_request("a").is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limiter.admit_request("a").is_ok());
        assert!(limiter.admit_request("a").is_err());
        // Idle for a minute: the whole burst is back.
        tokio::time::advance(PERIOD).await;
        assert_eq!(limiter.status("a").requests.unwrap().remaining, 3);
        assert_eq!(limiter.status("a").requests.unwrap().reset, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn callers_are_counted_apart_and_overrides_win() {
        let limiter = RateLimiter::new(
            RateLimits {
                requests_per_minute: Some(1),
                tokens_per_minute: None,
            },
            HashMap::from([(
                "big".to_string(),
                RateLimits {
                    requests_per_minute: Some(100),
                    tokens_per_minute: None,
                },
            )]),
        );
        assert!(limiter.admit_request("a").is_ok());
        assert!(limiter.admit_request("a").is_err());
        assert!(limiter.admit_request("b").is_ok(), "b is not a's");
        for _ in 0..100 {
            assert!(limiter.admit_request("big").is_ok());
        }
        assert!(limiter.admit_request("big").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_weighted_refunded_and_never_half_charged() {
        let limiter = limiter(Some(10), Some(1000));
        assert_eq!(
            limiter
                .admit("a", 1, 600)
                .unwrap()
                .tokens
                .unwrap()
                .remaining,
            400
        );
        // 600 more tokens do not fit: the request is not counted either.
        let refused = limiter.admit("a", 1, 600).unwrap_err();
        assert_eq!(refused.kind, RateKind::Tokens);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(12)));
        assert_eq!(limiter.status("a").requests.unwrap().remaining, 9);
        // The call used 100 of its 600: 500 come back.
        limiter.refund_tokens("a", 500);
        assert_eq!(limiter.status("a").tokens.unwrap().remaining, 900);
        assert!(limiter.admit("a", 1, 600).is_ok());
        // More than a minute's worth never fits, and says so.
        let never = limiter.admit_tokens("b", 1001).unwrap_err();
        assert_eq!(never.retry_after, None);
        let error = never.into_error();
        assert_eq!(error.kind, ErrorKind::InvalidArgument);
        assert!(
            error.message.contains("1001") && error.message.contains("1000"),
            "{error}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_throttled_with_a_whole_second_retry_hint() {
        let limiter = limiter(Some(1), None);
        limiter.admit_request("a").unwrap();
        let error = limiter.admit_request("a").unwrap_err().into_error();
        assert_eq!(error.kind, ErrorKind::Throttled);
        assert_eq!(error.retry_after, Some(Duration::from_secs(60)));
        assert!(
            error.message.contains("limits.requests_per_minute"),
            "{error}"
        );
        assert!(limiter.status("a").tokens.is_none(), "tokens are unlimited");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_callers_are_swept_when_the_map_grows() {
        let limiter = limiter(Some(1), None);
        for caller in 0..=SWEEP_ABOVE_CALLERS {
            limiter.admit_request(&caller.to_string()).unwrap();
        }
        tokio::time::advance(PERIOD).await;
        limiter.admit_request("last").unwrap();
        assert_eq!(limiter.lock().len(), 1);
    }
}
