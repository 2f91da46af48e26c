//! `POST /v1/chat/completions` with a `retrieval` object: the conversation is answered
//! from the index through the same [`Service::answer`] as gRPC `Answer` (retrieval,
//! residency, the prompt, the route), and comes back as one `chat.completion` whose
//! `skyfuse` object adds the citations, the passages residency withheld and the regions
//! it kept the prompt to. OpenAI SDKs send the object with `extra_body`.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::convert;
use super::http_search::FilterBody;
use super::openai::{error_response, route_headers, route_json};
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

/// The answer as a whole `chat.completion`, or the error in OpenAI's shape.
pub(super) async fn answer_completion(
    service: &Service,
    principal: &Principal,
    call: ChatCall,
    retrieval: RetrievalBody,
    stream: bool,
) -> Response {
    match answer(service, principal, call, retrieval, stream).await {
        Ok(response) => response,
        Err(error) => error_response(&error),
    }
}

async fn answer(
    service: &Service,
    principal: &Principal,
    call: ChatCall,
    retrieval: RetrievalBody,
    stream: bool,
) -> Result<Response> {
    if stream {
        return Err(Error::invalid(
            "a completion with `retrieval` is sent whole: set `stream` to false",
        ));
    }
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

fn completion(id: &str, text: String, summary: &AnswerSummary) -> Response {
    let model = match &summary.route.chosen {
        Some(chosen) => chosen.model.clone(),
        None => crate::service::EXTRACTIVE_MODEL.to_owned(),
    };
    let usage = &summary.usage;
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
    let body = json!({
        "id": id,
        "object": "chat.completion",
        "created": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": summary.finish_reason,
        }],
        "usage": {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens.saturating_add(usage.output_tokens),
            "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        },
        "skyfuse": skyfuse,
    });
    let mut response = Json(body).into_response();
    route_headers(response.headers_mut(), &summary.route);
    response
}
