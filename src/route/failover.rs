//! The attempt loop and the stream after it.
//!
//! Candidates are tried in plan order, each under its own timeout inside the
//! request deadline. An attempt has started only when the first token arrived
//! (the first upstream read is forced, so connection errors, exception frames and
//! zero-token answers all fail over). What to do after an error is decided in one
//! exhaustive match ([`verdict`]). Once a token went out, there is no failover:
//! a later failure is an in-band [`RouteEvent::Failed`], never a clean end.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout_at};

use super::budget::{Reservation, until_next_day};
use super::plan::{Plan, Skip};
use super::{Caller, Deployment, Router};
use crate::error::{Error, ErrorKind, Result};
use crate::llm::prompt::{estimate_tokens, request_tokens};
use crate::llm::{ChatEvent, ChatMessage, ChatRequest, ProviderInfo, Role, Usage};

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
    pub deployment: String,
    pub model: String,
    pub cloud: String,
    pub region: String,
    pub outcome: AttemptOutcome,
    pub message: String,
    pub took: Duration,
}

/// A candidate of the plan, as the response shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateView {
    pub deployment: String,
    pub model: String,
    pub cloud: String,
    pub region: String,
    pub dedicated: bool,
    pub max_cost_usd: Option<f64>,
    pub why: String,
}

/// Where a request went and what it cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteSummary {
    /// The deployment that answered, once one produced a token.
    pub chosen: Option<ProviderInfo>,
    pub tier: Option<String>,
    pub candidates: Vec<CandidateView>,
    pub skipped: Vec<Skip>,
    pub attempts: Vec<Attempt>,
    pub usage: Usage,
    pub cost_usd: f64,
    pub finish_reason: String,
}

