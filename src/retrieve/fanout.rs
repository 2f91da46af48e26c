//! Running one query against many sources at once under one deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::document::Hit;
use crate::embed::query::{Family, QueryEmbedder};
use crate::embed::space::Within;
use crate::error::{ErrorKind, Result};
use crate::retrieve::SearchRequest;
use crate::retrieve::plan::Plan;
use crate::stores::filter::Filter;
use crate::stores::{Source, StoreQuery};
use crate::telemetry::{spans, trace};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    Ok,
    Error,
    Timeout,
    /// Not searched: its query embedding could not be made.
    Skipped,
}

impl SourceStatus {
    /// The name metrics and traces use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::Skipped => "skipped",
        }
    }
}

/// What happened at one source.
#[derive(Debug, Clone)]
pub struct SourceOutcome {
    pub source: String,
    pub status: SourceStatus,
    pub message: String,
    pub hits: usize,
    pub took: Duration,
    /// The space whose query vector reached this source through an adapter.
    pub adapted_from: Option<String>,
}

/// One source's result: its hits (empty unless ok) and its outcome.
pub struct SourceResult<'a> {
    pub source: &'a Source,
    pub hits: Vec<Hit>,
    pub outcome: SourceOutcome,
}

/// Searches every planned source concurrently. Lexical sources start at once; each
/// family of spaces embeds the query once, then searches the sources of its spaces.
/// A source's failure becomes its outcome; only skyfuse's own refusal of the query
/// (the local model's queue is full: the server is overloaded) fails the call, so the
/// caller backs off instead of getting lexical-only results under load.
pub async fn fan_out<'a>(
    plan: &Plan<'a>,
    embedder: &QueryEmbedder,
    request: &SearchRequest,
    candidates: usize,
) -> Result<Vec<SourceResult<'a>>> {
    let (query, deadline) = (request.query.as_str(), request.deadline);
    let adapter_from = request.adapter_from.as_deref();
    // Only providers the search's residency admits may see the query.
    let within: Option<Within> = request.zone.restricts_places().then(|| {
        let zone = request.zone.clone();
        let within: Within = Arc::new(move |cloud: &str, region: &str| zone.reaches(cloud, region));
        within
    });
    let started = Instant::now();
    let lexical = join_all(plan.lexical.iter().map(|source| {
        search_one(
            source,
            query,
            None,
            request.filter.as_ref(),
            candidates,
            started,
            deadline,
        )
    }));
    let (families, missing) = embedder.families(plan.by_space.keys().copied());
    let dense = join_all(families.iter().map(|family| {
        let search = Search {
            plan,
            embedder,
            query,
            adapter_from,
            within: within.clone(),
            filter: request.filter.as_ref(),
            candidates,
            started,
            deadline,
        };
        search.family(family)
    }));
    // Dense first: its first poll hands the query to the embedding workers, so that
    // a lexical store searched in place (a small BM25 index) runs while they embed.
    let (dense, lexical) = futures::join!(dense, lexical);
    let unembeddable = missing.into_iter().flat_map(|space| {
        skipped(
            &plan.by_space[space],
            &format!("no embedder for space {space:?}"),
            started,
        )
    });
    let mut results = lexical;
    for family in dense {
        results.extend(family?);
    }
    results.extend(unembeddable);
    Ok(results)
}

/// What the searches of one request share.
struct Search<'p, 'a> {
    plan: &'p Plan<'a>,
    embedder: &'p QueryEmbedder,
    query: &'p str,
    adapter_from: Option<&'p str>,
    within: Option<Within>,
    filter: Option<&'p Filter>,
    candidates: usize,
    started: Instant,
    deadline: Instant,
}

