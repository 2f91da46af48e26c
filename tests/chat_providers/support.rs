//! What the chat provider tests share: the loopback server and credential checks
//! of `tests/common/loopback.rs`, and request, stream and usage helpers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use skyfuse::config::{Config, ProviderConfig};
use skyfuse::error::{Error, ErrorKind};
use skyfuse::llm::{
    ChatEvent, ChatMessage, ChatProvider, ChatRequest, ChatTarget, FinishReason, Role, Usage,
};

#[path = "../common/live.rs"]
pub mod live;
#[path = "../common/loopback.rs"]
mod loopback;
pub use loopback::*;

/// The one `[[provider]]` of a TOML snippet, validated.
pub fn provider_config(toml: &str) -> ProviderConfig {
    let config = Config::parse(toml, std::path::Path::new("/")).unwrap();
    config.validate().unwrap();
    config.providers.into_iter().next().unwrap()
}

pub fn target(model: &str, wire_id: &str, dedicated: bool) -> ChatTarget {
    ChatTarget {
        model: model.into(),
        wire_id: wire_id.into(),
        dedicated,
        regions: Vec::new(),
    }
}

pub fn build(
    toml: &str,
    target: &ChatTarget,
    env: &HashMap<String, String>,
) -> Arc<dyn ChatProvider> {
    skyfuse::llm::providers::build(
        &provider_config(toml),
        target,
        env,
        reqwest::Client::new(),
        skyfuse::cloud::upstream::client().unwrap(),
    )
    .unwrap()
}

/// A system prompt and a question, as the answer path sends them.
pub fn request() -> ChatRequest {
    ChatRequest {
        messages: vec![
            ChatMessage {
                role: Role::System,
                content: "Answer only from the numbered passages.".into(),
            },
            ChatMessage {
                role: Role::User,
                content: "Where are cold archives replicated?".into(),
            },
        ],
        max_output_tokens: 300,
        temperature: 0.2,
        stop: Vec::new(),
    }
}

pub fn soon(milliseconds: u64) -> Instant {
    Instant::now() + Duration::from_millis(milliseconds)
}

/// What a stream produced: its deltas, then how it ended (the finish, or an error).
#[derive(Debug)]
pub struct Outcome {
    pub deltas: Vec<String>,
    pub end: Result<(FinishReason, Option<Usage>), Error>,
}

/// Reads a stream to its end, checking the contract on the way: nothing after a
/// finish or an error, and an end only after one of them.
pub async fn drain(provider: &dyn ChatProvider, deadline: Instant) -> Result<Outcome, Error> {
    let mut stream = provider.chat_stream(&request(), deadline).await?;
    let mut deltas = Vec::new();
    let mut end = None;
    while let Some(event) = stream.next().await {
        assert!(end.is_none(), "an event after the end: {event:?}");
        match event {
            Ok(ChatEvent::Delta(text)) => deltas.push(text),
            Ok(ChatEvent::Finish { reason, usage }) => end = Some(Ok((reason, usage))),
            Err(error) => end = Some(Err(error)),
        }
    }
    Ok(Outcome {
        deltas,
        end: end.expect("the stream ended without a finish or an error"),
    })
}

/// The stream's error, of the given kind, after the given deltas.
pub fn assert_broken(outcome: &Outcome, deltas: &[&str], kind: ErrorKind) -> Error {
    assert_eq!(outcome.deltas, deltas);
    match &outcome.end {
        Ok(finish) => panic!("expected {kind:?}, the stream finished: {finish:?}"),
        Err(error) => {
            assert_eq!(error.kind, kind, "{}", error.message);
            error.clone()
        }
    }
}

pub fn usage(input: u64, output: u64, cached: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cached_input_tokens: cached,
        estimated: false,
    }
}

/// `data: <json>` SSE events, one per payload, optionally named.
pub fn sse(event: Option<&str>, data: &str) -> Vec<u8> {
    match event {
        Some(name) => format!("event: {name}\ndata: {data}\n\n").into_bytes(),
        None => format!("data: {data}\n\n").into_bytes(),
    }
}