impl RouteSummary {
    fn of(plan: &Plan) -> Self {
        Self {
            tier: plan.tier.clone(),
            candidates: plan
                .candidates
                .iter()
                .map(|candidate| {
                    let info = candidate.deployment.info();
                    CandidateView {
                        deployment: candidate.deployment.label(),
                        model: info.model.clone(),
                        cloud: info.cloud.clone(),
                        region: info.region.clone(),
                        dedicated: info.dedicated,
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

/// A deployment produced its first token; the rest is still upstream.
pub struct Started {
    first: String,
    stream: BoxStream<'static, Result<ChatEvent>>,
    deployment: Arc<Deployment>,
    summary: RouteSummary,
    reservation: Option<Reservation>,
    request: ChatRequest,
    inter_chunk: Duration,
    deadline: Instant,
}

/// What the loop does after an attempt failed.
enum Verdict {
    /// Try the next candidate; the deployment's health suffers as given.
    FailOver(Health),
    /// The prompt is too long for this model: only longer-context candidates.
    LongerContext,
    /// The request itself is at fault (or the credentials): no other attempt.
    Stop(Health),
}

enum Health {
    Throttled,
    Failed,
    Fine,
}

/// The one place that decides failover by error kind.
fn verdict(kind: ErrorKind) -> Verdict {
    match kind {
        ErrorKind::Throttled => Verdict::FailOver(Health::Throttled),
        // NotFound: this deployment is missing at its cloud; another may serve.
        ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::NotFound => {
            Verdict::FailOver(Health::Failed)
        }
        ErrorKind::ContextLength => Verdict::LongerContext,
        // Refused credentials are the deployment's problem, but another cloud is
        // not tried: a 401/403 must be seen and fixed, not hidden by failover.
        ErrorKind::Auth => Verdict::Stop(Health::Failed),
        ErrorKind::InvalidArgument
        | ErrorKind::Forbidden
        | ErrorKind::Config
        | ErrorKind::Internal => Verdict::Stop(Health::Fine),
    }
}

/// Every call that passed the breaker reports back, so a half-open probe is decided.
fn record_health(deployment: &Deployment, health: Health, error: &Error) {
    match health {
        Health::Throttled => deployment.breaker.record_throttle(error.retry_after),
        Health::Failed => deployment.breaker.record_failure(),
        // It answered, if only to refuse this request: it is up.
        Health::Fine => deployment.breaker.record_success(),
    }
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
        let settings = &self.settings;
        let mut summary = RouteSummary::of(plan);
        let mut sent = 0usize;
        let mut last_error: Option<Error> = None;
        let mut over_budget = false;
        // After a context-length refusal, only longer windows are worth a try.
        let mut context_floor: Option<u64> = None;
        // Candidates that failed in a way that may pass: the ones a next pass retries.
        let mut retry: Vec<usize> = (0..plan.candidates.len()).collect();
        let mut pass = 0u32;
        loop {
            let mut failed_transiently = Vec::new();
            for &index in &retry {
                let candidate = &plan.candidates[index];
                let deployment = &candidate.deployment;
                if sent >= settings.max_attempts || Instant::now() >= deadline {
                    break;
                }
                if let (Some(floor), Some(window)) = (context_floor, deployment.context_window)
                    && window <= floor
                {
                    summary.attempts.push(skipped(
                        deployment,
                        format!("its context window ({window}) is no longer than the one that refused the prompt"),
                    ));
                    continue;
                }
                let reservation = match self.reserve(caller, candidate.max_cost_usd) {
                    Ok(reservation) => reservation,
                    Err(reason) => {
                        over_budget = true;
                        summary.attempts.push(skipped(deployment, reason));
                        continue;
                    }
                };
                if !deployment.breaker.try_acquire() {
                    summary.attempts.push(skipped(
                        deployment,
                        "circuit open: cooling down after failures".into(),
                    ));
                    failed_transiently.push(index);
                    continue;
                }
                sent += 1;
                self.stats.attempts.fetch_add(1, Ordering::Relaxed);
                if sent > 1 {
                    self.stats.failovers.fetch_add(1, Ordering::Relaxed);
                }
                let began = Instant::now();
                let attempt_deadline =
                    deadline.min(began + Duration::from_millis(settings.attempt_timeout_ms));
                let first_token_by = attempt_deadline
                    .min(began + Duration::from_millis(settings.first_token_timeout_ms));
                let outcome = timeout_at(
                    first_token_by,
                    first_token(deployment.clone(), request, attempt_deadline),
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
                        summary.attempts.push(attempt(
                            deployment,
                            AttemptOutcome::Ok,
                            String::new(),
                            began,
                        ));
                        summary.chosen = Some(deployment.info().clone());
                        return Ok(Started {
                            first,
                            stream,
                            deployment: deployment.clone(),
                            summary,
                            reservation,
                            request: request.clone(),
                            inter_chunk: Duration::from_millis(settings.inter_chunk_timeout_ms),
                            deadline,
                        });
                    }
                    Err(error) => error,
                };
                drop(reservation);
                summary.attempts.push(attempt(
                    deployment,
                    AttemptOutcome::Failed(error.kind),
                    error.message.clone(),
                    began,
                ));
                tracing::warn!(deployment = %deployment.label(), %error, "attempt failed");
                match verdict(error.kind) {
                    Verdict::FailOver(health) => {
                        record_health(deployment, health, &error);
                        failed_transiently.push(index);
                    }
                    Verdict::LongerContext => {
                        deployment.breaker.record_success();
                        let refused_at = deployment.context_window.unwrap_or(
                            request_tokens(request) + u64::from(request.max_output_tokens),
                        );
                        context_floor =
                            Some(context_floor.map_or(refused_at, |floor| floor.max(refused_at)));
                    }
                    Verdict::Stop(health) => {
                        record_health(deployment, health, &error);
                        return Err(self.failure(error, summary));
                    }
                }
                last_error = Some(error);
            }
            // Everything left is throttled or cooling: wait for the earliest to come
            // back when that is soon and within the deadline, else give up.
            let Some(wake) = self.earliest_recovery(plan, &failed_transiently, pass) else {
                break;
            };
            let now = Instant::now();
            if sent >= settings.max_attempts
                || wake >= deadline
                || wake.duration_since(now) > Duration::from_millis(settings.max_retry_wait_ms)
            {
                break;
            }
            sleep_until(wake).await;
            retry = failed_transiently;
            pass += 1;
        }
        let error = match last_error {
            Some(error) if sent > 1 => Error {
                message: format!("all {sent} attempts failed; last: {}", error.message),
                ..error
            },
            Some(error) => error,
            None if over_budget => Error::throttled(
                format!(
                    "caller {:?} has no daily budget left for this request",
                    caller.id
                ),
                Some(until_next_day()),
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
        };
        Err(self.failure(error, summary))
    }

    fn failure(&self, error: Error, summary: RouteSummary) -> RouteFailure {
        self.stats.failed_requests.fetch_add(1, Ordering::Relaxed);
        RouteFailure {
            error,
            summary: Box::new(summary),
        }
    }

    /// Holds the most this call can cost when the caller has a budget.
    fn reserve(
        &self,
        caller: &Caller,
        max_cost_usd: Option<f64>,
    ) -> std::result::Result<Option<Reservation>, String> {
        let Some(budget) = caller.budget_usd_per_day else {
            return Ok(None);
        };
        let Some(cost) = max_cost_usd else {
            return Err(format!(
                "no known price, and caller {:?} has a budget",
                caller.id
            ));
        };
        self.budgets
            .reserve(&caller.id, budget, cost)
            .map(Some)
            .map_err(|balance| {
                format!(
                    "over budget: ${:.4} spent and ${:.4} held of ${:.2} today; this call may cost ${cost:.4}",
                    balance.spent_usd, balance.reserved_usd, balance.budget_usd
                )
            })
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

/// Sends the request and reads until the first non-empty text.
async fn first_token(
    deployment: Arc<Deployment>,
    request: &ChatRequest,
    attempt_deadline: Instant,
) -> Result<(String, BoxStream<'static, Result<ChatEvent>>)> {
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

    /// Streams the first token and the rest on a task: tokens, then `Done` or
    /// `Failed`. Dropping the receiver cancels the upstream call.
    pub fn into_events(self) -> mpsc::Receiver<RouteEvent> {
        let (sender, receiver) = mpsc::channel(64);
        tokio::spawn(self.pump(sender));
        receiver
    }

    async fn pump(mut self, sender: mpsc::Sender<RouteEvent>) {
        let mut generated = std::mem::take(&mut self.first);
        if sender
            .send(RouteEvent::Token(generated.clone()))
            .await
            .is_err()
        {
            self.settle_estimated(&generated);
            return;
        }
        loop {
            let wait_until = self.deadline.min(Instant::now() + self.inter_chunk);
            let event = match timeout_at(wait_until, self.stream.next()).await {
                Ok(event) => event,
                Err(_) if wait_until == self.deadline => {
                    return self
                        .fail(
                            Error::timeout("the request deadline passed mid-answer"),
                            &generated,
                            &sender,
                        )
                        .await;
                }
                Err(_) => {
                    let error = Error::timeout(format!(
                        "the model went silent for {} ms mid-answer",
                        self.inter_chunk.as_millis()
                    ));
                    return self.fail(error, &generated, &sender).await;
                }
            };
            match event {
                Some(Ok(ChatEvent::Delta(text))) => {
                    if text.is_empty() {
                        continue;
                    }
                    generated.push_str(&text);
                    if sender.send(RouteEvent::Token(text)).await.is_err() {
                        // The caller went away: dropping the stream cancels upstream.
                        // The deployment was producing: that is its verdict.
                        self.deployment.breaker.record_success();
                        self.settle_estimated(&generated);
                        return;
                    }
                }
                Some(Ok(ChatEvent::Finish { reason, usage })) => {
                    self.deployment.breaker.record_success();
                    let usage = usage.unwrap_or_else(|| estimated_usage(&self.request, &generated));
                    let cost = self.cost(&usage);
                    if let Some(reservation) = self.reservation.take() {
                        reservation.settle(cost);
                    }
                    self.summary.usage = usage;
                    self.summary.cost_usd = cost;
                    self.summary.finish_reason = reason.as_str().to_string();
                    let _ = sender.send(RouteEvent::Done(Box::new(self.summary))).await;
                    return;
                }
                Some(Err(error)) => return self.fail(error, &generated, &sender).await,
                None => {
                    let error = Error::unavailable("the model stream ended without finishing");
                    return self.fail(error, &generated, &sender).await;
                }
            }
        }
    }

    async fn fail(mut self, error: Error, generated: &str, sender: &mpsc::Sender<RouteEvent>) {
        tracing::warn!(deployment = %self.deployment.label(), %error, "answer broke after its first token");
        match verdict(error.kind) {
            Verdict::FailOver(Health::Fine)
            | Verdict::Stop(Health::Fine)
            | Verdict::LongerContext => self.deployment.breaker.record_success(),
            Verdict::FailOver(_) | Verdict::Stop(_) => self.deployment.breaker.record_failure(),
        }
        if let Some(last) = self.summary.attempts.last_mut() {
            last.outcome = AttemptOutcome::Failed(error.kind);
            last.message = format!("after the first token: {}", error.message);
        }
        let usage = estimated_usage(&self.request, generated);
        self.summary.cost_usd = self.cost(&usage);
        self.summary.usage = usage;
        self.settle_estimated(generated);
        let _ = sender
            .send(RouteEvent::Failed(error, Box::new(self.summary)))
            .await;
    }

    /// What was generated was billed upstream: charge our estimate of it.
    fn settle_estimated(&mut self, generated: &str) {
        if let Some(reservation) = self.reservation.take() {
            let usage = estimated_usage(&self.request, generated);
            reservation.settle(self.cost(&usage));
        }
    }

    fn cost(&self, usage: &Usage) -> f64 {
        self.deployment
            .price
            .map_or(0.0, |price| price.cost_usd(usage))
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
        if !deployment.breaker.try_acquire() {
            continue; // a live request became the probe first
        }
        let request = ChatRequest {
            messages: vec![ChatMessage {
                role: Role::User,
                content: "ping".into(),
            }],
            max_output_tokens: 1,
            temperature: 0.0,
        };
        let deadline =
            Instant::now() + Duration::from_millis(router.settings.first_token_timeout_ms);
        match timeout_at(
            deadline,
            first_token(deployment.clone(), &request, deadline),
        )
        .await
        {
            Ok(Ok(_)) => deployment.breaker.record_success(),
            Ok(Err(_)) | Err(_) => deployment.breaker.record_failure(),
        }
    }
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
    let info = deployment.info();
    Attempt {
        deployment: deployment.label(),
        model: info.model.clone(),
        cloud: info.cloud.clone(),
        region: info.region.clone(),
        outcome,
        message,
        took: began.elapsed(),
    }
}

fn estimated_usage(request: &ChatRequest, generated: &str) -> Usage {
    Usage {
        input_tokens: request_tokens(request),
        output_tokens: estimate_tokens(generated) as u64,
        cached_input_tokens: 0,
        estimated: true,
    }
}
