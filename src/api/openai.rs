//! The OpenAI-compatible HTTP facade: `POST /v1/chat/completions` (whole or
//! streamed) and `GET /v1/models`, through the same [`Service::chat`] as `Answer`,
//! so OpenAI SDKs, LangChain and LlamaIndex can use skyfuse as their LLM endpoint;
//! beside them `/v1/embeddings`, `/v1/feedback`, `POST /v1/search`
//! ([`super::http_search`]) and the OpenAPI document at `GET /v1/openapi.json`. A
//! completion with a `retrieval` object is answered from the index instead
//! ([`super::http_answer`]).
//!
//! `model` is a model name, `tier:<name>` for a budget tier, or `auto` (or
//! absent) for the default. `x-skyfuse-allowed-clouds: aws,azure` and
//! `x-skyfuse-allowed-regions: eu-*,europe-*` narrow where the prompt may go; `Authorization: Bearer <api key or token>` (or an mTLS client certificate) names the
//! caller when identities are configured; `/v1/models` lists only its models.
//! Each response carries the route (`x-skyfuse-*` headers, and a `skyfuse` field).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::Credentials;
use crate::embed::Purpose;
use crate::error::{Error, ErrorKind, Result};
use crate::limits::{Protocol, Quota, RateLimitStatus};
use crate::llm::{ChatMessage, Role, Usage};
use crate::route::{RouteEvent, RouteSummary};

use super::event_stream::sse_response;
use super::openai_wire::{
    AssistantMessage, ChunkBody, ChunkChoice, CompletionBody, CompletionChoice, Delta, RouteBody,
    UsageBody, chunk_text,
};
use crate::service::{ChatCall, EmbeddingsRequest, Service};
use crate::telemetry::trace::{self, CallTrace};

/// Every route the facade serves, with its method: the router is built from this list,
/// and a test holds `docs/openapi.json` to it.
pub(super) fn routes() -> Vec<(Method, &'static str, MethodRouter<Arc<Service>>)> {
    vec![
        (Method::POST, "/v1/chat/completions", post(chat_completions)),
        (Method::GET, "/v1/models", get(models)),
        (Method::POST, "/v1/feedback", post(feedback)),
        (Method::POST, "/v1/embeddings", post(embeddings)),
        (Method::POST, "/v1/search", post(super::http_search::search)),
        (
            Method::POST,
            "/v1/documents",
            post(super::http_documents::upsert),
        ),
        (
            Method::POST,
            "/v1/documents/delete",
            post(super::http_documents::delete),
        ),
        (
            Method::GET,
            "/v1/openapi.json",
            get(super::openapi::document),
        ),
    ]
}

