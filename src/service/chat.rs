//! Chat: the one entrance to a routed LLM call. The OpenAI-compatible facade calls
//! it with the caller's messages; `answer` calls it after retrieval with the prompt
//! built from the passages. It owns caller -> plan -> route -> stream.

use std::sync::Arc;
use std::time::Instant;

use super::Service;
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::limits::RateLimitStatus;
use crate::llm::prompt::request_tokens;
use crate::llm::{ChatMessage, ChatRequest};
use crate::route::{Caller, RouteRequest, RouteSummary, Router, Started};
use crate::telemetry::metrics::answered_by;

/// Sampling temperature when a call does not set one.
pub const DEFAULT_TEMPERATURE: f32 = 0.2;

/// A chat call as a caller states it, before authentication and routing.
#[derive(Debug, Clone, Default)]
pub struct ChatCall {
    /// None: the tier's models, else `routing.default_model` (or `default_tier`).
    pub model: Option<String>,
    pub tier: Option<String>,
    /// Clouds the prompt may go to; empty = any the caller may use.
    pub allowed_clouds: Vec<String>,
    /// Region globs the prompt may go to; empty = any the caller may use.
    pub allowed_regions: Vec<String>,
    pub messages: Vec<ChatMessage>,
    /// None: `answer.max_output_tokens`.
    pub max_output_tokens: Option<u32>,
    /// None: [`DEFAULT_TEMPERATURE`].
    pub temperature: Option<f32>,
    /// The caller's stop sequences; each deployment adds its own `stop`.
    pub stop: Vec<String>,
    /// When the LLM stage must end. None: `routing.attempt_timeout_ms` after it
    /// starts, the one default of the LLM stage for the facade and `Answer` alike
    /// (the retrieval half of an `Answer` without a deadline has its own,
    /// `server.default_timeout_ms`).
    pub deadline: Option<Instant>,
    /// The id its answer goes out with, which `Feedback` takes to rate it; empty: not
    /// rateable.
    pub id: String,
    /// What moving the call's retrieved context to each cloud costs, for routing by
    /// total cost; empty for a call with no retrieved context.
    pub egress_usd_by_cloud: Vec<(String, f64)>,
}

/// A chat call that produced nothing.
#[derive(Debug, Clone)]
pub struct ChatFailure {
    pub error: Error,
    /// What was tried before giving up; None when the call was refused before any
    /// deployment was tried (the caller, the model or the plan).
    pub route: Option<Box<RouteSummary>>,
}

impl From<ChatFailure> for Error {
    fn from(failure: ChatFailure) -> Self {
        failure.error
    }
}

impl From<Error> for ChatFailure {
    fn from(error: Error) -> Self {
        Self { error, route: None }
    }
}

/// A chat call and where its caller stands against its rate limits (for the
/// facade's `x-ratelimit-*` headers, on success and refusal alike).
pub struct RatedChat {
    /// None when the call was refused before its caller was known.
    pub rate: Option<RateLimitStatus>,
    pub result: std::result::Result<Started, ChatFailure>,
}

impl Service {
    /// Authenticates the caller, plans the route and tries its candidates until one
    /// produces a first token; the rest of the answer streams from [`Started`].
    pub async fn chat(
        &self,
        principal: &Principal,
        call: ChatCall,
    ) -> std::result::Result<Started, ChatFailure> {
        self.rated_chat(principal, call).await.result
    }

    /// [`Service::chat`], also saying where the caller stands against its rate
    /// limits: each call counts one request and its tokens (the prompt estimate
    /// plus the output it may produce), or is refused with `Throttled` and a
    /// `retry_after` before anything is planned or sent.
    pub async fn rated_chat(&self, principal: &Principal, call: ChatCall) -> RatedChat {
        self.metered_chat(principal, call, ChatEntrance::Chat).await
    }

