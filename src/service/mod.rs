//! The domain seam: what `api/`, the CLI and tests call. No transport types here.

mod answer;
mod bucket_options;
mod build;
mod cached_answer;
mod calibrate;
mod chat;
mod documents;
mod egress;
mod embeddings;
mod feedback;
mod index;
mod index_lease;
mod index_runs;
mod index_target;
mod operations;
mod residency;
mod search_controls;

/// Validating a config without serving it (`skyfuse config check`).
pub mod config_check;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use answer::{AnswerEvent, AnswerRequest, AnswerSummary, Citation, EXTRACTIVE_MODEL};
pub use chat::{ChatCall, ChatFailure, DEFAULT_TEMPERATURE, RatedChat};
pub use documents::{
    DeleteSelection, MAX_DELETE_IDS, MAX_DOCUMENT_TEXT_BYTES, MAX_DOCUMENTS_PER_CALL,
    MAX_UPSERT_TEXT_BYTES,
};
pub use embeddings::{Embeddings, EmbeddingsRequest, MAX_EMBEDDING_INPUTS};
pub use index::IndexFilters;
pub use index_runs::{IndexRunState, IndexRunStatus, IndexRuns};
pub use operations::Health;
pub use residency::{ResidencyOutcome, WithheldPassage};
pub use search_controls::{RRF_K_RANGE, SearchControls};

use crate::auth::{Authenticator, Credentials, Principal};
use crate::config::{Config, FusionMethod, IndexConfig};
use crate::embed::Embedder;
use crate::error::{Error, Result};
use crate::limits::{CallLimit, RateLimiter};
use crate::policy::egress::EgressPrices;
use crate::policy::placement;
use crate::policy::residency::Residency;
use crate::retrieve::{Retriever, SearchRequest, SearchResult};
use crate::route::Router;
use crate::state::{AnswerCache, SharedState};
use crate::stores::lock::DataDirLock;
use crate::stores::{SourceInfo, StoreKind};
use crate::telemetry::{Metrics, Tracing};

/// A search as a caller states it, before limits are applied.
#[derive(Debug, Clone, Default)]
pub struct SearchParams {
    pub query: String,
    /// None: the server default.
    pub top_k: Option<u32>,
    pub sources: Vec<String>,
    pub fusion: Option<FusionMethod>,
    /// None: `server.default_timeout_ms` from now.
    pub deadline: Option<Instant>,
    /// Embed only in this space and reach the others through adapters.
    pub adapter_from: Option<String>,
    /// Weights, RRF k, candidates, minimum score, pages and snippets; defaults change nothing.
    pub controls: SearchControls,
    /// Only chunks that match; checked against the fields the config makes filterable.
    pub filter: Option<crate::stores::filter::FilterRequest>,
    /// Residency: the clouds and regions (globs) the query may reach and its hits may
    /// come from, beside the caller's own; empty: any.
    pub clouds: Vec<String>,
    pub regions: Vec<String>,
    /// Only chunks of these classes (`[[classification]]`); empty: any.
    pub classifications: Vec<String>,
    /// The tenant whose chunks to search; empty: the caller's own if it is pinned to
    /// namespaces, else every chunk.
    pub namespace: String,
}

/// A search checked against the server's limits, ready to run.
pub struct CheckedSearch {
    pub request: SearchRequest,
    /// Which page of the fused list to return; None: the top `request.top_k`.
    pub page: Option<crate::retrieve::page::PageRequest>,
    pub snippets: bool,
}

/// A source as the admin API shows it.
#[derive(Debug, Clone)]
pub struct SourceDescription {
    pub info: SourceInfo,
    pub weight: f64,
    /// None when the store could not be counted.
    pub chunks: Option<u64>,
}

