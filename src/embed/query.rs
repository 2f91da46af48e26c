//! Query embedding for a search: once per space, or once per Matryoshka family, with a
//! short-lived cache.
//!
//! Spaces of one Matryoshka model served by the same providers form a family: the query
//! is embedded once at the largest dimension the request needs and truncated (and, for
//! cosine spaces, re-normalized) for the others. Other spaces are families of one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::Metric;
use crate::embed::adapter::LinearAdapter;
use crate::embed::normalize::shape_vector;
use crate::embed::query_cache::QueryCache;
pub use crate::embed::query_cache::{QueryCacheSettings, SharedVectors};
use crate::embed::space::{SpaceEmbedder, Within};
use crate::embed::{Embedder, Purpose};
use crate::error::{Error, Result};
use crate::telemetry::Metrics;

/// The spaces of one request that share a query embedding.
pub struct Family<'a> {
    key: String,
    /// The member embedding at the largest size; it asks its providers for `dims`.
    embedder: Arc<SpaceEmbedder>,
    dims: usize,
    /// Space ids, in the order they were given.
    pub members: Vec<&'a str>,
}

impl Family<'_> {
    /// A label for outcomes and logs: the member spaces.
    pub fn describe(&self) -> String {
        self.members.join("+")
    }
}

pub struct QueryEmbedder {
    spaces: HashMap<String, Arc<SpaceEmbedder>>,
    family_keys: HashMap<String, String>,
    /// Target space -> adapters into it, in the order they are tried.
    adapters: HashMap<String, Vec<Arc<LinearAdapter>>>,
    cache: QueryCache,
    /// The replicas' tier, for the spaces that opted in.
    shared: Option<SharedTier>,
    /// Counts where each lookup was answered.
    metrics: Option<Arc<Metrics>>,
}

#[derive(Clone)]
struct SharedTier {
    vectors: Arc<dyn SharedVectors>,
    /// Space id -> its namespace in the tier (the space and its model's fingerprint).
    namespaces: HashMap<String, String>,
}

/// The name of the query-embedding cache in `skyfuse_cache_lookups_total`.
const CACHE_NAME: &str = "query_embedding";

impl QueryEmbedder {
    /// `family_keys` maps a space to a key shared by spaces that may share one query
    /// embedding (see [`family_key`]); spaces missing from it are families of one.
    pub fn new(
        spaces: HashMap<String, Arc<SpaceEmbedder>>,
        family_keys: HashMap<String, String>,
        cache: QueryCacheSettings,
    ) -> Self {
        Self {
            spaces,
            family_keys,
            adapters: HashMap::new(),
            cache: QueryCache::new(cache),
            shared: None,
            metrics: None,
        }
    }

    /// Looks query vectors of the spaces in `namespaces` (space id -> namespace) up
    /// in `vectors` after this process's cache, and keeps new ones there.
    pub fn sharing(
        mut self,
        vectors: Arc<dyn SharedVectors>,
        namespaces: HashMap<String, String>,
    ) -> Self {
        if !namespaces.is_empty() {
            self.shared = Some(SharedTier {
                vectors,
                namespaces,
            });
        }
        self
    }