    /// [`Service::rated_chat`] for `entrance`: a chat call counts one request, an
    /// `Answer` was counted when it came in. The tokens the call was charged beyond what
    /// it used are given back when it ends, and all of them when no deployment answered.
    pub(super) async fn metered_chat(
        &self,
        principal: &Principal,
        mut call: ChatCall,
        entrance: ChatEntrance,
    ) -> RatedChat {
        let requests = match entrance {
            ChatEntrance::Chat => 1,
            ChatEntrance::Answer => 0,
        };
        // The caller's permission first: one without chat learns nothing about models.
        let caller = match principal.permissions().chat_caller(principal.id()) {
            Ok(caller) => caller,
            Err(error) => return unrated(error),
        };
        let router = match self.chat_router() {
            Ok(router) => router,
            Err(error) => return unrated(error),
        };
        let max_output_tokens = match self.max_output_tokens(&call) {
            Ok(tokens) => tokens,
            Err(error) => return unrated(error),
        };
        let request = ChatRequest {
            messages: std::mem::take(&mut call.messages),
            max_output_tokens,
            temperature: call.temperature.unwrap_or(DEFAULT_TEMPERATURE),
            stop: std::mem::take(&mut call.stop),
        };
        let input_tokens = request_tokens(&request);
        let tokens = input_tokens.saturating_add(u64::from(max_output_tokens));
        let rate = match self
            .rate_limiter
            .admit_shared(principal.id(), requests, tokens)
            .await
        {
            Ok(status) => status,
            Err(refusal) => {
                return RatedChat {
                    rate: refusal.status(),
                    result: Err(refusal.into_error().into()),
                };
            }
        };
        let start = Instant::now();
        let mut result = self
            .routed_chat(router, &caller, &call, &request, input_tokens)
            .await;
        let (limiter, caller_id) = (Arc::clone(&self.rate_limiter), principal.id().to_owned());
        let metrics = Arc::clone(&self.metrics);
        let (answers, answer_id) = (Arc::clone(&self.answers), call.id.clone());
        match &mut result {
            Ok(started) => {
                let first_token = start.elapsed();
                started.on_finish(move |summary| {
                    let used = summary
                        .usage
                        .input_tokens
                        .saturating_add(summary.usage.output_tokens);
                    let unused = tokens.saturating_sub(used);
                    limiter.refund_tokens_soon(&caller_id, unused);
                    metrics.record_attempts(&summary.attempts);
                    metrics.record_answered(summary, first_token, start.elapsed());
                    if let Some(deployment) = answered_by(summary)
                        && !answer_id.is_empty()
                    {
                        answers.remember(answer_id, caller_id, deployment);
                    }
                    let outcome = if summary.finish_reason.is_empty() {
                        "error"
                    } else {
                        "ok"
                    };
                    metrics.record_call("chat", outcome, first_token, summary.attempts_time());
                });
            }
            Err(failure) => {
                limiter.refund_tokens_shared(&caller_id, tokens).await;
                if let Some(route) = &failure.route {
                    metrics.record_attempts(&route.attempts);
                    metrics.record_call("chat", "error", start.elapsed(), route.attempts_time());
                }
            }
        }
        RatedChat {
            rate: Some(rate),
            result,
        }
    }

    async fn routed_chat(
        &self,
        router: &Router,
        caller: &Caller,
        call: &ChatCall,
        request: &ChatRequest,
        input_tokens: u64,
    ) -> std::result::Result<Started, ChatFailure> {
        let route_request = route_request(call, input_tokens, request.max_output_tokens);
        let plan = router.plan(caller, &route_request)?;
        let deadline = call
            .deadline
            .unwrap_or_else(|| Instant::now() + router.attempt_timeout());
        router
            .start(caller, &plan, request, deadline.into())
            .await
            .map_err(|failure| ChatFailure {
                error: failure.error,
                route: Some(failure.summary),
            })
    }

    /// Refuses what [`Service::chat`] would refuse before sending anything (the
    /// caller, an unknown or forbidden model or tier), without a prompt yet: so an
    /// `Answer` fails fast, before retrieving.
    pub(super) fn check_chat(&self, principal: &Principal, call: &ChatCall) -> Result<()> {
        // The caller's permission first: one without chat learns nothing about models.
        let caller = principal.permissions().chat_caller(principal.id())?;
        let router = self.chat_router()?;
        let max_output_tokens = self.max_output_tokens(call)?;
        router.plan(&caller, &route_request(call, 0, max_output_tokens))?;
        Ok(())
    }

