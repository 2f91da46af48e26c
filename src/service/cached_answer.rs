//! Answers from `[answer.cache]`: what one is keyed by, how it is kept once the
//! model finished, and how it is replayed.
//!
//! The key is a SHA-256 over everything the model's answer depends on and everything
//! that decides what the caller may see: the prompt (the conversation and the
//! passages' text as sent), the model or tier asked for (and the server's defaults
//! standing in when it names neither), the output limit and
//! temperature, the clouds and regions the request and the caller's role allow, the
//! namespace, and each passage sent (chunk and document ids, object key, title,
//! text, span, where its data lives, its classes). A re-indexed bucket whose chunks
//! changed gives other passages or other text, so another key: a stale answer is
//! never served. Two callers share an answer only when they see the same passages
//! under the same restrictions.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::answer::{AnswerEvent, AnswerSummary};
use super::chat::ChatCall;
use super::feedback::CitedPassages;
use crate::llm::{ProviderInfo, Usage};
use crate::retrieve::FusedHit;
use crate::route::{Caller, RouteSummary};
use crate::state::{AnsweredBy, CachedAnswer};

/// Bumped when what goes into the key changes, so old entries are not read.
const KEY_VERSION: &str = "skyfuse-answer-cache-v1";

/// What an answer is asked of: the call's model and tier, and the server's defaults
/// that stand in when it names neither (a changed default is another key).
pub(super) struct AskedOf<'a> {
    pub model: Option<&'a str>,
    pub tier: Option<&'a str>,
    pub default_model: Option<&'a str>,
    pub default_tier: Option<&'a str>,
}

/// The digest an answer to `call` over `passages` is kept under.
pub(super) fn answer_key(
    call: &ChatCall,
    asked_of: &AskedOf<'_>,
    caller: Option<&Caller>,
    namespace: &str,
    passages: &[FusedHit],
) -> String {
    let mut key = KeyHasher(Sha256::new());
    key.field(KEY_VERSION);
    key.field(namespace);
    for name in [
        asked_of.model,
        asked_of.tier,
        asked_of.default_model,
        asked_of.default_tier,
    ] {
        key.field(name.unwrap_or(""));
    }
    key.list(&call.allowed_clouds);
    key.list(&call.allowed_regions);
    key.field(
        &call
            .max_output_tokens
            .map_or(String::new(), |n| n.to_string()),
    );
    key.field(
        &call
            .temperature
            .map_or(String::new(), |t| t.to_bits().to_string()),
    );
    match caller {
        Some(caller) => {
            key.list(&caller.clouds);
            key.list(caller.regions.iter().map(|glob| glob.as_str()));
        }
        None => key.field("no caller limits"),
    }
    key.field(&call.messages.len().to_string());
    for message in &call.messages {
        key.field(&format!("{:?}", message.role));
        key.field(&message.content);
    }
    key.field(&passages.len().to_string());
    for passage in passages {
        let hit = &passage.hit;
        key.field(&hit.chunk_id);
        key.field(&hit.doc_id);
        key.field(&hit.object_key);
        key.field(&hit.title);
        key.field(&hit.text);
        key.field(&hit.span.map_or(String::new(), |span| {
            format!("{}..{}", span.start, span.end)
        }));
        key.field(&hit.cloud);
        key.field(&hit.region);
        key.list(&hit.classes);
    }
    hex::encode(key.0.finalize())
}

/// Fields fed with their length first, so no two different lists hash alike.
struct KeyHasher(Sha256);

impl KeyHasher {
    fn field(&mut self, value: &str) {
        self.0.update((value.len() as u64).to_le_bytes());
        self.0.update(value.as_bytes());
    }

    fn list<S: AsRef<str>>(&mut self, values: impl IntoIterator<Item = S>) {
        let values: Vec<_> = values.into_iter().collect();
        self.field(&values.len().to_string());
        for value in values {
            self.field(value.as_ref());
        }
    }
}

/// What the cache keeps of a model's finished answer; None when it is not complete
/// (cut at its limit, filtered) or no deployment is named.
pub(super) fn to_keep(tokens: Vec<String>, route: &RouteSummary) -> Option<CachedAnswer> {
    let chosen = route.chosen.as_ref()?;
    let answer = CachedAnswer {
        tokens,
        input_tokens: route.usage.input_tokens,
        output_tokens: route.usage.output_tokens,
        cached_input_tokens: route.usage.cached_input_tokens,
        usage_estimated: route.usage.estimated,
        finish_reason: route.finish_reason.clone(),
        answered_by: AnsweredBy {
            provider: chosen.id.clone(),
            model: chosen.model.clone(),
            deployment: chosen.deployment.clone(),
            dedicated: chosen.dedicated,
            cloud: chosen.cloud.clone(),
            region: chosen.region.clone(),
            regions: chosen.regions.clone(),
        },
    };
    answer.is_complete().then_some(answer)
}

