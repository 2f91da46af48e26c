//! Federated search: plan the sources, embed the query once per space, fan out
//! under one deadline, fuse by rank, one entry per document.

pub mod fanout;
pub mod fusion;
pub mod page;
pub mod plan;
pub mod snippet;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use fanout::{SourceOutcome, SourceStatus};
pub use fusion::{Contribution, FusedHit};

use crate::config::{FusionMethod, SearchConfig};
use crate::embed::query::QueryEmbedder;
use crate::error::Result;
use crate::policy::classification::Classifier;
use crate::policy::search_zone::SearchZone;
use crate::stores::Source;
use crate::stores::filter::{Condition, Filter, FilterField};

/// A validated search request.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: String,
    pub top_k: usize,
    /// Source ids; empty means all.
    pub sources: Vec<String>,
    pub fusion: Option<FusionMethod>,
    pub deadline: Instant,
    /// Embed only in this space; reach other spaces through adapters.
    pub adapter_from: Option<String>,
    pub controls: Controls,
    /// Only chunks that match, at every source; None: every chunk.
    pub filter: Option<crate::stores::filter::Filter>,
    /// Where the search may reach (residency); the default restricts nothing.
    pub zone: SearchZone,
}

/// A caller's overrides of the configured search settings; the defaults change nothing.
#[derive(Debug, Clone, Default)]
pub struct Controls {
    /// Source id -> weight, replacing the configured weight of the sources named.
    pub weights: HashMap<String, f64>,
    /// RRF's k; None: `search.rrf_k`.
    pub rrf_k: Option<f64>,
    /// Hits asked of each source, exactly; None: at least top_k and
    /// `search.candidates_per_source`.
    pub candidates: Option<usize>,
    /// Fused hits scoring below this are dropped.
    pub min_score: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct SearchResult {
    pub hits: Vec<FusedHit>,
    pub outcomes: Vec<SourceOutcome>,
    /// Some planned source did not answer in full.
    pub degraded: bool,
    pub fusion: FusionMethod,
    pub took: Duration,
    /// The next page's token, when the caller asked for pages and more hits follow.
    pub next_page_token: Option<String>,
    /// Position in the fused list of `hits[0]`: 0, or a page's offset.
    pub offset: usize,
}

impl SearchResult {
    /// The longest the search waited on one source: sources are searched at once, so
    /// this is the part of its time spent outside skyfuse.
    pub fn longest_source(&self) -> Duration {
        self.outcomes
            .iter()
            .map(|outcome| outcome.took)
            .max()
            .unwrap_or_default()
    }
}

/// The sources and embedders search runs over.
pub struct Retriever {
    sources: Vec<Source>,
    embedder: Arc<QueryEmbedder>,
    settings: SearchConfig,
    classifier: Classifier,
}

impl Retriever {
    pub fn new(sources: Vec<Source>, embedder: Arc<QueryEmbedder>, settings: SearchConfig) -> Self {
        Self {
            sources,
            embedder,
            settings,
            classifier: Classifier::default(),
        }
    }

