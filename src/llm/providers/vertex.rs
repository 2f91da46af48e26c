//! Vertex AI chat, with a Google OAuth bearer token (service-account key, static
//! token or the GCE metadata server, from the endpoint's auth):
//! - Gemini (`publishers/google`): `:generateContent`, and
//!   `:streamGenerateContent?alt=sse` whose chunks repeat a running `usageMetadata`
//!   and end with the connection (no `[DONE]`);
//! - Claude (`publishers/anthropic`, models named `claude-…`): `:rawPredict` and
//!   `:streamRawPredict` with Anthropic's Messages body and events
//!   ([`super::anthropic`]), `anthropic_version: "vertex-2023-10-16"`.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::Deserialize;
use serde_json::{Value, json};

use super::stream::{Progress, drive};
use super::{Connection, anthropic, sse_events};
use crate::cloud::http::malformed;
use crate::cloud::sigv4::uri_encode;
use crate::config::VertexConfig;
use crate::error::Result;
use crate::llm::{
    ChatEvent, ChatProvider, ChatRequest, ChatResponse, FinishReason, ProviderInfo, Role, Usage,
};

pub struct VertexChat {
    connection: Connection,
    project: String,
    api_version: String,
}

impl VertexChat {
    pub fn new(connection: Connection, config: &VertexConfig) -> Self {
        Self {
            connection,
            project: config.project.clone(),
            api_version: config.api_version.clone().unwrap_or_else(|| "v1".into()),
        }
    }

    /// Claude models are Anthropic's publisher and protocol; the rest Gemini's.
    fn is_claude(&self) -> bool {
        self.connection.wire_id().starts_with("claude")
    }

    fn url(&self, method: &str) -> Result<url::Url> {
        let publisher = if self.is_claude() {
            "anthropic"
        } else {
            "google"
        };
        self.connection.endpoint.url(&format!(
            "/{}/projects/{}/locations/{}/publishers/{publisher}/models/{}:{method}",
            uri_encode(&self.api_version),
            uri_encode(&self.project),
            uri_encode(&self.connection.endpoint.region),
            // Claude versions are named with `@`, which a path may carry as is.
            uri_encode(self.connection.wire_id()).replace("%40", "@"),
        ))
    }
}

#[async_trait]
impl ChatProvider for VertexChat {
    fn info(&self) -> &Arc<ProviderInfo> {
        &self.connection.info
    }

    async fn chat(&self, request: &ChatRequest, deadline: Instant) -> Result<ChatResponse> {
        if self.is_claude() {
            let body = anthropic::request_body(request, anthropic::VERTEX_VERSION, false);
            let message: anthropic::WholeMessage = self
                .connection
                .call(self.url("rawPredict")?, &body, deadline)
                .await?;
            return Ok(message.normalize());
        }
        let answer: GeminiChunk = self
            .connection
            .call(
                self.url("generateContent")?,
                &gemini_body(request),
                deadline,
            )
            .await?;
        let mut progress = Progress::default();
        let text = decode_gemini(answer, &mut progress);
        Ok(ChatResponse {
            text,
            reason: progress.finish.ok_or_else(|| {
                malformed(&self.connection.service, "an answer without a finishReason")
            })?,
            usage: progress.usage,
        })
    }

    async fn chat_stream(
        &self,
        request: &ChatRequest,
        deadline: Instant,
    ) -> Result<BoxStream<'static, Result<ChatEvent>>> {
        let service = self.connection.service.clone();
        if self.is_claude() {
            let body = anthropic::request_body(request, anthropic::VERTEX_VERSION, true);
            let response = self
                .connection
                .open_stream(
                    self.url("streamRawPredict")?,
                    &body,
                    "text/event-stream",
                    deadline,
                )
                .await?;
            let mut decoder = anthropic::StreamDecoder::default();
            let events = sse_events(&service, response);
            return Ok(drive(
                &self.connection.service,
                events,
                move |event, progress| decoder.decode(&service, &event, progress),
            ));
        }
        let mut url = self.url("streamGenerateContent")?;
        url.query_pairs_mut().append_pair("alt", "sse");
        let response = self
            .connection
            .open_stream(url, &gemini_body(request), "text/event-stream", deadline)
            .await?;
        let events = sse_events(&service, response);
        Ok(drive(
            &self.connection.service,
            events,
            move |event, progress| {
                let chunk: GeminiChunk = serde_json::from_str(&event.data).map_err(|error| {
                    malformed(&service, format!("unreadable stream chunk: {error}"))
                })?;
                if let Some(error) = chunk.error {
                    return Err(crate::cloud::http::stream_error(
                        &service,
                        error.status.as_deref(),
                        &error.message,
                    ));
                }
                Ok(decode_gemini(chunk, progress))
            },
        ))
    }
}

