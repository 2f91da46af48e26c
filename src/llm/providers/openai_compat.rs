//! OpenAI-compatible chat completions (`POST {base}/v1/chat/completions`), as served
//! by llama.cpp `llama-server`, vLLM and Ollama, and the OpenAI chat shape Azure
//! OpenAI shares: the request body, the SSE chunks (always asking for usage) and the
//! whole completion.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::stream::{Progress, drive};
use super::{Connection, sse_events};
use crate::cloud::http::{malformed, stream_error};
use crate::error::Result;
use crate::llm::{
    ChatEvent, ChatProvider, ChatRequest, ChatResponse, FinishReason, ProviderInfo, Usage,
};

pub struct OpenAiCompatChat {
    connection: Connection,
    /// `{base}/v1/chat/completions`, parsed once: every call goes to it.
    url: Result<url::Url>,
}

impl OpenAiCompatChat {
    pub fn new(connection: Connection) -> Self {
        let url = connection.endpoint.url("/v1/chat/completions");
        Self { connection, url }
    }

    fn url(&self) -> Result<url::Url> {
        self.url.clone()
    }
}

#[async_trait]
impl ChatProvider for OpenAiCompatChat {
    fn info(&self) -> &Arc<ProviderInfo> {
        &self.connection.info
    }

    async fn chat(&self, request: &ChatRequest, deadline: Instant) -> Result<ChatResponse> {
        let body = ChatBody::new(request, Some(self.connection.wire_id()), false);
        let completion: Completion = self.connection.call(self.url()?, &body, deadline).await?;
        completion.normalize(&self.connection.service)
    }

    async fn chat_stream(
        &self,
        request: &ChatRequest,
        deadline: Instant,
    ) -> Result<BoxStream<'static, Result<ChatEvent>>> {
        let body = ChatBody::new(request, Some(self.connection.wire_id()), true);
        open_sse(&self.connection, self.url()?, &body, deadline).await
    }
}

/// Sends an OpenAI-shaped streaming request and normalizes its chunks.
pub(super) async fn open_sse(
    connection: &Connection,
    url: url::Url,
    body: &(impl Serialize + Sync + ?Sized),
    deadline: Instant,
) -> Result<BoxStream<'static, Result<ChatEvent>>> {
    let response = connection
        .open_stream(url, body, "text/event-stream", deadline)
        .await?;
    let service = connection.service.clone();
    let events = sse_events(&service, response);
    Ok(drive(
        &connection.service,
        events,
        move |event, progress| decode_chunk(&service, &event.data, progress),
    ))
}

/// The chat-completions body; `model` is left out where the URL names it (Azure's
/// deployment URLs). Typed, so it is written straight to bytes on every call.
#[derive(Serialize)]
pub(super) struct ChatBody<'a> {
    messages: Vec<BodyMessage<'a>>,
    max_tokens: u32,
    temperature: f32,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<BodyStreamOptions>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
}

#[derive(Serialize)]
struct BodyMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct BodyStreamOptions {
    include_usage: bool,
}

impl<'a> ChatBody<'a> {
    /// A streamed body always asks for usage.
    pub(super) fn new(request: &'a ChatRequest, model: Option<&'a str>, stream: bool) -> Self {
        Self {
            messages: request
                .messages
                .iter()
                .map(|message| BodyMessage {
                    role: message.role.as_str(),
                    content: &message.content,
                })
                .collect(),
            max_tokens: request.max_output_tokens,
            temperature: request.temperature,
            stream,
            model,
            stream_options: stream.then_some(BodyStreamOptions {
                include_usage: true,
            }),
            stop: &request.stop,
        }
    }
}

/// [`ChatBody`] as a JSON value, for providers that rename or drop fields.
pub(super) fn request_body(request: &ChatRequest, model: Option<&str>, stream: bool) -> Value {
    serde_json::to_value(ChatBody::new(request, model, stream)).unwrap_or_default()
}

/// One `data:` payload of a chat-completions stream. Chunks without choices are
/// metadata (Azure's prompt-filter results, the usage chunk), chunks without a
/// delta are filter annotations; `[DONE]` ends the answer (with `stop` when a
/// server sent no finish reason); an `error` object is the stream failing.
pub(super) fn decode_chunk(service: &str, data: &str, progress: &mut Progress) -> Result<String> {
    if data.trim() == "[DONE]" {
        progress.finish.get_or_insert(FinishReason::Stop);
        progress.complete = true;
        return Ok(String::new());
    }
    let chunk: StreamChunk = serde_json::from_str(data)
        .map_err(|error| malformed(service, format!("unreadable stream chunk: {error}")))?;
    if let Some(error) = chunk.error {
        let (code, message) = error.code_and_message();
        return Err(stream_error(service, code.as_deref(), &message));
    }
    if let Some(usage) = chunk.usage {
        progress.usage = Some(usage.normalize());
    }
    let mut text = String::new();
    for choice in chunk.choices {
        if let Some(content) = choice.delta.and_then(|delta| delta.content) {
            text.push_str(&content);
        }
        if let Some(reason) = choice.finish_reason {
            progress.finish = Some(FinishReason::from_wire(&reason));
        }
    }
    Ok(text)
}