    /// The regions of each deployment a call would be planned onto (several for a
    /// multi-region endpoint), best first, each set once: where its prompt could go.
    pub(super) fn candidate_endpoints(
        &self,
        principal: &Principal,
        call: &ChatCall,
    ) -> Result<Vec<Vec<String>>> {
        let caller = principal.permissions().chat_caller(principal.id())?;
        let router = self.chat_router()?;
        let max_output_tokens = self.max_output_tokens(call)?;
        let plan = router.plan(&caller, &route_request(call, 0, max_output_tokens))?;
        let mut endpoints: Vec<Vec<String>> = Vec::new();
        for candidate in &plan.candidates {
            let regions = crate::route::plan::deployment_regions(candidate.deployment.info());
            if !endpoints.iter().any(|known| known == regions) {
                endpoints.push(regions.to_vec());
            }
        }
        Ok(endpoints)
    }

    /// The output tokens a call may produce: what it asks for, at most
    /// `answer.max_output_tokens_limit`, else `answer.max_output_tokens`.
    fn max_output_tokens(&self, call: &ChatCall) -> Result<u32> {
        let answer = &self.config.answer;
        match call.max_output_tokens {
            Some(asked) if asked > answer.max_output_tokens_limit => Err(Error::invalid(format!(
                "max_output_tokens is {asked}, more than this server allows (answer.max_output_tokens_limit = {})",
                answer.max_output_tokens_limit
            ))),
            Some(asked) => Ok(asked),
            None => Ok(answer.max_output_tokens),
        }
    }

    /// Models a chat call may name, sorted; empty when no model is configured.
    pub fn chat_models(&self) -> Vec<String> {
        self.router
            .as_ref()
            .map(|router| router.models())
            .unwrap_or_default()
    }

    /// Models and `tier:<name>`s the principal may name, for `/v1/models`.
    pub fn chat_models_for(&self, principal: &Principal) -> (Vec<String>, Vec<String>) {
        let Ok(caller) = principal.permissions().chat_caller(principal.id()) else {
            return (Vec::new(), Vec::new());
        };
        let models = self
            .chat_models()
            .into_iter()
            .filter(|model| caller.may_use_model(model))
            .collect();
        let tiers = self
            .chat_tiers()
            .into_iter()
            .filter(|tier| caller.may_use_tier(tier))
            .collect();
        (models, tiers)
    }

    /// Budget tiers a chat call may name, in config order.
    pub fn chat_tiers(&self) -> Vec<String> {
        self.router
            .as_ref()
            .map(|router| router.tiers())
            .unwrap_or_default()
    }

    pub(super) fn chat_router(&self) -> Result<&Arc<Router>> {
        self.router.as_ref().ok_or_else(|| {
            Error::not_found(
                "no language model is configured: add [[deployment]]s or answer.provider",
            )
        })
    }
}

fn unrated(error: Error) -> RatedChat {
    RatedChat {
        rate: None,
        result: Err(error.into()),
    }
}

fn route_request(call: &ChatCall, input_tokens: u64, max_output_tokens: u32) -> RouteRequest {
    RouteRequest {
        model: call.model.clone(),
        tier: call.tier.clone(),
        clouds: call.allowed_clouds.clone(),
        regions: call.allowed_regions.clone(),
        input_tokens,
        max_output_tokens: u64::from(max_output_tokens),
        egress_usd_by_cloud: call.egress_usd_by_cloud.clone(),
    }
}

/// Where a chat call came in.
#[derive(Debug, Clone, Copy)]
pub(super) enum ChatEntrance {
    /// The facade or `Service::chat`: a call of its own.
    Chat,
    /// `Answer` with a model: its request was counted when it came in.
    Answer,
}