pub struct Service {
    config: Config,
    retriever: Retriever,
    embedders: HashMap<String, Arc<dyn Embedder>>,
    /// Chat routing and failover; None when no model is configured.
    router: Option<Arc<Router>>,
    /// Who may call, and with which permissions.
    authenticator: Authenticator,
    /// One indexing run per index at a time: two runs would race on the manifest.
    index_locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// One API documents call per index at a time: two would race on its manifest. Apart
    /// from `index_locks`: a bucket sync and API documents never share keys or a manifest.
    document_locks: HashMap<String, tokio::sync::Mutex<()>>,
    /// Resolves bucket secrets (`env:NAME`) and gives bucket clients the standard
    /// `AWS_*`, `AZURE_*` and `GOOGLE_*` variables, at each run.
    env: HashMap<String, String>,
    /// Where indexing runs parse untrusted formats (`[ingest] extraction`).
    extractor: crate::ingest::Extractor,
    /// Requests and tokens per minute, per caller (`[limits]`).
    rate_limiter: Arc<RateLimiter>,
    /// Calls in flight on both edges (`server.max_concurrent_calls`).
    call_limit: CallLimit,
    /// This process is the one writer of its data dir; None: it writes nothing local.
    _data_dir_lock: Option<DataDirLock>,
    /// `[ingest] roots`, canonical: the only local folders `Index` may read.
    ingest_roots: Vec<std::path::PathBuf>,
    /// Detached `Index` runs, for `GetIndexRun`.
    index_runs: Arc<IndexRuns>,
    /// What `/metrics` exports.
    metrics: Arc<Metrics>,
    /// Recent answers, for `Feedback`.
    answers: Arc<feedback::AnswerLedger>,
    /// Where traces go (`[telemetry.traces]`); off by default.
    traces: Tracing,
    /// Where each kind of data may be processed (`[[residency]]`).
    residency: Residency,
    /// What moving data between clouds costs (`[egress]`).
    egress: Arc<EgressPrices>,
    /// Budgets, rate limits and cooldowns: in process, or shared by replicas (Redis).
    shared_state: SharedState,
    /// Finished answers for replay (`[answer.cache]`); None: off.
    answer_cache: Option<Arc<AnswerCache>>,
}