#[derive(Deserialize)]
struct StreamChunk {
    #[serde(default)]
    choices: Vec<StreamChoice>,
    usage: Option<WireUsage>,
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct StreamChoice {
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    content: Option<String>,
}

/// A non-streamed chat completion.
#[derive(Deserialize)]
pub(super) struct Completion {
    #[serde(default)]
    choices: Vec<CompletionChoice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct CompletionChoice {
    message: Option<Delta>,
    finish_reason: Option<String>,
}

impl Completion {
    pub(super) fn normalize(self, service: &str) -> Result<ChatResponse> {
        let choice = self
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| malformed(service, "a completion without choices"))?;
        Ok(ChatResponse {
            text: choice
                .message
                .and_then(|message| message.content)
                .unwrap_or_default(),
            reason: choice
                .finish_reason
                .as_deref()
                .map_or(FinishReason::Stop, FinishReason::from_wire),
            usage: self.usage.map(WireUsage::normalize),
        })
    }
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Deserialize)]
struct PromptTokensDetails {
    #[serde(default)]
    cached_tokens: u64,
}

impl WireUsage {
    /// `prompt_tokens` already counts the cached ones.
    fn normalize(self) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens,
            output_tokens: self.completion_tokens,
            cached_input_tokens: self
                .prompt_tokens_details
                .map_or(0, |details| details.cached_tokens),
            estimated: false,
        }
    }
}

/// `{"error": {"code", "message"}}` (OpenAI, Azure, llama.cpp) or `{"error": "..."}`
/// (Ollama).
#[derive(Deserialize)]
#[serde(untagged)]
enum WireError {
    Object {
        #[serde(default)]
        code: Option<Value>,
        #[serde(default)]
        message: String,
    },
    Text(String),
}

impl WireError {
    fn code_and_message(self) -> (Option<String>, String) {
        match self {
            Self::Object { code, message } => {
                let code = code.and_then(|code| match code {
                    Value::String(code) => Some(code),
                    Value::Number(number) => Some(number.to_string()),
                    _ => None,
                });
                (code, message)
            }
            Self::Text(message) => (None, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::error::{Error, ErrorKind};
    use crate::llm::{ChatMessage, Role};
    use serde_json::json;

    fn frames(lines: &[&str]) -> Vec<Result<ChatEvent>> {
        let units = futures::stream::iter(
            lines
                .iter()
                .map(|line| Ok::<_, Error>(line.to_string()))
                .collect::<Vec<_>>(),
        );
        let stream = drive("test", units, |data: String, progress| {
            decode_chunk("test", &data, progress)
        });
        futures::executor::block_on(stream.collect())
    }

    #[test]
    fn deltas_then_finish_with_the_usage_of_the_last_chunk() {
        let events = frames(&[
            r#"{"id":"","choices":[],"prompt_filter_results":[{"prompt_index":0}]}"#,
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"To a paired"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"content_filter_results":{}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":" region [2]."},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":388,"completion_tokens":9,"total_tokens":397,"prompt_tokens_details":{"cached_tokens":128}}}"#,
            "[DONE]",
        ]);
        let events: Vec<ChatEvent> = events.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            events,
            vec![
                ChatEvent::Delta("To a paired".into()),
                ChatEvent::Delta(" region [2].".into()),
                ChatEvent::Finish {
                    reason: FinishReason::Stop,
                    usage: Some(Usage {
                        input_tokens: 388,
                        output_tokens: 9,
                        cached_input_tokens: 128,
                        estimated: false
                    }),
                },
            ]
        );
    }

    #[test]
    fn an_error_inside_a_200_stream_is_an_error_not_an_end() {
        let events = frames(&[
            r#"{"choices":[{"index":0,"delta":{"content":"Partial"},"finish_reason":null}]}"#,
            r#"{"error":{"code":500,"message":"engine died"}}"#,
        ]);
        assert!(matches!(events[0], Ok(ChatEvent::Delta(_))));
        let error = events[1].as_ref().unwrap_err();
        assert_eq!(error.kind, ErrorKind::Unavailable);
        assert!(error.message.contains("engine died"), "{}", error.message);
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn a_malformed_chunk_or_a_stream_cut_short_is_an_error() {
        let events = frames(&[
            r#"{"choices":[{"index":0,"delta":{"content":"Half"},"finish_reason":null}]}"#,
        ]);
        assert_eq!(
            events.last().unwrap().as_ref().unwrap_err().kind,
            ErrorKind::Unavailable
        );
        let events = frames(&[r#"{"choices":[{"index":0,"delta":{"content":"#]);
        assert!(events[0].is_err());
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn the_body_names_the_model_and_asks_for_usage_only_when_streaming() {
        let request = ChatRequest {
            messages: vec![ChatMessage {
                role: Role::User,
                content: "hi".into(),
            }],
            max_output_tokens: 5,
            temperature: 0.0,
            stop: vec!["\nQuestion:".into()],
        };
        let streamed = request_body(&request, Some("m"), true);
        assert_eq!(streamed["model"], "m");
        assert_eq!(streamed["stream_options"]["include_usage"], true);
        let whole = request_body(&request, None, false);
        assert!(whole.get("model").is_none());
        assert!(whole.get("stream_options").is_none());
        assert_eq!(whole["messages"][0]["role"], "user");
        assert_eq!(whole["stop"], json!(["\nQuestion:"]));
    }

    #[test]
    fn a_whole_completion() {
        let completion: Completion = serde_json::from_str(
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"To a paired region [2]."},"finish_reason":"length"}],"usage":{"prompt_tokens":388,"completion_tokens":9}}"#,
        )
        .unwrap();
        let response = completion.normalize("test").unwrap();
        assert_eq!(response.text, "To a paired region [2].");
        assert_eq!(response.reason, FinishReason::Length);
        assert_eq!(response.usage.unwrap().output_tokens, 9);
    }
}
