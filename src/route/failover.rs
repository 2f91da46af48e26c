//! The attempt loop and the stream after it.
//!
//! Candidates are tried in plan order, each under its own timeout inside the
//! request deadline. An attempt has started only when the first token arrived
//! (the first upstream read is forced, so connection errors, exception frames and
//! zero-token answers all fail over). What to do after an error is the one failure
//! policy on [`ErrorKind`] ([`ErrorKind::failover`], and the breaker's
//! [`Permit::failed`]). Once a token went out, there is no failover: a later
//! failure is an in-band [`RouteEvent::Failed`], never a clean end.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout_at};

use super::plan::{Plan, Skip};
use super::{Caller, Candidate, Deployment, Router};
use crate::breaker::Permit;
use crate::error::{Error, ErrorKind, Failover, Result};
use crate::limits::{RateLimiter, RateLimits, RateRefusal};
use crate::llm::prompt::{estimate_tokens, request_tokens};
use crate::llm::{ChatEvent, ChatMessage, ChatRequest, ProviderInfo, Role, Usage};
use crate::state::{BudgetRefusal, Reservation, until_next_day};
use crate::telemetry::spans;
use crate::telemetry::trace::{self, ChildSpan};
use crate::time_caps;

#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    /// Produced its first token (and the answer, unless a later event says otherwise).
    Ok,
    /// Failed before its first token, or after it (see the message).
    Failed(ErrorKind),
    /// Not sent: its circuit was open, or the caller's budget could not cover it.
    Skipped,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// The provider id from the config.
    pub provider: Arc<str>,
    /// `provider/deployment`.
    pub deployment: Arc<str>,
    pub model: Arc<str>,
    pub cloud: Arc<str>,
    pub region: Arc<str>,
    pub outcome: AttemptOutcome,
    pub message: String,
    pub took: Duration,
}

/// A candidate of the plan, as the response shows it (its names shared with the
/// deployment's labels).
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateView {
    pub deployment: Arc<str>,
    pub model: Arc<str>,
    pub cloud: Arc<str>,
    pub region: Arc<str>,
    pub dedicated: bool,
    pub max_cost_usd: Option<f64>,
    pub why: String,
}

/// Where a request went and what it cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteSummary {
    /// The deployment that answered, once one produced a token (shared with the
    /// route's deployment: a summary per call, not a copy of its strings).
    pub chosen: Option<Arc<ProviderInfo>>,
    pub tier: Option<String>,
    pub candidates: Vec<CandidateView>,
    pub skipped: Vec<Skip>,
    pub attempts: Vec<Attempt>,
    pub usage: Usage,
    pub cost_usd: f64,
    pub finish_reason: String,
}

impl RouteSummary {
    /// Time spent waiting on deployments until the first token (or the last failure).
    pub fn attempts_time(&self) -> Duration {
        self.attempts.iter().map(|attempt| attempt.took).sum()
    }

    fn of(plan: &Plan) -> Self {
        Self {
            tier: plan.tier.clone(),
            candidates: plan
                .candidates
                .iter()
                .map(|candidate| {
                    let names = candidate.deployment.labels();
                    CandidateView {
                        deployment: names.deployment.clone(),
                        model: names.model.clone(),
                        cloud: names.cloud.clone(),
                        region: names.region.clone(),
                        dedicated: candidate.deployment.info().dedicated,
                        max_cost_usd: candidate.max_cost_usd,
                        why: candidate.why.clone(),
                    }
                })
                .collect(),
            skipped: plan.skipped.clone(),
            ..Self::default()
        }
    }

    /// Attempts after the first that were sent: each one a failover.
    pub fn failover_count(&self) -> u32 {
        let sent = self
            .attempts
            .iter()
            .filter(|attempt| attempt.outcome != AttemptOutcome::Skipped)
            .count();
        sent.saturating_sub(1) as u32
    }
}

/// Nothing was produced: every candidate failed, was skipped, or an error stopped
/// the loop. The summary says what was tried.
#[derive(Debug, Clone)]
pub struct RouteFailure {
    pub error: Error,
    pub summary: Box<RouteSummary>,
}

#[derive(Debug, Clone)]
pub enum RouteEvent {
    Token(String),
    Done(Box<RouteSummary>),
    /// The stream broke after tokens went out; never followed by `Done`.
    Failed(Error, Box<RouteSummary>),
}

