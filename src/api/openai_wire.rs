//! The facade's response bodies as typed structs: every completion and stream
//! chunk is written straight to bytes, without building a `serde_json::Value`
//! map first (a dozen small allocations a body). The JSON is OpenAI's shape with
//! skyfuse's own `skyfuse` object beside it.

use serde::Serialize;

use crate::llm::Usage;
use crate::route::{AttemptOutcome, RouteSummary};

/// A whole `chat.completion`; `skyfuse` is the route ([`RouteBody`]) or more.
#[derive(Serialize)]
pub(super) struct CompletionBody<'a, S> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: [CompletionChoice<'a>; 1],
    pub usage: UsageBody,
    pub skyfuse: S,
}

#[derive(Serialize)]
pub(super) struct CompletionChoice<'a> {
    pub index: u32,
    pub message: AssistantMessage<'a>,
    pub finish_reason: &'a str,
}

#[derive(Serialize)]
pub(super) struct AssistantMessage<'a> {
    pub role: &'static str,
    pub content: &'a str,
}

/// One `chat.completion.chunk` of a stream. `skyfuse` rides on the last one, `usage`
/// on the usage chunk (which has no choices).
#[derive(Serialize)]
pub(super) struct ChunkBody<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skyfuse: Option<RouteBody<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageBody>,
}

impl<'a> ChunkBody<'a> {
    /// A chunk with `choices` and nothing of skyfuse's.
    pub fn new(id: &'a str, created: u64, model: &'a str, choices: &'a [ChunkChoice<'a>]) -> Self {
        Self {
            id,
            object: "chat.completion.chunk",
            created,
            model,
            choices,
            skyfuse: None,
            usage: None,
        }
    }
}

#[derive(Serialize)]
pub(super) struct ChunkChoice<'a> {
    pub index: u32,
    pub delta: Delta<'a>,
    pub finish_reason: Option<&'a str>,
}

/// A chunk's delta: the role comes with the first token only; the last chunk's is
/// empty.
#[derive(Serialize, Default)]
pub(super) struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
}

/// OpenAI's `usage` object.
#[derive(Serialize)]
pub(super) struct UsageBody {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: CachedTokens,
}

#[derive(Serialize)]
struct CachedTokens {
    cached_tokens: u64,
}

impl From<&Usage> for UsageBody {
    fn from(usage: &Usage) -> Self {
        Self {
            prompt_tokens: usage.input_tokens,
            completion_tokens: usage.output_tokens,
            total_tokens: usage.input_tokens.saturating_add(usage.output_tokens),
            prompt_tokens_details: CachedTokens {
                cached_tokens: usage.cached_input_tokens,
            },
        }
    }
}

/// Where a call went and what it cost: the `skyfuse` object of a chat answer.
#[derive(Serialize)]
pub(super) struct RouteBody<'a> {
    provider: Option<&'a str>,
    deployment: Option<&'a str>,
    cloud: Option<&'a str>,
    region: Option<&'a str>,
    dedicated: bool,
    tier: Option<&'a str>,
    cost_usd: f64,
    usage_estimated: bool,
    failover_count: u32,
    attempts: Vec<AttemptBody<'a>>,
}

#[derive(Serialize)]
struct AttemptBody<'a> {
    deployment: &'a str,
    provider: &'a str,
    outcome: String,
    message: String,
    took_ms: f64,
}

impl<'a> RouteBody<'a> {
    pub fn of(summary: &'a RouteSummary) -> Self {
        let chosen = summary.chosen.as_ref();
        Self {
            provider: chosen.map(|info| info.id.as_str()),
            deployment: chosen.map(|info| info.deployment.as_str()),
            cloud: chosen.map(|info| info.cloud.as_str()),
            region: chosen.map(|info| info.region.as_str()),
            dedicated: chosen.is_some_and(|info| info.dedicated),
            tier: summary.tier.as_deref(),
            cost_usd: summary.cost_usd,
            usage_estimated: summary.usage.estimated,
            failover_count: summary.failover_count(),
            attempts: summary
                .attempts
                .iter()
                .map(|attempt| AttemptBody {
                    deployment: &attempt.deployment,
                    provider: &attempt.provider,
                    outcome: match &attempt.outcome {
                        AttemptOutcome::Ok => "ok".to_string(),
                        AttemptOutcome::Failed(kind) => format!("error: {}", kind.as_str()),
                        AttemptOutcome::Skipped => "skipped".to_string(),
                    },
                    message: super::redact::attempt_message(
                        &attempt.outcome,
                        &attempt.message,
                        &attempt.deployment,
                    ),
                    took_ms: attempt.took.as_secs_f64() * 1e3,
                })
                .collect(),
        }
    }
}

/// `data` of one chunk: the JSON text, or an empty object should it not encode
/// (it always does: strings and numbers only).
pub(super) fn chunk_text(chunk: &ChunkBody<'_>) -> String {
    serde_json::to_string(chunk).unwrap_or_else(|_| "{}".to_string())
}
