//! OpenAI-compatible chat completions (`POST {base}/v1/chat/completions`), as served
//! by llama.cpp `llama-server`, vLLM and Ollama. Always streams, always asks for usage.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use eventsource_stream::Eventsource;
use futures::stream::{BoxStream, StreamExt};
use serde::Deserialize;
use serde_json::json;

use crate::config::{ProviderConfig, Secret};
use crate::error::{Error, ErrorKind, Result};
use crate::llm::{ChatEvent, ChatProvider, ChatRequest, FinishReason, ProviderInfo, Usage};

pub struct OpenAiCompatProvider {
    info: ProviderInfo,
    endpoint: String,
    api_key: Option<Secret>,
    http: reqwest::Client,
    timeout: Duration,
}

impl OpenAiCompatProvider {
    pub fn new(config: &ProviderConfig, api_key: Option<Secret>, http: reqwest::Client) -> Self {
        Self {
            info: ProviderInfo {
                id: config.id.clone(),
                model: config.chat_model().to_string(),
                deployment: config.chat_model().to_string(),
                dedicated: false,
                cloud: config.cloud().to_string(),
                region: config.region().to_string(),
                input_per_1m_usd: config.input_per_1m_usd,
                output_per_1m_usd: config.output_per_1m_usd,
            },
            endpoint: format!(
                "{}/v1/chat/completions",
                config
                    .base_url
                    .as_deref()
                    .unwrap_or_default()
                    .trim_end_matches('/')
            ),
            api_key,
            http,
            timeout: Duration::from_millis(config.timeout_ms),
        }
    }
}

#[async_trait]
impl ChatProvider for OpenAiCompatProvider {
    fn info(&self) -> &ProviderInfo {
        &self.info
    }

    async fn chat_stream(
        &self,
        request: &ChatRequest,
        deadline: Instant,
    ) -> Result<BoxStream<'static, Result<ChatEvent>>> {
        let messages: Vec<_> = request
            .messages
            .iter()
            .map(|message| json!({"role": message.role.as_str(), "content": message.content}))
            .collect();
        let body = json!({
            "model": self.info.deployment,
            "messages": messages,
            "max_tokens": request.max_output_tokens,
            "temperature": request.temperature,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .min(self.timeout);
        let mut call = self.http.post(&self.endpoint).json(&body).timeout(timeout);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key.expose());
        }
        let response = call.send().await.map_err(|error| transport_error(&error))?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_after(response.headers());
            let text = response.text().await.unwrap_or_default();
            return Err(status_error(status.as_u16(), &text, retry_after));
        }
        let events = response.bytes_stream().eventsource();
        Ok(normalize(events).boxed())
    }
}

/// Turns SSE frames into text deltas and one final `Finish`; a stream that ends
/// without `[DONE]` or a finish reason is an error, never a clean end.
fn normalize<S, E>(events: S) -> impl futures::Stream<Item = Result<ChatEvent>>
where
    S: futures::Stream<Item = Result<eventsource_stream::Event, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    struct State<S> {
        events: S,
        finish: Option<FinishReason>,
        usage: Option<Usage>,
        done: bool,
    }
    let state = State {
        events,
        finish: None,
        usage: None,
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        loop {
            let Some(event) = state.events.next().await else {
                state.done = true;
                let Some(reason) = state.finish.take() else {
                    let error = Error::unavailable("stream ended before the model finished");
                    return Some((Err(error), state));
                };
                let finish = ChatEvent::Finish {
                    reason,
                    usage: state.usage,
                };
                return Some((Ok(finish), state));
            };
            let event = match event {
                Ok(event) => event,
                Err(error) => {
                    state.done = true;
                    let error = Error::unavailable(format!("stream broken: {error}"));
                    return Some((Err(error), state));
                }
            };
            if event.data.trim() == "[DONE]" {
                // Some servers send [DONE] without a finish reason; the text is complete.
                state.finish.get_or_insert(FinishReason::Stop);
                continue;
            }
            let chunk: StreamChunk = match serde_json::from_str(&event.data) {
                Ok(chunk) => chunk,
                Err(error) => {
                    state.done = true;
                    let error = Error::unavailable(format!("malformed stream frame: {error}"));
                    return Some((Err(error), state));
                }
            };
            if let Some(error) = chunk.error {
                state.done = true;
                let error =
                    Error::unavailable(format!("error inside the stream: {}", error.message()));
                return Some((Err(error), state));
            }
            if let Some(usage) = chunk.usage {
                state.usage = Some(usage.normalize());
            }
            let mut text = String::new();
            for choice in chunk.choices {
                if let Some(content) = choice.delta.and_then(|delta| delta.content) {
                    text.push_str(&content);
                }
                if let Some(reason) = choice.finish_reason {
                    state.finish = Some(FinishReason::from_wire(&reason));
                }
            }
            if !text.is_empty() {
                return Some((Ok(ChatEvent::Delta(text)), state));
            }
        }
    })
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