    /// Stamps the classes `[[classification]]` gives on every hit.
    pub fn with_classifier(mut self, classifier: Classifier) -> Self {
        self.classifier = classifier;
        self
    }

    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    pub async fn search(&self, request: &SearchRequest) -> Result<SearchResult> {
        let started = Instant::now();
        let mut plan = plan::plan(&self.sources, &request.sources)?;
        let zone = &request.zone;
        let out_of_zone = plan.take_unreachable(|source| {
            let info = source.info();
            zone.reaches(&info.cloud, &info.region)
                .map_err(|why| format!("not searched (residency): {why}"))
        });
        let controls = &request.controls;
        let candidates = controls
            .candidates
            .unwrap_or_else(|| request.top_k.max(self.settings.candidates_per_source));
        let pushed_down = with_store_clouds(request);
        let mut results = fanout::fan_out(
            &plan,
            &self.embedder,
            pushed_down.as_ref().unwrap_or(request),
            candidates,
        )
        .await?;
        for (source, why) in out_of_zone {
            results.extend(fanout::skipped(&[source], &why, started));
        }
        for result in &mut results {
            self.classify_and_keep(zone, result);
        }
        let degraded = results
            .iter()
            .any(|result| result.outcome.status != SourceStatus::Ok);
        let mut outcomes = Vec::with_capacity(results.len());
        let mut lists = Vec::with_capacity(results.len());
        for result in results {
            outcomes.push(result.outcome);
            lists.push(fusion::RankedList {
                source: result.source.id().to_string(),
                weight: controls
                    .weights
                    .get(result.source.id())
                    .copied()
                    .unwrap_or(result.source.weight),
                hits: result.hits,
            });
        }
        let method = request.fusion.unwrap_or(self.settings.fusion);
        let rrf_k = controls.rrf_k.unwrap_or(self.settings.rrf_k);
        let mut hits = fusion::fuse(&lists, method, rrf_k, request.top_k);
        if let Some(min_score) = controls.min_score {
            // The list is best first: what falls below the bar is its tail.
            hits.retain(|hit| hit.score >= min_score);
        }
        Ok(SearchResult {
            hits,
            outcomes,
            degraded,
            fusion: method,
            took: started.elapsed(),
            next_page_token: None,
            offset: 0,
        })
    }
}

impl Retriever {
    /// Stamps each hit's classes, and leaves out those the zone may not return,
    /// saying how many and why in the source's outcome: never silently.
    fn classify_and_keep(&self, zone: &SearchZone, result: &mut fanout::SourceResult<'_>) {
        if self.classifier.is_empty() && zone.is_open() {
            return;
        }
        let source = result.source.id();
        let mut left_out: Option<(usize, String)> = None;
        result.hits.retain_mut(|hit| {
            hit.classes = self.classifier.classes_of(source, &hit.object_key);
            match zone.returns(&hit.cloud, &hit.region, &hit.classes) {
                Ok(()) => true,
                Err(why) => {
                    left_out.get_or_insert((0, why)).0 += 1;
                    false
                }
            }
        });
        if let Some((count, why)) = left_out {
            let note = format!("{count} hit(s) left out (residency): {why}");
            let outcome = &mut result.outcome;
            outcome.hits = result.hits.len();
            outcome.message = if outcome.message.is_empty() {
                note
            } else {
                format!("{}; {note}", outcome.message)
            };
        }
    }
}

/// The request with the zone's clouds added to its filter, when stores may apply
/// them before ranking (fewer hits lost to filtering afterwards); None: unchanged.
fn with_store_clouds(request: &SearchRequest) -> Option<SearchRequest> {
    let clouds = request.zone.store_clouds()?;
    let condition = Filter::Condition(Condition::In {
        field: FilterField::Cloud,
        values: clouds,
    });
    let mut pushed = request.clone();
    pushed.filter = Some(match pushed.filter.take() {
        Some(filter) => Filter::And(vec![filter, condition]),
        None => condition,
    });
    Some(pushed)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use async_trait::async_trait;

    use super::*;
    use crate::config::Metric;
    use crate::document::{EmbeddedChunk, Hit};
    use crate::embed::adapter::{FitMethod, LinearAdapter};
    use crate::embed::query::QueryCacheSettings;
    use crate::embed::space::tests::{ScriptedProvider, space as test_space};
    use crate::embed::space::{Serving, SpaceEmbedder};
    use crate::error::Error;
    use crate::stores::{SearchBackend, SourceInfo, StoreKind, StoreQuery};

    enum Behaviour {
        Answer(Vec<&'static str>),
        /// Documents with the cloud and region their data lives in.
        Placed(Vec<(&'static str, &'static str, &'static str)>),
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
                        title: "".into(),
                        text: "".into(),
                        cloud: String::new(),
                        region: String::new(),
                        classes: Vec::new(),
                        score: 1.0,
                        span: None,
                    })
                    .collect()),
                Behaviour::Placed(docs) => Ok(docs
                    .iter()
                    .map(|(doc, cloud, region)| Hit {
                        chunk_id: format!("{doc}#0"),
                        doc_id: doc.to_string(),
                        object_key: format!("s3://{cloud}-bucket/{doc}.txt"),
                        title: "".into(),
                        text: "".into(),
                        cloud: cloud.to_string(),
                        region: region.to_string(),
                        classes: Vec::new(),
                        score: 1.0,
                        span: None,
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

    fn retriever(sources: Vec<Source>) -> (Retriever, Arc<ScriptedProvider>) {
        let provider = ScriptedProvider::new("local", 2);
        let embedder = SpaceEmbedder::new(
            test_space("space", 2),
            Metric::Cosine,
            false,
            vec![Serving::new(provider.clone(), "fake")],
        )
        .unwrap();
        let query = QueryEmbedder::new(
            HashMap::from([("space".to_string(), Arc::new(embedder))]),
            HashMap::new(),
            QueryCacheSettings {
                entries: 0,
                ttl: Duration::ZERO,
            },
        );
        (
            Retriever::new(sources, Arc::new(query), SearchConfig::default()),
            provider,
        )
    }

    fn request(sources: &[&str]) -> SearchRequest {
        SearchRequest {
            query: "query".into(),
            top_k: 10,
            sources: sources.iter().map(|id| id.to_string()).collect(),
            fusion: None,
            deadline: Instant::now() + Duration::from_secs(5),
            adapter_from: None,
            controls: Controls::default(),
            filter: None,
            zone: SearchZone::default(),
        }
    }

    /// Space "space" embeds; space "foreign" has a provider that is down and, when
    /// `with_adapter`, an adapter from "space".
    fn retriever_with_foreign_space(sources: Vec<Source>, with_adapter: bool) -> Retriever {
        let embedder = |id: &str, provider: Arc<ScriptedProvider>| {
            let space = SpaceEmbedder::new(
                test_space(id, 2),
                Metric::Cosine,
                false,
                vec![Serving::new(provider, "fake")],
            );
            (id.to_string(), Arc::new(space.unwrap()))
        };
        let down = ScriptedProvider::new("down", 2);
        down.fail_with(Some(Error::unavailable("connection refused")));
        let spaces = HashMap::from([
            embedder("space", ScriptedProvider::new("up", 2)),
            embedder("foreign", down),
        ]);
        let paired = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![0.6, 0.8]];
        let adapters = if with_adapter {
            vec![
                LinearAdapter::fit("space", "foreign", &paired, &paired, FitMethod::Procrustes)
                    .unwrap(),
            ]
        } else {
            Vec::new()
        };
        let cache = QueryCacheSettings {
            entries: 0,
            ttl: Duration::ZERO,
        };
        let query = QueryEmbedder::new(spaces, HashMap::new(), cache)
            .with_adapters(adapters)
            .unwrap();
        Retriever::new(sources, Arc::new(query), SearchConfig::default())
    }

    /// A source whose store is at `place`, answering `docs` (id, cloud, region).
    fn store_in(
        id: &str,
        space: Option<&str>,
        place: (&str, &str),
        docs: Vec<(&'static str, &'static str, &'static str)>,
    ) -> Source {
        let template = source(id, space, Behaviour::Answer(Vec::new()), 1000);
        Source {
            backend: Arc::new(FakeStore {
                info: SourceInfo {
                    cloud: place.0.into(),
                    region: place.1.into(),
                    ..template.info().clone()
                },
                behaviour: Behaviour::Placed(docs),
            }),
            ..template
        }
    }

    fn eu_zone(cross: &[&str]) -> SearchZone {
        use crate::config::Glob;
        use crate::policy::search_zone::Limit;
        SearchZone {
            limits: vec![Limit {
                by: "the request".into(),
                clouds: Vec::new(),
                regions: vec![Glob::new("eu-*").unwrap()],
            }],
            classes: Vec::new(),
            cross_region_allowed: cross.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn a_region_restricted_search_skips_sources_and_chunks_outside_it_and_says_so() {
        let (retriever, embedder) = retriever(vec![
            store_in(
                "eu-store",
                None,
                ("aws", "eu-west-1"),
                vec![
                    ("eu-doc", "aws", "eu-west-1"),
                    ("us-doc", "aws", "us-east-1"),
                    ("stats", "aws", "us-east-1"),
                ],
            ),
            store_in(
                "us-store",
                None,
                ("aws", "us-east-1"),
                vec![("us-only", "aws", "us-east-1")],
            ),
            store_in(
                "dense",
                Some("space"),
                ("local", "local"),
                vec![("eu-dense", "azure", "eu-west-2")],
            ),
        ]);
        let retriever = retriever.with_classifier(crate::policy::classification::Classifier::new(
            toml::from_str::<toml::Table>(
                "[[rule]]\nclasses = [\"aggregated\"]\nkeys = [\"*/stats.txt\"]",
            )
            .unwrap()["rule"]
                .clone()
                .try_into()
                .unwrap(),
        ));
        let mut asked = request(&[]);
        asked.zone = eu_zone(&["aggregated"]);
        let result = retriever.search(&asked).await.unwrap();
        let outcome = |id: &str| {
            result
                .outcomes
                .iter()
                .find(|o| o.source == id)
                .unwrap()
                .clone()
        };
        let us = outcome("us-store");
        assert_eq!(us.status, SourceStatus::Skipped);
        assert!(
            us.message
                .contains("aws/us-east-1 is outside the regions the request allows (eu-*)"),
            "{}",
            us.message
        );
        let dense = outcome("dense");
        assert_eq!(
            dense.status,
            SourceStatus::Skipped,
            "the only provider is in test/test-1"
        );
        assert!(
            dense.message.contains("may not see it"),
            "{}",
            dense.message
        );
        assert_eq!(embedder.calls(), 0, "the query never reached the provider");
        let eu = outcome("eu-store");
        assert_eq!((eu.status, eu.hits), (SourceStatus::Ok, 2));
        assert!(
            eu.message.contains("1 hit(s) left out (residency)"),
            "{}",
            eu.message
        );
        let mut docs: Vec<(&str, Vec<String>)> = result
            .hits
            .iter()
            .map(|hit| (hit.hit.doc_id.as_str(), hit.hit.classes.clone()))
            .collect();
        docs.sort();
        assert_eq!(
            docs,
            [
                ("eu-doc", vec![]),
                ("stats", vec!["aggregated".to_string()])
            ],
            "aggregated data may cross; us-doc may not"
        );

        let open = retriever.search(&request(&[])).await.unwrap();
        assert_eq!(open.hits.len(), 5, "no restriction: every hit");
    }

    #[tokio::test]
    async fn an_adapter_stands_in_for_a_space_that_cannot_embed_and_the_outcome_says_so() {
        let sources = || {
            vec![source(
                "foreign-dense",
                Some("foreign"),
                Behaviour::Answer(vec!["a"]),
                1000,
            )]
        };
        let adapted = retriever_with_foreign_space(sources(), true)
            .search(&request(&[]))
            .await
            .unwrap();
        let outcome = &adapted.outcomes[0];
        assert_eq!(outcome.status, SourceStatus::Ok);
        assert_eq!(outcome.adapted_from.as_deref(), Some("space"));
        assert!(
            outcome.message.contains("connection refused"),
            "{}",
            outcome.message
        );
        assert_eq!(adapted.hits[0].hit.doc_id, "a");

        let without = retriever_with_foreign_space(sources(), false)
            .search(&request(&[]))
            .await
            .unwrap();
        assert!(without.degraded && without.hits.is_empty());
        assert_eq!(without.outcomes[0].status, SourceStatus::Skipped);
        assert!(without.outcomes[0].message.contains("connection refused"));
    }

    #[tokio::test]
    async fn adapter_from_reaches_other_spaces_only_through_adapters() {
        let retriever = retriever_with_foreign_space(
            vec![
                source("native", Some("space"), Behaviour::Answer(vec!["a"]), 1000),
                source(
                    "foreign-dense",
                    Some("foreign"),
                    Behaviour::Answer(vec!["b"]),
                    1000,
                ),
            ],
            true,
        );
        let mut asked = request(&[]);
        asked.adapter_from = Some("space".into());
        let result = retriever.search(&asked).await.unwrap();
        let adapted_from = |id: &str| {
            let outcome = result.outcomes.iter().find(|o| o.source == id).unwrap();
            (outcome.status, outcome.adapted_from.clone())
        };
        assert_eq!(adapted_from("native"), (SourceStatus::Ok, None));
        assert_eq!(
            adapted_from("foreign-dense"),
            (SourceStatus::Ok, Some("space".into()))
        );
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
        assert_eq!(embedder.calls(), 1);
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
        assert_eq!(embedder.calls(), 0, "no dense source, no embedding");
        let error = retriever.search(&request(&["nope"])).await.unwrap_err();
        assert_eq!(error.kind, crate::error::ErrorKind::NotFound);
        assert!(error.message.contains("nope") && error.message.contains("lexical"));
    }

    #[tokio::test]
    async fn an_overloaded_local_model_refuses_the_search_but_a_throttled_cloud_only_degrades_it() {
        let sources = || {
            vec![
                source("lexical", None, Behaviour::Answer(vec!["a"]), 1000),
                source("dense", Some("space"), Behaviour::Answer(vec!["b"]), 1000),
            ]
        };
        let (overloaded, embedder) = retriever(sources());
        embedder.fail_with(Some(Error::rate_limited(
            "the server is busy",
            Duration::from_millis(40),
        )));
        let error = overloaded.search(&request(&[])).await.unwrap_err();
        assert_eq!(error.kind, crate::error::ErrorKind::Throttled);
        assert!(
            error.local_refusal,
            "shown to the caller as skyfuse's own refusal"
        );
        assert_eq!(error.retry_after, Some(Duration::from_millis(40)));
        assert!(
            error.message.contains("the server is busy"),
            "{}",
            error.message
        );

        let (throttled, embedder) = retriever(sources());
        embedder.fail_with(Some(Error::throttled("429 from the cloud", None)));
        let result = throttled.search(&request(&[])).await.unwrap();
        assert!(result.degraded);
        assert_eq!(result.hits.len(), 1, "the lexical source still answers");
    }
}
