//! Wiring a validated config into live parts by calling each module's registry:
//! stores (`stores::open`), embedding providers (`embed::providers::build`) and chat
//! providers (`llm::providers::build`). The I/O stage of config; errors name the
//! config key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;

use crate::config::{
    Config, LOCAL_PROVIDER, ProviderConfig, RoutingConfig, SpaceConfig, StoreConfig,
};
#[cfg(feature = "embedded")]
use crate::embed::Embedder;
use crate::embed::adapter::LinearAdapter;
#[cfg(feature = "embedded")]
use crate::embed::local::LocalEmbedder;
use crate::embed::providers as embed_providers;
use crate::embed::query::{QueryCacheSettings, QueryEmbedder, family_key};
use crate::embed::space::{Serving, SpaceEmbedder};
use crate::embed::{EmbeddingProvider, EmbeddingSpace};
use crate::error::{Error, Result};
use crate::llm::ChatTarget;
use crate::route::{Catalog, Deployment, Router};
use crate::state::{RedisQueryVectors, SharedState};
use crate::stores::lock::DataDirLock;
use crate::stores::open::OpenContext;
use crate::stores::{self, Source};
use crate::telemetry::Metrics;

/// The embedder of every space, and the query embedder search uses over them.
pub(super) struct Embedders {
    pub by_space: HashMap<String, Arc<SpaceEmbedder>>,
    pub query: Arc<QueryEmbedder>,
}

pub(super) async fn embedders(
    config: &Config,
    env: &HashMap<String, String>,
    http: &reqwest::Client,
    shared_state: &SharedState,
    metrics: &Arc<Metrics>,
) -> Result<Embedders> {
    let mut by_space = HashMap::new();
    let mut family_keys = HashMap::new();
    // Spaces whose query vectors replicas share: space id -> namespace.
    let mut shared_namespaces = HashMap::new();
    // Spaces over the same model directory share one loaded model, and spaces served by
    // the same provider share its endpoint (credentials, token cache, connections).
    let mut local_models = LocalModels::new();
    let mut providers: HashMap<String, Arc<dyn EmbeddingProvider>> = HashMap::new();
    for space in &config.spaces {
        let mut provider = |id: &str| -> Result<Arc<dyn EmbeddingProvider>> {
            if let Some(built) = providers.get(id) {
                return Ok(built.clone());
            }
            let provider_config = config
                .providers
                .iter()
                .find(|provider| provider.id == id)
                .ok_or_else(|| Error::config(format!("provider {id:?} is not defined")))?;
            let built = embed_providers::build(provider_config, env, http.clone())?;
            providers.insert(id.to_string(), built.clone());
            Ok(built)
        };
        let embedder = space_embedder(space, &mut local_models, &mut provider)
            .await
            .map_err(|error| error.context(format!("space {:?}", space.id)))?;
        by_space.insert(space.id.clone(), Arc::new(embedder));
        if let Some(key) = family_key(space) {
            family_keys.insert(space.id.clone(), key);
        }
        if space.shared_query_cache {
            let namespace = format!("{}:{}", space.id, model_fingerprint(space).await);
            shared_namespaces.insert(space.id.clone(), namespace);
        }
    }
    let cache = QueryCacheSettings {
        entries: config.search.query_cache_entries,
        ttl: Duration::from_millis(config.search.query_cache_ttl_ms),
    };
    // Adapters fitted by `skyfuse calibrate`, picked up at startup.
    let adapters = LinearAdapter::load_all(&config.server.data_dir)?;
    let mut query = QueryEmbedder::new(by_space.clone(), family_keys, cache)
        .with_adapters(adapters)?
        .counting(Arc::clone(metrics));
    if let (Some(store), Some(shared)) = (shared_state.redis(), &config.shared_state) {
        let ttl = Duration::from_millis(shared.query_cache_ttl_ms);
        let vectors = Arc::new(RedisQueryVectors::new(Arc::clone(store), ttl));
        query = query.sharing(vectors, shared_namespaces);
    }
    Ok(Embedders {
        by_space,
        query: Arc::new(query),
    })
}