/// The facade's routes over the service; the body limit is `server.max_message_bytes`,
/// and every call counts against the server-wide `server.max_concurrent_calls`.
/// [`super::serve`] serves it beside gRPC.
pub(super) fn app(service: Arc<Service>) -> axum::Router {
    let limit = service.config().server.max_message_bytes;
    let call_limit = service.call_limit().layer(Protocol::Http);
    routes()
        .into_iter()
        .fold(axum::Router::new(), |router, (_, path, handler)| {
            router.route(path, handler)
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(call_limit)
        .layer(super::redact::RequestIdLayer)
        .with_state(service)
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    model: Option<String>,
    messages: Vec<WireMessage>,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    stream_options: Option<StreamOptions>,
    stop: Option<StopSequences>,
    /// Answer from the index, as gRPC `Answer` does ([`super::http_answer`]).
    retrieval: Option<super::http_answer::RetrievalBody>,
}

/// OpenAI's `stop`: one string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StopSequences {
    One(String),
    Many(Vec<String>),
}

impl StopSequences {
    fn checked(&self) -> Result<Vec<String>> {
        let stop = match self {
            Self::One(text) => vec![text.clone()],
            Self::Many(texts) => texts.clone(),
        };
        if stop.len() > crate::llm::MAX_STOP_SEQUENCES {
            return Err(Error::invalid(format!(
                "stop holds {} sequences; at most {} are allowed",
                stop.len(),
                crate::llm::MAX_STOP_SEQUENCES
            )));
        }
        if stop.iter().any(String::is_empty) {
            return Err(Error::invalid("stop sequences must not be empty"));
        }
        Ok(stop)
    }
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    role: String,
    content: Value,
}

/// The caller a facade request's credentials prove, or the OpenAI-shaped refusal.
pub(super) async fn authenticate(
    service: &Service,
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
) -> std::result::Result<crate::auth::Principal, Response> {
    service
        .authenticate(&Credentials::from_http(headers, extensions))
        .await
        .map_err(|error| error_response(&error))
}

/// The caller, then its JSON body: who is calling comes first, so an anonymous caller
/// learns nothing from the body's checks. `hint` follows a parse error's message.
async fn authenticated_body<T: serde::de::DeserializeOwned>(
    service: &Service,
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
    body: &[u8],
    hint: &str,
) -> std::result::Result<(crate::auth::Principal, T), Response> {
    let principal = authenticate(service, headers, extensions).await?;
    let parsed = serde_json::from_slice(body).map_err(|error| {
        error_response(&Error::invalid(format!(
            "invalid request body: {error}{hint}"
        )))
    })?;
    Ok((principal, parsed))
}

/// The models and tiers the caller may use; 401 without credentials.
async fn models(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
) -> Response {
    let principal = match authenticate(&service, &headers, &extensions).await {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    let (models, tiers) = service.chat_models_for(&principal);
    let mut data: Vec<Value> = models
        .into_iter()
        .map(|model| json!({"id": model, "object": "model", "created": 0, "owned_by": "skyfuse"}))
        .collect();
    data.extend(tiers.into_iter().map(|tier| {
        json!({"id": format!("tier:{tier}"), "object": "model", "created": 0, "owned_by": "skyfuse"})
    }));
    Json(json!({"object": "list", "data": data})).into_response()
}

/// `POST /v1/feedback {"id": "chatcmpl-...", "score": 0.8}`: the caller rates one of its
/// completions (0 to 1); `204` when recorded.
#[derive(Debug, Deserialize)]
struct FeedbackRequest {
    id: String,
    score: f64,
}

async fn feedback(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    body: axum::body::Bytes,
) -> Response {
    let (principal, request): (_, FeedbackRequest) =
        match authenticated_body(&service, &headers, &extensions, &body, "").await {
            Ok(call) => call,
            Err(response) => return response,
        };
    match service.feedback(&principal, &request.id, request.score) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error_response(&error),
    }
}

/// `POST /v1/embeddings`, OpenAI's shape: `model` is an embedding space's id (or the
/// model of exactly one space), `input` a string or an array of strings. skyfuse adds
/// `input_type` (`"document"`, the default, or `"query"`) for models that embed the two
/// differently.
#[derive(Debug, Deserialize)]
struct EmbeddingsBody {
    model: String,
    input: EmbeddingsInput,
    #[serde(default)]
    dimensions: Option<usize>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    input_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EmbeddingsInput {
    One(String),
    Many(Vec<String>),
}

async fn embeddings(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    body: axum::body::Bytes,
) -> Response {
    let hint = " (input must be a string or an array of strings)";
    let (principal, body): (_, EmbeddingsBody) =
        match authenticated_body(&service, &headers, &extensions, &body, hint).await {
            Ok(call) => call,
            Err(response) => return response,
        };
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            let message = format!("encoding_format must be float or base64, not {other:?}");
            return error_response(&Error::invalid(message));
        }
    };
    let purpose = match body.input_type.as_deref() {
        None | Some("document") => Purpose::Document,
        Some("query") => Purpose::Query,
        Some(other) => {
            let message = format!("input_type must be document or query, not {other:?}");
            return error_response(&Error::invalid(message));
        }
    };
    let texts = match body.input {
        EmbeddingsInput::One(text) => vec![text],
        EmbeddingsInput::Many(texts) => texts,
    };
    let request = EmbeddingsRequest {
        model: body.model,
        texts,
        purpose,
        dimensions: body.dimensions,
    };
    let embedded = match service.embeddings(&principal, request).await {
        Ok(embedded) => embedded,
        Err(error) => return error_response(&error),
    };
    let data: Vec<Value> = embedded
        .vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                // OpenAI's base64 form: the little-endian f32 bytes.
                let bytes: Vec<u8> = vector
                    .iter()
                    .flat_map(|value| value.to_le_bytes())
                    .collect();
                json!(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    bytes
                ))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Json(json!({
        "object": "list",
        "data": data,
        "model": embedded.space,
        "usage": {"prompt_tokens": embedded.input_tokens, "total_tokens": embedded.input_tokens},
    }))
    .into_response()
}

