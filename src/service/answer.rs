//! Answer: search, build the prompt within its budget, stream the model's text,
//! finish with citations, usage, cost and the route taken.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::chat::{ChatCall, ChatEntrance, ChatFailure};
use super::feedback::citations_are_valid;
use super::{SearchParams, Service};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::llm::Usage;
use crate::llm::extractive::extractive_answer;
use crate::llm::prompt::{Passage, build_prompt};
use crate::retrieve::{FusedHit, SourceOutcome};
use crate::route::{RouteEvent, RouteSummary};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::answered_by;

/// Model name that asks for the extractive answer even when an LLM is configured.
pub const EXTRACTIVE_MODEL: &str = "extractive";

#[derive(Debug, Clone, Default)]
pub struct AnswerRequest {
    pub question: String,
    pub top_k: Option<u32>,
    pub sources: Vec<String>,
    /// None: the tier's models, else the default model, else extractive.
    pub model: Option<String>,
    pub tier: Option<String>,
    /// Clouds the prompt may go to; empty = any the caller may use.
    pub allowed_clouds: Vec<String>,
    /// Region globs the prompt may go to; empty = any the caller may use.
    pub allowed_regions: Vec<String>,
    pub max_output_tokens: Option<u32>,
    pub deadline: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Citation {
    pub number: u32,
    pub doc_id: String,
    pub chunk_id: String,
    pub title: String,
    pub object_key: String,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct AnswerSummary {
    pub citations: Vec<Citation>,
    pub usage: Usage,
    pub cost_usd: f64,
    /// True when the answer was built from the passages without an LLM.
    pub extractive: bool,
    /// Where the request went: plan, attempts, the deployment that answered.
    pub route: RouteSummary,
    pub finish_reason: String,
    pub degraded: bool,
    pub outcomes: Vec<SourceOutcome>,
    /// What `Feedback` takes to rate a model's answer; empty for an extractive one.
    pub answer_id: String,
}

#[derive(Debug, Clone)]
pub enum AnswerEvent {
    Token(String),
    Done(Box<AnswerSummary>),
    /// The answer broke after text was sent; never followed by `Done`.
    Failed(Error),
}

impl Service {
    /// Retrieves, then streams the answer. Errors returned here (bad request,
    /// unknown model, no deployment could answer an explicit model) mean nothing
    /// was streamed.
    pub async fn answer(
        &self,
        principal: &Principal,
        request: AnswerRequest,
    ) -> Result<mpsc::Receiver<AnswerEvent>> {
        let answer = self.start_answer(principal, request).await;
        let outcome = if answer.is_ok() { "ok" } else { "error" };
        self.metrics().record_request("answer", outcome);
        answer
    }

    async fn start_answer(
        &self,
        principal: &Principal,
        request: AnswerRequest,
    ) -> Result<mpsc::Receiver<AnswerEvent>> {
        let mut call = ChatCall {
            model: request.model.clone(),
            tier: request.tier.clone(),
            allowed_clouds: request.allowed_clouds.clone(),
            allowed_regions: request.allowed_regions.clone(),
            messages: Vec::new(),
            max_output_tokens: Some(
                request
                    .max_output_tokens
                    .unwrap_or(self.config.answer.max_output_tokens),
            ),
            temperature: None,
            deadline: request.deadline,
            id: crate::ids::random_id(),
        };
        self.admit_call(principal)?;
        let routed = self.routed(principal, &request, &call)?;
        let search = self
            .search_within_limits(
                principal,
                SearchParams {
                    query: request.question.clone(),
                    top_k: Some(request.top_k.unwrap_or(self.config.answer.top_k)),
                    sources: request.sources.clone(),
                    fusion: None,
                    deadline: request.deadline,
                    adapter_from: None,
                },
            )
            .await?;
        let passages: Vec<Passage> = search
            .hits
            .iter()
            .map(|hit| Passage {
                title: hit.hit.title.clone(),
                text: hit.hit.text.clone(),
            })
            .collect();
        let (chat_request, passages_used) = build_prompt(
            &request.question,
            &passages,
            self.config.answer.context_budget_tokens,
            call.max_output_tokens.unwrap_or_default(),
        );
        let (sender, receiver) = mpsc::channel(64);
        let summary = AnswerSummary {
            citations: citations(&search.hits[..passages_used]),
            usage: Usage::default(),
            cost_usd: 0.0,
            extractive: false,
            route: RouteSummary::default(),
            finish_reason: String::new(),
            degraded: search.degraded,
            outcomes: search.outcomes.clone(),
            answer_id: String::new(),
        };
        let extractive = || extractive_answer(&request.question, &passages[..passages_used]);
        let Some(explicit) = routed else {
            send_extractive(&sender, extractive(), summary, RouteSummary::default()).await;
            return Ok(receiver);
        };
        call.messages = chat_request.messages;
        call.temperature = Some(chat_request.temperature);
        let answer_id = call.id.clone();
        // The call was counted above: the chat charges only its tokens.
        let started = match self
            .metered_chat(principal, call, ChatEntrance::Answer)
            .await
            .result
        {
            Ok(started) => started,
            Err(ChatFailure { error, route: None }) => return Err(error),
            Err(ChatFailure { error, route: _ }) if explicit => return Err(error),
            Err(ChatFailure {
                error,
                route: Some(route),
            }) => {
                // No text was produced yet: an extractive answer, labelled as such
                // and with the failed attempts in the route, beats no answer.
                tracing::warn!(%error, "no model could answer, answering extractively");
                send_extractive(&sender, extractive(), summary, *route).await;
                return Ok(receiver);
            }
        };
        let send_timeout = Duration::from_millis(self.config.routing.stream_send_timeout_ms);
        let summary = AnswerSummary {
            answer_id,
            ..summary
        };
        let witness = Witness {
            metrics: Arc::clone(&self.metrics),
            passages: passages_used,
        };
        tokio::spawn(forward(
            started.into_events(),
            summary,
            sender,
            send_timeout,
            witness,
        ));
        Ok(receiver)
    }

    /// Whether a model answers, and if so whether the request named its model or
    /// tier; None for an extractive answer. A model that cannot serve the caller is
    /// refused here, before retrieving.
    fn routed(
        &self,
        principal: &Principal,
        request: &AnswerRequest,
        call: &ChatCall,
    ) -> Result<Option<bool>> {
        if request.model.as_deref() == Some(EXTRACTIVE_MODEL) {
            return Ok(None);
        }
        let explicit = request.model.is_some() || request.tier.is_some();
        let Ok(router) = self.chat_router() else {
            if let Some(model) = request.model.as_ref().or(request.tier.as_ref()) {
                return Err(Error::not_found(format!(
                    "unknown model {model:?}: no language model is configured; available: {EXTRACTIVE_MODEL}"
                )));
            }
            return Ok(None);
        };
        let may_chat = principal.permissions().chat_caller(principal.id()).is_ok();
        if !explicit && (!router.has_default() || !may_chat) {
            return Ok(None);
        }
        self.check_chat(principal, call)?;
        Ok(Some(explicit))
    }
}

/// Passes the route's events on as the answer's; a route that ends with neither
/// `Done` nor `Failed` (its task died) still ends the answer with an error, and a
/// client that takes no event for `send_timeout` is left (dropping `events`
/// cancels upstream).
async fn forward(
    mut events: mpsc::Receiver<RouteEvent>,
    mut summary: AnswerSummary,
    sender: mpsc::Sender<AnswerEvent>,
    send_timeout: Duration,
    witness: Witness,
) {
    // The answer's text, to check its citations when it ends (bounded by its tokens).
    let mut text = String::new();
    loop {
        let (event, last) = match events.recv().await {
            Some(RouteEvent::Token(token)) => {
                text.push_str(&token);
                (AnswerEvent::Token(token), false)
            }
            Some(RouteEvent::Done(route)) => {
                summary.usage = route.usage;
                summary.cost_usd = route.cost_usd;
                summary.finish_reason = route.finish_reason.clone();
                summary.route = *route;
                witness.answered(&summary, &text);
                (AnswerEvent::Done(Box::new(summary.clone())), true)
            }
            Some(RouteEvent::Failed(error, _)) => (AnswerEvent::Failed(error), true),
            None => {
                let error = Error::internal("the answer ended without finishing");
                (AnswerEvent::Failed(error), true)
            }
        };
        match tokio::time::timeout(send_timeout, sender.send(event)).await {
            Ok(Ok(())) if !last => {}
            Ok(_) => return,
            Err(_) => {
                tracing::warn!("the client stopped reading the answer; ending it");
                return;
            }
        }
    }
}

/// Checks a finished model answer: did it cite only passages it was sent?
struct Witness {
    metrics: Arc<Metrics>,
    passages: usize,
}

impl Witness {
    fn answered(&self, summary: &AnswerSummary, text: &str) {
        if let Some(deployment) = answered_by(&summary.route) {
            self.metrics
                .record_citations(&deployment, citations_are_valid(text, self.passages));
        }
    }
}

fn citations(hits: &[FusedHit]) -> Vec<Citation> {
    hits.iter()
        .enumerate()
        .map(|(index, hit)| Citation {
            number: index as u32 + 1,
            doc_id: hit.hit.doc_id.clone(),
            chunk_id: hit.hit.chunk_id.clone(),
            title: hit.hit.title.clone(),
            object_key: hit.hit.object_key.clone(),
            text: hit.hit.text.clone(),
        })
        .collect()
}

async fn send_extractive(
    sender: &mpsc::Sender<AnswerEvent>,
    text: String,
    mut summary: AnswerSummary,
    route: RouteSummary,
) {
    summary.extractive = true;
    summary.route = route;
    summary.finish_reason = "stop".into();
    if !text.is_empty() {
        let _ = sender.send(AnswerEvent::Token(text)).await;
    }
    let _ = sender.send(AnswerEvent::Done(Box::new(summary))).await;
}