    /// Counts each lookup in `skyfuse_cache_lookups_total{cache="query_embedding"}`.
    pub fn counting(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Adds adapters fitted by `skyfuse calibrate`; one whose sizes do not match its
    /// spaces any more (a space was reconfigured) is refused with both named.
    pub fn with_adapters(mut self, adapters: Vec<LinearAdapter>) -> Result<Self> {
        for adapter in adapters {
            for (space, dims) in [
                (&adapter.from, adapter.from_dims()),
                (&adapter.to, adapter.to_dims()),
            ] {
                let Some(embedder) = self.spaces.get(space) else {
                    return Err(Error::config(format!(
                        "adapter {} -> {}: space {space:?} is not configured",
                        adapter.from, adapter.to
                    )));
                };
                if embedder.space().dims != dims {
                    return Err(Error::config(format!(
                        "adapter {} -> {} maps {dims} dimensions of {space:?}, which now has {}; run skyfuse calibrate again",
                        adapter.from,
                        adapter.to,
                        embedder.space().dims
                    )));
                }
            }
            self.adapters
                .entry(adapter.to.clone())
                .or_default()
                .push(Arc::new(adapter));
        }
        Ok(self)
    }

    /// Embeds `query` in another space and maps it into `to` with a fitted adapter:
    /// the first adapter whose source space can embed right now, or the one from
    /// `from` when given. Returns the vector and the space it came from.
    pub async fn embed_via_adapter(
        &self,
        to: &str,
        query: &str,
        from: Option<&str>,
        within: Option<Within>,
    ) -> Result<(Arc<Vec<f32>>, String)> {
        let candidates = self.adapters.get(to).map_or(&[][..], Vec::as_slice);
        let mut failures = Vec::new();
        for adapter in candidates {
            if from.is_some_and(|from| from != adapter.from) {
                continue;
            }
            let (families, _) = self.families([adapter.from.as_str()]);
            let Some(family) = families.first() else {
                continue;
            };
            let embedded = match self.embed(family, query, within.clone()).await {
                Ok(vector) => self.for_space(&vector, &adapter.from),
                Err(error) => Err(error),
            };
            match embedded.and_then(|vector| adapter.apply(&vector)) {
                Ok(mapped) => {
                    let normalize = self.spaces[to].metric() == Metric::Cosine;
                    let dims = adapter.to_dims();
                    let vector = shape_vector(mapped, dims, false, normalize)?;
                    return Ok((Arc::new(vector), adapter.from.clone()));
                }
                Err(error) => failures.push(format!("from {}: {error}", adapter.from)),
            }
        }
        if failures.is_empty() {
            let wanted = from.map_or(String::new(), |from| format!(" from {from:?}"));
            return Err(Error::not_found(format!(
                "no adapter{wanted} into space {to:?}; fit one with skyfuse calibrate"
            )));
        }
        Err(Error::unavailable(failures.join("; ")))
    }

    pub fn space(&self, id: &str) -> Option<&Arc<SpaceEmbedder>> {
        self.spaces.get(id)
    }

    /// Groups the given spaces into families. A space without an embedder is returned
    /// in the error list, so its sources can be reported as skipped.
    pub fn families<'a>(
        &self,
        space_ids: impl IntoIterator<Item = &'a str>,
    ) -> (Vec<Family<'a>>, Vec<&'a str>) {
        let mut families: BTreeMap<String, Family<'a>> = BTreeMap::new();
        let mut missing = Vec::new();
        for id in space_ids {
            let Some(embedder) = self.spaces.get(id) else {
                missing.push(id);
                continue;
            };
            let key = self
                .family_keys
                .get(id)
                .cloned()
                .unwrap_or_else(|| format!("space:{id}"));
            let dims = embedder.space().dims;
            let family = families.entry(key.clone()).or_insert_with(|| Family {
                key,
                embedder: embedder.clone(),
                dims,
                members: Vec::new(),
            });
            if dims > family.dims {
                family.embedder = embedder.clone();
                family.dims = dims;
            }
            family.members.push(id);
        }
        (families.into_values().collect(), missing)
    }

    /// The family's query vector at its largest size: from the cache when fresh, shared
    /// with an identical query in flight, else embedded.
    /// With `within`, only the providers it admits may see the query (a vector already
    /// cached or in flight is shared: that sends the query nowhere).
    pub async fn embed(
        &self,
        family: &Family<'_>,
        query: &str,
        within: Option<Within>,
    ) -> Result<Arc<Vec<f32>>> {
        let key = (family.key.clone(), family.dims, query.to_string());
        let metrics = self.metrics.clone();
        let count = move |tier| {
            if let Some(metrics) = &metrics {
                metrics.record_cache_lookup(CACHE_NAME, tier);
            }
        };
        if let Some(vector) = self.cache.lookup(&key) {
            count("process");
            return Ok(vector);
        }
        let embedder = family.embedder.clone();
        let shared = self.shared.as_ref().and_then(|tier| {
            let namespace = tier.namespaces.get(&embedder.space().id)?;
            Some((tier.vectors.clone(), namespace.clone()))
        });
        let (dims, query) = (family.dims, query.to_string());
        self.cache
            .get_or_embed(
                key,
                crate::telemetry::trace::carry(async move {
                    if let Some((vectors, namespace)) = &shared
                        && let Some(vector) = vectors.get(namespace, dims, &query).await
                    {
                        count("redis");
                        return Ok(Arc::new(vector));
                    }
                    count("miss");
                    let mut vectors = embedder
                        .embed_within(
                            std::slice::from_ref(&query),
                            Purpose::Query,
                            dims,
                            within.as_ref(),
                        )
                        .await?;
                    let vector = match vectors.len() {
                        1 => vectors.remove(0),
                        n => {
                            return Err(Error::unavailable(format!(
                                "the embedder returned {n} vectors for one query"
                            )));
                        }
                    };
                    // Kept before the search goes on, so the next replica finds it.
                    if let Some((shared_vectors, namespace)) = &shared {
                        shared_vectors.put(namespace, &query, &vector).await;
                    }
                    Ok(Arc::new(vector))
                }),
            )
            .await
    }