/// The generateContent body: system instructions apart, roles `user` / `model`,
/// consecutive turns of one role merged.
pub fn gemini_body(request: &ChatRequest) -> Value {
    let mut system = Vec::new();
    let mut contents: Vec<(&str, Vec<Value>)> = Vec::new();
    for message in &request.messages {
        let part = json!({"text": message.content});
        let role = match message.role {
            Role::System => {
                system.push(part);
                continue;
            }
            Role::User => "user",
            Role::Assistant => "model",
        };
        match contents.last_mut() {
            Some((last, parts)) if *last == role => parts.push(part),
            _ => contents.push((role, vec![part])),
        }
    }
    let contents: Vec<Value> = contents
        .into_iter()
        .map(|(role, parts)| json!({"role": role, "parts": parts}))
        .collect();
    let mut body = json!({
        "contents": contents,
        "generationConfig": {
            "maxOutputTokens": request.max_output_tokens,
            "temperature": request.temperature,
            "candidateCount": 1,
        },
    });
    if !request.stop.is_empty() {
        body["generationConfig"]["stopSequences"] = json!(request.stop);
    }
    if !system.is_empty() {
        body["systemInstruction"] = json!({"parts": system});
    }
    body
}

/// One GenerateContentResponse (a whole answer or a stream chunk): its text
/// (thoughts left out), its finish reason, and the usage, which is cumulative, so
/// the last one seen is kept. A blocked prompt (no candidates, a `blockReason`)
/// finishes as content-filtered.
fn decode_gemini(chunk: GeminiChunk, progress: &mut Progress) -> String {
    if let Some(usage) = chunk.usage_metadata {
        progress.usage = Some(usage.normalize());
    }
    if chunk
        .prompt_feedback
        .is_some_and(|feedback| feedback.block_reason.is_some())
    {
        progress.finish = Some(FinishReason::ContentFilter);
    }
    let mut text = String::new();
    if let Some(candidate) = chunk.candidates.into_iter().next() {
        for part in candidate
            .content
            .map(|content| content.parts)
            .unwrap_or_default()
        {
            if !part.thought
                && let Some(part_text) = part.text
            {
                text.push_str(&part_text);
            }
        }
        if let Some(reason) = candidate.finish_reason {
            progress.finish = Some(FinishReason::from_wire(&reason));
        }
    }
    text
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiChunk {
    #[serde(default)]
    candidates: Vec<Candidate>,
    usage_metadata: Option<UsageMetadata>,
    prompt_feedback: Option<PromptFeedback>,
    error: Option<GoogleError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<Content>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Deserialize)]
struct Part {
    text: Option<String>,
    #[serde(default)]
    thought: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
}

#[derive(Deserialize)]
struct GoogleError {
    #[serde(default)]
    message: String,
    status: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
}

impl UsageMetadata {
    /// The prompt count includes cached tokens; thoughts are billed as output.
    fn normalize(self) -> Usage {
        Usage {
            input_tokens: self.prompt_token_count,
            output_tokens: self.candidates_token_count + self.thoughts_token_count,
            cached_input_tokens: self.cached_content_token_count,
            estimated: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ChatMessage;

    fn chunk(json: &str) -> GeminiChunk {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn usage_is_cumulative_and_a_chunk_without_it_keeps_the_last() {
        let mut progress = Progress::default();
        let text = decode_gemini(
            chunk(
                r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"They"}]}}],"usageMetadata":{"promptTokenCount":412,"candidatesTokenCount":1,"cachedContentTokenCount":100}}"#,
            ),
            &mut progress,
        );
        assert_eq!(text, "They");
        decode_gemini(
            chunk(
                r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"thinking","thought":true},{"text":" are"}]}}]}"#,
            ),
            &mut progress,
        );
        assert_eq!(progress.usage.unwrap().output_tokens, 1);
        decode_gemini(
            chunk(
                r#"{"candidates":[{"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":412,"candidatesTokenCount":14,"thoughtsTokenCount":6,"cachedContentTokenCount":100}}"#,
            ),
            &mut progress,
        );
        assert_eq!(progress.finish, Some(FinishReason::Stop));
        assert_eq!(
            progress.usage,
            Some(Usage {
                input_tokens: 412,
                output_tokens: 20,
                cached_input_tokens: 100,
                estimated: false
            })
        );
    }

    #[test]
    fn a_blocked_prompt_is_content_filtered() {
        let mut progress = Progress::default();
        decode_gemini(
            chunk(r#"{"promptFeedback":{"blockReason":"SAFETY"}}"#),
            &mut progress,
        );
        assert_eq!(progress.finish, Some(FinishReason::ContentFilter));
    }

    #[test]
    fn roles_are_user_and_model() {
        let body = gemini_body(&ChatRequest {
            messages: vec![
                ChatMessage {
                    role: Role::System,
                    content: "cite".into(),
                },
                ChatMessage {
                    role: Role::User,
                    content: "q".into(),
                },
                ChatMessage {
                    role: Role::Assistant,
                    content: "a".into(),
                },
            ],
            max_output_tokens: 9,
            temperature: 0.1,
            stop: vec!["\nQuestion:".into()],
        });
        assert_eq!(body["systemInstruction"]["parts"][0]["text"], "cite");
        assert_eq!(body["contents"][1]["role"], "model");
        assert_eq!(body["generationConfig"]["maxOutputTokens"], 9);
        assert_eq!(
            body["generationConfig"]["stopSequences"],
            json!(["\nQuestion:"])
        );
    }
}