/// The request whole rather than as extractors: the header map and extensions
/// extractors copy them, and this is the facade's hottest path.
async fn chat_completions(
    State(service): State<Arc<Service>>,
    request: axum::extract::Request,
) -> Response {
    let call_start = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    let limit = service.config().server.max_message_bytes;
    let body = match buffered_body(body, limit).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let (headers, extensions) = (&parts.headers, &parts.extensions);
    let trace = service
        .traces()
        .http_call("POST", "/v1/chat/completions", headers);
    let credentials = Credentials::from_http(headers, extensions);
    let (rate, started) = trace::within(
        trace.as_ref(),
        start(&service, &credentials, headers, &body),
    )
    .await;
    let to_first_token = call_start.elapsed();
    let mut response = match started {
        Ok(Begun::Answered(response)) => response,
        Ok(Begun::Chat(begun)) => {
            let (started, stream, include_usage, id) = *begun;
            if stream {
                // The headers leave with the first token: skyfuse's share is known.
                let overhead = to_first_token.saturating_sub(started.attempts_time());
                let mut response = streamed(started, include_usage, id, trace);
                overhead_header(response.headers_mut(), overhead);
                response
            } else {
                whole(started, id, to_first_token).await
            }
        }
        Err(error) => {
            if let Some(trace) = &trace {
                trace.fail(error.kind.as_str(), &error.message);
            }
            error_response(&error)
        }
    };
    if let Some(rate) = rate {
        rate_limit_headers(response.headers_mut(), &rate);
    }
    response
}

/// A request body of at most `limit` bytes, or the error response: 413 past the
/// limit (as `DefaultBodyLimit` answers the other routes), 400 when it broke off.
async fn buffered_body(
    body: axum::body::Body,
    limit: usize,
) -> std::result::Result<axum::body::Bytes, Response> {
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        let inner = error.into_inner();
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(inner.as_ref());
        while let Some(error) = cause {
            if error.is::<http_body_util::LengthLimitError>() {
                let message = format!("the request body is larger than {limit} bytes");
                let body = error_json(&Error::invalid(message));
                return (StatusCode::PAYLOAD_TOO_LARGE, Json(body)).into_response();
            }
            cause = error.source();
        }
        error_response(&Error::invalid(format!(
            "cannot read the request body: {inner}"
        )))
    })
}

type Started = (crate::route::Started, bool, bool, String);

/// A chat call under way, or a completion with retrieval already answered.
enum Begun {
    Chat(Box<Started>),
    Answered(Response),
}

/// Starts the call; the rate status is known once the caller is, whether the call
/// then starts or not.
async fn start(
    service: &Service,
    credentials: &Credentials,
    headers: &HeaderMap,
    body: &[u8],
) -> (Option<RateLimitStatus>, Result<Begun>) {
    // Who is calling comes first: an anonymous caller learns nothing from the body's checks.
    let principal = match service.authenticate(credentials).await {
        Ok(principal) => principal,
        Err(error) => return (None, Err(error)),
    };
    let mut request: CompletionRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => {
            let error = Error::invalid(format!("invalid request body: {error}"));
            return (None, Err(error));
        }
    };
    let call = match chat_call(service, headers, &mut request) {
        Ok(call) => call,
        Err(error) => return (None, Err(error)),
    };
    let include_usage = request
        .stream_options
        .as_ref()
        .is_some_and(|options| options.include_usage);
    if let Some(retrieval) = request.retrieval {
        let delivery = super::http_answer::Delivery {
            stream: request.stream,
            include_usage,
        };
        // Boxed: an answer's future (retrieval, prompt, route) is twice a chat's, and
        // inline it would size the future of every completion.
        let response = Box::pin(super::http_answer::answer_completion(
            service, &principal, call, retrieval, delivery,
        ))
        .await;
        return (None, Ok(Begun::Answered(response)));
    }
    let id = call.id.clone();
    let rated = service.rated_chat(&principal, call).await;
    let started = rated
        .result
        .map(|started| Begun::Chat(Box::new((started, request.stream, include_usage, id))))
        .map_err(Error::from);
    (rated.rate, started)
}

