//! Answer: search, build the prompt within its budget, stream the model's text,
//! finish with citations, usage, cost and the route taken.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::cached_answer;
use super::chat::{ChatCall, ChatEntrance, ChatFailure};
use super::egress::{self, AnswerTransfer};
use super::feedback::CitedPassages;
use super::residency::ResidencyOutcome;
use super::{SearchParams, Service};
use crate::auth::Principal;
use crate::config::RetrievalQuery;
use crate::error::{Error, Result};
use crate::llm::extractive::extractive_answer;
use crate::llm::prompt::{Passage, build_conversation_prompt};
use crate::llm::{ChatMessage, Role, Usage};
use crate::policy::egress::{EgressBill, LOCAL_CLOUD, Spot};
use crate::retrieve::{FusedHit, SourceOutcome};
use crate::route::{RouteEvent, RouteSummary};
use crate::state::AnswerCache;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::answered_by;

/// Model name that asks for the extractive answer even when an LLM is configured.
pub const EXTRACTIVE_MODEL: &str = "extractive";

#[derive(Debug, Clone, Default)]
pub struct AnswerRequest {
    pub question: String,
    /// A conversation instead of `question`, ending with the user's turn.
    pub messages: Vec<ChatMessage>,
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
    /// Only passages that match are retrieved, as in Search.
    pub filter: Option<crate::stores::filter::FilterRequest>,
    /// The tenant whose passages to retrieve, as in Search.
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Citation {
    pub number: u32,
    pub doc_id: String,
    pub chunk_id: String,
    pub title: String,
    pub object_key: String,
    pub text: String,
    /// The chunk's position within its document, from 0.
    pub chunk_ordinal: u32,
    /// Where the chunk lies in its document, when the store kept it.
    pub span: Option<crate::document::CharSpan>,
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
    /// The passage numbers the answer cites, those sent and those invented.
    pub cited: CitedPassages,
    /// Where residency kept the prompt, and the passages it withheld.
    pub residency: ResidencyOutcome,
    /// skyfuse's own time until the first token: the call's time so far minus the
    /// slowest source and the model attempts.
    pub overhead: Duration,
    /// What moving the context (and the prompt) between clouds cost.
    pub egress: EgressBill,
    /// Replayed from `[answer.cache]`: no model was called and nothing was charged
    /// (`cost_usd` is 0; `usage` is what the answer took when it was made).
    pub cached: bool,
}

impl AnswerSummary {
    /// The answer stopped before it was complete: its output limit, or a filter.
    pub fn cut_short(&self) -> bool {
        matches!(self.finish_reason.as_str(), "length" | "content_filter")
    }

