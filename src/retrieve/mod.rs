//! Federated search: plan the sources, embed the query once per space, fan out
//! under one deadline, fuse by rank, one entry per document.

pub mod fanout;
pub mod fusion;
pub mod plan;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use fanout::{SourceOutcome, SourceStatus};
pub use fusion::{Contribution, FusedHit};

use crate::config::{FusionMethod, SearchConfig};
use crate::embed::Embedder;
use crate::error::Result;
use crate::stores::Source;

/// A validated search request.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: String,
    pub top_k: usize,
    /// Source ids; empty means all.
    pub sources: Vec<String>,
    pub fusion: Option<FusionMethod>,
    pub deadline: Instant,
}

#[derive(Debug, Clone)]
pub struct SearchResult {
    pub hits: Vec<FusedHit>,
    pub outcomes: Vec<SourceOutcome>,
    /// Some planned source did not answer in full.
    pub degraded: bool,
    pub fusion: FusionMethod,
    pub took: Duration,
}

/// The sources and embedders search runs over.
pub struct Retriever {
    sources: Vec<Source>,
    embedders: HashMap<String, Arc<dyn Embedder>>,
    settings: SearchConfig,
}

impl Retriever {
    pub fn new(
        sources: Vec<Source>,
        embedders: HashMap<String, Arc<dyn Embedder>>,
        settings: SearchConfig,
    ) -> Self {
        Self {
            sources,
            embedders,
            settings,
        }
    }

    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    pub async fn search(&self, request: &SearchRequest) -> Result<SearchResult> {
        let started = Instant::now();
        let plan = plan::plan(&self.sources, &request.sources)?;
        let candidates = request.top_k.max(self.settings.candidates_per_source);
        let results = fanout::fan_out(
            &plan,
            &self.embedders,
            &request.query,
            candidates,
            request.deadline,
        )
        .await;
        let degraded = results
            .iter()
            .any(|result| result.outcome.status != SourceStatus::Ok);
        let mut outcomes = Vec::with_capacity(results.len());
        let mut lists = Vec::with_capacity(results.len());
        for result in results {
            outcomes.push(result.outcome);
            lists.push(fusion::RankedList {
                source: result.source.id().to_string(),
                weight: result.source.weight,
                hits: result.hits,
            });
        }
        let method = request.fusion.unwrap_or(self.settings.fusion);
        let hits = fusion::fuse(&lists, method, self.settings.rrf_k, request.top_k);
        Ok(SearchResult {
            hits,
            outcomes,
            degraded,
            fusion: method,
            took: started.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::document::{EmbeddedChunk, Hit};
    use crate::embed::{EmbeddingSpace, Purpose};
    use crate::error::Error;
    use crate::stores::{SearchBackend, SourceInfo, StoreKind, StoreQuery};

    enum Behaviour {
        Answer(Vec<&'static str>),
        Fail,
        Stall,
    }

    struct FakeStore {
        info: SourceInfo,
        behaviour: Behaviour,
    }

    #[async_trait]
    impl SearchBackend for FakeStore {
        fn describe(&self) -> &SourceInfo {
            &self.info
        }

        async fn search(&self, query: &StoreQuery) -> crate::error::Result<Vec<Hit>> {
            if self.info.kind == StoreKind::Dense {
                assert!(query.vector.is_some(), "dense stores get the query vector");
            }
            match &self.behaviour {
                Behaviour::Answer(docs) => Ok(docs
                    .iter()
                    .map(|doc| Hit {
                        chunk_id: format!("{doc}#0"),
                        doc_id: doc.to_string(),
                        object_key: format!("{doc}.txt"),
                        title: String::new(),
                        text: String::new(),
                        cloud: String::new(),
                        region: String::new(),
                        score: 1.0,
                    })
                    .collect()),
                Behaviour::Fail => Err(Error::unavailable("connection refused")),
                Behaviour::Stall => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(Vec::new())
                }
            }
        }

        async fn upsert(&self, _chunks: &[EmbeddedChunk]) -> crate::error::Result<()> {
            Ok(())
        }

        async fn delete_objects(&self, _keys: &[String]) -> crate::error::Result<()> {
            Ok(())
        }

        async fn commit(&self) -> crate::error::Result<()> {
            Ok(())
        }

        async fn count(&self) -> crate::error::Result<u64> {
            Ok(0)
        }
    }

    struct CountingEmbedder {
        space: EmbeddingSpace,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Embedder for CountingEmbedder {
        fn space(&self) -> &EmbeddingSpace {
            &self.space
        }

        async fn embed(
            &self,
            texts: &[String],
            _purpose: Purpose,
        ) -> crate::error::Result<Vec<Vec<f32>>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(texts.iter().map(|_| vec![1.0, 0.0]).collect())
        }
    }

    fn source(id: &str, space: Option<&str>, behaviour: Behaviour, timeout_ms: u64) -> Source {
        Source {
            backend: Arc::new(FakeStore {
                info: SourceInfo {
                    id: id.into(),
                    backend: "fake".into(),
                    kind: if space.is_some() {
                        StoreKind::Dense
                    } else {
                        StoreKind::Lexical
                    },
                    space: space.map(str::to_string),
                    dims: space.map(|_| 2),
                    cloud: "local".into(),
                    region: "local".into(),
                },
                behaviour,
            }),
            weight: 1.0,
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    fn retriever(sources: Vec<Source>) -> (Retriever, Arc<CountingEmbedder>) {
        let embedder = Arc::new(CountingEmbedder {
            space: EmbeddingSpace {
                id: "space".into(),
                model: "fake".into(),
                dims: 2,
            },
            calls: AtomicUsize::new(0),
        });
        let embedders =
            HashMap::from([("space".to_string(), embedder.clone() as Arc<dyn Embedder>)]);
        (
            Retriever::new(sources, embedders, SearchConfig::default()),
            embedder,
        )
    }

    fn request(sources: &[&str]) -> SearchRequest {
        SearchRequest {
            query: "query".into(),
            top_k: 10,
            sources: sources.iter().map(|id| id.to_string()).collect(),
            fusion: None,
            deadline: Instant::now() + Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn failing_and_stalled_sources_degrade_but_do_not_fail_the_search() {
        let (retriever, _) = retriever(vec![
            source("good", None, Behaviour::Answer(vec!["a", "b"]), 1000),
            source("down", None, Behaviour::Fail, 1000),
            source("stalled", Some("space"), Behaviour::Stall, 50),
        ]);
        let started = Instant::now();
        let result = retriever.search(&request(&[])).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the stalled source is cut off at its budget"
        );
        assert!(result.degraded);
        let docs: Vec<&str> = result
            .hits
            .iter()
            .map(|hit| hit.hit.doc_id.as_str())
            .collect();
        assert_eq!(docs, vec!["a", "b"]);
        let status = |id: &str| {
            result
                .outcomes
                .iter()
                .find(|outcome| outcome.source == id)
                .unwrap()
                .status
        };
        assert_eq!(status("good"), SourceStatus::Ok);
        assert_eq!(status("down"), SourceStatus::Error);
        assert_eq!(status("stalled"), SourceStatus::Timeout);
    }

    #[tokio::test]
    async fn the_query_is_embedded_once_per_space_whatever_the_number_of_sources() {
        let (retriever, embedder) = retriever(vec![
            source("dense-1", Some("space"), Behaviour::Answer(vec!["a"]), 1000),
            source(
                "dense-2",
                Some("space"),
                Behaviour::Answer(vec!["a", "b"]),
                1000,
            ),
            source("dense-3", Some("space"), Behaviour::Answer(vec!["c"]), 1000),
        ]);
        let result = retriever.search(&request(&[])).await.unwrap();
        assert_eq!(embedder.calls.load(Ordering::SeqCst), 1);
        assert!(!result.degraded);
        assert_eq!(result.hits[0].hit.doc_id, "a");
        assert_eq!(result.hits[0].contributions.len(), 2);
    }

    #[tokio::test]
    async fn a_source_filter_limits_the_fan_out_and_unknown_sources_are_refused() {
        let (retriever, embedder) = retriever(vec![
            source("lexical", None, Behaviour::Answer(vec!["a"]), 1000),
            source("dense", Some("space"), Behaviour::Answer(vec!["b"]), 1000),
        ]);
        let result = retriever.search(&request(&["lexical"])).await.unwrap();
        assert_eq!(result.outcomes.len(), 1);
        assert_eq!(
            embedder.calls.load(Ordering::SeqCst),
            0,
            "no dense source, no embedding"
        );
        let error = retriever.search(&request(&["nope"])).await.unwrap_err();
        assert_eq!(error.kind, crate::error::ErrorKind::NotFound);
        assert!(error.message.contains("nope") && error.message.contains("lexical"));
    }
}
