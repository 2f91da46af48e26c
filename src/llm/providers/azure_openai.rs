//! Azure OpenAI chat completions. With `api_version`: the classic deployment URL
//! `POST /openai/deployments/{deployment}/chat/completions?api-version=...` (no model
//! in the body); without: the v1 path `POST /openai/v1/chat/completions` with the
//! deployment as `model`. `api-key` header or an Entra bearer token (from the
//! endpoint's auth). The chunks are OpenAI's, with Azure's extras: a first chunk
//! with no choices (prompt filter results) and filter annotations without a delta.

use std::time::Instant;

use async_trait::async_trait;
use futures::stream::BoxStream;

use super::Connection;
use super::openai_compat::{Completion, open_sse, request_body};
use crate::cloud::sigv4::uri_encode;
use crate::config::ProviderConfig;
use crate::error::Result;
use crate::llm::{ChatEvent, ChatProvider, ChatRequest, ChatResponse, ProviderInfo};

pub struct AzureOpenAiChat {
    connection: Connection,
    api_version: Option<String>,
}

impl AzureOpenAiChat {
    pub fn new(connection: Connection, config: &ProviderConfig) -> Self {
        Self {
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

#[async_trait]
impl ChatProvider for AzureOpenAiChat {
    fn info(&self) -> &ProviderInfo {
        &self.connection.info
    }

    async fn chat(&self, request: &ChatRequest, deadline: Instant) -> Result<ChatResponse> {
        let (url, model) = self.target()?;
        let body = request_body(request, model, false);
        let completion: Completion = self.connection.call(url, &body, deadline).await?;
        completion.normalize(&self.connection.service)
    }

    async fn chat_stream(
        &self,
        request: &ChatRequest,
        deadline: Instant,
    ) -> Result<BoxStream<'static, Result<ChatEvent>>> {
        let (url, model) = self.target()?;
        let body = request_body(request, model, true);
        open_sse(&self.connection, url, &body, deadline).await
    }
}