/// The request as a chat call, after the checks only the facade can make. The
/// messages move into the call (a long prompt is not copied).
fn chat_call(
    service: &Service,
    headers: &HeaderMap,
    request: &mut CompletionRequest,
) -> Result<ChatCall> {
    let messages = messages(std::mem::take(&mut request.messages))?;
    let stop = request
        .stop
        .as_ref()
        .map(StopSequences::checked)
        .transpose()?
        .unwrap_or_default();
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let (model, tier) = match request.model.as_deref() {
        None | Some("" | "auto") => (None, None),
        Some(name) => match name.strip_prefix("tier:") {
            Some(tier) => (None, Some(tier.to_string())),
            None => (Some(name.to_string()), None),
        },
    };
    let list = |name: &str| -> Vec<String> {
        header(name)
            .map(|value| {
                value
                    .split(',')
                    .map(|item| item.trim().to_string())
                    .filter(|item| !item.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (field, max_output_tokens) = match (request.max_completion_tokens, request.max_tokens) {
        (Some(tokens), _) => ("max_completion_tokens", Some(tokens)),
        (None, tokens) => ("max_tokens", tokens),
    };
    let cap = service.config().answer.max_output_tokens_limit;
    if let Some(asked) = max_output_tokens
        && asked > cap
    {
        return Err(Error::invalid(format!(
            "{field} is {asked}, more than this server allows (answer.max_output_tokens_limit = {cap})"
        )));
    }
    Ok(ChatCall {
        model,
        tier,
        allowed_clouds: list("x-skyfuse-allowed-clouds"),
        allowed_regions: list("x-skyfuse-allowed-regions"),
        messages,
        max_output_tokens,
        temperature: request.temperature,
        stop,
        deadline: None,
        id: completion_id(),
        egress_usd_by_cloud: Vec::new(),
    })
}

fn messages(wire: Vec<WireMessage>) -> Result<Vec<ChatMessage>> {
    if wire.is_empty() {
        return Err(Error::invalid("messages must not be empty"));
    }
    wire.into_iter()
        .map(|message| {
            let role = match message.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(Error::invalid(format!(
                        "unsupported message role {other:?}"
                    )));
                }
            };
            Ok(ChatMessage {
                role,
                content: text_content(message.content)?,
            })
        })
        .collect()
}

/// A string, or an array of parts of which only text is supported.
fn text_content(content: Value) -> Result<String> {
    match content {
        Value::String(text) => Ok(text),
        Value::Array(parts) => parts
            .iter()
            .map(
                |part| match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(text))) => Ok(text.as_str()),
                    (kind, _) => Err(Error::invalid(format!(
                        "unsupported content part {:?}: only text is supported",
                        kind.unwrap_or("?")
                    ))),
                },
            )
            .collect::<Result<Vec<_>>>()
            .map(|parts| parts.concat()),
        Value::Null => Ok(String::new()),
        _ => Err(Error::invalid(
            "message content must be a string or an array of parts",
        )),
    }
}

/// `x-skyfuse-overhead-ms`: skyfuse's own share of the call until its first token.
fn overhead_header(headers: &mut HeaderMap, overhead: std::time::Duration) {
    if let Ok(value) = HeaderValue::from_str(&format!("{:.3}", overhead.as_secs_f64() * 1000.0)) {
        headers.insert(OVERHEAD_HEADER, value);
    }
}

/// The whole completion as one JSON body. `to_first_token`: the call's time until the
/// route produced its first token, of which skyfuse's own share goes out as
/// `x-skyfuse-overhead-ms` (the rest was spent in attempts, and what follows in the
/// model's generation).
async fn whole(
    started: crate::route::Started,
    id: String,
    to_first_token: std::time::Duration,
) -> Response {
    let (text, summary) = match started.collect().await {
        Ok(answer) => answer,
        // Nothing went out yet: a whole response can still be an error status.
        Err(error) => return error_response(&error),
    };
    let model = summary
        .chosen
        .as_ref()
        .map_or("", |info| info.model.as_str());
    let body = completion_body(
        &id,
        model,
        &text,
        &summary.finish_reason,
        &summary.usage,
        RouteBody::of(&summary),
    );
    let mut response = json_response(&body);
    route_headers(response.headers_mut(), &summary);
    let overhead = to_first_token.saturating_sub(summary.attempts_time());
    overhead_header(response.headers_mut(), overhead);
    response
}