impl Service {
    /// Validates the config, opens every store and loads every model. Any
    /// problem is a startup error naming the config key.
    pub async fn build(config: Config, env: &HashMap<String, String>) -> Result<Self> {
        config.validate()?;
        // Before any store opens: the dense store loads its snapshot at open.
        let data_dir_lock = build::data_dir_lock(&config)?;
        // One client for every cloud call: one connection pool.
        let http = crate::cloud::http_client::client()?;
        let metrics: Arc<Metrics> = Arc::default();
        let shared_state =
            SharedState::from_config(config.shared_state.as_ref(), env, Arc::clone(&metrics))?;
        let build::Embedders { by_space, query } =
            build::embedders(&config, env, &http, &shared_state, &metrics).await?;
        let embedders = by_space
            .into_iter()
            .map(|(space, embedder)| (space, embedder as Arc<dyn Embedder>))
            .collect();
        let sources = build::sources(&config, env).await?;
        let authenticator = build::authenticator(&config, env, &http)?;
        let router = build::router(&config, env, &http)?.map(|mut router| {
            router.share_state(shared_state.clone());
            Arc::new(router)
        });
        if let Some(router) = &router {
            router.spawn_probe();
        }
        let roots = config.ingest.roots.clone();
        let ingest_roots =
            tokio::task::spawn_blocking(move || index_target::canonical_roots(&roots))
                .await
                .map_err(|error| Error::internal(format!("resolving ingest.roots: {error}")))??;
        let index_locks = config
            .indexes
            .iter()
            .map(|index| (index.id.clone(), Arc::default()))
            .collect();
        let document_locks = config
            .indexes
            .iter()
            .map(|index| (index.id.clone(), tokio::sync::Mutex::default()))
            .collect();
        let extractor = build::extractor(&config.ingest)?;
        let traces = Tracing::from_config(config.telemetry.traces.as_ref(), env)?;
        let residency = Residency::new(config.residency.clone(), config.residency_policy.clone());
        let answer_cache = config.answer.cache.map(|cache| {
            Arc::new(AnswerCache::new(
                &cache,
                shared_state.redis().cloned(),
                Arc::clone(&metrics),
            ))
        });
        Ok(Self {
            traces,
            residency,
            egress: Arc::new(EgressPrices::from_config(&config.egress)),
            extractor,
            retriever: Retriever::new(sources, query, config.search.clone()).with_classifier(
                crate::policy::classification::Classifier::new(config.classifications.clone()),
            ),
            embedders,
            router,
            authenticator,
            index_locks,
            document_locks,
            ingest_roots,
            index_runs: Arc::default(),
            metrics,
            answers: Arc::default(),
            env: env.clone(),
            rate_limiter: Arc::new(
                RateLimiter::from_config(&config.limits).sharing(shared_state.clone()),
            ),
            answer_cache,
            shared_state,
            call_limit: CallLimit::new(config.server.max_concurrent_calls),
            _data_dir_lock: data_dir_lock,
            config,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The principal a request's credentials prove: the one step before every
    /// entrance below. `UNAUTHENTICATED` when identities are configured and the
    /// credentials prove none.
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<Principal> {
        self.authenticator.authenticate(credentials).await
    }

    /// The identities this service checks (for tests and startup logs).
    pub fn authenticator(&self) -> &Authenticator {
        &self.authenticator
    }

    /// The server-wide limit on calls in flight; each edge layers it
    /// ([`CallLimit::layer`]) so both count together.
    pub fn call_limit(&self) -> &CallLimit {
        &self.call_limit
    }

    /// Per-caller rate limits, keyed by the principal's id: every chat call (the
    /// facade and `Answer` with a model) is admitted through it.
    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.rate_limiter
    }

    /// Detached `Index` runs and their outcomes.
    pub fn index_runs(&self) -> &Arc<IndexRuns> {
        &self.index_runs
    }

    /// The metrics this service records.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The traces this service exports; each entrance opens its call's trace here.
    pub fn traces(&self) -> &Tracing {
        &self.traces
    }

    /// The router described by a config, for `route explain`: reads no
    /// credentials, and its deployments cannot be called. Callers are anonymous.
    pub fn planning_router(config: &Config) -> Result<Option<Router>> {
        config.validate()?;
        build::planning_router(config)
    }

    /// Checks the caller's request against the server limits.
    pub fn search_request(&self, params: SearchParams) -> Result<CheckedSearch> {
        let limits = &self.config.server;
        let query = params.query.trim();
        if query.is_empty() {
            return Err(Error::invalid("query must not be empty"));
        }
        let query_chars = query.chars().count();
        if query_chars > limits.max_query_chars {
            return Err(Error::invalid(format!(
                "query has {query_chars} characters, more than server.max_query_chars ({})",
                limits.max_query_chars
            )));
        }
        let top_k = params.top_k.unwrap_or(limits.default_top_k);
        if top_k == 0 || top_k > limits.max_top_k {
            return Err(Error::invalid(format!(
                "top_k must be between 1 and {} (server.max_top_k), got {top_k}",
                limits.max_top_k
            )));
        }
        let deadline = params
            .deadline
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(limits.default_timeout_ms));
        if let Some(space) = &params.adapter_from
            && !self.config.spaces.iter().any(|known| &known.id == space)
        {
            return Err(Error::not_found(format!(
                "adapter_from: unknown space {space:?}"
            )));
        }
        let known_sources: Vec<&str> = self
            .retriever
            .sources()
            .iter()
            .map(|source| source.id())
            .collect();
        let checked = search_controls::check(
            &self.config,
            &params.controls,
            params.fusion,
            &known_sources,
            top_k as usize,
            params.top_k.is_some(),
        )?;
        let top_k = checked
            .page
            .as_ref()
            .map_or(top_k as usize, |page| page.depth());
        let filter = params
            .filter
            .as_ref()
            .map(|filter| filter.check(&self.config.filterable_metadata_fields()))
            .transpose()?;
        Ok(CheckedSearch {
            request: SearchRequest {
                query: query.to_string(),
                top_k,
                sources: params.sources,
                fusion: params.fusion,
                deadline,
                adapter_from: params.adapter_from,
                controls: checked.controls,
                filter,
                zone: self.request_zone(&params.clouds, &params.regions, params.classifications)?,
            },
            page: checked.page,
            snippets: params.controls.snippets,
        })
    }

    /// Searches the sources the principal may search (the request can only narrow them).
    pub async fn search(
        &self,
        principal: &Principal,
        params: SearchParams,
    ) -> Result<SearchResult> {
        let start = Instant::now();
        self.admit_call(principal).await?;
        let result = self.search_within_limits(principal, params).await;
        let (outcome, waited) = match &result {
            Ok(result) if result.degraded => ("degraded", result.longest_source()),
            Ok(result) => ("ok", result.longest_source()),
            Err(_) => ("error", Duration::ZERO),
        };
        self.metrics
            .record_call("search", outcome, start.elapsed(), waited);
        result
    }

    /// Counts one call of `principal` against its `requests_per_minute`, or refuses it
    /// (`RESOURCE_EXHAUSTED` with a retry-after) before any work. Every entrance calls
    /// it once; chat calls also charge their tokens ([`Service::rated_chat`]).
    pub async fn admit_call(&self, principal: &Principal) -> Result<()> {
        self.rate_limiter
            .admit_shared(principal.id(), 1, 0)
            .await
            .map(drop)
            .map_err(|refusal| refusal.into_error())
    }

    /// [`Service::admit_call`] for the two synchronous entrances (`Feedback`,
    /// `ListIndexes`): counted by this replica alone, even with `[shared_state]`.
    pub fn admit_call_in_process(&self, principal: &Principal) -> Result<()> {
        self.rate_limiter
            .admit_request(principal.id())
            .map(drop)
            .map_err(|limited| limited.into_error())
    }

    /// [`Service::search`] for a call already admitted (an `Answer`).
    async fn search_within_limits(
        &self,
        principal: &Principal,
        mut params: SearchParams,
    ) -> Result<SearchResult> {
        params.sources = self.permitted_sources(principal, &params.sources)?;
        let scope = principal
            .permissions()
            .search_namespaces(&params.namespace)?;
        let CheckedSearch {
            mut request,
            page,
            snippets,
        } = self.search_request(params)?;
        self.add_caller_limit(principal, &mut request.zone);
        // A filter like any other, so every store enforces the tenant as it filters.
        if let crate::auth::NamespaceScope::Within(namespaces) = scope {
            request.filter = Some(crate::stores::filter::Filter::within_namespaces(
                request.filter.take(),
                &namespaces,
            ));
        }
        let mut result = self.retriever.search(&request).await?;
        if let Some(page) = &page {
            let (hits, next) = crate::retrieve::page::page(&request, page, result.hits)?;
            result.hits = hits;
            result.next_page_token = next;
            result.offset = page.offset();
        }
        if snippets {
            for hit in &mut result.hits {
                hit.snippet = Some(crate::retrieve::snippet::best_passage(
                    &hit.hit.text,
                    &request.query,
                ));
            }
        }
        self.record_sources(&result);
        tracing::debug!(
            query_chars = request.query.len(),
            hits = result.hits.len(),
            degraded = result.degraded,
            took_us = result.took.as_micros() as u64,
            "search"
        );
        Ok(result)
    }

    fn record_sources(&self, result: &SearchResult) {
        for outcome in &result.outcomes {
            let source = self
                .retriever
                .sources()
                .iter()
                .find(|source| source.id() == outcome.source);
            let (cloud, region) = source.map_or(("", ""), |source| {
                (source.info().cloud.as_str(), source.info().region.as_str())
            });
            self.metrics.record_source(outcome, cloud, region);
        }
    }

    /// The sources a search by `principal` covers: `requested` when permitted, or
    /// every source it may search when the request names none.
    fn permitted_sources(
        &self,
        principal: &Principal,
        requested: &[String],
    ) -> Result<Vec<String>> {
        let existing: Vec<&str> = self
            .retriever
            .sources()
            .iter()
            .map(|source| source.id())
            .collect();
        principal.permissions().search_sources(requested, &existing)
    }

    /// The sources the principal may search (Admin).
    pub async fn list_sources(&self, principal: &Principal) -> Result<Vec<SourceDescription>> {
        self.admit_call(principal).await?;
        let permissions = principal.permissions();
        permissions.check_admin()?;
        let visible: Vec<_> = self
            .retriever
            .sources()
            .iter()
            .filter(|source| permissions.may_search(source.id()))
            .collect();
        let counts =
            futures::future::join_all(visible.iter().map(|source| source.backend.count())).await;
        Ok(visible
            .into_iter()
            .zip(counts)
            .map(|(source, count)| SourceDescription {
                info: source.info().clone(),
                weight: source.weight,
                chunks: count.ok(),
            })
            .collect())
    }

    /// The indexes the principal may write or search a source of (Admin).
    /// Where a workload should run, from the capability catalog and this config.
    pub fn placement(
        &self,
        principal: &Principal,
        requirements: &placement::Requirements,
    ) -> Result<Vec<placement::Recommendation>> {
        self.admit_call_in_process(principal)?;
        principal.permissions().check_admin()?;
        let landscape = placement::Landscape::from_config(&self.config);
        Ok(placement::advise(&landscape, requirements))
    }

    pub fn list_indexes(&self, principal: &Principal) -> Result<Vec<&IndexConfig>> {
        self.admit_call_in_process(principal)?;
        let permissions = principal.permissions();
        permissions.check_admin()?;
        Ok(self
            .config
            .indexes
            .iter()
            .filter(|index| {
                permissions.may_index_into(&index.id)
                    || index
                        .sources
                        .iter()
                        .any(|source| permissions.may_search(source))
            })
            .collect())
    }

    /// The index a request names, or the default one.
    pub fn index_config(&self, index_id: &str) -> Result<&IndexConfig> {
        if index_id.is_empty() {
            return self
                .config
                .default_index()
                .ok_or_else(|| Error::not_found("no [[index]] is configured"));
        }
        self.config
            .indexes
            .iter()
            .find(|index| index.id == index_id)
            .ok_or_else(|| {
                let known: Vec<&str> = self
                    .config
                    .indexes
                    .iter()
                    .map(|index| index.id.as_str())
                    .collect();
                Error::not_found(format!(
                    "unknown index {index_id:?}; known indexes: {}",
                    known.join(", ")
                ))
            })
    }

    /// The embedding space an index writes its dense sources in.
    pub fn index_space(&self, index: &IndexConfig) -> Option<String> {
        self.retriever
            .sources()
            .iter()
            .filter(|source| index.sources.iter().any(|id| id == source.id()))
            .filter(|source| source.info().kind == StoreKind::Dense)
            .find_map(|source| source.info().space.clone())
    }
}