/// What a call's accounting needs of its request once planned: not the messages.
#[derive(Clone, Copy, Debug)]
struct RequestSize {
    /// The prompt's estimated tokens.
    prompt_tokens: u64,
    max_output_tokens: u32,
}

impl RequestSize {
    fn of(request: &ChatRequest) -> Self {
        Self {
            prompt_tokens: request_tokens(request),
            max_output_tokens: request.max_output_tokens,
        }
    }

    /// The most tokens the call can use: its prompt and all of its output.
    fn total(self) -> u64 {
        self.prompt_tokens + u64::from(self.max_output_tokens)
    }
}

/// A deployment produced its first token; the rest is still upstream.
pub struct Started {
    /// The answer's text so far: the first token, then what followed it.
    generated: String,
    stream: BoxStream<'static, Result<ChatEvent>>,
    deployment: Arc<Deployment>,
    /// The breaker's permit for this call, reported when the stream ends.
    permit: Option<Permit>,
    summary: RouteSummary,
    reservation: Option<Reservation>,
    /// Where the tokens charged to the deployment's quota and not used go back.
    quotas: Arc<RateLimiter>,
    quota_tokens: u64,
    size: RequestSize,
    inter_chunk: Duration,
    /// Longest wait for the client to take a chunk.
    send_timeout: Duration,
    deadline: Instant,
    /// Told how the call ended, finished or broken (see [`Started::on_finish`]).
    finish_hook: Option<FinishHook>,
    /// The answering attempt's trace span, ended with the stream.
    span: Option<ChildSpan>,
    /// Pumped on the caller's own task ([`Started::collect`]): dropped before the
    /// end, the call ends as one whose client left.
    collecting: bool,
    /// The call's end was accounted ([`Started::finished`]).
    ended: bool,
}

/// Called once with the summary a call ended with: its attempts, and its usage as
/// reported (or estimated when it broke).
pub type FinishHook = Box<dyn FnOnce(&RouteSummary) + Send>;

/// One request's way through its plan: what was tried, and what the next
/// candidate's turn depends on.
struct Attempts<'a> {
    router: &'a Router,
    caller: &'a Caller,
    plan: &'a Plan,
    request: &'a ChatRequest,
    /// The request's size, estimated once for every candidate.
    size: RequestSize,
    deadline: Instant,
    summary: RouteSummary,
    /// Attempts sent (skips are not sent).
    sent: usize,
    last_error: Option<Error>,
    /// A candidate was skipped because the caller's budget could not cover it.
    over_budget: bool,
    /// The soonest a candidate skipped for its quota has room again.
    quota_frees_in: Option<Duration>,
    /// After a context-length refusal, only longer windows are worth a try.
    context_floor: Option<u64>,
}

/// How one candidate's turn ended.
enum Turn {
    /// It produced its first token.
    Answered(FirstToken),
    /// Skipped or failed in a way that may pass: a later pass may try it again.
    RetryLater,
    /// Skipped or failed for this request: on to the next candidate.
    Next,
    /// The request itself failed: no other candidate is tried.
    Stop(Error),
}

/// What a candidate that answered hands to the stream.
struct FirstToken {
    first: String,
    stream: BoxStream<'static, Result<ChatEvent>>,
    deployment: Arc<Deployment>,
    permit: Permit,
    reservation: Option<Reservation>,
    /// Tokens charged to the deployment's quota, part of which goes back at the end.
    quota_tokens: u64,
    /// The attempt's trace span, ended with the stream.
    span: Option<ChildSpan>,
}