/// `body` as a JSON response, written into a buffer sized for a typical completion
/// (axum's `Json` starts at 128 bytes and grows three or four times).
fn json_response(body: &impl serde::Serialize) -> Response {
    let mut bytes = Vec::with_capacity(1024);
    match serde_json::to_writer(&mut bytes, body) {
        Ok(()) => (
            [(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(error) => error_response(&Error::internal(format!(
            "cannot encode the completion: {error}"
        ))),
    }
}

fn streamed(
    started: crate::route::Started,
    include_usage: bool,
    id: String,
    trace: Option<CallTrace>,
) -> Response {
    let model = started.deployment().model.clone();
    let created = unix_now();
    let mut first = true;
    let frames = move |event: Option<RouteEvent>| {
        // The call's span ends with its stream.
        let _trace = &trace;
        match event {
            Some(RouteEvent::Token(token)) => {
                let delta = Delta {
                    role: first.then_some("assistant"),
                    content: Some(&token),
                };
                first = false;
                let choices = [ChunkChoice {
                    index: 0,
                    delta,
                    finish_reason: None,
                }];
                let token = ChunkBody::new(&id, created, &model, &choices);
                (vec![chunk_text(&token)], true)
            }
            Some(RouteEvent::Done(summary)) => {
                let choices = [ChunkChoice {
                    index: 0,
                    delta: Delta::default(),
                    finish_reason: Some(&summary.finish_reason),
                }];
                let last = ChunkBody {
                    skyfuse: Some(RouteBody::of(&summary)),
                    ..ChunkBody::new(&id, created, &model, &choices)
                };
                let mut out = vec![chunk_text(&last)];
                if include_usage {
                    let usage = ChunkBody {
                        usage: Some(UsageBody::from(&summary.usage)),
                        ..ChunkBody::new(&id, created, &model, &[])
                    };
                    out.push(chunk_text(&usage));
                }
                out.push("[DONE]".into());
                (out, false)
            }
            // The status went out with the first token: the failure goes in
            // band and no [DONE] follows, so clients see a broken stream.
            Some(RouteEvent::Failed(error, _)) => (vec![error_json(&error).to_string()], false),
            None => {
                let error = Error::internal("the answer ended without finishing");
                (vec![error_json(&error).to_string()], false)
            }
        }
    };
    sse_response(ReceiverStream::new(started.into_events()), frames)
}

/// A whole `chat.completion`, with skyfuse's own object beside OpenAI's fields.
fn completion_body<'a, S>(
    id: &'a str,
    model: &'a str,
    text: &'a str,
    finish_reason: &'a str,
    usage: &Usage,
    skyfuse: S,
) -> CompletionBody<'a, S> {
    CompletionBody {
        id,
        object: "chat.completion",
        created: unix_now(),
        model,
        choices: [CompletionChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: text,
            },
            finish_reason,
        }],
        usage: UsageBody::from(usage),
        skyfuse,
    }
}

/// [`completion_body`] as a JSON value (an answer from the index adds to it).
pub(super) fn completion_json(
    id: &str,
    model: &str,
    text: String,
    finish_reason: &str,
    usage: &Usage,
    skyfuse: Value,
) -> Value {
    let body = completion_body(id, model, &text, finish_reason, usage, skyfuse);
    serde_json::to_value(body).unwrap_or_default()
}

/// OpenAI's `usage` object.
pub(super) fn usage_json(usage: &Usage) -> Value {
    serde_json::to_value(UsageBody::from(usage)).unwrap_or_default()
}

pub(super) fn route_json(summary: &RouteSummary) -> Value {
    serde_json::to_value(RouteBody::of(summary)).unwrap_or_default()
}

/// skyfuse's own milliseconds in a call (see [`whole`]); gRPC `Search` sends the same.
const OVERHEAD_HEADER: HeaderName = HeaderName::from_static(super::retrieval::OVERHEAD_HEADER);

pub(super) fn route_headers(headers: &mut HeaderMap, summary: &RouteSummary) {
    // These and the overhead, request id and rate headers, in one growth of the map.
    headers.reserve(12);
    let mut set = |name: HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    if let Some(info) = &summary.chosen {
        set(PROVIDER_HEADER, &info.id);
        set(DEPLOYMENT_HEADER, &info.deployment);
        set(CLOUD_HEADER, &info.cloud);
        set(REGION_HEADER, &info.region);
    }
    set(COST_HEADER, &format!("{:.8}", summary.cost_usd));
    let failovers = HeaderValue::from(summary.failover_count());
    headers.insert(FAILOVER_COUNT_HEADER, failovers);
}

