//! Bedrock Runtime `Converse` (`POST /model/{modelId}/converse`) and
//! `ConverseStream` (`POST /model/{modelId}/converse-stream`), SigV4 signed as
//! `bedrock`. The model id may be a base model, an inference profile (`us.anthropic…`)
//! or an ARN: it is percent-encoded into the path (`:` and `/` included), and SigV4
//! encodes it once more in the canonical request.
//!
//! The stream is binary event-stream frames ([`super::eventstream`]), not SSE:
//! `contentBlockDelta` carries text, `messageStop` the stop reason, `metadata` (after
//! it) the usage. Exceptions arrive as `:message-type: exception` frames inside the
//! 200 answer and end the stream with their mapped kind.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::Deserialize;
use serde_json::{Value, json};

use super::eventstream::{Message, messages};
use super::stream::{Progress, drive};
use super::{Connection, body_stream};
use crate::cloud::http::{malformed, stream_error};
use crate::cloud::sigv4::uri_encode;
use crate::error::Result;
use crate::llm::{
    ChatEvent, ChatProvider, ChatRequest, ChatResponse, FinishReason, ProviderInfo, Role, Usage,
};

pub struct BedrockChat {
    connection: Connection,
}

impl BedrockChat {
    pub fn new(connection: Connection) -> Self {
        Self { connection }
    }

    fn url(&self, operation: &str) -> Result<url::Url> {
        self.connection.endpoint.url(&format!(
            "/model/{}/{operation}",
            uri_encode(self.connection.wire_id())
        ))
    }
}

#[async_trait]
impl ChatProvider for BedrockChat {
    fn info(&self) -> &Arc<ProviderInfo> {
        &self.connection.info
    }

    async fn chat(&self, request: &ChatRequest, deadline: Instant) -> Result<ChatResponse> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            output: Output,
            stop_reason: Option<String>,
            usage: Option<WireUsage>,
        }
        #[derive(Deserialize)]
        struct Output {
            message: OutputMessage,
        }
        #[derive(Deserialize)]
        struct OutputMessage {
            #[serde(default)]
            content: Vec<ContentBlock>,
        }
        #[derive(Deserialize)]
        struct ContentBlock {
            text: Option<String>,
        }
        let answer: Answer = self
            .connection
            .call(self.url("converse")?, &request_body(request), deadline)
            .await?;
        Ok(ChatResponse {
            text: answer
                .output
                .message
                .content
                .into_iter()
                .filter_map(|block| block.text)
                .collect(),
            reason: answer
                .stop_reason
                .as_deref()
                .map_or(FinishReason::Stop, FinishReason::from_wire),
            usage: answer.usage.map(WireUsage::normalize),
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
                self.url("converse-stream")?,
                &request_body(request),
                "application/vnd.amazon.eventstream",
                deadline,
            )
            .await?;
        let service = self.connection.service.clone();
        let frames = messages(&service, body_stream(&service, response));
        Ok(drive(
            &self.connection.service,
            frames,
            move |frame, progress| decode_frame(&service, &frame, progress),
        ))
    }
}

/// The Converse body: system prompts apart, roles `user` / `assistant`, consecutive
/// messages of one role merged (Converse wants them alternating).
pub fn request_body(request: &ChatRequest) -> Value {
    let mut system = Vec::new();
    let mut messages: Vec<(Role, Vec<Value>)> = Vec::new();
    for message in &request.messages {
        let block = json!({"text": message.content});
        match message.role {
            Role::System => system.push(block),
            role => match messages.last_mut() {
                Some((last, blocks)) if *last == role => blocks.push(block),
                _ => messages.push((role, vec![block])),
            },
        }
    }
    let messages: Vec<Value> = messages
        .into_iter()
        .map(|(role, content)| json!({"role": role.as_str(), "content": content}))
        .collect();
    let mut body = json!({
        "messages": messages,
        "inferenceConfig": {
            "maxTokens": request.max_output_tokens,
            "temperature": request.temperature,
        },
    });
    if !request.stop.is_empty() {
        body["inferenceConfig"]["stopSequences"] = json!(request.stop);
    }
    if !system.is_empty() {
        body["system"] = json!(system);
    }
    body
}