impl Router {
    /// Tries the plan's candidates until one produces a first token.
    pub async fn start(
        &self,
        caller: &Caller,
        plan: &Plan,
        request: &ChatRequest,
        deadline: Instant,
    ) -> std::result::Result<Started, RouteFailure> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut attempts = Attempts {
            router: self,
            caller,
            plan,
            request,
            size: RequestSize::of(request),
            deadline,
            summary: RouteSummary::of(plan),
            sent: 0,
            last_error: None,
            over_budget: false,
            quota_frees_in: None,
            context_floor: None,
        };
        // What this pass tries: every candidate, then those that may pass later.
        let mut pending: Vec<usize> = (0..plan.candidates.len()).collect();
        let mut pass = 0u32;
        loop {
            let mut retry_later = Vec::new();
            for &index in &pending {
                if attempts.exhausted() {
                    break;
                }
                match attempts.try_candidate(&plan.candidates[index]).await {
                    Turn::Answered(first_token) => return Ok(attempts.started(first_token)),
                    Turn::RetryLater => retry_later.push(index),
                    Turn::Next => {}
                    Turn::Stop(error) => return Err(self.failure(error, attempts.summary)),
                }
            }
            let Some(wake) = attempts.next_pass_at(&retry_later, pass) else {
                break;
            };
            sleep_until(wake).await;
            pending = retry_later;
            pass += 1;
        }
        let error = attempts.final_error();
        Err(self.failure(error, attempts.summary))
    }

    fn failure(&self, error: Error, summary: RouteSummary) -> RouteFailure {
        self.stats.failed_requests.fetch_add(1, Ordering::Relaxed);
        RouteFailure {
            error,
            summary: Box::new(summary),
        }
    }

    /// Holds the most this call can cost when the caller has a budget: Err(Ok) says
    /// why this candidate does not fit, Err(Err) stops the request (the shared
    /// budgets are unreachable and fail closed).
    async fn reserve(
        &self,
        caller: &Caller,
        max_cost_usd: Option<f64>,
    ) -> std::result::Result<Option<Reservation>, std::result::Result<String, Error>> {
        let Some(budget) = caller.budget_usd_per_day else {
            return Ok(None);
        };
        let Some(cost) = max_cost_usd else {
            return Err(Ok(format!(
                "no known price, and caller {:?} has a budget",
                caller.id
            )));
        };
        match self.budgets.reserve(&caller.id, budget, cost).await {
            Ok(reservation) => Ok(Some(reservation)),
            Err(BudgetRefusal::Over(balance)) => Err(Ok(format!(
                "over budget: ${:.4} spent and ${:.4} held of ${:.2} today; this call may cost ${cost:.4}",
                balance.spent_usd, balance.reserved_usd, balance.budget_usd
            ))),
            Err(BudgetRefusal::Unavailable(error)) => Err(Err(error)),
        }
    }

    /// Tells the other replicas to hold off `deployment` while its breaker does (a
    /// throttle's retry-after, or the breaker just opened).
    fn share_cooldown(&self, deployment: &Deployment) {
        let Some(store) = self.shared.redis() else {
            return;
        };
        if let Some(until) = deployment.breaker.reopens_at()
            && until > Instant::now()
        {
            store.publish_cooldown(&deployment.label(), until);
        }
    }

    /// When a failed candidate may be tried again: its breaker's reopening, or a
    /// short backoff for one still closed (a lone failure below the threshold).
    fn earliest_recovery(&self, plan: &Plan, failed: &[usize], pass: u32) -> Option<Instant> {
        let backoff = Duration::from_millis(100 * 2u64.pow(pass.min(6)));
        failed
            .iter()
            .map(|&index| {
                let breaker = &plan.candidates[index].deployment.breaker;
                breaker
                    .reopens_at()
                    .unwrap_or_else(|| Instant::now() + backoff)
            })
            .min()
    }
}