    /// The family's vector in one member space's shape.
    pub fn for_space(
        &self,
        family_vector: &Arc<Vec<f32>>,
        space_id: &str,
    ) -> Result<Arc<Vec<f32>>> {
        let embedder = self
            .spaces
            .get(space_id)
            .ok_or_else(|| Error::not_found(format!("no embedder for space {space_id:?}")))?;
        let dims = embedder.space().dims;
        if dims == family_vector.len() {
            return Ok(family_vector.clone());
        }
        let normalize = embedder.metric() == Metric::Cosine;
        Ok(Arc::new(shape_vector(
            family_vector.to_vec(),
            dims,
            true,
            normalize,
        )?))
    }
}

/// Spaces with equal keys may share a query embedding: both Matryoshka, the same model,
/// the same providers with the same model ids, the same metric.
pub fn family_key(space: &crate::config::SpaceConfig) -> Option<String> {
    space.matryoshka.then(|| {
        let providers: Vec<String> = space
            .providers()
            .map(|provider| format!("{provider}={}", space.model_at(provider)))
            .collect();
        format!("{}|{:?}|{}", space.model, space.metric, providers.join(","))
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::embed::space::Serving;
    use crate::embed::space::tests::{ScriptedProvider, space};

    fn settings(entries: usize) -> QueryCacheSettings {
        QueryCacheSettings {
            entries,
            ttl: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn a_matryoshka_family_is_embedded_once_at_its_largest_size() {
        let provider = ScriptedProvider::new("openai", 8);
        let embedder = |id: &str, dims| {
            Arc::new(
                SpaceEmbedder::new(
                    space(id, dims),
                    Metric::Cosine,
                    true,
                    vec![Serving::new(provider.clone(), "text-embedding-3-large")],
                )
                .unwrap(),
            )
        };
        let spaces = HashMap::from([
            ("te3-2".to_string(), embedder("te3-2", 2)),
            ("te3-4".to_string(), embedder("te3-4", 4)),
            ("other".to_string(), embedder("other", 3)),
        ]);
        let keys = HashMap::from([
            ("te3-2".to_string(), "te3".to_string()),
            ("te3-4".to_string(), "te3".to_string()),
        ]);
        let query = QueryEmbedder::new(spaces, keys, settings(0));
        let (families, missing) = query.families(["te3-2", "te3-4", "other", "gone"]);
        assert_eq!(missing, vec!["gone"]);
        assert_eq!(families.len(), 2);
        let te3 = families.iter().find(|f| f.members.len() == 2).unwrap();
        let full = query.embed(te3, "q", None).await.unwrap();
        assert_eq!(full.len(), 4);
        let small = query.for_space(&full, "te3-2").unwrap();
        let expected = {
            let norm = (full[0] * full[0] + full[1] * full[1]).sqrt();
            vec![full[0] / norm, full[1] / norm]
        };
        assert_eq!(*small, expected, "truncated and re-normalized");
        assert_eq!(provider.calls(), 1);
        assert_eq!(provider.requests.lock().unwrap()[0].2, Some(4));
    }

    #[tokio::test]
    async fn a_repeated_query_is_served_from_the_cache() {
        let provider = ScriptedProvider::new("local", 2);
        let spaces = HashMap::from([(
            "minilm".to_string(),
            Arc::new(
                SpaceEmbedder::new(
                    space("minilm", 2),
                    Metric::Cosine,
                    false,
                    vec![Serving::new(provider.clone(), "m")],
                )
                .unwrap(),
            ),
        )]);
        let query = QueryEmbedder::new(spaces, HashMap::new(), settings(8));
        let (families, _) = query.families(["minilm"]);
        let first = query.embed(&families[0], "same words", None).await.unwrap();
        let again = query.embed(&families[0], "same words", None).await.unwrap();
        assert_eq!(first, again);
        assert_eq!(provider.calls(), 1, "served from the cache");
        query
            .embed(&families[0], "other words", None)
            .await
            .unwrap();
        assert_eq!(provider.calls(), 2);
    }
}