/// One event-stream frame of a ConverseStream answer.
fn decode_frame(service: &str, frame: &Message, progress: &mut Progress) -> Result<String> {
    let payload = || -> Result<Value> {
        serde_json::from_slice(&frame.payload)
            .map_err(|error| malformed(service, format!("unreadable event payload: {error}")))
    };
    match frame.header(":message-type") {
        Some("event") => {}
        Some("exception") => {
            let code = frame.header(":exception-type");
            let body = payload().unwrap_or_default();
            let message = body["message"]
                .as_str()
                .or_else(|| body["Message"].as_str())
                .unwrap_or_default();
            return Err(stream_error(service, code, message));
        }
        Some("error") => {
            return Err(stream_error(
                service,
                frame.header(":error-code"),
                frame.header(":error-message").unwrap_or_default(),
            ));
        }
        other => {
            return Err(malformed(
                service,
                format!("an event-stream frame of message type {other:?}"),
            ));
        }
    }
    match frame.header(":event-type") {
        Some("contentBlockDelta") => {
            let body = payload()?;
            Ok(body["delta"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string())
        }
        Some("messageStop") => {
            let body = payload()?;
            let reason = body["stopReason"]
                .as_str()
                .ok_or_else(|| malformed(service, "messageStop without a stopReason"))?;
            progress.finish = Some(FinishReason::from_wire(reason));
            Ok(String::new())
        }
        Some("metadata") => {
            let body = payload()?;
            if let Some(usage) = body.get("usage") {
                let usage: WireUsage = serde_json::from_value(usage.clone())
                    .map_err(|error| malformed(service, format!("unreadable usage: {error}")))?;
                progress.usage = Some(usage.normalize());
            }
            // The last event of an answer.
            progress.complete = true;
            Ok(String::new())
        }
        // messageStart, contentBlockStart / Stop, and kinds added later carry no text.
        _ => Ok(String::new()),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: u64,
    #[serde(default)]
    cache_write_input_tokens: u64,
}

impl WireUsage {
    /// Bedrock counts cache reads and writes apart from `inputTokens`; ours include them.
    fn normalize(self) -> Usage {
        Usage {
            input_tokens: self.input_tokens
                + self.cache_read_input_tokens
                + self.cache_write_input_tokens,
            output_tokens: self.output_tokens,
            cached_input_tokens: self.cache_read_input_tokens,
            estimated: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ChatMessage;

    #[test]
    fn system_apart_and_roles_alternating() {
        let message = |role, content: &str| ChatMessage {
            role,
            content: content.into(),
        };
        let body = request_body(&ChatRequest {
            messages: vec![
                message(Role::System, "cite"),
                message(Role::User, "a"),
                message(Role::User, "b"),
                message(Role::Assistant, "c"),
            ],
            max_output_tokens: 16,
            temperature: 0.5,
            stop: vec!["\nQuestion:".into()],
        });
        assert_eq!(body["system"], json!([{"text": "cite"}]));
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [{"text": "a"}, {"text": "b"}]},
                {"role": "assistant", "content": [{"text": "c"}]},
            ])
        );
        assert_eq!(body["inferenceConfig"]["maxTokens"], 16);
        assert_eq!(
            body["inferenceConfig"]["stopSequences"],
            json!(["\nQuestion:"])
        );
    }

    #[test]
    fn usage_counts_cache_reads_and_writes_as_input() {
        let usage: WireUsage = serde_json::from_str(
            r#"{"inputTokens":100,"outputTokens":7,"totalTokens":357,"cacheReadInputTokens":200,"cacheWriteInputTokens":50}"#,
        )
        .unwrap();
        assert_eq!(
            usage.normalize(),
            Usage {
                input_tokens: 350,
                output_tokens: 7,
                cached_input_tokens: 200,
                estimated: false
            }
        );
    }
}
