//! Language models: the [`ChatProvider`] seam, the providers behind it, the
//! prompt and the extractive fallback.
//!
//! Routing and failover across clouds live in `route/`, above this module; every
//! provider normalizes its stream, usage, finish reason and errors into one shape.

pub mod extractive;
pub mod prompt;
pub mod providers;
pub mod regions;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub max_output_tokens: u32,
    pub temperature: f32,
    /// Text at which the model stops (the caller's, then its deployment's); sent in
    /// each provider's own field, at most [`MAX_STOP_SEQUENCES`].
    pub stop: Vec<String>,
}

/// The fewest stop sequences any provider takes (OpenAI, Azure OpenAI, Bedrock: 4).
pub const MAX_STOP_SEQUENCES: usize = 4;

/// Token counts as billed. `input_tokens` includes cached ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    /// We counted, the provider did not report.
    pub estimated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ContentFilter,
    Other(String),
}

impl FinishReason {
    pub fn from_wire(reason: &str) -> Self {
        match reason {
            // OpenAI, Anthropic and Bedrock, OCI Cohere, Gemini.
            "stop" | "end_turn" | "stop_sequence" | "COMPLETE" | "STOP" => Self::Stop,
            "length" | "max_tokens" | "MAX_TOKENS" => Self::Length,
            "content_filter"
            | "content_filtered"
            | "guardrail_intervened"
            | "SAFETY"
            | "RECITATION"
            | "BLOCKLIST"
            | "PROHIBITED_CONTENT"
            | "SPII"
            | "ERROR_TOXIC" => Self::ContentFilter,
            other => Self::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ContentFilter => "content_filter",
            Self::Other(other) => other,
        }
    }
}

/// One event of a normalized chat stream: text deltas, then exactly one `Finish`.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    Delta(String),
    Finish {
        reason: FinishReason,
        /// None when the provider reported no usage.
        usage: Option<Usage>,
    },
}

/// Which model a chat provider serves, and under what name on its endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTarget {
    /// The model's canonical name, as callers and routing rules know it (`gpt-4o`).
    pub model: String,
    /// The name the endpoint knows it by: an Azure deployment, a Bedrock model or
    /// inference-profile id, a Vertex model, an OCI model id or dedicated-endpoint
    /// OCID, the model of an OpenAI-compatible server.
    pub wire_id: String,
    /// Served on reserved capacity (Azure PTU deployment, OCI dedicated AI cluster).
    pub dedicated: bool,
    /// Every region the deployment may process a prompt in, when it says (`regions`
    /// in the config); empty: derived by [`regions::regions_used`].
    pub regions: Vec<String>,
}

/// Who serves a model, for routing, cost and the route in each answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderInfo {
    /// The `[[provider]]` id.
    pub id: String,
    /// The canonical model name.
    pub model: String,
    /// The name the endpoint knows the model by ([`ChatTarget::wire_id`]).
    pub deployment: String,
    pub dedicated: bool,
    pub cloud: String,
    pub region: String,
    /// Every region it may process a prompt in: `region`, or several for a
    /// multi-region endpoint (residency counts them all).
    pub regions: Vec<String>,
    /// The `[[provider]]`'s list prices; routing prefers the deployment's and the
    /// catalog's.
    pub input_per_1m_usd: f64,
    pub output_per_1m_usd: f64,
}

/// A whole completion, from a non-streaming call.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub text: String,
    pub reason: FinishReason,
    /// None when the provider reported no usage.
    pub usage: Option<Usage>,
}

/// A chat model endpoint: one model on one provider ([`ChatTarget`]).
#[async_trait]
pub trait ChatProvider: Send + Sync {
    /// Shared: a call's route summary holds the description of the deployment
    /// that answered.
    fn info(&self) -> &Arc<ProviderInfo>;

    /// A whole completion. By default the stream, collected; providers whose API
    /// has a non-streaming call (Converse, generateContent) use it instead.
    async fn chat(&self, request: &ChatRequest, deadline: Instant) -> Result<ChatResponse> {
        use futures::StreamExt;
        let mut stream = self.chat_stream(request, deadline).await?;
        let mut text = String::new();
        while let Some(event) = stream.next().await {
            match event? {
                ChatEvent::Delta(delta) => text.push_str(&delta),
                ChatEvent::Finish { reason, usage } => {
                    return Ok(ChatResponse {
                        text,
                        reason,
                        usage,
                    });
                }
            }
        }
        Err(crate::error::Error::unavailable(format!(
            "provider {:?} ended its stream without finishing",
            self.info().id
        )))
    }

    /// Starts a streamed completion. Errors before the first event mean nothing
    /// was produced (safe to fail over); errors inside the stream come after text.
    async fn chat_stream(
        &self,
        request: &ChatRequest,
        deadline: Instant,
    ) -> Result<BoxStream<'static, Result<ChatEvent>>>;
}
