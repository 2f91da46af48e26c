//! OCI Generative AI `POST /20231130/actions/chat`, OCI-signed. The serving mode is
//! on demand (`servingMode.modelId`) or, for a dedicated target, a dedicated AI
//! cluster endpoint (`servingMode.endpointId` = the target's wire id). The request
//! and answer shape follow the model: `cohere.*` models take the COHERE format
//! (`message`, `chatHistory`, `preambleOverride`; answer `text`), all others the
//! GENERIC one (upper-case roles, `TEXT` content parts; answer `choices`). Streams
//! (`isStream`, usage asked with `streamOptions.isIncludeUsage`) are SSE chunks with
//! a random `pad` field and no `[DONE]`: they end with the connection.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::Deserialize;
use serde_json::{Value, json};

use super::stream::{Progress, drive};
use super::{Connection, sse_events};
use crate::cloud::http::{malformed, stream_error};
use crate::config::OciConfig;
use crate::error::Result;
use crate::llm::{
    ChatEvent, ChatProvider, ChatRequest, ChatResponse, FinishReason, ProviderInfo, Role, Usage,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFormat {
    Cohere,
    Generic,
}

/// COHERE for Cohere's models (by canonical name or model id), GENERIC otherwise.
pub fn api_format(model: &str, wire_id: &str) -> ApiFormat {
    let cohere = |name: &str| name.starts_with("cohere.") || name.starts_with("command-");
    if cohere(model) || cohere(wire_id) {
        ApiFormat::Cohere
    } else {
        ApiFormat::Generic
    }
}

pub struct OciChat {
    connection: Connection,
    compartment_id: String,
    format: ApiFormat,
}

impl OciChat {
    pub fn new(connection: Connection, config: &OciConfig) -> Self {
        Self {
            format: api_format(&connection.info.model, connection.wire_id()),
            compartment_id: config.compartment_id.clone(),
            connection,
        }
    }

    fn body(&self, request: &ChatRequest, stream: bool) -> Value {
        let wire_id = self.connection.wire_id();
        let serving_mode = if self.connection.info.dedicated {
            json!({"servingType": "DEDICATED", "endpointId": wire_id})
        } else {
            json!({"servingType": "ON_DEMAND", "modelId": wire_id})
        };
        let mut chat_request = match self.format {
            ApiFormat::Cohere => cohere_request(request),
            ApiFormat::Generic => generic_request(request),
        };
        chat_request["maxTokens"] = json!(request.max_output_tokens);
        chat_request["temperature"] = json!(request.temperature);
        chat_request["isStream"] = json!(stream);
        if !request.stop.is_empty() {
            // Cohere's field, and the generic (Meta Llama...) format's OpenAI-like one.
            let field = match self.format {
                ApiFormat::Cohere => "stopSequences",
                ApiFormat::Generic => "stop",
            };
            chat_request[field] = json!(request.stop);
        }
        if stream {
            chat_request["streamOptions"] = json!({"isIncludeUsage": true});
        }
        json!({
            "compartmentId": self.compartment_id,
            "servingMode": serving_mode,
            "chatRequest": chat_request,
        })
    }

    fn url(&self) -> Result<url::Url> {
        self.connection.endpoint.url("/20231130/actions/chat")
    }
}

/// COHERE: the last user message is `message`, earlier turns `chatHistory`
/// (`USER` / `CHATBOT`), system prompts the `preambleOverride`.
fn cohere_request(request: &ChatRequest) -> Value {
    let preamble: Vec<&str> = request
        .messages
        .iter()
        .filter(|message| message.role == Role::System)
        .map(|message| message.content.as_str())
        .collect();
    let mut turns: Vec<_> = request
        .messages
        .iter()
        .filter(|message| message.role != Role::System)
        .collect();
    let last_user = match turns.last() {
        Some(last) if last.role == Role::User => turns.pop().map(|last| last.content.clone()),
        _ => None,
    };
    let history: Vec<Value> = turns
        .into_iter()
        .map(|message| {
            let role = if message.role == Role::User {
                "USER"
            } else {
                "CHATBOT"
            };
            json!({"role": role, "message": message.content})
        })
        .collect();
    let mut body = json!({
        "apiFormat": "COHERE",
        "message": last_user.unwrap_or_default(),
        "chatHistory": history,
    });
    if !preamble.is_empty() {
        body["preambleOverride"] = json!(preamble.join("\n\n"));
    }
    body
}

/// GENERIC: OpenAI-like messages with upper-case roles and `TEXT` parts.
fn generic_request(request: &ChatRequest) -> Value {
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|message| {
            let role = match message.role {
                Role::System => "SYSTEM",
                Role::User => "USER",
                Role::Assistant => "ASSISTANT",
            };
            json!({"role": role, "content": [{"type": "TEXT", "text": message.content}]})
        })
        .collect();
    json!({"apiFormat": "GENERIC", "messages": messages})
}

#[async_trait]
impl ChatProvider for OciChat {
    fn info(&self) -> &Arc<ProviderInfo> {
        &self.connection.info
    }

