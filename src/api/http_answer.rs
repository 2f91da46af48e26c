//! `POST /v1/chat/completions` with a `retrieval` object: the conversation is answered
//! from the index through the same [`Service::answer`] as gRPC `Answer` (retrieval,
//! residency, the prompt, the route), and comes back as one `chat.completion`, or with
//! `stream` as `chat.completion.chunk` events, whose `skyfuse` object (on the whole
//! completion, or on the last chunk) adds the citations, the passages residency
//! withheld and the regions it kept the prompt to. OpenAI SDKs send the object with
//! `extra_body`.

use axum::Json;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::convert;
use super::event_stream::sse_response;
use super::http_search::FilterBody;
use super::openai::{
    completion_json, error_json, error_response, route_headers, route_json, unix_now, usage_json,
};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::service::{AnswerEvent, AnswerRequest, AnswerSummary, ChatCall, Service};

/// What to retrieve: `AnswerRequest`'s retrieval fields of the same names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetrievalBody {
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    sources: Vec<String>,
    #[serde(default)]
    filter: Option<FilterBody>,
    #[serde(default)]
    namespace: String,
}

/// How the answer goes back: whole, or streamed as OpenAI's chunks.
#[derive(Debug, Clone, Copy)]
pub(super) struct Delivery {
    pub stream: bool,
    /// `stream_options.include_usage`: a usage chunk before `[DONE]`.
    pub include_usage: bool,
}

/// The answer as a whole `chat.completion` or a stream of chunks, or the error (before
/// anything was sent) in OpenAI's shape.
pub(super) async fn answer_completion(
    service: &Service,
    principal: &Principal,
    call: ChatCall,
    retrieval: RetrievalBody,
    delivery: Delivery,
) -> Response {
    match answer(service, principal, call, retrieval, delivery).await {
        Ok(response) => response,
        Err(error) => error_response(&error),
    }
}

async fn answer(
    service: &Service,
    principal: &Principal,
    call: ChatCall,
    retrieval: RetrievalBody,
    delivery: Delivery,
) -> Result<Response> {
    if !call.stop.is_empty() {
        // Answers are prompted by skyfuse: the deployment's own `stop` applies.
        return Err(Error::invalid(
            "a completion with `retrieval` takes no `stop`: its deployment's `stop` applies",
        ));
    }
    let filter = retrieval
        .filter
        .map(FilterBody::into_proto)
        .transpose()?
        .as_ref()
        .map(convert::filter_request)
        .transpose()?;
    let call_id = call.id;
    let asked_model = call.model.clone().unwrap_or_else(|| "auto".to_owned());
    let request = AnswerRequest {
        question: String::new(),
        messages: call.messages,
        top_k: retrieval.top_k,
        sources: retrieval.sources,
        model: call.model,
        tier: call.tier,
        allowed_clouds: call.allowed_clouds,
        allowed_regions: call.allowed_regions,
        max_output_tokens: call.max_output_tokens,
        deadline: None,
        filter,
        namespace: retrieval.namespace,
    };
    let mut events = service.answer(principal, request).await?;
    if delivery.stream {
        // Nothing went out yet: a failure before the first token is still a status.
        let first = match events.recv().await {
            Some(AnswerEvent::Failed(error)) => return Err(error),
            Some(event) => event,
            None => return Err(Error::internal("the answer ended without finishing")),
        };
        return Ok(streamed(first, events, call_id, asked_model, delivery));
    }
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            AnswerEvent::Token(token) => text.push_str(&token),
            // Nothing went out yet: a whole response can still be an error status.
            AnswerEvent::Failed(error) => return Err(error),
            AnswerEvent::Done(summary) => {
                // The answer's id is what `/v1/feedback` rates; an extractive one has none.
                let id = match summary.answer_id.as_str() {
                    "" => call_id,
                    answer_id => answer_id.to_owned(),
                };
                return Ok(completion(&id, text, &summary));
            }
        }
    }
    Err(Error::internal("the answer ended without finishing"))
}

