//! Azure OpenAI chat completions. With `api_version`: the classic deployment URL
//! `POST /openai/deployments/{deployment}/chat/completions?api-version=...` (no model
//! in the body); without: the v1 path `POST /openai/v1/chat/completions` with the
//! deployment as `model`. `api-key` header or an Entra bearer token (from the
//! endpoint's auth). The chunks are OpenAI's, with Azure's extras: a first chunk
//! with no choices (prompt filter results) and filter annotations without a delta.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde_json::Value;

use super::Connection;
use super::openai_compat::{Completion, open_sse, request_body};
use crate::cloud::sigv4::uri_encode;
use crate::config::AzureOpenAiConfig;
use crate::error::Result;
use crate::llm::{ChatEvent, ChatProvider, ChatRequest, ChatResponse, ProviderInfo};

pub struct AzureOpenAiChat {
    connection: Connection,
    api_version: Option<String>,
    reasoning: bool,
}

impl AzureOpenAiChat {
    pub fn new(connection: Connection, config: &AzureOpenAiConfig) -> Self {
        Self {
            reasoning: is_reasoning_model(&connection.info.model),
            connection,
            api_version: config.api_version.clone(),
        }
    }

    /// The URL, and the model to name in the body (v1 path only).
    fn target(&self) -> Result<(url::Url, Option<&str>)> {
        let deployment = self.connection.wire_id();
        match &self.api_version {
            Some(version) => {
                let mut url = self.connection.endpoint.url(&format!(
                    "/openai/deployments/{}/chat/completions",
                    uri_encode(deployment)
                ))?;
                url.query_pairs_mut().append_pair("api-version", version);
                Ok((url, None))
            }
            None => Ok((
                self.connection
                    .endpoint
                    .url("/openai/v1/chat/completions")?,
                Some(deployment),
            )),
        }
    }
}

/// o-series and GPT-5 deployments take `max_completion_tokens` and refuse
/// `temperature`; the canonical model name says which a deployment serves.
fn is_reasoning_model(model: &str) -> bool {
    let model = model.to_ascii_lowercase();
    ["o1", "o3", "o4", "gpt-5"]
        .iter()
        .any(|family| model == *family || model.starts_with(&format!("{family}-")))
}

/// The chat-completions body, with the reasoning models' parameter names.
fn body(request: &ChatRequest, model: Option<&str>, stream: bool, reasoning: bool) -> Value {
    let mut body = request_body(request, model, stream);
    if reasoning && let Some(fields) = body.as_object_mut() {
        fields.remove("temperature");
        if let Some(limit) = fields.remove("max_tokens") {
            fields.insert("max_completion_tokens".into(), limit);
        }
    }
    body
}

#[async_trait]
impl ChatProvider for AzureOpenAiChat {
    fn info(&self) -> &Arc<ProviderInfo> {
        &self.connection.info
    }

    async fn chat(&self, request: &ChatRequest, deadline: Instant) -> Result<ChatResponse> {
        let (url, model) = self.target()?;
        let body = body(request, model, false, self.reasoning);
        let completion: Completion = self.connection.call(url, &body, deadline).await?;
        completion.normalize(&self.connection.service)
    }

    async fn chat_stream(
        &self,
        request: &ChatRequest,
        deadline: Instant,
    ) -> Result<BoxStream<'static, Result<ChatEvent>>> {
        let (url, model) = self.target()?;
        let body = body(request, model, true, self.reasoning);
        open_sse(&self.connection, url, &body, deadline).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{ChatMessage, Role};

    #[test]
    fn reasoning_models_take_max_completion_tokens_and_no_temperature() {
        assert!(is_reasoning_model("o3-mini"));
        assert!(is_reasoning_model("o1"));
        assert!(is_reasoning_model("gpt-5-mini"));
        assert!(!is_reasoning_model("gpt-4o"));
        assert!(!is_reasoning_model("omni-model"));
        let request = ChatRequest {
            messages: vec![ChatMessage {
                role: Role::User,
                content: "q".into(),
            }],
            max_output_tokens: 64,
            temperature: 0.2,
            stop: Vec::new(),
        };
        let reasoning = body(&request, None, true, true);
        assert_eq!(reasoning["max_completion_tokens"], 64);
        assert!(reasoning.get("max_tokens").is_none());
        assert!(reasoning.get("temperature").is_none());
        let plain = body(&request, None, true, false);
        assert_eq!(plain["max_tokens"], 64);
        assert!(plain.get("temperature").is_some());
    }
}