// Header names parsed once, at compile time: a `&str` name is parsed per insert.
const PROVIDER_HEADER: HeaderName = HeaderName::from_static("x-skyfuse-provider");
const DEPLOYMENT_HEADER: HeaderName = HeaderName::from_static("x-skyfuse-deployment");
const CLOUD_HEADER: HeaderName = HeaderName::from_static("x-skyfuse-cloud");
const REGION_HEADER: HeaderName = HeaderName::from_static("x-skyfuse-region");
const COST_HEADER: HeaderName = HeaderName::from_static("x-skyfuse-cost-usd");
const FAILOVER_COUNT_HEADER: HeaderName = HeaderName::from_static("x-skyfuse-failover-count");

/// OpenAI's `x-ratelimit-*` headers, for each limit the caller has.
fn rate_limit_headers(headers: &mut HeaderMap, rate: &RateLimitStatus) {
    for (noun, quota) in [("requests", rate.requests), ("tokens", rate.tokens)] {
        let Some(quota) = quota else {
            continue;
        };
        let Quota {
            limit,
            remaining,
            reset,
        } = quota;
        for (name, value) in [
            (format!("x-ratelimit-limit-{noun}"), limit.to_string()),
            (
                format!("x-ratelimit-remaining-{noun}"),
                remaining.to_string(),
            ),
            (format!("x-ratelimit-reset-{noun}"), reset_text(reset)),
        ] {
            if let (Ok(name), Ok(value)) = (
                axum::http::HeaderName::try_from(name),
                HeaderValue::from_str(&value),
            ) {
                headers.insert(name, value);
            }
        }
    }
}

/// A duration as OpenAI writes its resets: `20ms`, `1s`, `6m0s`.
fn reset_text(reset: std::time::Duration) -> String {
    let millis = reset.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let seconds = millis.div_ceil(1000);
    match seconds / 60 {
        0 => format!("{seconds}s"),
        minutes => format!("{minutes}m{}s", seconds % 60),
    }
}

/// OpenAI's error shape, with the status its kind means.
pub(super) fn error_response(error: &Error) -> Response {
    let status = match error.kind {
        ErrorKind::InvalidArgument | ErrorKind::ContextLength => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::AlreadyExists => StatusCode::CONFLICT,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        // An endpoint refused our own credentials: not the caller's fault.
        ErrorKind::Auth => StatusCode::BAD_GATEWAY,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::Throttled => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Config | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut response = (status, Json(error_json(error))).into_response();
    if error.kind == ErrorKind::Unauthenticated {
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
    }
    if let Some(wait) = error.retry_after
        && let Ok(value) = HeaderValue::from_str(&wait.as_secs().max(1).to_string())
    {
        response.headers_mut().insert("retry-after", value);
    }
    response
}

pub(super) fn error_json(error: &Error) -> Value {
    let (kind, code) = match error.kind {
        ErrorKind::InvalidArgument => ("invalid_request_error", "invalid_request"),
        ErrorKind::ContextLength => ("invalid_request_error", "context_length_exceeded"),
        ErrorKind::NotFound => ("invalid_request_error", "model_not_found"),
        ErrorKind::AlreadyExists => ("invalid_request_error", "already_exists"),
        ErrorKind::Unauthenticated => ("authentication_error", "invalid_api_key"),
        ErrorKind::Auth => ("api_error", "upstream_unavailable"),
        ErrorKind::Forbidden => ("permission_error", "forbidden"),
        ErrorKind::Throttled => ("rate_limit_error", "rate_limit_exceeded"),
        ErrorKind::Unavailable => ("api_error", "upstream_unavailable"),
        ErrorKind::Timeout => ("api_error", "timeout"),
        ErrorKind::Config | ErrorKind::Internal => ("api_error", "internal_error"),
    };
    let message = super::redact::error_text(error);
    json!({"error": {"message": message, "type": kind, "code": code}})
}

/// The completion's `id`, which `/v1/feedback` takes to rate it.
fn completion_id() -> String {
    crate::ids::prefixed_random_id("chatcmpl-")
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