/// What a space's vectors depend on, hashed: its model and the id each provider
/// knows it by, dimension, metric and truncation; for the in-process model also the
/// size of its weights, so replacing the files in place changes it. A change gives
/// the space new shared cache keys: no vector of the old model is served.
async fn model_fingerprint(space: &SpaceConfig) -> String {
    let providers: Vec<String> = space
        .providers()
        .map(|provider| format!("{provider}={}", space.model_at(provider)))
        .collect();
    let weights = if space.provider == LOCAL_PROVIDER {
        let path = Path::new(&space.model).join("model.safetensors");
        tokio::fs::metadata(&path)
            .await
            .map_or(0, |metadata| metadata.len())
    } else {
        0
    };
    let identity = format!(
        "{}|{}|{:?}|{}|{}|{weights}",
        space.model,
        space.dims,
        space.metric,
        space.matryoshka,
        providers.join(",")
    );
    let digest = sha2::Sha256::digest(identity.as_bytes());
    hex::encode(&digest[..8])
}

/// In-process models by model directory: spaces over one directory share one.
#[cfg(feature = "embedded")]
type LocalModels = HashMap<String, LocalEmbedder>;
#[cfg(not(feature = "embedded"))]
struct LocalModels;

#[cfg(not(feature = "embedded"))]
impl LocalModels {
    fn new() -> Self {
        Self
    }
}

async fn space_embedder(
    space: &SpaceConfig,
    local_models: &mut LocalModels,
    provider: &mut impl FnMut(&str) -> Result<Arc<dyn EmbeddingProvider>>,
) -> Result<SpaceEmbedder> {
    let embedding_space = EmbeddingSpace {
        id: space.id.clone(),
        model: space.model.clone(),
        dims: space.dims,
    };
    let servings = if space.provider == LOCAL_PROVIDER {
        vec![local_serving(space, local_models).await?]
    } else {
        // No probe call at startup: a cloud that is down must not stop the service; a
        // vector of the wrong size is refused when it arrives.
        space
            .providers()
            .map(|id| Ok(Serving::new(provider(id)?, space.model_at(id))))
            .collect::<Result<Vec<_>>>()?
    };
    SpaceEmbedder::new(embedding_space, space.metric, space.matryoshka, servings)
}

/// The in-process model serving `space`, loaded once per model directory.
#[cfg(feature = "embedded")]
async fn local_serving(space: &SpaceConfig, local_models: &mut LocalModels) -> Result<Serving> {
    let model = match local_models.get(&space.model) {
        Some(model) => model.clone(),
        None => {
            let model = load_local_model(space).await?;
            local_models.insert(space.model.clone(), model.clone());
            model
        }
    };
    let native = model.space().dims;
    if native != space.dims && !(space.matryoshka && space.dims < native) {
        return Err(Error::config(format!(
            "dims is {} but model {:?} produces {native}-dimensional vectors{}",
            space.dims,
            space.model,
            if space.dims < native {
                "; set matryoshka = true to truncate them"
            } else {
                ""
            }
        )));
    }
    Ok(Serving::new(Arc::new(model), space.model.clone()))
}

#[cfg(not(feature = "embedded"))]
async fn local_serving(_: &SpaceConfig, _: &mut LocalModels) -> Result<Serving> {
    Err(Error::config(NO_LOCAL_MODEL))
}

/// What a build without the in-process model says of a `provider = "local"` space.
const NO_LOCAL_MODEL: &str = "this skyfuse was built without the in-process embedding model (cargo feature `embedded`): serve the space through a [[provider]]";

