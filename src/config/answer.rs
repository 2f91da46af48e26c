//! `[answer]`: retrieval-augmented answers: the provider, passages and budgets.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnswerConfig {
    /// Provider id to answer with; none means extractive answers.
    pub provider: Option<String>,
    /// Passages retrieved for an answer.
    pub top_k: u32,
    /// Prompt budget for the passages, in tokens (estimated at 4 characters a token).
    pub context_budget_tokens: usize,
    /// Output tokens a call gets when it asks for none.
    pub max_output_tokens: u32,
    /// The most output tokens a call may ask for (`max_output_tokens` on gRPC,
    /// `max_tokens` on the facade); more is refused as an invalid argument.
    pub max_output_tokens_limit: u32,
    /// What a conversation's answer retrieves with.
    pub retrieval_query: RetrievalQuery,
    /// Keeps finished answers to replay them for the same question over the same
    /// passages (`[answer.cache]`); none: every answer asks the model.
    pub cache: Option<AnswerCacheConfig>,
}

/// `[answer.cache]`: finished model answers, replayed without a model call. In
/// process, and in Redis too when `[shared_state]` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnswerCacheConfig {
    /// How long an answer is replayed after it was given.
    pub ttl_ms: u64,
    /// Answers kept in this process (the least recently used leave first).
    pub entries: usize,
}

impl Default for AnswerCacheConfig {
    fn default() -> Self {
        Self {
            ttl_ms: 600_000,
            entries: 1_024,
        }
    }
}

/// The search query of an answer asked as a conversation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetrievalQuery {
    /// The last user turn alone.
    #[default]
    LastUserTurn,
    /// The last three user turns, oldest first: follow-ups like "and in Europe?"
    /// keep the subject of the turns before them.
    RecentUserTurns,
}

impl Default for AnswerConfig {
    fn default() -> Self {
        Self {
            provider: None,
            top_k: 5,
            context_budget_tokens: 3_000,
            max_output_tokens: 512,
            max_output_tokens_limit: 8192,
            retrieval_query: RetrievalQuery::default(),
            cache: None,
        }
    }
}