    async fn chat(&self, request: &ChatRequest, deadline: Instant) -> Result<ChatResponse> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            chat_response: Chunk,
        }
        let answer: Answer = self
            .connection
            .call(self.url()?, &self.body(request, false), deadline)
            .await?;
        let mut progress = Progress::default();
        let service = &self.connection.service;
        let text = decode_chunk(self.format, answer.chat_response, &mut progress, "");
        Ok(ChatResponse {
            text,
            reason: progress
                .finish
                .ok_or_else(|| malformed(service, "an answer without a finishReason"))?,
            usage: progress.usage,
        })
    }

    async fn chat_stream(
        &self,
        request: &ChatRequest,
        deadline: Instant,
    ) -> Result<BoxStream<'static, Result<ChatEvent>>> {
        let response = self
            .connection
            .open_stream(
                self.url()?,
                &self.body(request, true),
                "text/event-stream",
                deadline,
            )
            .await?;
        let service = self.connection.service.clone();
        let format = self.format;
        let mut streamed = String::new();
        let events = sse_events(&service, response);
        Ok(drive(
            &self.connection.service,
            events,
            move |event, progress| {
                if event.data.trim() == "[DONE]" {
                    progress.complete = true;
                    return Ok(String::new());
                }
                let value: Value = serde_json::from_str(&event.data).map_err(|error| {
                    malformed(&service, format!("unreadable stream chunk: {error}"))
                })?;
                // An error inside the stream: OCI's error shape, `{"code", "message"}`.
                if let Some(message) = value["message"].as_str() {
                    return Err(stream_error(&service, value["code"].as_str(), message));
                }
                let chunk: Chunk = serde_json::from_value(value).map_err(|error| {
                    malformed(&service, format!("unreadable stream chunk: {error}"))
                })?;
                let text = decode_chunk(format, chunk, progress, &streamed);
                streamed.push_str(&text);
                Ok(text)
            },
        ))
    }
}

/// One chat answer or stream chunk, either format. `streamed` is the text already
/// sent: a COHERE stream's final event may repeat the whole answer as its `text`.
fn decode_chunk(
    format: ApiFormat,
    chunk: Chunk,
    progress: &mut Progress,
    streamed: &str,
) -> String {
    if let Some(usage) = chunk.usage {
        progress.usage = Some(usage.normalize());
    }
    let mut text = String::new();
    let mut finish = chunk.finish_reason;
    match format {
        ApiFormat::Cohere => {
            if let Some(chunk_text) = chunk.text {
                let repeats_all =
                    finish.is_some() && !streamed.is_empty() && chunk_text == streamed;
                if !repeats_all {
                    text = chunk_text;
                }
            }
        }
        ApiFormat::Generic => {
            // A whole answer has choices; a stream chunk is one choice's fields.
            let mut messages = Vec::new();
            for choice in chunk.choices {
                finish = finish.or(choice.finish_reason);
                messages.extend(choice.message);
            }
            messages.extend(chunk.message);
            for message in messages {
                for part in message.content {
                    if let Some(part_text) = part.text {
                        text.push_str(&part_text);
                    }
                }
            }
        }
    }
    if let Some(reason) = finish {
        progress.finish = Some(FinishReason::from_wire(&reason));
    }
    text
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Chunk {
    // COHERE
    text: Option<String>,
    // GENERIC stream chunk
    message: Option<GenericMessage>,
    // GENERIC whole answer
    #[serde(default)]
    choices: Vec<GenericChoice>,
    finish_reason: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenericChoice {
    message: Option<GenericMessage>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct GenericMessage {
    #[serde(default, deserialize_with = "content_parts")]
    content: Vec<ContentPart>,
}

#[derive(Deserialize)]
struct ContentPart {
    text: Option<String>,
}

/// `content` is a list of parts; `null` or a missing one is no text.
fn content_parts<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<ContentPart>, D::Error> {
    Ok(Option::<Vec<ContentPart>>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptTokensDetails {
    #[serde(default)]
    cached_tokens: u64,
}

impl WireUsage {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ChatMessage;

    #[test]
    fn the_format_follows_the_model() {
        assert_eq!(
            api_format(
                "cohere.command-r-plus-08-2024",
                "cohere.command-r-plus-08-2024"
            ),
            ApiFormat::Cohere
        );
        assert_eq!(
            api_format("cohere.command-r-plus", "ocid1.generativeaiendpoint.oc1.x"),
            ApiFormat::Cohere
        );
        assert_eq!(
            api_format("meta.llama-3.3-70b-instruct", "meta.llama-3.3-70b-instruct"),
            ApiFormat::Generic
        );
    }

    #[test]
    fn cohere_takes_the_last_user_message_and_history() {
        let message = |role, content: &str| ChatMessage {
            role,
            content: content.into(),
        };
        let body = cohere_request(&ChatRequest {
            messages: vec![
                message(Role::System, "cite"),
                message(Role::User, "first"),
                message(Role::Assistant, "answer"),
                message(Role::User, "second"),
            ],
            max_output_tokens: 1,
            temperature: 0.0,
            stop: Vec::new(),
        });
        assert_eq!(body["message"], "second");
        assert_eq!(body["preambleOverride"], "cite");
        assert_eq!(
            body["chatHistory"],
            json!([{"role": "USER", "message": "first"}, {"role": "CHATBOT", "message": "answer"}])
        );
    }

    #[test]
    fn a_cohere_final_event_repeating_the_answer_adds_nothing() {
        let mut progress = Progress::default();
        let chunk: Chunk = serde_json::from_str(
            r#"{"apiFormat":"COHERE","text":"They are","finishReason":"COMPLETE","pad":"x"}"#,
        )
        .unwrap();
        let text = decode_chunk(ApiFormat::Cohere, chunk, &mut progress, "They are");
        assert_eq!(text, "");
        assert_eq!(progress.finish, Some(FinishReason::Stop));
    }
}