    /// Tokens and transfer together.
    pub fn total_cost_usd(&self) -> f64 {
        self.cost_usd + self.egress.total_usd()
    }
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
        let entered = Instant::now();
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
            stop: Vec::new(),
            deadline: request.deadline,
            id: crate::ids::random_id(),
            egress_usd_by_cloud: Vec::new(),
        };
        self.admit_call(principal).await?;
        let conversation = conversation(&request)?;
        let query = retrieval_query(&conversation, self.config.answer.retrieval_query);
        let routed = self.routed(principal, &request, &call)?;
        let mut search = self
            .search_within_limits(
                principal,
                SearchParams {
                    query: query.clone(),
                    top_k: Some(request.top_k.unwrap_or(self.config.answer.top_k)),
                    sources: request.sources.clone(),
                    fusion: None,
                    deadline: request.deadline,
                    adapter_from: None,
                    controls: Default::default(),
                    filter: request.filter.clone(),
                    namespace: request.namespace.clone(),
                    ..Default::default()
                },
            )
            .await?;
        let residency = match routed {
            Some(_) => self.apply_residency(principal, &mut call, &mut search.hits)?,
            None => ResidencyOutcome::default(),
        };
        let passages: Vec<Passage> = search
            .hits
            .iter()
            .map(|hit| Passage {
                title: hit.hit.title.to_string(),
                text: hit.hit.text.to_string(),
            })
            .collect();
        let (chat_request, passages_used) = build_conversation_prompt(
            &conversation,
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
            cited: CitedPassages::default(),
            residency,
            overhead: Duration::ZERO,
            egress: EgressBill::default(),
            cached: false,
        };
        let transfer = AnswerTransfer::of(Arc::clone(&self.egress), &search.hits[..passages_used]);
        let waited_on_sources = search.longest_source();
        let extractive = || extractive_answer(&query, &passages[..passages_used]);
        let Some(explicit) = routed else {
            let summary = AnswerSummary {
                overhead: entered.elapsed().saturating_sub(waited_on_sources),
                egress: self.extractive_egress(&transfer),
                ..summary
            };
            send_extractive(&sender, extractive(), summary, RouteSummary::default()).await;
            return Ok(receiver);
        };
        call.messages = chat_request.messages;
        call.temperature = Some(chat_request.temperature);
        if let Some(router) = &self.router {
            let places = router
                .deployments()
                .iter()
                .map(|d| (d.info().cloud.as_str(), d.info().region.as_str()));
            call.egress_usd_by_cloud = transfer.usd_by_place(places);
        }
        let send_timeout = Duration::from_millis(self.config.routing.stream_send_timeout_ms);
        // Replayed when the same call over the same passages was answered before: no
        // model call, no budget.
        let cache_key = self.answer_cache.as_ref().map(|_| {
            let caller = principal.permissions().chat_caller(principal.id()).ok();
            let routing = &self.config.routing;
            let asked_of = cached_answer::AskedOf {
                model: call.model.as_deref(),
                tier: call.tier.as_deref(),
                default_model: routing.default_model.as_deref(),
                default_tier: routing.default_tier.as_deref(),
            };
            cached_answer::answer_key(
                &call,
                &asked_of,
                caller.as_ref(),
                &request.namespace,
                &search.hits[..passages_used],
            )
        });
        if let (Some(cache), Some(key)) = (&self.answer_cache, &cache_key)
            && let Some(answer) = cache.get(key).await
        {
            let summary = AnswerSummary {
                overhead: entered.elapsed().saturating_sub(waited_on_sources),
                egress: self.extractive_egress(&transfer),
                ..summary
            };
            tokio::spawn(async move {
                cached_answer::replay(sender, &answer, summary, send_timeout).await;
            });
            return Ok(receiver);
        }
        let prompt_bytes = call
            .messages
            .iter()
            .map(|message| message.content.len() as u64)
            .sum();
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
                let overhead = entered
                    .elapsed()
                    .saturating_sub(waited_on_sources + route.attempts_time());
                let summary = AnswerSummary {
                    overhead,
                    egress: self.extractive_egress(&transfer),
                    ..summary
                };
                send_extractive(&sender, extractive(), summary, *route).await;
                return Ok(receiver);
            }
        };
        let overhead = entered
            .elapsed()
            .saturating_sub(waited_on_sources + started.attempts_time());
        let summary = AnswerSummary {
            answer_id,
            overhead,
            ..summary
        };
        let witness = Witness {
            metrics: Arc::clone(&self.metrics),
            passages: passages_used,
            transfer,
            prompt_bytes,
            keep: self.answer_cache.clone().zip(cache_key),
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

    /// An extractive answer's transfers: its passages reach skyfuse and go no further.
    fn extractive_egress(&self, transfer: &AnswerTransfer) -> EgressBill {
        let bill = transfer.bill(&Spot::new(LOCAL_CLOUD, LOCAL_CLOUD), 0);
        egress::record(&self.metrics, &bill);
        bill
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
    // The answer's text, to check its citations when it ends (bounded by its tokens),
    // and its pieces as streamed when it may be kept for replay.
    let mut text = String::new();
    let mut pieces = Vec::new();
    loop {
        let (event, last) = match events.recv().await {
            Some(RouteEvent::Token(token)) => {
                text.push_str(&token);
                if witness.keep.is_some() {
                    pieces.push(token.clone());
                }
                (AnswerEvent::Token(token), false)
            }
            Some(RouteEvent::Done(route)) => {
                summary.usage = route.usage;
                summary.cost_usd = route.cost_usd;
                summary.finish_reason = route.finish_reason.clone();
                summary.route = *route;
                summary.cited = CitedPassages::of(&text, witness.passages);
                summary.egress = witness.moved(&summary.route);
                witness.answered(&summary);
                // Kept before `Done` goes out: a caller that asks again next finds it.
                if let Some((cache, key)) = &witness.keep
                    && let Some(answer) =
                        cached_answer::to_keep(std::mem::take(&mut pieces), &summary.route)
                {
                    cache.keep(key, answer).await;
                }
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
    /// The context's bytes, priced once the answering deployment's cloud is known.
    transfer: AnswerTransfer,
    prompt_bytes: u64,
    /// Where a complete answer is kept for replay, and under which key.
    keep: Option<(Arc<AnswerCache>, String)>,
}

impl Witness {
    /// What the context and prompt cost to move to the deployment that answered.
    fn moved(&self, route: &RouteSummary) -> EgressBill {
        let model = route.chosen.as_ref().map_or_else(
            || Spot::new(LOCAL_CLOUD, LOCAL_CLOUD),
            |chosen| Spot::new(&chosen.cloud, &chosen.region),
        );
        let bill = self.transfer.bill(&model, self.prompt_bytes);
        egress::record(&self.metrics, &bill);
        bill
    }

    fn answered(&self, summary: &AnswerSummary) {
        if let Some(deployment) = answered_by(&summary.route) {
            self.metrics
                .record_citations(&deployment, summary.cited.all_valid());
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
            title: hit.hit.title.to_string(),
            object_key: hit.hit.object_key.clone(),
            text: hit.hit.text.to_string(),
            chunk_ordinal: chunk_ordinal(&hit.hit.chunk_id),
            span: hit.hit.span,
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
    summary.cited = CitedPassages::of(&text, summary.citations.len());
    if !text.is_empty() {
        let _ = sender.send(AnswerEvent::Token(text)).await;
    }
    let _ = sender.send(AnswerEvent::Done(Box::new(summary))).await;
}

/// Chunk ids are `{doc_id}#{ordinal}`: the position of the chunk in its document.
fn chunk_ordinal(chunk_id: &str) -> u32 {
    chunk_id
        .rsplit_once('#')
        .and_then(|(_, ordinal)| ordinal.parse().ok())
        .unwrap_or(0)
}

/// The most turns a conversation may have.
const MAX_TURNS: usize = 200;

/// The request as a conversation: its turns, or its question as the one user turn.
fn conversation(request: &AnswerRequest) -> Result<Vec<ChatMessage>> {
    if request.messages.is_empty() {
        return Ok(vec![ChatMessage {
            role: Role::User,
            content: request.question.clone(),
        }]);
    }
    if !request.question.is_empty() {
        return Err(Error::invalid(
            "set question or messages, not both: a conversation's question is its last user turn",
        ));
    }
    if request.messages.len() > MAX_TURNS {
        return Err(Error::invalid(format!(
            "messages: at most {MAX_TURNS} turns, got {}",
            request.messages.len()
        )));
    }
    if let Some(index) = request
        .messages
        .iter()
        .position(|turn| turn.content.trim().is_empty())
    {
        return Err(Error::invalid(format!("messages[{index}] is empty")));
    }
    match request.messages.last() {
        Some(last) if last.role == Role::User => Ok(request.messages.clone()),
        _ => Err(Error::invalid(
            "messages: the last turn must be the user's (the question to answer)",
        )),
    }
}

/// What an answer searches for: the last user turn, or the recent user turns.
fn retrieval_query(conversation: &[ChatMessage], policy: RetrievalQuery) -> String {
    let turns = match policy {
        RetrievalQuery::LastUserTurn => 1,
        RetrievalQuery::RecentUserTurns => 3,
    };
    let mut recent: Vec<&str> = conversation
        .iter()
        .rev()
        .filter(|turn| turn.role == Role::User)
        .take(turns)
        .map(|turn| turn.content.as_str())
        .collect();
    recent.reverse();
    recent.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(role: Role, content: &str) -> ChatMessage {
        ChatMessage {
            role,
            content: content.into(),
        }
    }

    #[test]
    fn the_retrieval_query_is_the_last_user_turn_or_the_recent_ones() {
        let conversation = [
            turn(Role::User, "Where are cold archives kept?"),
            turn(Role::Assistant, "In Dublin [1]."),
            turn(Role::User, "And their replicas?"),
        ];
        assert_eq!(
            retrieval_query(&conversation, RetrievalQuery::LastUserTurn),
            "And their replicas?"
        );
        assert_eq!(
            retrieval_query(&conversation, RetrievalQuery::RecentUserTurns),
            "Where are cold archives kept?\nAnd their replicas?"
        );
    }

    #[test]
    fn a_conversation_must_end_with_the_user_and_not_repeat_the_question() {
        let request = |question: &str, messages: Vec<ChatMessage>| AnswerRequest {
            question: question.into(),
            messages,
            ..AnswerRequest::default()
        };
        let ends_with_assistant = request("", vec![turn(Role::Assistant, "hi")]);
        let error = conversation(&ends_with_assistant).unwrap_err();
        assert!(error.message.contains("last turn must be the user's"));
        let both = request("q", vec![turn(Role::User, "q")]);
        assert!(
            conversation(&both)
                .unwrap_err()
                .message
                .contains("not both")
        );
        let blank = request("", vec![turn(Role::User, "  ")]);
        assert!(
            conversation(&blank)
                .unwrap_err()
                .message
                .contains("messages[0]")
        );
        assert_eq!(conversation(&request("q", vec![])).unwrap().len(), 1);
    }

    #[test]
    fn the_chunk_ordinal_comes_from_the_chunk_id() {
        assert_eq!(chunk_ordinal("docs/a.md#3"), 3);
        assert_eq!(chunk_ordinal("a#b#12"), 12);
        assert_eq!(chunk_ordinal("no-ordinal"), 0);
    }
}