impl<'a> Search<'_, 'a> {
    fn sources_of(&self, space: &str) -> &[&'a Source] {
        self.plan.by_space.get(space).map_or(&[][..], Vec::as_slice)
    }

    /// Embeds the query once for the family, then searches the sources of each member
    /// space. A member the native vector cannot serve (its providers are down, or the
    /// caller asked for an adapter) gets a vector through an adapter, or is skipped.
    async fn family(self, family: &Family<'_>) -> Result<Vec<SourceResult<'a>>> {
        let wants_adapter = |space: &str| self.adapter_from.is_some_and(|from| from != space);
        let native = if family.members.iter().all(|space| wants_adapter(space)) {
            Err("the caller asked for an adapter".to_string())
        } else {
            match tokio::time::timeout_at(
                self.deadline.into(),
                self.embedder.embed(family, self.query, self.within.clone()),
            )
            .await
            {
                Err(_elapsed) => Err("query embedding timed out".to_string()),
                Ok(Err(error)) if error.local_refusal => return Err(error),
                Ok(Err(error)) => Err(format!("query embedding failed: {error}")),
                Ok(Ok(vector)) => Ok(vector),
            }
        };
        let mut searches = Vec::new();
        let mut results = Vec::new();
        for space in &family.members {
            let vector = match &native {
                Ok(vector) if !wants_adapter(space) => self
                    .embedder
                    .for_space(vector, space)
                    .map(|vector| (vector, None))
                    .map_err(|error| format!("query vector for space {space:?}: {error}")),
                Ok(_) | Err(_) => {
                    let why = native.as_ref().err().cloned().unwrap_or_default();
                    self.adapted(space, &why).await
                }
            };
            match vector {
                Ok((vector, adapted)) => {
                    searches.extend(self.sources_of(space).iter().map(|source| {
                        let search = search_one(
                            source,
                            self.query,
                            Some(vector.clone()),
                            self.filter,
                            self.candidates,
                            self.started,
                            self.deadline,
                        );
                        let adapted = adapted.clone();
                        async move {
                            let mut result = search.await;
                            if let Some((from, note)) = adapted {
                                result.outcome.message = note;
                                result.outcome.adapted_from = Some(from);
                            }
                            result
                        }
                    }));
                }
                Err(message) => {
                    results.extend(skipped(self.sources_of(space), &message, self.started));
                }
            }
        }
        results.extend(join_all(searches).await);
        Ok(results)
    }

    /// A query vector for `space` through an adapter; the note says which and why.
    async fn adapted(
        &self,
        space: &str,
        why: &str,
    ) -> Result<(Arc<Vec<f32>>, Option<(String, String)>), String> {
        let adapted = tokio::time::timeout_at(
            self.deadline.into(),
            self.embedder.embed_via_adapter(
                space,
                self.query,
                self.adapter_from,
                self.within.clone(),
            ),
        )
        .await;
        match adapted {
            Ok(Ok((vector, from))) => {
                let note =
                    format!("query embedded in space {from:?} and mapped by an adapter ({why})");
                Ok((vector, Some((from, note))))
            }
            Ok(Err(error)) if self.adapter_from.is_none() && error.kind == ErrorKind::NotFound => {
                Err(why.to_string())
            }
            Ok(Err(error)) => Err(format!("{why}; adapter: {error}")),
            Err(_elapsed) => Err(format!("{why}; adapter: timed out")),
        }
    }
}

pub(super) fn skipped<'a>(
    sources: &[&'a Source],
    message: &str,
    started: Instant,
) -> Vec<SourceResult<'a>> {
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
                adapted_from: None,
            },
        })
        .collect()
}

async fn search_one<'a>(
    source: &'a Source,
    query: &str,
    vector: Option<Arc<Vec<f32>>>,
    filter: Option<&Filter>,
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
        filter: filter.cloned(),
    };
    let span = spans::retrieval(source.info(), candidates);
    let searched = trace::run_in(
        span.as_ref(),
        tokio::time::timeout_at(source_deadline.into(), source.backend.search(&store_query)),
    )
    .await;
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
    let outcome = SourceOutcome {
        source: source.id().to_string(),
        status,
        message,
        hits: hits.len(),
        took: started.elapsed(),
        adapted_from: None,
    };
    if let Some(span) = span {
        spans::end_retrieval(span, &outcome);
    }
    SourceResult {
        source,
        outcome,
        hits,
    }
}