/// Whether this build has the in-process model the `provider = "local"` spaces need
/// (cargo feature `embedded`): the first it lacks, as `serve` would say it.
pub(super) fn check_local_models_built(spaces: &[SpaceConfig]) -> Result<()> {
    match spaces.iter().find(|space| space.provider == LOCAL_PROVIDER) {
        Some(space) if !cfg!(feature = "embedded") => {
            Err(Error::config(NO_LOCAL_MODEL).context(format!("space {:?}", space.id)))
        }
        _ => Ok(()),
    }
}

/// Loads the in-process model at its native dimension (read from its config.json).
#[cfg(feature = "embedded")]
async fn load_local_model(space: &SpaceConfig) -> Result<LocalEmbedder> {
    let model_dir = Path::new(&space.model).to_path_buf();
    let id = space.id.clone();
    let precision = space.precision;
    let model =
        tokio::task::spawn_blocking(move || LocalEmbedder::load_native(&id, &model_dir, precision))
            .await
            .map_err(|error| Error::internal(format!("model loading panicked: {error}")))??;
    // `auto` decides by the CPU: say what it decided, so a slow node explains itself.
    let arithmetic = if model.is_bf16() { "bf16" } else { "f32" };
    tracing::info!(space = %space.id, arithmetic, "local embedding model loaded");
    Ok(model)
}

/// Locks the folders this service writes local data in, before anything is opened:
/// the data dir (manifests, adapters, local stores) when an index or a local store
/// is configured, and each local store folder outside it. None: nothing local.
pub(super) fn data_dir_lock(config: &Config) -> Result<Option<DataDirLock>> {
    let local_stores: Vec<PathBuf> = config
        .sources
        .iter()
        .filter(|source| {
            matches!(
                source.store,
                StoreConfig::Tantivy(_) | StoreConfig::Dense(_)
            )
        })
        .map(|source| stores::open::local_dir(source, &config.server.data_dir))
        .collect();
    if local_stores.is_empty() && config.indexes.is_empty() {
        return Ok(None);
    }
    let canonical = |folder: &Path| -> Result<PathBuf> {
        std::fs::create_dir_all(folder)
            .and_then(|()| folder.canonicalize())
            .map_err(|error| Error::config(format!("cannot create {}: {error}", folder.display())))
    };
    let data_dir = canonical(&config.server.data_dir)?;
    let mut folders = vec![data_dir.clone()];
    for store in &local_stores {
        let store = canonical(store)?;
        if !store.starts_with(&data_dir) && !folders.contains(&store) {
            folders.push(store);
        }
    }
    DataDirLock::acquire(&folders).map(Some)
}

/// Every `[[source]]` opened by the store registry.
pub(super) async fn sources(config: &Config, env: &HashMap<String, String>) -> Result<Vec<Source>> {
    let context = OpenContext {
        spaces: &config.spaces,
        data_dir: &config.server.data_dir,
        default_timeout: Duration::from_millis(config.search.source_timeout_ms),
        env,
        indexes: &config.indexes,
    };
    let mut sources = Vec::new();
    for source in &config.sources {
        sources.extend(stores::open::open(source, &context).await?);
    }
    Ok(sources)
}

/// Who may call: API keys (hashed), token issuers, client certificates, roles.
pub(super) fn authenticator(
    config: &Config,
    env: &HashMap<String, String>,
    http: &reqwest::Client,
) -> Result<crate::auth::Authenticator> {
    crate::auth::Authenticator::build(config, env, http)
}

/// The chat router over every deployment (`[[deployment]]`, and the one
/// `answer.provider` implies); None when there is none. Sends nothing.
pub(super) fn router(
    config: &Config,
    env: &HashMap<String, String>,
    http: &reqwest::Client,
) -> Result<Option<Router>> {
    // One pool for every model call, as `http` is one for the other cloud calls.
    let upstream = crate::cloud::upstream::client()?;
    router_with(config, |provider, target| {
        crate::llm::providers::build(provider, target, env, http.clone(), upstream.clone())
    })
}