/// `{"error": {"message": ...}}` (OpenAI, llama.cpp) or `{"error": "..."}` (Ollama).
#[derive(Deserialize)]
#[serde(untagged)]
enum WireError {
    Object { message: String },
    Text(String),
}

impl WireError {
    fn message(&self) -> &str {
        match self {
            Self::Object { message } | Self::Text(message) => message,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: WireError,
}

fn transport_error(error: &reqwest::Error) -> Error {
    if error.is_timeout() {
        return Error::timeout(format!("llm request timed out: {error}"));
    }
    Error::unavailable(format!("cannot reach llm server: {error}"))
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    if let Some(millis) = headers
        .get("retry-after-ms")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
    {
        return Some(Duration::from_millis(millis));
    }
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// One mapping from HTTP status to error kind; the body's message is kept.
fn status_error(status: u16, body: &str, retry_after: Option<Duration>) -> Error {
    let message = serde_json::from_str::<ErrorBody>(body)
        .map(|body| body.error.message().to_string())
        .unwrap_or_else(|_| body.chars().take(300).collect());
    let kind = match status {
        429 => ErrorKind::Throttled,
        401 | 403 => ErrorKind::Auth,
        404 => ErrorKind::NotFound,
        408 | 504 => ErrorKind::Timeout,
        400..=499 => ErrorKind::InvalidArgument,
        _ => ErrorKind::Unavailable,
    };
    Error {
        kind,
        message: format!("llm server answered {status}: {message}"),
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(lines: &[&str]) -> Vec<Result<ChatEvent>> {
        let body: String = lines
            .iter()
            .map(|line| format!("data: {line}\n\n"))
            .collect();
        let bytes = futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(body))]);
        futures::executor::block_on(normalize(bytes.eventsource()).collect())
    }

    #[test]
    fn deltas_then_finish_with_usage() {
        let events = frames(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"To a paired"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":" region [2]."},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":388,"completion_tokens":9,"total_tokens":397}}"#,
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
                        cached_input_tokens: 0,
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
        assert!(error.message.contains("engine died"), "{}", error.message);
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn a_stream_cut_short_is_an_error() {
        let events = frames(&[
            r#"{"choices":[{"index":0,"delta":{"content":"Half"},"finish_reason":null}]}"#,
        ]);
        assert!(events.last().unwrap().is_err());
    }

    #[test]
    fn statuses_map_to_kinds() {
        let throttled = status_error(
            429,
            r#"{"error":{"message":"slow down"}}"#,
            Some(Duration::from_secs(2)),
        );
        assert_eq!(throttled.kind, ErrorKind::Throttled);
        assert_eq!(throttled.retry_after, Some(Duration::from_secs(2)));
        assert!(throttled.message.contains("slow down"));
        assert_eq!(status_error(401, "", None).kind, ErrorKind::Auth);
        assert_eq!(
            status_error(503, r#"{"error":"loading"}"#, None).kind,
            ErrorKind::Unavailable
        );
        assert_eq!(
            status_error(400, "bad", None).kind,
            ErrorKind::InvalidArgument
        );
    }
}
