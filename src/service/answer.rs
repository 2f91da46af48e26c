//! Answer: search, build the prompt within its budget, stream the model's text,
//! finish with citations, usage, cost and the route taken.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;

use super::{SearchParams, Service};
use crate::error::{Error, Result};
use crate::llm::extractive::extractive_answer;
use crate::llm::prompt::{Passage, build_prompt, estimate_tokens};
use crate::llm::{ChatEvent, ChatProvider, ChatRequest, Usage};
use crate::retrieve::{FusedHit, SourceOutcome};

/// Model name that asks for the extractive answer even when an LLM is configured.
pub const EXTRACTIVE_MODEL: &str = "extractive";

#[derive(Debug, Clone, Default)]
pub struct AnswerRequest {
    pub question: String,
    pub top_k: Option<u32>,
    pub sources: Vec<String>,
    /// None: the configured provider, or extractive when there is none.
    pub model: Option<String>,
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

#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub provider: String,
    pub model: String,
    /// ok | error
    pub outcome: String,
    pub message: String,
    pub took: Duration,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Route {
    pub provider: String,
    pub model: String,
    pub cloud: String,
    pub region: String,
    pub extractive: bool,
    pub attempts: Vec<Attempt>,
}

#[derive(Debug, Clone)]
pub struct AnswerSummary {
    pub citations: Vec<Citation>,
    pub usage: Usage,
    pub cost_usd: f64,
    pub route: Route,
    pub finish_reason: String,
    pub degraded: bool,
    pub outcomes: Vec<SourceOutcome>,
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
    /// unknown model) mean nothing was streamed.
    pub async fn answer(&self, request: AnswerRequest) -> Result<mpsc::Receiver<AnswerEvent>> {
        let provider = self.provider_for(request.model.as_deref())?;
        let explicit_model = request.model.is_some();
        let search = self
            .search(SearchParams {
                query: request.question.clone(),
                top_k: Some(request.top_k.unwrap_or(self.config.answer.top_k)),
                sources: request.sources.clone(),
                fusion: None,
                deadline: request.deadline,
                adapter_from: None,
            })
            .await?;
        let passages: Vec<Passage> = search
            .hits
            .iter()
            .map(|hit| Passage {
                title: hit.hit.title.clone(),
                text: hit.hit.text.clone(),
            })
            .collect();
        let max_output_tokens = request
            .max_output_tokens
            .unwrap_or(self.config.answer.max_output_tokens);
        let (chat_request, passages_used) = build_prompt(
            &request.question,
            &passages,
            self.config.answer.context_budget_tokens,
            max_output_tokens,
        );
        let citations = citations(&search.hits[..passages_used]);
        let (sender, receiver) = mpsc::channel(64);
        let summary = AnswerSummary {
            citations,
            usage: Usage::default(),
            cost_usd: 0.0,
            route: Route::default(),
            finish_reason: String::new(),
            degraded: search.degraded,
            outcomes: search.outcomes.clone(),
        };
        let Some(provider) = provider else {
            let text = extractive_answer(&request.question, &passages[..passages_used]);
            send_extractive(&sender, text, summary, Vec::new()).await;
            return Ok(receiver);
        };
        let deadline = request.deadline.unwrap_or_else(|| {
            Instant::now() + Duration::from_millis(self.provider_timeout_ms(provider.as_ref()))
        });
        let started = Instant::now();
        let stream = match provider.chat_stream(&chat_request, deadline).await {
            Ok(stream) => stream,
            Err(error) if explicit_model => return Err(error),
            Err(error) => {
                // No text was produced yet: an extractive answer, labelled as such
                // and with the failed attempt in the route, beats no answer.
                tracing::warn!(provider = %provider.info().id, %error, "llm unavailable, answering extractively");
                let attempt = attempt(provider.as_ref(), started, Err(&error));
                let text = extractive_answer(&request.question, &passages[..passages_used]);
                send_extractive(&sender, text, summary, vec![attempt]).await;
                return Ok(receiver);
            }
        };
        tokio::spawn(stream_answer(
            provider,
            stream,
            chat_request,
            summary,
            started,
            sender,
        ));
        Ok(receiver)
    }