/// The router as `route explain` sees it: every deployment described from the
/// config alone, no credentials read, nothing callable.
pub(super) fn planning_router(config: &Config) -> Result<Option<Router>> {
    router_with(config, |provider, target| {
        Ok(Arc::new(PlanningOnly(Arc::new(crate::llm::ProviderInfo {
            id: provider.id.clone(),
            model: target.model.clone(),
            deployment: target.wire_id.clone(),
            dedicated: target.dedicated,
            cloud: provider.cloud().to_string(),
            region: provider.region().to_string(),
            regions: crate::llm::regions::regions_used(
                provider.cloud(),
                provider.region(),
                &target.wire_id,
                &target.regions,
            ),
            input_per_1m_usd: provider.input_per_1m_usd,
            output_per_1m_usd: provider.output_per_1m_usd,
        }))))
    })
}

/// A deployment known by its description only.
struct PlanningOnly(Arc<crate::llm::ProviderInfo>);

#[async_trait::async_trait]
impl crate::llm::ChatProvider for PlanningOnly {
    fn info(&self) -> &Arc<crate::llm::ProviderInfo> {
        &self.0
    }

    async fn chat_stream(
        &self,
        _request: &crate::llm::ChatRequest,
        _deadline: std::time::Instant,
    ) -> Result<futures::stream::BoxStream<'static, Result<crate::llm::ChatEvent>>> {
        Err(Error::internal(
            "a planning-only router cannot send requests",
        ))
    }
}

fn router_with(
    config: &Config,
    build: impl Fn(&ProviderConfig, &ChatTarget) -> Result<Arc<dyn crate::llm::ChatProvider>>,
) -> Result<Option<Router>> {
    let deployments = config.chat_deployments();
    if deployments.is_empty() {
        return Ok(None);
    }
    let catalog = Catalog::load(&config.prices)?;
    let breaker = Router::breaker_settings(&config.routing);
    let mut built = Vec::with_capacity(deployments.len());
    for deployment in &deployments {
        let provider = config
            .providers
            .iter()
            .find(|provider| provider.id == deployment.provider)
            .ok_or_else(|| {
                Error::config(format!(
                    "deployment {:?}: provider {:?} is not defined",
                    deployment.model, deployment.provider
                ))
            })?;
        let target = ChatTarget {
            model: deployment.model.clone(),
            wire_id: deployment.wire_id().to_string(),
            dedicated: deployment.dedicated,
            regions: deployment.regions.clone(),
        };
        let chat = build(provider, &target).map_err(|error| {
            error.context(format!(
                "deployment {:?} on {:?}",
                deployment.model, provider.id
            ))
        })?;
        built.push(Deployment::new(chat, deployment, &catalog, breaker));
    }
    let settings = RoutingConfig {
        default_model: config.default_chat_model(),
        ..config.routing.clone()
    };
    Ok(Some(Router::new(built, settings)))
}

/// The extractor `[ingest]` asks for: in process, or a pool of worker processes.
pub(super) fn extractor(ingest: &crate::config::IngestConfig) -> Result<crate::ingest::Extractor> {
    use crate::config::ExtractionMode;
    use crate::ingest::isolate::{WorkerLimits, WorkerPool, default_worker_program};
    if ingest.extraction == ExtractionMode::InProcess {
        return Ok(crate::ingest::Extractor::InProcess);
    }
    let program = match &ingest.worker_path {
        Some(path) => path.clone(),
        None => default_worker_program().map_err(|error| {
            Error::config(format!(
                "ingest.worker_path: this executable cannot be found ({error}); set it"
            ))
        })?,
    };
    let limits = WorkerLimits {
        memory_bytes: ingest.worker_memory_mib.saturating_mul(1024 * 1024),
        cpu_seconds: ingest.worker_cpu_seconds,
        wall: Duration::from_secs(ingest.worker_wall_seconds),
    };
    let pool = WorkerPool::new(program, ingest.extraction_workers, limits);
    Ok(crate::ingest::Extractor::Isolated(Arc::new(pool)))
}