impl Attempts<'_> {
    /// No more attempts may be sent: the limit is reached or the deadline passed.
    fn exhausted(&self) -> bool {
        self.sent >= self.router.settings.max_attempts || Instant::now() >= self.deadline
    }

    /// Charges one request and `tokens` to the deployment's quota (across replicas
    /// when the state is shared) and says how many tokens it charged, or says why its
    /// turn ends: over quota it waits for a later pass, like a throttled deployment,
    /// without a call the provider would refuse. A deployment without a quota, or
    /// whose circuit is open (its probe goes uncounted), is not charged. Charged
    /// before the budget check, so a call the budget then refuses still counts one
    /// request against the quota (its tokens go back).
    async fn take_quota(
        &mut self,
        deployment: &Deployment,
        tokens: u64,
    ) -> std::result::Result<u64, Turn> {
        if deployment.quota == RateLimits::default() || deployment.breaker.is_open() {
            return Ok(0);
        }
        let refusal = match self
            .router
            .quotas
            .admit_shared(&deployment.label(), 1, tokens)
            .await
        {
            Ok(_) => return Ok(tokens),
            Err(RateRefusal::Unavailable(error)) => return Err(Turn::Stop(error)),
            Err(RateRefusal::Limited(limited)) => limited,
        };
        let noun = refusal.kind.noun();
        let (reason, turn) = match refusal.retry_after {
            Some(wait) => {
                self.quota_frees_in = Some(
                    self.quota_frees_in
                        .map_or(wait, |soonest| soonest.min(wait)),
                );
                let reason = format!(
                    "over its quota of {} {noun} per minute; room again in {} ms",
                    refusal.limit,
                    wait.as_millis()
                );
                (reason, Turn::RetryLater)
            }
            None => {
                let reason = format!(
                    "this call's {} {noun} exceed its whole quota of {} per minute",
                    refusal.asked, refusal.limit
                );
                (reason, Turn::Next)
            }
        };
        self.summary.attempts.push(skipped(deployment, reason));
        Err(turn)
    }

    /// One candidate's turn: skipped (context window, budget, open circuit), or
    /// sent under its own timeouts, with the outcome reported to its breaker.
    async fn try_candidate(&mut self, candidate: &Candidate) -> Turn {
        let settings = &self.router.settings;
        let deployment = &candidate.deployment;
        if let (Some(floor), Some(window)) = (self.context_floor, deployment.context_window)
            && window <= floor
        {
            self.summary.attempts.push(skipped(
                deployment,
                format!("its context window ({window}) is no longer than the one that refused the prompt"),
            ));
            return Turn::Next;
        }
        let asked = self.size.total();
        let quota_tokens = match self.take_quota(deployment, asked).await {
            Ok(charged) => charged,
            Err(refusal) => return refusal,
        };
        let reservation = match self
            .router
            .reserve(self.caller, candidate.max_cost_usd)
            .await
        {
            Ok(reservation) => reservation,
            Err(Ok(reason)) => {
                give_back_quota(&self.router.quotas, deployment, quota_tokens);
                self.over_budget = true;
                self.summary.attempts.push(skipped(deployment, reason));
                return Turn::Next;
            }
            Err(Err(unavailable)) => return Turn::Stop(unavailable),
        };
        let Some(permit) = deployment.breaker.try_acquire() else {
            give_back_quota(&self.router.quotas, deployment, quota_tokens);
            if let Some(reservation) = reservation {
                reservation.release();
            }
            self.summary.attempts.push(skipped(
                deployment,
                "circuit open: cooling down after failures".into(),
            ));
            return Turn::RetryLater;
        };
        self.sent += 1;
        let stats = &self.router.stats;
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        if self.sent > 1 {
            stats.failovers.fetch_add(1, Ordering::Relaxed);
        }
        let began = Instant::now();
        let attempt_deadline = self
            .deadline
            .min(began + Duration::from_millis(settings.attempt_timeout_ms));
        let first_token_by =
            attempt_deadline.min(began + Duration::from_millis(settings.first_token_timeout_ms));
        let span = spans::chat(
            deployment.info(),
            self.request.max_output_tokens,
            self.request.temperature,
        );
        let outcome = trace::run_in(
            span.as_ref(),
            timeout_at(
                first_token_by,
                first_token(deployment.clone(), self.request, attempt_deadline),
            ),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Error::timeout(format!(
                "no first token within {} ms",
                first_token_by.duration_since(began).as_millis()
            )))
        });
        let error = match outcome {
            Ok((first, stream)) => {
                self.summary.attempts.push(attempt(
                    deployment,
                    AttemptOutcome::Ok,
                    String::new(),
                    began,
                ));
                return Turn::Answered(FirstToken {
                    first,
                    stream,
                    deployment: deployment.clone(),
                    permit,
                    reservation,
                    quota_tokens,
                    span,
                });
            }
            Err(error) => error,
        };
        if let Some(span) = span {
            span.fail(error.kind.as_str(), &error.message);
            span.end();
        }
        // Nothing was produced: the hold and the quota's tokens go back whole.
        if let Some(reservation) = reservation {
            reservation.release();
        }
        give_back_quota(&self.router.quotas, deployment, quota_tokens);
        self.summary.attempts.push(attempt(
            deployment,
            AttemptOutcome::Failed(error.kind),
            error.message.clone(),
            began,
        ));
        tracing::warn!(deployment = %deployment.label(), %error, "attempt failed");
        permit.failed(&error);
        self.router.share_cooldown(deployment);
        let turn = match error.kind.failover() {
            Failover::Next => Turn::RetryLater,
            Failover::NextLongerContext => {
                let refused_at = deployment.context_window.unwrap_or(self.size.total());
                self.context_floor = Some(
                    self.context_floor
                        .map_or(refused_at, |floor| floor.max(refused_at)),
                );
                Turn::Next
            }
            Failover::Stop => return Turn::Stop(error),
        };
        self.last_error = Some(error);
        turn
    }

    /// Everything left is throttled or cooling: when to wake for another pass, if
    /// the earliest comes back soon and within the deadline.
    fn next_pass_at(&self, retry_later: &[usize], pass: u32) -> Option<Instant> {
        let settings = &self.router.settings;
        let wake = self
            .router
            .earliest_recovery(self.plan, retry_later, pass)?;
        let now = Instant::now();
        if self.sent >= settings.max_attempts
            || wake >= self.deadline
            || wake.duration_since(now) > Duration::from_millis(settings.max_retry_wait_ms)
        {
            return None;
        }
        Some(wake)
    }

    /// The answer goes on from the candidate that produced its first token.
    fn started(mut self, first_token: FirstToken) -> Started {
        let FirstToken {
            first,
            stream,
            deployment,
            permit,
            reservation,
            quota_tokens,
            span,
        } = first_token;
        self.summary.chosen = Some(Arc::clone(deployment.provider.info()));
        Started {
            generated: first,
            stream,
            deployment,
            permit: Some(permit),
            summary: self.summary,
            reservation,
            quotas: Arc::clone(&self.router.quotas),
            quota_tokens,
            size: self.size,
            inter_chunk: Duration::from_millis(self.router.settings.inter_chunk_timeout_ms),
            send_timeout: Duration::from_millis(self.router.settings.stream_send_timeout_ms),
            deadline: self.deadline,
            finish_hook: None,
            span,
            collecting: false,
            ended: false,
        }
    }

    /// Why nothing answered: the last failure, else why nothing was sent.
    fn final_error(&self) -> Error {
        let plan = self.plan;
        match &self.last_error {
            Some(error) if self.sent > 1 => Error {
                message: format!("all {} attempts failed; last: {}", self.sent, error.message),
                ..error.clone()
            },
            Some(error) => error.clone(),
            None if self.over_budget => Error::throttled(
                format!(
                    "caller {:?} has no daily budget left for this request",
                    self.caller.id
                ),
                Some(until_next_day()),
            ),
            None if self.quota_frees_in.is_some() => Error::rate_limited(
                "every deployment for this request is at its quota (requests or tokens per minute)",
                self.quota_frees_in.unwrap_or_default(),
            ),
            None if plan.candidates.is_empty() => Error::invalid(format!(
                "no deployment may serve this request: {}",
                plan.skipped
                    .iter()
                    .map(|skip| format!("{} ({})", skip.deployment, skip.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            None => {
                let retry_after = plan
                    .candidates
                    .iter()
                    .filter_map(|candidate| candidate.deployment.breaker.reopens_at())
                    .min()
                    .map(|at| at.saturating_duration_since(Instant::now()));
                Error {
                    retry_after,
                    ..Error::unavailable(
                        "every deployment for this request is cooling down after failures",
                    )
                }
            }
        }
    }
}

/// `request` with a deployment's stop sequences after the caller's, within the
/// fewest any provider takes (the caller's come first: they were asked for).
pub(super) fn with_deployment_stop(request: &ChatRequest, stop: &[String]) -> ChatRequest {
    let mut request = request.clone();
    for sequence in stop {
        if request.stop.len() < crate::llm::MAX_STOP_SEQUENCES && !request.stop.contains(sequence) {
            request.stop.push(sequence.clone());
        }
    }
    request
}

/// Sends the request and reads until the first non-empty text.
async fn first_token(
    deployment: Arc<Deployment>,
    request: &ChatRequest,
    attempt_deadline: Instant,
) -> Result<(String, BoxStream<'static, Result<ChatEvent>>)> {
    let with_stop;
    let request = if deployment.stop.is_empty() {
        request
    } else {
        with_stop = with_deployment_stop(request, &deployment.stop);
        &with_stop
    };
    let mut stream = deployment
        .provider
        .chat_stream(request, attempt_deadline.into_std())
        .await?;
    loop {
        match stream.next().await {
            Some(Ok(ChatEvent::Delta(text))) if !text.is_empty() => return Ok((text, stream)),
            Some(Ok(ChatEvent::Delta(_))) => {}
            Some(Ok(ChatEvent::Finish { reason, .. })) => {
                return Err(Error::unavailable(format!(
                    "finished ({}) without producing any text",
                    reason.as_str()
                )));
            }
            Some(Err(error)) => return Err(error),
            None => {
                return Err(Error::unavailable(
                    "the stream ended before the first token",
                ));
            }
        }
    }
}

impl Started {
    pub fn deployment(&self) -> &ProviderInfo {
        self.deployment.info()
    }

    /// The time spent on the attempts until this first token.
    pub fn attempts_time(&self) -> Duration {
        self.summary.attempts_time()
    }

    /// Runs `hook` with the summary the call ends with; its usage is the reported one
    /// when it finishes, our estimate of what was generated when it breaks or its
    /// client leaves. Not run when `self` is dropped before [`Started::into_events`].
    pub fn on_finish(&mut self, hook: impl FnOnce(&RouteSummary) + Send + 'static) {
        self.finish_hook = Some(Box::new(hook));
    }

    /// Streams the answer: the first token, in the channel at once (a server polling
    /// it sends it out with the response's headers), then the rest from a task:
    /// tokens, then `Done` or `Failed`. Dropping the receiver cancels the upstream
    /// call.
    pub fn into_events(self) -> mpsc::Receiver<RouteEvent> {
        let (sender, receiver) = mpsc::channel(64);
        // Cannot fail: the channel is empty and its receiver is here.
        let _ = sender.try_send(RouteEvent::Token(self.generated.clone()));
        tokio::spawn(async move {
            self.pump(&mut Sink::Channel(sender)).await;
        });
        receiver
    }

    /// The whole answer, read on the caller's own task (no task or channel of its
    /// own, for a client that waits for all of it): its text and summary, or the
    /// error that broke it after the first token. Dropped midway (its client went
    /// away), the call ends as a stream whose client left: the deployment was
    /// answering, and what it generated is charged by estimate.
    pub async fn collect(mut self) -> Result<(String, Box<RouteSummary>)> {
        self.collecting = true;
        let mut sink = Sink::Gather(None);
        let text = self.pump(&mut sink).await;
        match sink {
            Sink::Gather(Some(RouteEvent::Done(summary))) => Ok((text, summary)),
            Sink::Gather(Some(RouteEvent::Failed(error, _))) => Err(error),
            _ => Err(Error::internal("the answer ended without finishing")),
        }
    }

    /// Sends the answer's events after its first token to `sink` until it ends;
    /// returns its text.
    async fn pump(mut self, sink: &mut Sink) -> String {
        let max_text = max_text_bytes(self.size.max_output_tokens);
        loop {
            let wait_until = self
                .deadline
                .min(time_caps::later(Instant::now(), self.inter_chunk));
            let event = match timeout_at(wait_until, self.stream.next()).await {
                Ok(event) => event,
                Err(_) if wait_until == self.deadline => {
                    return self
                        .fail(
                            Error::timeout("the request deadline passed mid-answer"),
                            sink,
                        )
                        .await;
                }
                Err(_) => {
                    let error = Error::timeout(format!(
                        "the model went silent for {} ms mid-answer",
                        self.inter_chunk.as_millis()
                    ));
                    return self.fail(error, sink).await;
                }
            };
            match event {
                Some(Ok(ChatEvent::Delta(text))) => {
                    if text.is_empty() {
                        continue;
                    }
                    if self.generated.len().saturating_add(text.len()) > max_text {
                        let error = Error::unavailable(format!(
                            "the model sent more than {max_text} bytes of text for {} output tokens",
                            self.size.max_output_tokens
                        ));
                        return self.fail(error, sink).await;
                    }
                    self.generated.push_str(&text);
                    if !sink
                        .deliver(self.send_timeout, RouteEvent::Token(text))
                        .await
                    {
                        // The caller went away or stopped reading: dropping the
                        // stream cancels upstream. The deployment was producing:
                        // that is its verdict.
                        self.report_success();
                        self.settle_estimated();
                        return std::mem::take(&mut self.generated);
                    }
                }
                Some(Ok(ChatEvent::Finish { reason, usage })) => {
                    self.report_success();
                    let usage = match usage {
                        Some(reported) => self.believable(reported),
                        None => estimated_usage(self.size, &self.generated),
                    };
                    let cost = self.cost(&usage);
                    if let Some(reservation) = self.reservation.take() {
                        reservation.settle(cost);
                    }
                    self.summary.usage = usage;
                    self.summary.cost_usd = cost;
                    self.summary.finish_reason = reason.as_str().to_string();
                    self.finished();
                    // The call has ended: its summary goes out whole, not copied.
                    let done = RouteEvent::Done(Box::new(std::mem::take(&mut self.summary)));
                    sink.deliver(self.send_timeout, done).await;
                    return std::mem::take(&mut self.generated);
                }
                Some(Err(error)) => return self.fail(error, sink).await,
                None => {
                    let error = Error::unavailable("the model stream ended without finishing");
                    return self.fail(error, sink).await;
                }
            }
        }
    }

    /// Usage as reported, capped by what this request could have used: an
    /// endpoint cannot charge a caller more than its prompt and `max_output_tokens`.
    fn believable(&self, reported: Usage) -> Usage {
        let ceiling = usage_ceiling(self.size);
        if reported.input_tokens > ceiling.input_tokens
            || reported.output_tokens > ceiling.output_tokens
        {
            tracing::warn!(
                deployment = %self.deployment.label(),
                input_tokens = reported.input_tokens,
                output_tokens = reported.output_tokens,
                "the endpoint reported more usage than the request allows; capped"
            );
        }
        Usage {
            input_tokens: reported.input_tokens.min(ceiling.input_tokens),
            output_tokens: reported.output_tokens.min(ceiling.output_tokens),
            cached_input_tokens: reported.cached_input_tokens.min(ceiling.input_tokens),
            estimated: reported.estimated,
        }
    }

    async fn fail(mut self, error: Error, sink: &mut Sink) -> String {
        tracing::warn!(deployment = %self.deployment.label(), %error, "answer broke after its first token");
        if let Some(permit) = self.permit.take() {
            permit.failed(&error);
        }
        if let Some(last) = self.summary.attempts.last_mut() {
            last.outcome = AttemptOutcome::Failed(error.kind);
            last.message = format!("after the first token: {}", error.message);
        }
        let usage = estimated_usage(self.size, &self.generated);
        self.summary.cost_usd = self.cost(&usage);
        self.summary.usage = usage;
        self.settle_estimated();
        let failed = RouteEvent::Failed(error, Box::new(std::mem::take(&mut self.summary)));
        sink.deliver(self.send_timeout, failed).await;
        std::mem::take(&mut self.generated)
    }

    fn report_success(&mut self) {
        if let Some(permit) = self.permit.take() {
            permit.succeeded();
        }
    }

    /// What was generated was billed upstream: charge our estimate of it.
    fn settle_estimated(&mut self) {
        let usage = estimated_usage(self.size, &self.generated);
        let cost = self.cost(&usage);
        if let Some(reservation) = self.reservation.take() {
            reservation.settle(cost);
        }
        self.summary.usage = usage;
        self.summary.cost_usd = cost;
        self.finished();
    }

    fn finished(&mut self) {
        self.ended = true;
        let used = self.summary.usage.input_tokens + self.summary.usage.output_tokens;
        give_back_quota(
            &self.quotas,
            &self.deployment,
            self.quota_tokens.saturating_sub(used),
        );
        if let Some(span) = self.span.take() {
            spans::end_chat(span, &self.summary);
        }
        if let Some(hook) = self.finish_hook.take() {
            hook(&self.summary);
        }
    }

    fn cost(&self, usage: &Usage) -> f64 {
        self.deployment
            .price
            .map_or(0.0, |price| price.cost_usd(usage))
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        // A caller collecting the answer went away midway: end the call as
        // `pump` ends a stream whose client left.
        if self.collecting && !self.ended {
            self.report_success();
            self.settle_estimated();
        }
    }
}

/// Where a call's events go.
enum Sink {
    /// [`Started::into_events`]: a channel the client's task reads.
    Channel(mpsc::Sender<RouteEvent>),
    /// [`Started::collect`]: how the answer ended (its text is `generated`).
    Gather(Option<RouteEvent>),
}

impl Sink {
    /// False when the client went away or stopped reading for `send_timeout`.
    async fn deliver(&mut self, send_timeout: Duration, event: RouteEvent) -> bool {
        match self {
            Self::Channel(sender) => deliver(sender, send_timeout, event).await,
            Self::Gather(end) => {
                if !matches!(event, RouteEvent::Token(_)) {
                    *end = Some(event);
                }
                true
            }
        }
    }
}

/// Gives back to a deployment's token quota what a call was charged and did not use.
fn give_back_quota(quotas: &Arc<RateLimiter>, deployment: &Deployment, tokens: u64) {
    if tokens > 0 && deployment.quota.tokens_per_minute.is_some() {
        quotas.refund_tokens_soon(&deployment.label(), tokens);
    }
}

/// Hands `event` to the client within `send_timeout`; false when it went away or
/// stopped reading for that long (the caller then ends the stream).
async fn deliver(
    sender: &mpsc::Sender<RouteEvent>,
    send_timeout: Duration,
    event: RouteEvent,
) -> bool {
    let until = time_caps::later(Instant::now(), send_timeout);
    match timeout_at(until, sender.send(event)).await {
        Ok(sent) => sent.is_ok(),
        Err(_) => {
            tracing::warn!(
                timeout_ms = send_timeout.as_millis() as u64,
                "the client stopped reading; dropping the upstream call"
            );
            false
        }
    }
}

/// Sends a one-token request to each deployment whose circuit is due for a probe.
pub(super) async fn probe_open_deployments(router: &Router) {
    let now = Instant::now();
    let due = router
        .deployments
        .iter()
        .filter(|deployment| deployment.breaker.reopens_at().is_some_and(|at| at <= now));
    for deployment in due {
        let Some(permit) = deployment.breaker.try_acquire() else {
            continue; // a live request became the probe first
        };
        let request = ChatRequest {
            messages: vec![ChatMessage {
                role: Role::User,
                content: "ping".into(),
            }],
            max_output_tokens: 1,
            temperature: 0.0,
            stop: Vec::new(),
        };
        let deadline =
            Instant::now() + Duration::from_millis(router.settings.first_token_timeout_ms);
        // A probe that panics (an adapter's bug, a hostile answer) is that probe's
        // failure: the loop, and the probes of the other deployments, go on.
        let probe = timeout_at(
            deadline,
            first_token(deployment.clone(), &request, deadline),
        );
        let outcome = match AssertUnwindSafe(probe).catch_unwind().await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(Error::timeout("the probe got no first token in time")),
            Err(panic) => {
                tracing::error!(
                    deployment = %deployment.label(),
                    panic = panic_text(panic.as_ref()),
                    "the probe panicked"
                );
                Err(Error::unavailable("the probe panicked"))
            }
        };
        match outcome {
            Ok(_) => permit.succeeded(),
            Err(error) => permit.failed(&error),
        }
    }
}

/// What a panic said, when it said it with a string.
pub(super) fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

fn skipped(deployment: &Deployment, reason: String) -> Attempt {
    attempt(deployment, AttemptOutcome::Skipped, reason, Instant::now())
}

fn attempt(
    deployment: &Deployment,
    outcome: AttemptOutcome,
    message: String,
    began: Instant,
) -> Attempt {
    let names = deployment.labels();
    Attempt {
        provider: names.provider.clone(),
        deployment: names.deployment.clone(),
        model: names.model.clone(),
        cloud: names.cloud.clone(),
        region: names.region.clone(),
        outcome,
        message,
        took: began.elapsed(),
    }
}

/// Text a model may send for `max_output_tokens`: a generous 64 bytes a token
/// (no tokenizer gives more), plus a floor for tiny limits.
const BYTES_PER_TOKEN: usize = 64;
const MIN_TEXT_BYTES: usize = 64 << 10;

/// The most text held for one answer.
pub fn max_text_bytes(max_output_tokens: u32) -> usize {
    (max_output_tokens as usize)
        .saturating_mul(BYTES_PER_TOKEN)
        .max(MIN_TEXT_BYTES)
}

/// The most usage a request can truthfully be billed: its prompt at one token a
/// character (the estimate counts four a token) plus a margin for the template,
/// and `max_output_tokens` plus a margin.
fn usage_ceiling(size: RequestSize) -> Usage {
    const MARGIN_TOKENS: u64 = 1_024;
    Usage {
        input_tokens: size
            .prompt_tokens
            .saturating_mul(4)
            .saturating_add(MARGIN_TOKENS),
        output_tokens: u64::from(size.max_output_tokens).saturating_add(MARGIN_TOKENS),
        cached_input_tokens: 0,
        estimated: false,
    }
}

fn estimated_usage(size: RequestSize, generated: &str) -> Usage {
    Usage {
        input_tokens: size.prompt_tokens,
        output_tokens: estimate_tokens(generated) as u64,
        cached_input_tokens: 0,
        estimated: true,
    }
}