/// Streams `answer` as the model did (its pieces, then `Done`), marked cached, at
/// no cost: no deployment was called, so the route has no attempts.
pub(super) async fn replay(
    sender: mpsc::Sender<AnswerEvent>,
    answer: &CachedAnswer,
    summary: AnswerSummary,
    send_timeout: Duration,
) {
    let usage = Usage {
        input_tokens: answer.input_tokens,
        output_tokens: answer.output_tokens,
        cached_input_tokens: answer.cached_input_tokens,
        estimated: answer.usage_estimated,
    };
    let by = &answer.answered_by;
    let route = RouteSummary {
        chosen: Some(Arc::new(ProviderInfo {
            id: by.provider.clone(),
            model: by.model.clone(),
            deployment: by.deployment.clone(),
            dedicated: by.dedicated,
            cloud: by.cloud.clone(),
            region: by.region.clone(),
            regions: by.regions.clone(),
            input_per_1m_usd: 0.0,
            output_per_1m_usd: 0.0,
        })),
        usage,
        cost_usd: 0.0,
        finish_reason: answer.finish_reason.clone(),
        ..RouteSummary::default()
    };
    let summary = AnswerSummary {
        cited: CitedPassages::of(&answer.text(), summary.citations.len()),
        usage,
        cost_usd: 0.0,
        cached: true,
        finish_reason: answer.finish_reason.clone(),
        route,
        ..summary
    };
    let events = answer
        .tokens
        .iter()
        .map(|token| AnswerEvent::Token(token.clone()))
        .chain(std::iter::once(AnswerEvent::Done(Box::new(summary))));
    for event in events {
        match tokio::time::timeout(send_timeout, sender.send(event)).await {
            Ok(Ok(())) => {}
            // The client left, or stopped reading: nothing upstream to cancel.
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::Hit;
    use crate::llm::{ChatMessage, Role};

    fn passage(chunk_id: &str, text: &str) -> FusedHit {
        FusedHit {
            hit: Hit {
                chunk_id: chunk_id.into(),
                doc_id: chunk_id.split('#').next().unwrap_or_default().into(),
                object_key: "archives.md".into(),
                title: "Archives".into(),
                text: text.into(),
                cloud: "aws".into(),
                region: "eu-west-1".into(),
                classes: Vec::new(),
                score: 1.0,
                span: None,
            },
            score: 0.5,
            contributions: Vec::new(),
            snippet: None,
        }
    }

    fn asked_of(call: &ChatCall) -> AskedOf<'_> {
        AskedOf {
            model: call.model.as_deref(),
            tier: call.tier.as_deref(),
            default_model: Some("llama"),
            default_tier: None,
        }
    }

    /// The key of `call` asked of its model, the default model being "llama".
    fn key_of(
        call: &ChatCall,
        caller: Option<&Caller>,
        namespace: &str,
        passages: &[FusedHit],
    ) -> String {
        answer_key(call, &asked_of(call), caller, namespace, passages)
    }

    fn call(question: &str) -> ChatCall {
        ChatCall {
            model: Some("gpt-4o".into()),
            messages: vec![ChatMessage {
                role: Role::User,
                content: question.into(),
            }],
            max_output_tokens: Some(256),
            ..ChatCall::default()
        }
    }

    #[test]
    fn the_key_changes_with_the_passages_the_question_the_model_and_the_tenant() {
        let passages = [passage(
            "archives.md#0",
            "Cold archives are kept in Dublin.",
        )];
        let question = "Where are cold archives kept?";
        let key = key_of(&call(question), None, "acme", &passages);
        assert_eq!(
            key,
            key_of(&call(question), None, "acme", &passages),
            "the same call over the same passages finds the same answer"
        );

        let reindexed = [passage(
            "archives.md#0",
            "Cold archives moved to Frankfurt.",
        )];
        let other_chunk = [passage(
            "archives.md#1",
            "Cold archives are kept in Dublin.",
        )];
        let more = [
            passages[0].clone(),
            passage("replicas.md#0", "Replicas too."),
        ];
        let mut other_model = call(question);
        other_model.model = Some("claude-3-5-sonnet".into());
        let mut other_clouds = call(question);
        other_clouds.allowed_clouds = vec!["azure".into()];
        let restricted = Caller {
            clouds: vec!["aws".into()],
            ..Caller::anonymous()
        };
        let others = [
            key_of(&call(question), None, "acme", &reindexed),
            key_of(&call(question), None, "acme", &other_chunk),
            key_of(&call(question), None, "acme", &more),
            key_of(&call(question), None, "acme", &[]),
            key_of(&call("And their replicas?"), None, "acme", &passages),
            key_of(&other_model, None, "acme", &passages),
            key_of(&other_clouds, None, "acme", &passages),
            key_of(&call(question), None, "globex", &passages),
            key_of(&call(question), Some(&restricted), "acme", &passages),
        ];
        for (index, other) in others.iter().enumerate() {
            assert_ne!(&key, other, "variation {index} found the first answer");
        }
        let distinct: std::collections::HashSet<&String> = others.iter().collect();
        assert_eq!(distinct.len(), others.len());

        // A call naming no model is asked of the server's default: another default,
        // another answer.
        let unnamed = ChatCall {
            model: None,
            ..call(question)
        };
        let other_default = AskedOf {
            default_model: Some("mistral"),
            ..asked_of(&unnamed)
        };
        assert_ne!(
            key_of(&unnamed, None, "acme", &passages),
            answer_key(&unnamed, &other_default, None, "acme", &passages)
        );
    }

    #[test]
    fn only_a_complete_answer_by_a_named_deployment_is_kept() {
        let route = |finish_reason: &str| RouteSummary {
            chosen: Some(Arc::new(ProviderInfo {
                id: "azure-eastus".into(),
                model: "gpt-4o".into(),
                deployment: "gpt4o".into(),
                dedicated: false,
                cloud: "azure".into(),
                region: "eastus".into(),
                regions: vec!["eastus".into()],
                input_per_1m_usd: 5.0,
                output_per_1m_usd: 15.0,
            })),
            finish_reason: finish_reason.into(),
            ..RouteSummary::default()
        };
        let tokens = || vec!["In Dublin ".to_string(), "[1].".to_string()];
        let kept = to_keep(tokens(), &route("stop")).unwrap();
        assert_eq!(kept.text(), "In Dublin [1].");
        assert_eq!(kept.answered_by.provider, "azure-eastus");
        assert!(to_keep(tokens(), &route("length")).is_none(), "cut short");
        assert!(to_keep(tokens(), &route("content_filter")).is_none());
        let nobody = RouteSummary {
            finish_reason: "stop".into(),
            ..RouteSummary::default()
        };
        assert!(to_keep(tokens(), &nobody).is_none());
    }

    #[tokio::test]
    async fn a_replay_streams_the_pieces_then_a_cached_done_at_no_cost() {
        let kept = to_keep(
            vec!["In Dublin ".into(), "[1].".into()],
            &RouteSummary {
                chosen: Some(Arc::new(ProviderInfo {
                    id: "p".into(),
                    model: "m".into(),
                    deployment: "d".into(),
                    dedicated: false,
                    cloud: "aws".into(),
                    region: "eu-west-1".into(),
                    regions: Vec::new(),
                    input_per_1m_usd: 1.0,
                    output_per_1m_usd: 1.0,
                })),
                usage: Usage {
                    input_tokens: 100,
                    output_tokens: 4,
                    ..Usage::default()
                },
                cost_usd: 0.0042,
                finish_reason: "stop".into(),
                ..RouteSummary::default()
            },
        )
        .unwrap();
        let (sender, mut receiver) = mpsc::channel(8);
        let summary = AnswerSummary {
            citations: vec![super::super::answer::Citation {
                number: 1,
                doc_id: "archives.md".into(),
                chunk_id: "archives.md#0".into(),
                title: String::new(),
                object_key: "archives.md".into(),
                text: "Cold archives are kept in Dublin.".into(),
                chunk_ordinal: 0,
                span: None,
            }],
            usage: Usage::default(),
            cost_usd: 0.0,
            extractive: false,
            route: RouteSummary::default(),
            finish_reason: String::new(),
            degraded: false,
            outcomes: Vec::new(),
            answer_id: String::new(),
            cited: CitedPassages::default(),
            residency: Default::default(),
            overhead: Duration::ZERO,
            egress: Default::default(),
            cached: false,
        };
        replay(sender, &kept, summary, Duration::from_secs(5)).await;
        let mut text = String::new();
        let mut done = None;
        while let Some(event) = receiver.recv().await {
            match event {
                AnswerEvent::Token(token) => text.push_str(&token),
                AnswerEvent::Done(summary) => done = Some(summary),
                AnswerEvent::Failed(error) => panic!("{error}"),
            }
        }
        let done = done.unwrap();
        assert_eq!(text, "In Dublin [1].");
        assert!(done.cached);
        assert_eq!(done.cost_usd, 0.0);
        assert_eq!(done.usage.output_tokens, 4);
        assert_eq!(done.cited.cited, vec![1]);
        assert!(done.route.attempts.is_empty(), "no deployment was called");
        assert_eq!(done.route.chosen.unwrap().id, "p");
    }
}
