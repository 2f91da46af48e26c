//! Anthropic's Messages shape, as Claude on Vertex speaks it: the body (with
//! `anthropic_version`, without `model`), the whole message, and the named SSE
//! events of a stream: `message_start` (input usage), `content_block_delta`
//! (`text_delta`), `message_delta` (stop reason, cumulative output tokens),
//! `message_stop`, `ping`, and `error`, which may arrive after the 200.

use serde::Deserialize;
use serde_json::{Value, json};

use super::stream::Progress;
use crate::cloud::http::{malformed, stream_error};
use crate::error::Result;
use crate::llm::{ChatRequest, ChatResponse, FinishReason, Role, Usage};

pub const VERTEX_VERSION: &str = "vertex-2023-10-16";

/// The Messages body: the system prompt apart, roles alternating (consecutive
/// messages of one role merged), `max_tokens` always (it is required).
pub fn request_body(request: &ChatRequest, version: &str, stream: bool) -> Value {
    let mut system: Vec<&str> = Vec::new();
    let mut messages: Vec<(Role, Vec<Value>)> = Vec::new();
    for message in &request.messages {
        let block = json!({"type": "text", "text": message.content});
        match message.role {
            Role::System => system.push(&message.content),
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
        "anthropic_version": version,
        "messages": messages,
        "max_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "stream": stream,
    });
    if !system.is_empty() {
        body["system"] = json!(system.join("\n\n"));
    }
    if !request.stop.is_empty() {
        body["stop_sequences"] = json!(request.stop);
    }
    body
}

/// Usage as Anthropic reports it: `input_tokens` excludes cache reads and writes.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct WireUsage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_creation_input_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Later counts replace earlier ones (`message_delta` repeats running totals).
    fn update(&mut self, newer: WireUsage) {
        self.input_tokens = newer.input_tokens.or(self.input_tokens);
        self.output_tokens = newer.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = newer
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = newer
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    pub fn normalize(self) -> Usage {
        let cache_read = self.cache_read_input_tokens.unwrap_or(0);
        Usage {
            input_tokens: self.input_tokens.unwrap_or(0)
                + self.cache_creation_input_tokens.unwrap_or(0)
                + cache_read,
            output_tokens: self.output_tokens.unwrap_or(0),
            cached_input_tokens: cache_read,
            estimated: false,
        }
    }
}

/// A whole (non-streamed) message.
#[derive(Deserialize)]
pub struct WholeMessage {
    #[serde(default)]
    content: Vec<Block>,
    stop_reason: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

impl WholeMessage {
    pub fn normalize(self) -> ChatResponse {
        ChatResponse {
            text: self
                .content
                .into_iter()
                .filter(|block| block.kind == "text")
                .filter_map(|block| block.text)
                .collect(),
            reason: self
                .stop_reason
                .as_deref()
                .map_or(FinishReason::Stop, FinishReason::from_wire),
            usage: self.usage.map(WireUsage::normalize),
        }
    }
}

/// The state of one streamed message.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    usage: Option<WireUsage>,
}

impl StreamDecoder {
    /// One SSE event: its name, else the `type` inside its data, decides.
    pub fn decode(
        &mut self,
        service: &str,
        event: &crate::llm::providers::sse::SseEvent,
        progress: &mut Progress,
    ) -> Result<String> {
        let data: Value = serde_json::from_str(&event.data)
            .map_err(|error| malformed(service, format!("unreadable stream event: {error}")))?;
        let kind = match event.event.as_ref() {
            "" | "message" => data["type"].as_str().unwrap_or_default(),
            name => name,
        };
        let mut record_usage = |usage: &Value, progress: &mut Progress| -> Result<()> {
            if usage.is_null() {
                return Ok(());
            }
            let newer: WireUsage = serde_json::from_value(usage.clone())
                .map_err(|error| malformed(service, format!("unreadable usage: {error}")))?;
            let usage = self.usage.get_or_insert_with(WireUsage::default);
            usage.update(newer);
            progress.usage = Some(usage.normalize());
            Ok(())
        };
        match kind {
            "message_start" => {
                record_usage(&data["message"]["usage"], progress)?;
                Ok(String::new())
            }
            "content_block_delta" => Ok(match data["delta"]["type"].as_str() {
                Some("text_delta") => data["delta"]["text"].as_str().unwrap_or_default().into(),
                // thinking, signatures and tool input are not answer text
                _ => String::new(),
            }),
            "message_delta" => {
                if let Some(reason) = data["delta"]["stop_reason"].as_str() {
                    progress.finish = Some(FinishReason::from_wire(reason));
                }
                record_usage(&data["usage"], progress)?;
                Ok(String::new())
            }
            "message_stop" => {
                progress.complete = true;
                Ok(String::new())
            }
            "error" => {
                let error = &data["error"];
                Err(stream_error(
                    service,
                    error["type"].as_str(),
                    error["message"].as_str().unwrap_or_default(),
                ))
            }
            // ping, content_block_start / stop, and kinds added later
            _ => Ok(String::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::error::{Error, ErrorKind};
    use crate::llm::ChatEvent;
    use crate::llm::providers::stream::drive;

    #[test]
    fn stop_sequences_are_sent_as_stop_sequences() {
        let request = ChatRequest {
            messages: vec![crate::llm::ChatMessage {
                role: Role::User,
                content: "q".into(),
            }],
            max_output_tokens: 8,
            temperature: 0.0,
            stop: vec!["\nQuestion:".into()],
        };
        let body = request_body(&request, "vertex-2023-10-16", false);
        assert_eq!(body["stop_sequences"], json!(["\nQuestion:"]));
        let plain = ChatRequest {
            stop: Vec::new(),
            ..request
        };
        assert!(
            request_body(&plain, "vertex-2023-10-16", false)
                .get("stop_sequences")
                .is_none()
        );
    }

    fn events(items: &[(&str, &str)]) -> Vec<Result<ChatEvent>> {
        let units: Vec<Result<crate::llm::providers::sse::SseEvent, Error>> = items
            .iter()
            .map(|(name, data)| {
                Ok(crate::llm::providers::sse::SseEvent {
                    event: name.to_string().into(),
                    data: data.to_string(),
                    ..Default::default()
                })
            })
            .collect();
        let mut decoder = StreamDecoder::default();
        let stream = drive(
            "claude",
            futures::stream::iter(units),
            move |event, progress| decoder.decode("claude", &event, progress),
        );
        futures::executor::block_on(stream.collect())
    }

    #[test]
    fn a_message_with_cache_reads_and_cumulative_output() {
        let events = events(&[
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":12,"output_tokens":1,"cache_read_input_tokens":400,"cache_creation_input_tokens":0}}}"#,
            ),
            ("ping", r#"{"type":"ping"}"#),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"They are"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" replicated."}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":14}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ]);
        let events: Vec<ChatEvent> = events.into_iter().map(Result::unwrap).collect();
        assert_eq!(events[0], ChatEvent::Delta("They are".into()));
        assert_eq!(
            events[2],
            ChatEvent::Finish {
                reason: FinishReason::Length,
                usage: Some(Usage {
                    input_tokens: 412,
                    output_tokens: 14,
                    cached_input_tokens: 400,
                    estimated: false
                })
            }
        );
    }

    #[test]
    fn an_error_event_after_text() {
        let events = events(&[
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"They"}}"#,
            ),
            (
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ),
        ]);
        assert_eq!(events.len(), 2);
        let error = events[1].as_ref().unwrap_err();
        assert_eq!(error.kind, ErrorKind::Unavailable);
        assert!(error.message.contains("Overloaded"));
    }
}
