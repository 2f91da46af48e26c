//! `skyfuse search`, `ask` and `sources`: the read side, printed for people.

use super::Connection as Channel;
use anyhow::{Result, bail};

use skyfuse::api::proto;
use skyfuse::api::proto::admin_service_client::AdminServiceClient;
use skyfuse::api::proto::generation_service_client::GenerationServiceClient;
use skyfuse::api::proto::retrieval_service_client::RetrievalServiceClient;

pub async fn run_search(
    channel: Channel,
    request: proto::SearchRequest,
    explain: bool,
) -> Result<()> {
    let response = RetrievalServiceClient::new(channel)
        .search(request)
        .await?
        .into_inner();
    for hit in &response.hits {
        let sources: Vec<String> = hit
            .explain
            .iter()
            .map(|source| format!("{}#{}", source.source, source.rank))
            .collect();
        let title = if hit.title.is_empty() {
            String::new()
        } else {
            format!("  {}", hit.title)
        };
        println!(
            "{:>3}. {}  [{}]  {}{}",
            hit.rank,
            hit.doc_id,
            sources.join(" "),
            hit.object_key,
            title
        );
        if explain {
            if !hit.cloud.is_empty() {
                println!("       stored in {} / {}", hit.cloud, hit.region);
            }
            for source in &hit.explain {
                println!(
                    "       {}: rank {} score {:.4} -> +{:.5} ({})",
                    source.source, source.rank, source.score, source.contribution, source.chunk_id
                );
            }
        }
    }
    if response.hits.is_empty() {
        println!("no hits");
    }
    print_outcomes(&response.sources, response.degraded);
    println!("took {:.1} ms", response.took_micros as f64 / 1000.0);
    Ok(())
}

fn print_outcomes(outcomes: &[proto::SourceOutcome], degraded: bool) {
    if !degraded {
        return;
    }
    eprintln!("degraded: some sources did not answer");
    for outcome in outcomes {
        if outcome.status != proto::SourceStatus::Ok as i32 {
            let status = proto::SourceStatus::try_from(outcome.status)
                .map_or("unknown", |status| status.as_str_name());
            eprintln!("  {}: {} {}", outcome.source, status, outcome.message);
        }
    }
}

/// `--filter`'s JSON as the request's filter; its fields are checked by the server.
pub fn filter_arg(text: Option<&str>) -> Result<Option<proto::Filter>> {
    text.map(|text| {
        skyfuse::api::filter_from_json(text).map_err(|error| anyhow::anyhow!("--filter: {error}"))
    })
    .transpose()
}

pub async fn run_ask(channel: Channel, request: proto::AnswerRequest) -> Result<()> {
    let mut stream = GenerationServiceClient::new(channel)
        .answer(request)
        .await?
        .into_inner();
    use std::io::Write;
    let mut finish_reason = None;
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(proto::answer_event::Event::Token(text)) => {
                print!("{text}");
                let _ = std::io::stdout().flush();
            }
            Some(proto::answer_event::Event::Done(done)) => {
                println!();
                let route = done.route.unwrap_or_default();
                let label = if route.extractive {
                    " (extractive: no LLM, sentences quoted from the passages)"
                } else {
                    ""
                };
                println!("\nanswered by {}/{}{label}", route.provider, route.model);
                for attempt in route
                    .attempts
                    .iter()
                    .filter(|attempt| attempt.outcome != "ok")
                {
                    // The kind as the proto spells it (THROTTLED...), else "skipped".
                    let why = if attempt.error_kind.is_empty() {
                        &attempt.outcome
                    } else {
                        &attempt.error_kind
                    };
                    println!(
                        "  failed attempt {} ({why}): {}",
                        attempt.provider, attempt.message
                    );
                }
                for citation in &done.citations {
                    println!(
                        "[{}] {}  {}  {}",
                        citation.number, citation.doc_id, citation.object_key, citation.title
                    );
                }
                let usage = done.usage.unwrap_or_default();
                println!(
                    "usage: {} in, {} out{}; cost ${:.6}{}",
                    usage.input_tokens,
                    usage.output_tokens,
                    if usage.estimated { " (estimated)" } else { "" },
                    done.cost.unwrap_or_default().usd,
                    if done.cached {
                        " (replayed from the answer cache)"
                    } else {
                        ""
                    }
                );
                print_outcomes(&done.sources, done.degraded);
                if !done.invalid_citations.is_empty() {
                    let numbers: Vec<String> = done
                        .invalid_citations
                        .iter()
                        .map(|number| format!("[{number}]"))
                        .collect();
                    eprintln!(
                        "warning: the answer cites passages that were not sent: {}",
                        numbers.join(" ")
                    );
                }
                if done.finish_reason != "stop" {
                    println!("finish reason: {}", done.finish_reason);
                }
                finish_reason = Some(done.finish_reason);
            }
            Some(proto::answer_event::Event::Error(error)) => {
                println!();
                bail!("answer broke off: {} {}", error.code, error.message);
            }
            None => {}
        }
    }
    answer_outcome(finish_reason.as_deref())
}

/// Whether an answer stream ended as a whole answer: a stream without `done` was
/// cut (the server's task died), and `length` means the text was truncated.
fn answer_outcome(finish_reason: Option<&str>) -> Result<()> {
    match finish_reason {
        None => {
            bail!("the answer stream ended without its final `done` event: the answer may be cut")
        }
        Some("length") => {
            bail!("the answer was cut at max_output_tokens (finish reason: length)")
        }
        Some("content_filter") => {
            bail!(
                "the answer was cut by the provider's content filter (finish reason: content_filter)"
            )
        }
        Some(_) => Ok(()),
    }
}

pub async fn run_sources(channel: Channel) -> Result<()> {
    let response = AdminServiceClient::new(channel)
        .list_sources(proto::ListSourcesRequest {})
        .await?
        .into_inner();
    for source in response.sources {
        let chunks = source
            .chunks
            .map_or("?".to_string(), |chunks| chunks.to_string());
        let space = if source.space.is_empty() {
            String::new()
        } else {
            format!(" space={} dims={}", source.space, source.dims)
        };
        println!(
            "{}  {} ({}){space} cloud={} region={} weight={} chunks={chunks}",
            source.id, source.backend, source.kind, source.cloud, source.region, source.weight
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_without_done_or_cut_short_is_a_failure() {
        assert!(answer_outcome(Some("stop")).is_ok());
        let cut = answer_outcome(None).unwrap_err().to_string();
        assert!(cut.contains("without its final `done`"), "{cut}");
        let length = answer_outcome(Some("length")).unwrap_err().to_string();
        assert!(length.contains("finish reason: length"), "{length}");
        let filtered = answer_outcome(Some("content_filter"))
            .unwrap_err()
            .to_string();
        assert!(filtered.contains("content filter"), "{filtered}");
    }
}