    fn provider_for(&self, model: Option<&str>) -> Result<Option<Arc<dyn ChatProvider>>> {
        match model {
            None => Ok(self.chat.clone()),
            Some(EXTRACTIVE_MODEL) => Ok(None),
            Some(model) => match &self.chat {
                Some(provider) if provider.info().model == model => Ok(Some(provider.clone())),
                _ => {
                    let mut known = vec![EXTRACTIVE_MODEL.to_string()];
                    known.extend(
                        self.chat
                            .iter()
                            .map(|provider| provider.info().model.clone()),
                    );
                    Err(Error::not_found(format!(
                        "unknown model {model:?}; available: {}",
                        known.join(", ")
                    )))
                }
            },
        }
    }

    fn provider_timeout_ms(&self, provider: &dyn ChatProvider) -> u64 {
        self.config
            .providers
            .iter()
            .find(|config| config.id == provider.info().id)
            .map_or(self.config.server.default_timeout_ms, |config| {
                config.timeout_ms
            })
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

fn attempt(provider: &dyn ChatProvider, started: Instant, outcome: Result<(), &Error>) -> Attempt {
    Attempt {
        provider: provider.info().id.clone(),
        model: provider.info().model.clone(),
        outcome: if outcome.is_ok() { "ok" } else { "error" }.into(),
        message: outcome
            .err()
            .map(|error| error.message.clone())
            .unwrap_or_default(),
        took: started.elapsed(),
    }
}

async fn send_extractive(
    sender: &mpsc::Sender<AnswerEvent>,
    text: String,
    mut summary: AnswerSummary,
    attempts: Vec<Attempt>,
) {
    summary.route = Route {
        provider: EXTRACTIVE_MODEL.into(),
        model: EXTRACTIVE_MODEL.into(),
        cloud: "local".into(),
        region: "local".into(),
        extractive: true,
        attempts,
    };
    summary.finish_reason = "stop".into();
    if !text.is_empty() {
        let _ = sender.send(AnswerEvent::Token(text)).await;
    }
    let _ = sender.send(AnswerEvent::Done(Box::new(summary))).await;
}

async fn stream_answer(
    provider: Arc<dyn ChatProvider>,
    mut stream: futures::stream::BoxStream<'static, Result<ChatEvent>>,
    chat_request: ChatRequest,
    mut summary: AnswerSummary,
    started: Instant,
    sender: mpsc::Sender<AnswerEvent>,
) {
    let mut generated = String::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(ChatEvent::Delta(text)) => {
                generated.push_str(&text);
                if sender.send(AnswerEvent::Token(text)).await.is_err() {
                    return; // the caller went away; dropping the stream cancels the request
                }
            }
            Ok(ChatEvent::Finish { reason, usage }) => {
                if generated.is_empty() {
                    let error = Error::unavailable("the model finished without producing any text");
                    let _ = sender.send(AnswerEvent::Failed(error)).await;
                    return;
                }
                let usage = usage.unwrap_or_else(|| estimated_usage(&chat_request, &generated));
                let info = provider.info();
                summary.cost_usd = info.cost_usd(&usage);
                summary.usage = usage;
                summary.finish_reason = reason.as_str().to_string();
                summary.route = Route {
                    provider: info.id.clone(),
                    model: info.model.clone(),
                    cloud: info.cloud.clone(),
                    region: info.region.clone(),
                    extractive: false,
                    attempts: vec![attempt(provider.as_ref(), started, Ok(()))],
                };
                let _ = sender.send(AnswerEvent::Done(Box::new(summary))).await;
                return;
            }
            Err(error) => {
                let _ = sender.send(AnswerEvent::Failed(error)).await;
                return;
            }
        }
    }
    let error = Error::unavailable("the model stream ended without finishing");
    let _ = sender.send(AnswerEvent::Failed(error)).await;
}

fn estimated_usage(request: &ChatRequest, generated: &str) -> Usage {
    Usage {
        input_tokens: request
            .messages
            .iter()
            .map(|message| estimate_tokens(&message.content) as u64)
            .sum(),
        output_tokens: estimate_tokens(generated) as u64,
        cached_input_tokens: 0,
        estimated: true,
    }
}
