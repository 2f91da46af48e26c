//! Running one query against many sources at once under one deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::document::Hit;
use crate::embed::query::{Family, QueryEmbedder};
use crate::error::ErrorKind;
use crate::retrieve::plan::Plan;
use crate::stores::{Source, StoreQuery};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    Ok,
    Error,
    Timeout,
    /// Not searched: its query embedding could not be made.
    Skipped,
}

/// What happened at one source.
#[derive(Debug, Clone)]
pub struct SourceOutcome {
    pub source: String,
    pub status: SourceStatus,
    pub message: String,
    pub hits: usize,
    pub took: Duration,
}

/// One source's result: its hits (empty unless ok) and its outcome.
pub struct SourceResult<'a> {
    pub source: &'a Source,
    pub hits: Vec<Hit>,
    pub outcome: SourceOutcome,
}

/// Searches every planned source concurrently. Lexical sources start at once; each
/// family of spaces embeds the query once, then searches the sources of its spaces.
/// Nothing here fails the call: failures become outcomes.
pub async fn fan_out<'a>(
    plan: &Plan<'a>,
    embedder: &QueryEmbedder,
    query: &str,
    candidates: usize,
    deadline: Instant,
) -> Vec<SourceResult<'a>> {
    let started = Instant::now();
    let lexical = join_all(
        plan.lexical
            .iter()
            .map(|source| search_one(source, query, None, candidates, started, deadline)),
    );
    let (families, missing) = embedder.families(plan.by_space.keys().copied());
    let dense =
        join_all(families.iter().map(|family| {
            search_family(family, plan, embedder, query, candidates, started, deadline)
        }));
    let (lexical, dense) = futures::join!(lexical, dense);
    let unembeddable = missing.into_iter().flat_map(|space| {
        skipped(
            &plan.by_space[space],
            &format!("no embedder for space {space:?}"),
            started,
        )
    });
    lexical
        .into_iter()
        .chain(dense.into_iter().flatten())
        .chain(unembeddable)
        .collect()
}

async fn search_family<'a>(
    family: &Family<'_>,
    plan: &Plan<'a>,
    embedder: &QueryEmbedder,
    query: &str,
    candidates: usize,
    started: Instant,
    deadline: Instant,
) -> Vec<SourceResult<'a>> {
    let sources_of = |space: &str| plan.by_space.get(space).map_or(&[][..], Vec::as_slice);
    let skip_all = |message: String| -> Vec<SourceResult<'a>> {
        family
            .members
            .iter()
            .flat_map(|space| skipped(sources_of(space), &message, started))
            .collect()
    };
    let embedded = tokio::time::timeout_at(deadline.into(), embedder.embed(family, query)).await;
    let vector = match embedded {
        Err(_elapsed) => return skip_all("query embedding timed out".into()),
        Ok(Err(error)) => return skip_all(format!("query embedding failed: {error}")),
        Ok(Ok(vector)) => vector,
    };
    let mut searches = Vec::new();
    let mut results = Vec::new();
    for space in &family.members {
        match embedder.for_space(&vector, space) {
            Ok(space_vector) => searches.extend(sources_of(space).iter().map(|source| {
                search_one(
                    source,
                    query,
                    Some(space_vector.clone()),
                    candidates,
                    started,
                    deadline,
                )
            })),
            Err(error) => results.extend(skipped(
                sources_of(space),
                &format!("query vector for space {space:?}: {error}"),
                started,
            )),
        }
    }
    results.extend(join_all(searches).await);
    results
}

fn skipped<'a>(sources: &[&'a Source], message: &str, started: Instant) -> Vec<SourceResult<'a>> {
    sources
        .iter()
        .map(|source| SourceResult {
            source,
            hits: Vec::new(),
            outcome: SourceOutcome {
                source: source.id().to_string(),
                status: SourceStatus::Skipped,
                message: message.to_string(),
                hits: 0,
                took: started.elapsed(),
            },
        })
        .collect()
}

async fn search_one<'a>(
    source: &'a Source,
    query: &str,
    vector: Option<Arc<Vec<f32>>>,
    candidates: usize,
    started: Instant,
    deadline: Instant,
) -> SourceResult<'a> {
    let source_deadline = deadline.min(started + source.timeout);
    let store_query = StoreQuery {
        text: query.to_string(),
        vector,
        top_k: candidates,
        deadline: source_deadline,
    };
    let searched =
        tokio::time::timeout_at(source_deadline.into(), source.backend.search(&store_query)).await;
    let (status, message, hits) = match searched {
        Ok(Ok(hits)) => (SourceStatus::Ok, String::new(), hits),
        Ok(Err(error)) if error.kind == ErrorKind::Timeout => {
            (SourceStatus::Timeout, error.message, Vec::new())
        }
        Ok(Err(error)) => (SourceStatus::Error, error.message, Vec::new()),
        Err(_elapsed) => (
            SourceStatus::Timeout,
            format!(
                "no answer within {} ms",
                source_deadline
                    .saturating_duration_since(started)
                    .as_millis()
            ),
            Vec::new(),
        ),
    };
    if status != SourceStatus::Ok {
        tracing::warn!(source = source.id(), ?status, %message, "source did not answer");
    }
    SourceResult {
        source,
        outcome: SourceOutcome {
            source: source.id().to_string(),
            status,
            message,
            hits: hits.len(),
            took: started.elapsed(),
        },
        hits,
    }
}
