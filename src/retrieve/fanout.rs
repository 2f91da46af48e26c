//! Running one query against many sources at once under one deadline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::document::Hit;
use crate::embed::{Embedder, Purpose};
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

/// Searches every planned source concurrently. Lexical sources start at once;
/// each space embeds the query once, then searches its sources. Nothing here
/// fails the call: failures become outcomes.
pub async fn fan_out<'a>(
    plan: &Plan<'a>,
    embedders: &HashMap<String, Arc<dyn Embedder>>,
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
    let dense = join_all(plan.by_space.iter().map(|(space, sources)| {
        search_space(
            space,
            sources,
            embedders.get(*space),
            query,
            candidates,
            started,
            deadline,
        )
    }));
    let (lexical, dense) = futures::join!(lexical, dense);
    lexical
        .into_iter()
        .chain(dense.into_iter().flatten())
        .collect()
}

async fn search_space<'a>(
    space: &str,
    sources: &[&'a Source],
    embedder: Option<&Arc<dyn Embedder>>,
    query: &str,
    candidates: usize,
    started: Instant,
    deadline: Instant,
) -> Vec<SourceResult<'a>> {
    let skipped = |message: String| -> Vec<SourceResult<'a>> {
        sources
            .iter()
            .map(|source| SourceResult {
                source,
                hits: Vec::new(),
                outcome: SourceOutcome {
                    source: source.id().to_string(),
                    status: SourceStatus::Skipped,
                    message: message.clone(),
                    hits: 0,
                    took: started.elapsed(),
                },
            })
            .collect()
    };
    let Some(embedder) = embedder else {
        return skipped(format!("no embedder for space {space:?}"));
    };
    let embedded = tokio::time::timeout_at(
        deadline.into(),
        embedder.embed(&[query.to_string()], Purpose::Query),
    )
    .await;
    let vector = match embedded {
        Err(_elapsed) => return skipped("query embedding timed out".into()),
        Ok(Err(error)) => return skipped(format!("query embedding failed: {error}")),
        Ok(Ok(mut vectors)) if vectors.len() == 1 => Arc::new(vectors.remove(0)),
        Ok(Ok(vectors)) => {
            return skipped(format!(
                "embedder returned {} vectors for one query",
                vectors.len()
            ));
        }
    };
    join_all(sources.iter().map(|source| {
        search_one(
            source,
            query,
            Some(vector.clone()),
            candidates,
            started,
            deadline,
        )
    }))
    .await
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