/// The answer's events as `chat.completion.chunk`s: a chunk per token (the model
/// named as asked, since the route is known only at the end), then one with the
/// finish reason, the answered model and the `skyfuse` object, the usage chunk when
/// asked, and `[DONE]`. A failure after the first token goes in band with no `[DONE]`.
fn streamed(
    first: AnswerEvent,
    events: mpsc::Receiver<AnswerEvent>,
    answer_id: String,
    asked_model: String,
    delivery: Delivery,
) -> Response {
    let created = unix_now();
    let chunk = move |id: &str, model: &str, delta: Value, finish: Value| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let include_usage = delivery.include_usage;
    let mut role_sent = false;
    let frames = move |event: Option<AnswerEvent>| match event {
        Some(AnswerEvent::Token(token)) => {
            let delta = if role_sent {
                json!({"content": token})
            } else {
                json!({"role": "assistant", "content": token})
            };
            role_sent = true;
            let data = chunk(&answer_id, &asked_model, delta, Value::Null);
            (vec![data.to_string()], true)
        }
        Some(AnswerEvent::Done(summary)) => {
            // The answer's own id rates it (`/v1/feedback`); extractive: the call's.
            let id = match summary.answer_id.as_str() {
                "" => answer_id.clone(),
                rated => rated.to_owned(),
            };
            let model = answered_model(&summary);
            let mut last = chunk(&id, &model, json!({}), json!(summary.finish_reason));
            last["skyfuse"] = skyfuse_json(&summary);
            let mut out = vec![last.to_string()];
            if include_usage {
                let mut usage = chunk(&id, &model, json!({}), Value::Null);
                usage["choices"] = json!([]);
                usage["usage"] = usage_json(&summary.usage);
                out.push(usage.to_string());
            }
            out.push("[DONE]".into());
            (out, false)
        }
        Some(AnswerEvent::Failed(error)) => (vec![error_json(&error).to_string()], false),
        None => {
            let error = Error::internal("the answer ended without finishing");
            (vec![error_json(&error).to_string()], false)
        }
    };
    let events =
        futures::stream::once(std::future::ready(first)).chain(ReceiverStream::new(events));
    sse_response(events, frames)
}

fn answered_model(summary: &AnswerSummary) -> String {
    match &summary.route.chosen {
        Some(chosen) => chosen.model.clone(),
        None => crate::service::EXTRACTIVE_MODEL.to_owned(),
    }
}

fn completion(id: &str, text: String, summary: &AnswerSummary) -> Response {
    let model = answered_model(summary);
    let body = completion_json(
        id,
        &model,
        text,
        &summary.finish_reason,
        &summary.usage,
        skyfuse_json(summary),
    );
    let mut response = Json(body).into_response();
    route_headers(response.headers_mut(), &summary.route);
    response
}

/// What skyfuse adds to an answer: the route, citations, residency and costs.
fn skyfuse_json(summary: &AnswerSummary) -> Value {
    let mut skyfuse = route_json(&summary.route);
    skyfuse["answer_id"] = json!(summary.answer_id);
    skyfuse["cut_short"] = json!(summary.cut_short());
    skyfuse["cached"] = json!(summary.cached);
    skyfuse["residency_regions"] = json!(summary.residency.regions);
    skyfuse["egress_usd"] = json!(summary.egress.total_usd());
    skyfuse["total_usd"] = json!(summary.total_cost_usd());
    skyfuse["withheld"] = summary
        .residency
        .withheld
        .iter()
        .map(|passage| {
            json!({
                "chunk_id": passage.chunk_id, "object_key": passage.object_key,
                "cloud": passage.cloud, "region": passage.region,
                "reason": passage.reason,
            })
        })
        .collect::<Value>();
    skyfuse["citations"] = summary
        .citations
        .iter()
        .map(|citation| {
            json!({
                "number": citation.number, "doc_id": citation.doc_id,
                "chunk_id": citation.chunk_id, "title": citation.title,
                "object_key": citation.object_key, "text": citation.text,
                "chunk_ordinal": citation.chunk_ordinal,
                "start_char": citation.span.map(|span| span.start),
                "end_char": citation.span.map(|span| span.end),
            })
        })
        .collect::<Value>();
    skyfuse
}
