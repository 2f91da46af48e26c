//! Configuration in stages: serde types with defaults and `deny_unknown_fields`
//! (per-kind tables are tagged enums of structs with exactly their keys), then a
//! pure [`Config::validate`] whose messages name the bad key; opening the stores and
//! models of a valid config (I/O) happens in `service::build` and the registries it
//! calls. One file per TOML table; `glob`, `secret` and `aws` are value types the
//! tables share.

mod answer;
mod aws;
mod bucket;
mod caller;
mod capability;
mod classification;
mod client_cert;
mod deployment;
mod egress;
mod facade;
mod glob;
pub mod home;
mod include;
mod index;
mod ingest;
mod issuer;
mod limits;
mod price;
mod provider;
mod residency;
mod role;
mod routing;
mod search;
mod secret;
mod server;
mod shared_state;
mod source;
mod space;
mod telemetry;
mod tls;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use answer::{AnswerCacheConfig, AnswerConfig, RetrievalQuery};
pub use aws::{AwsKeyLocations, AwsKeys};
pub use bucket::{AZURE_SCHEMES, BucketConfig, BucketCredentialsConfig, GCS_SCHEMES, S3_SCHEMES};
pub use caller::{CallerConfig, is_sha256_hex};
pub use capability::{CloudCapability, Offer};
pub use classification::ClassificationRule;
pub use client_cert::ClientCertConfig;
pub use deployment::DeploymentConfig;
pub use egress::{EgressConfig, EgressLink, SEED_DEFAULT_USD_PER_GB, SEED_USD_PER_GB};
pub use facade::FacadeConfig;
pub use glob::{Glob, any_matches};
pub use include::IndexDefinition;
pub use index::{IndexConfig, RecordIdScope};
pub use ingest::{ExtractionMode, IngestConfig};
pub use issuer::IssuerConfig;
pub use limits::{CallerLimitsConfig, LimitsConfig};
pub use price::PriceConfig;
pub use provider::{
    AzureOpenAiConfig, BedrockConfig, OciConfig, OpenAiCompatConfig, ProviderConfig, ProviderKind,
    ProviderSettings, VertexConfig,
};
pub use residency::{DataPlace, OnConflict, ResidencyPolicy, ResidencyRule, UnmatchedData};
pub use role::RoleConfig;
pub use routing::{RouteRule, RoutingConfig, TierConfig};
pub use search::{FusionMethod, SearchConfig};
pub use secret::{Secret, SecretLocation, SecretPath, chain_failure, labeled};
pub use server::ServerConfig;
pub use server::anonymous_bind_problem;
pub use shared_state::{FailMode, MAX_SHARED_STATE_TIMEOUT_MS, OnUnavailable, SharedStateConfig};
pub use source::{
    DenseConfig, LEXICAL_TWIN_SUFFIX, OpenSearchAuth, OpenSearchConfig, OpenSearchRole,
    QdrantConfig, RefreshPolicy, RemoteConfig, SourceConfig, SourceKind, StoreConfig,
    TantivyConfig,
};
pub use space::{LOCAL_PROVIDER, LocalPrecision, Metric, SpaceConfig};
pub use telemetry::{OtlpProtocol, TelemetryConfig, TracesConfig};
pub use tls::{ClientAuth, TlsConfig};

use crate::error::{Error, Result};

/// The embedded default: local folder, tantivy BM25 + dense MiniLM, fused by RRF. Its
/// index is the committed definition `indexes/local.toml`, compiled in so the binary
/// runs from any folder.
pub const DEFAULT_CONFIG_TOML: &str = concat!(
    include_str!("default.toml"),
    "\n",
    include_str!("../../indexes/local.toml")
);

/// The cloud and region of what names none.
pub const DEFAULT_LOCATION: &str = "local";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Index definition files to merge in (paths or `*` patterns over file names,
    /// relative to this file): each holds the `[[space]]`, `[[source]]`, `[[index]]`
    /// and `[[bucket]]` tables of one logical index (see `indexes/README.md`).
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub search: SearchConfig,
    #[serde(default)]
    pub answer: AnswerConfig,
    #[serde(default, rename = "space")]
    pub spaces: Vec<SpaceConfig>,
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    #[serde(default, rename = "index")]
    pub indexes: Vec<IndexConfig>,
    #[serde(default, rename = "provider")]
    pub providers: Vec<ProviderConfig>,
    #[serde(default, rename = "bucket")]
    pub buckets: Vec<BucketConfig>,
    #[serde(default, rename = "deployment")]
    pub deployments: Vec<DeploymentConfig>,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default, rename = "price")]
    pub prices: Vec<PriceConfig>,
    #[serde(default, rename = "caller")]
    pub callers: Vec<CallerConfig>,
    #[serde(default, rename = "role")]
    pub roles: Vec<RoleConfig>,
    #[serde(default, rename = "issuer")]
    pub issuers: Vec<IssuerConfig>,
    #[serde(default, rename = "client_cert")]
    pub client_certs: Vec<ClientCertConfig>,
    #[serde(default)]
    pub facade: FacadeConfig,
    /// TLS for both listeners; absent: plaintext.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Budgets, rate limits and cooldowns shared by replicas (Redis); absent: in-process.
    #[serde(default)]
    pub shared_state: Option<SharedStateConfig>,
    /// Where data of each kind may be processed (`[[residency]]`).
    #[serde(default)]
    pub residency: Vec<ResidencyRule>,
    #[serde(default)]
    pub residency_policy: ResidencyPolicy,
    /// Classes of data by source and object key (`[[classification]]`).
    #[serde(default, rename = "classification")]
    pub classifications: Vec<ClassificationRule>,
    /// What moving data between clouds costs (`[egress]`).
    #[serde(default)]
    pub egress: EgressConfig,
    /// What clouds' model services offer, over the shipped catalog (`[[capability]]`).
    #[serde(default, rename = "capability")]
    pub capabilities: Vec<CloudCapability>,
}

impl Config {
    /// The embedded default, relative paths left as they are (see
    /// [`Self::embedded_default_at_home`] for the one the CLI runs).
    pub fn embedded_default() -> Self {
        toml::from_str(DEFAULT_CONFIG_TOML).expect("the embedded default config parses")
    }

    /// The embedded default as the CLI runs it: its relative paths taken from the skyfuse
    /// home, and the model from `SKYFUSE_MODEL_DIR` when set (see [`home`]), so it
    /// behaves the same from any folder.
    pub fn embedded_default_at_home(env: &HashMap<String, String>) -> Self {
        let mut config = Self::embedded_default();
        let model_dir = home::default_model_dir(env);
        for space in &mut config.spaces {
            if space.provider == LOCAL_PROVIDER && space.model == home::DEFAULT_MODEL_DIR {
                space.model = model_dir.display().to_string();
            }
        }
        config.anchor_paths(&home::skyfuse_home(env));
        config
    }

    /// Parses TOML text and the index definitions it includes; `base_dir` anchors
    /// relative paths. Does not validate.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self> {
        let mut config: Self =
            toml::from_str(text).map_err(|error| Error::config(error.to_string()))?;
        config.anchor_paths(base_dir);
        for pattern in std::mem::take(&mut config.include) {
            for path in include::files_matching(base_dir, &pattern)? {
                let definition = IndexDefinition::read(&path)?;
                config.spaces.extend(definition.spaces);
                config.sources.extend(definition.sources);
                config.indexes.extend(definition.indexes);
                config.buckets.extend(definition.buckets);
            }
        }
        Ok(config)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            Error::config(format!("cannot read config {}: {error}", path.display()))
        })?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        let config = Self::parse(&text, base_dir)
            .map_err(|error| error.context(format!("config {}", path.display())))?;
        config
            .validate()
            .map_err(|error| error.context(format!("config {}", path.display())))?;
        Ok(config)
    }

    fn anchor_paths(&mut self, base_dir: &Path) {
        self.server.data_dir = include::anchor(base_dir, &self.server.data_dir);
        if let Some(tls) = &mut self.tls {
            tls.anchor_paths(base_dir);
        }
        if let Some(worker_path) = &self.ingest.worker_path {
            self.ingest.worker_path = Some(include::anchor(base_dir, worker_path));
        }
        for root in &mut self.ingest.roots {
            if !root.as_os_str().is_empty() {
                *root = include::anchor(base_dir, root);
            }
        }
        include::anchor_tables(base_dir, &mut self.spaces, &mut self.sources);
    }

    /// Where an index keeps its manifest.
    pub fn manifest_path(&self, index: &IndexConfig) -> PathBuf {
        self.server
            .data_dir
            .join("manifests")
            .join(format!("{}.json", index.id))
    }

    /// The `[[bucket]]` entry for an index URL: the longest matching `url`.
    pub fn bucket_for(&self, url: &str) -> Option<&BucketConfig> {
        self.buckets
            .iter()
            .filter(|bucket| bucket.matches(url))
            .max_by_key(|bucket| bucket.url.trim_end_matches('/').len())
    }

    /// Every user metadata field some index keeps: what filters may name as
    /// `metadata.<name>`.
    pub fn filterable_metadata_fields(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .indexes
            .iter()
            .flat_map(|index| index.metadata_fields.iter().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    pub fn default_index(&self) -> Option<&IndexConfig> {
        self.indexes.first()
    }

    /// Whether callers must prove who they are (any identity is configured). Without
    /// identities the server is anonymous and may only listen on loopback.
    pub fn has_identities(&self) -> bool {
        !self.callers.is_empty() || !self.issuers.is_empty() || !self.client_certs.is_empty()
    }

    /// Pure checks: every reference resolves, every limit is sane. The message
    /// names the offending key.
    pub fn validate(&self) -> Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::config(problems.join("; ")))
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let server = &self.server;
        if server.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!(
                "server.listen: {:?} is not an ip:port address",
                server.listen
            ));
        }
        if server.max_top_k == 0 {
            problems.push("server.max_top_k must be at least 1".into());
        }
        if server.default_top_k == 0 || server.default_top_k > server.max_top_k {
            problems.push(format!(
                "server.default_top_k must be between 1 and server.max_top_k ({})",
                server.max_top_k
            ));
        }
        if server.max_query_chars == 0 {
            problems.push("server.max_query_chars must be at least 1".into());
        }
        if server.max_message_bytes < 1024 {
            problems.push("server.max_message_bytes must be at least 1024".into());
        }
        if server.max_concurrent_requests == 0 {
            problems.push("server.max_concurrent_requests must be at least 1".into());
        }
        problems.extend(server.problems(self.facade.listen.as_deref(), !self.has_identities()));
        problems.extend(self.facade.problems());
        if let Some(tls) = &self.tls {
            tls.problems(&mut problems);
        }
        if server.max_concurrent_calls == 0 {
            problems.push("server.max_concurrent_calls must be at least 1".into());
        }
        if self.answer.max_output_tokens == 0
            || self.answer.max_output_tokens > self.answer.max_output_tokens_limit
        {
            problems.push(format!(
                "answer.max_output_tokens must be between 1 and answer.max_output_tokens_limit ({})",
                self.answer.max_output_tokens_limit
            ));
        }
        self.limits.problems(&mut problems);
        if let Some(shared_state) = &self.shared_state {
            shared_state.problems(&mut problems);
        }
        if !(self.search.rrf_k.is_finite() && self.search.rrf_k > 0.0) {
            problems.push("search.rrf_k must be a positive number".into());
        }
        if self.search.candidates_per_source == 0 {
            problems.push("search.candidates_per_source must be at least 1".into());
        }

        let space_ids = unique_ids(
            "space",
            self.spaces.iter().map(|space| space.id.as_str()),
            &mut problems,
        );
        for space in &self.spaces {
            if space.dims == 0 {
                problems.push(format!("space {:?}: dims must be at least 1", space.id));
            }
            if space.precision != LocalPrecision::Auto
                && space.providers().any(|provider| provider != LOCAL_PROVIDER)
            {
                problems.push(format!(
                    "space {:?}: precision applies to the in-process model only (provider = \"local\" and no fallback)",
                    space.id
                ));
            }
            if space.shared_query_cache && self.shared_state.is_none() {
                problems.push(format!(
                    "space {:?}: shared_query_cache needs a [shared_state] table (the Redis the replicas share)",
                    space.id
                ));
            }
        }
        if let Some(cache) = &self.answer.cache
            && (cache.ttl_ms == 0 || cache.entries == 0)
        {
            problems.push("answer.cache: ttl_ms and entries must be at least 1".into());
        }
        // Checked against the providers further down, once their ids are known.

        let source_ids = unique_ids(
            "source",
            self.sources.iter().map(|source| source.id.as_str()),
            &mut problems,
        );
        for source in &self.sources {
            let name = format!("source {:?}", source.id);
            if let StoreConfig::Opensearch(opensearch) = &source.store
                && opensearch.role == OpenSearchRole::Both
            {
                let twin = format!("{}{LEXICAL_TWIN_SUFFIX}", source.id);
                if source_ids.contains(twin.as_str()) {
                    problems.push(format!(
                        "{name}: role = \"both\" adds the lexical source {twin:?}, which is already defined"
                    ));
                }
            }
            source.problems(&mut problems);
            if let Some(space) = source.space()
                && !space_ids.contains(space)
            {
                problems.push(format!(
                    "{name}: space {space:?} is not a defined [[space]]"
                ));
            }
        }

        unique_ids(
            "index",
            self.indexes.iter().map(|index| index.id.as_str()),
            &mut problems,
        );
        for index in &self.indexes {
            let name = format!("index {:?}", index.id);
            if index.sources.is_empty() {
                problems.push(format!("{name}: sources must name at least one source"));
            }
            for source in &index.sources {
                if !source_ids.contains(source.as_str()) {
                    problems.push(format!(
                        "{name}: source {source:?} is not a defined [[source]]"
                    ));
                }
            }
            let spaces: HashSet<&str> = self
                .sources
                .iter()
                .filter(|source| index.sources.contains(&source.id))
                .filter_map(|source| source.space())
                .collect();
            if spaces.len() > 1 {
                let mut spaces: Vec<_> = spaces.into_iter().collect();
                spaces.sort();
                problems.push(format!(
                    "{name}: its dense sources use different spaces ({}); an index embeds in one space",
                    spaces.join(", ")
                ));
            }
            if index.chunk_max_words == 0 || index.chunk_overlap_words >= index.chunk_max_words {
                problems.push(format!(
                    "{name}: chunk_overlap_words must be smaller than chunk_max_words, which must be at least 1"
                ));
            }
            if index.chunk_max_bytes < crate::ingest::chunk::MIN_CHUNK_MAX_BYTES {
                problems.push(format!(
                    "{name}: chunk_max_bytes must be at least {}",
                    crate::ingest::chunk::MIN_CHUNK_MAX_BYTES
                ));
            }
            if index.max_chunks_per_object == 0 {
                problems.push(format!("{name}: max_chunks_per_object must be at least 1"));
            }
            if index.embed_batch_size == 0 {
                problems.push(format!("{name}: embed_batch_size must be at least 1"));
            }
            if index.commit_every_chunks == 0 {
                problems.push(format!("{name}: commit_every_chunks must be at least 1"));
            }
            // `@` joins an index id and a namespace in API document keys.
            if index
                .id
                .contains(crate::ingest::pipeline::documents::NAMESPACE_SEPARATOR)
            {
                problems.push(format!("{name}: an index id cannot contain '@'"));
            }
            if let Some(namespace) = &index.namespace
                && !crate::stores::filter::valid_namespace(namespace)
            {
                problems.push(format!(
                    "{name}: namespace {namespace:?} must be 1 to 64 letters, digits, _ or -"
                ));
            }
            for field in &index.metadata_fields {
                if !crate::stores::filter::valid_metadata_name(field) {
                    problems.push(format!(
                        "{name}: metadata_fields: {field:?} must be 1 to 64 letters, digits, _ or -"
                    ));
                }
            }
        }

        self.ingest.problems(&mut problems);
        provider::provider_problems(&self.providers, &mut problems);
        let provider_ids: HashSet<&str> = self
            .providers
            .iter()
            .map(|provider| provider.id.as_str())
            .collect();
        for space in &self.spaces {
            self.space_provider_problems(space, &provider_ids, &mut problems);
        }
        if let Some(provider_id) = &self.answer.provider {
            match self.providers.iter().find(|provider| &provider.id == provider_id) {
                None => problems.push(format!(
                    "answer.provider: {provider_id:?} is not a defined [[provider]]"
                )),
                Some(provider) if provider.model.is_none() => problems.push(format!(
                    "answer.provider: provider {provider_id:?} needs `model`, the chat model to answer with"
                )),
                _ => {}
            }
        }
        routing::routing_problems(
            &self.routing,
            &self.chat_deployments(),
            &self.providers,
            &self.prices,
            &self.callers,
            &self.facade,
            &mut problems,
        );
        if self.answer.top_k == 0 || self.answer.top_k > server.max_top_k {
            problems.push("answer.top_k must be between 1 and server.max_top_k".into());
        }
        let mut bucket_urls = HashSet::new();
        for bucket in &self.buckets {
            let name = crate::ingest::canonical::canonicalize(&bucket.url).map_or_else(
                |_| bucket.url.trim_end_matches('/').to_owned(),
                |url| url.full(),
            );
            if !bucket_urls.insert(name) {
                problems.push(format!("bucket {:?} is defined twice", bucket.url));
            }
            problems.extend(bucket.problems());
        }
        role::identity_problems(self, &mut problems);
        if self.answer.context_budget_tokens < 16 {
            problems.push("answer.context_budget_tokens must be at least 16".into());
        }
        let mut residency_ids = HashSet::new();
        for rule in &self.residency {
            if !residency_ids.insert(rule.id.as_str()) {
                problems.push(format!("residency {:?} is defined twice", rule.id));
            }
            if rule.data.regions.is_empty() {
                problems.push(format!(
                    "residency {:?}: data.regions is empty, so it covers no data",
                    rule.id
                ));
            }
        }
        for (index, rule) in self.classifications.iter().enumerate() {
            if rule.classes.is_empty() || rule.classes.iter().any(String::is_empty) {
                problems.push(format!(
                    "classification #{}: classes must list at least one non-empty class",
                    index + 1
                ));
            }
        }
        problems.extend(self.egress.problems());
        problems
    }
}

impl Config {
    /// Every `[[deployment]]`, plus the one `answer.provider` implies (its provider
    /// serving its `model`) when no deployment names that pair already.
    pub fn chat_deployments(&self) -> Vec<DeploymentConfig> {
        let mut deployments = self.deployments.clone();
        let implied = self.answer.provider.as_ref().and_then(|id| {
            self.providers
                .iter()
                .find(|provider| &provider.id == id && provider.model.is_some())
        });
        if let Some(provider) = implied {
            let model = provider.chat_model();
            let declared = deployments
                .iter()
                .any(|deployment| deployment.provider == provider.id && deployment.model == model);
            if !declared {
                deployments.push(DeploymentConfig {
                    provider: provider.id.clone(),
                    model: model.to_string(),
                    name: None,
                    dedicated: false,
                    context_window: None,
                    input_per_1m_usd: (provider.input_per_1m_usd > 0.0)
                        .then_some(provider.input_per_1m_usd),
                    output_per_1m_usd: (provider.output_per_1m_usd > 0.0)
                        .then_some(provider.output_per_1m_usd),
                    cached_input_per_1m_usd: None,
                    requests_per_minute: None,
                    tokens_per_minute: None,
                    regions: Vec::new(),
                    stop: Vec::new(),
                });
            }
        }
        deployments
    }

    /// The model answering a request that names none: `routing.default_model`, else
    /// `answer.provider`'s model.
    pub fn default_chat_model(&self) -> Option<String> {
        self.routing.default_model.clone().or_else(|| {
            let id = self.answer.provider.as_ref()?;
            let provider = self.providers.iter().find(|provider| &provider.id == id)?;
            provider.model.clone()
        })
    }

    /// A space names providers that exist, each once; the local model serves alone; the
    /// local dense store ranks by cosine only.
    fn space_provider_problems(
        &self,
        space: &SpaceConfig,
        provider_ids: &HashSet<&str>,
        problems: &mut Vec<String>,
    ) {
        let name = format!("space {:?}", space.id);
        if space.provider == LOCAL_PROVIDER {
            if !space.fallback.is_empty() || !space.model_ids.is_empty() {
                problems.push(format!(
                    "{name}: the local model serves alone; fallback and model_ids need cloud providers"
                ));
            }
        } else {
            let mut seen = HashSet::new();
            for provider in space.providers() {
                if provider == LOCAL_PROVIDER {
                    problems.push(format!(
                        "{name}: `local` can only be the sole provider of a space"
                    ));
                } else if !provider_ids.contains(provider) {
                    problems.push(format!(
                        "{name}: provider {provider:?} is not a defined [[provider]]"
                    ));
                } else if !seen.insert(provider) {
                    problems.push(format!("{name}: provider {provider:?} is listed twice"));
                }
            }
            for provider in space.model_ids.keys() {
                if !seen.contains(provider.as_str()) {
                    problems.push(format!(
                        "{name}: model_ids names {provider:?}, which does not serve this space"
                    ));
                }
            }
        }
        if space.metric != Metric::Cosine {
            for source in &self.sources {
                if source.kind() == SourceKind::Dense && source.space() == Some(space.id.as_str()) {
                    problems.push(format!(
                        "source {:?}: the local dense store ranks by cosine, but space {:?} uses {:?}",
                        source.id, space.id, space.metric
                    ));
                }
            }
        }
    }
}

/// Collects ids, reporting empty ones and duplicates.
fn unique_ids<'a>(
    what: &str,
    ids: impl Iterator<Item = &'a str>,
    problems: &mut Vec<String>,
) -> HashSet<&'a str> {
    let mut seen = HashSet::new();
    for id in ids {
        if id.trim().is_empty() {
            problems.push(format!("{what}: id must not be empty"));
        } else if !seen.insert(id) {
            problems.push(format!("{what} {id:?} is defined twice"));
        }
    }
    seen
}

/// Reads one `[[what]]` entry whose `kind` selects a struct with exactly that kind's
/// keys. Serde's message names the key; this adds which entry and kind it is in.
fn parse_tagged<T: serde::de::DeserializeOwned>(
    table: toml::Table,
    what: &str,
) -> std::result::Result<T, String> {
    let label = |key: &str| {
        table
            .get(key)
            .and_then(|value| value.as_str())
            .map(str::to_owned)
    };
    let (id, kind) = (label("id"), label("kind"));
    table.try_into().map_err(|error: toml::de::Error| {
        let message = error.message().trim_end().to_string();
        match (id, kind) {
            (Some(id), Some(kind)) => format!("{what} {id:?} (kind {kind}): {message}"),
            (Some(id), None) => format!("{what} {id:?}: {message}"),
            _ => format!("[[{what}]]: {message}"),
        }
    })
}

/// The process environment as a map, read once at startup.
pub fn process_env() -> HashMap<String, String> {
    std::env::vars().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/base"))
    }

    #[test]
    fn the_cli_default_keeps_its_model_and_data_in_the_skyfuse_home() {
        let env: HashMap<String, String> = [("SKYFUSE_HOME", "/srv/skyfuse")]
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .into();
        let config = Config::embedded_default_at_home(&env);
        assert_eq!(
            config.server.data_dir,
            Path::new("/srv/skyfuse/indexes/local")
        );
        assert_eq!(
            config.spaces[0].model,
            "/srv/skyfuse/models/all-MiniLM-L6-v2"
        );
        let mut env = env;
        env.insert("SKYFUSE_MODEL_DIR".to_owned(), "/cache/minilm".to_owned());
        let config = Config::embedded_default_at_home(&env);
        assert_eq!(config.spaces[0].model, "/cache/minilm");
        config.validate().unwrap();
    }

    #[test]
    fn facade_threads_are_one_per_core_unless_set_and_zero_is_refused() {
        let facade = "[facade]\nlisten = \"127.0.0.1:8080\"\n";
        let config = parse(facade).unwrap();
        config.validate().unwrap();
        assert!(config.facade.thread_count() >= 1);
        let config = parse(&format!("{facade}threads = 3\n")).unwrap();
        config.validate().unwrap();
        assert_eq!(config.facade.thread_count(), 3);
        let config = parse(&format!("{facade}threads = 0\n")).unwrap();
        let message = config.validate().unwrap_err().message;
        assert!(
            message.contains("facade.threads: 0 is not between 1 and 1024"),
            "{message}"
        );
    }

    #[test]
    fn embedded_default_is_valid() {
        let config = Config::embedded_default();
        config.validate().unwrap();
        assert_eq!(config.sources.len(), 2);
        assert_eq!(config.default_index().unwrap().sources.len(), 2);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let error = parse("[server]\nlisten_addr = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(error.message.contains("listen_addr"), "{}", error.message);
    }

    #[test]
    fn precision_is_the_local_model_s_and_a_typo_is_named() {
        let space = |provider: &str, precision: &str| {
            format!(
                "[[space]]\nid = \"s\"\nprovider = \"{provider}\"\nmodel = \"m\"\ndims = 384\nprecision = \"{precision}\"\n"
            )
        };
        let local = parse(&space("local", "f32")).unwrap();
        assert_eq!(local.spaces[0].precision, LocalPrecision::F32);
        assert!(
            !format!("{:?}", local.validate()).contains("precision"),
            "a local space may choose its precision"
        );

        let remote = parse(&format!(
            "{}[[provider]]\nid = \"openai\"\nkind = \"openai_compat\"\nbase_url = \"http://127.0.0.1:8080\"\nmodel = \"m\"\n",
            space("openai", "bf16")
        ));
        let message = match remote.and_then(|config| config.validate()) {
            Ok(()) => String::new(),
            Err(error) => error.message,
        };
        assert!(
            message.contains("precision applies to the in-process model only"),
            "{message}"
        );

        let error = parse(&space("local", "fp8")).unwrap_err();
        assert!(error.message.contains("fp8"), "{}", error.message);
    }

    #[test]
    fn unknown_space_is_named() {
        let config = parse(
            r#"
            [[source]]
            id = "aws-dense"
            kind = "dense"
            space = "titan"
            "#,
        )
        .unwrap();
        let error = config.validate().unwrap_err();
        assert!(
            error.message.contains("aws-dense") && error.message.contains("titan"),
            "{}",
            error.message
        );
    }

    #[test]
    fn space_providers_must_exist_and_the_local_dense_store_needs_cosine() {
        let config = parse(
            r#"
            [[provider]]
            id = "llama"
            kind = "openai_compat"
            base_url = "http://127.0.0.1:8080"
            model = "m"
            [[space]]
            id = "cohere"
            provider = "llama"
            fallback = ["oci-fra", "llama"]
            model = "cohere.embed-english-v3"
            model_ids = { bedrock-us = "x" }
            dims = 1024
            metric = "dot"
            [[space]]
            id = "minilm"
            provider = "local"
            fallback = ["llama"]
            model = "models/m"
            dims = 384
            [[source]]
            id = "dense"
            kind = "dense"
            space = "cohere"
            "#,
        )
        .unwrap();
        let message = config.validate().unwrap_err().message;
        for expected in [
            r#"space "cohere": provider "oci-fra" is not a defined [[provider]]"#,
            r#"space "cohere": provider "llama" is listed twice"#,
            r#"space "cohere": model_ids names "bedrock-us""#,
            r#"space "minilm": the local model serves alone"#,
            r#"source "dense": the local dense store ranks by cosine, but space "cohere" uses Dot"#,
        ] {
            assert!(message.contains(expected), "{expected} in {message}");
        }
    }

    #[test]
    fn unknown_source_in_index_and_unknown_answer_provider_are_named() {
        let config = parse(
            r#"
            [answer]
            provider = "azure"
            [[index]]
            id = "docs"
            sources = ["nowhere"]
            "#,
        )
        .unwrap();
        let message = config.validate().unwrap_err().message;
        assert!(message.contains("\"nowhere\""), "{message}");
        assert!(message.contains("answer.provider"), "{message}");
    }

    #[test]
    fn namespaces_are_plain_words_and_index_ids_cannot_hold_the_separator() {
        let config = parse(
            r#"
            [[source]]
            id = "bm25"
            kind = "tantivy"
            [[index]]
            id = "docs@acme"
            sources = ["bm25"]
            namespace = "acme corp"
            [[role]]
            id = "tenant"
            namespaces = ["a/b"]
            "#,
        )
        .unwrap();
        let message = config.validate().unwrap_err().message;
        assert!(message.contains("cannot contain '@'"), "{message}");
        assert!(message.contains("namespace \"acme corp\""), "{message}");
        assert!(message.contains("namespaces: \"a/b\""), "{message}");
    }

    #[test]
    fn literal_api_key_is_refused_at_parse() {
        let error = parse(
            r#"
            [[provider]]
            id = "llama"
            kind = "openai_compat"
            base_url = "http://127.0.0.1:8080"
            model = "qwen"
            api_key = "sk-123"
            "#,
        )
        .unwrap_err();
        assert!(error.message.contains("env:NAME"), "{}", error.message);
    }

    #[test]
    fn bad_limits_are_named() {
        let config = parse("[server]\nmax_top_k = 5\ndefault_top_k = 10\n").unwrap();
        let message = config.validate().unwrap_err().message;
        assert!(message.contains("server.default_top_k"), "{message}");
    }

    #[test]
    fn a_valid_remote_config_passes() {
        let config = parse(
            r#"
            [[space]]
            id = "minilm"
            provider = "local"
            model = "models/m"
            dims = 384
            [[source]]
            id = "aws-qdrant"
            kind = "qdrant"
            space = "minilm"
            url = "https://xyz.cloud.qdrant.io:6334"
            collection = "docs"
            api_key = "env:QDRANT_API_KEY"
            [[source]]
            id = "aws-opensearch"
            kind = "opensearch"
            role = "lexical"
            url = "https://search-docs.us-east-1.es.amazonaws.com"
            index = "docs"
            auth = "sigv4"
            region = "us-east-1"
            refresh = "wait_for"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
    }

    /// Every config the repository ships or documents still parses: whole files parse
    /// and validate, the TOML blocks of the docs parse (some are fragments that name
    /// what another block defines).
    #[test]
    fn every_shipped_and_documented_config_still_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![root.join("src/config/default.toml")];
        for folder in ["docs/examples", "docs/eval"] {
            for entry in std::fs::read_dir(root.join(folder)).unwrap() {
                let path = entry.unwrap().path();
                if path
                    .extension()
                    .is_some_and(|extension| extension == "toml")
                {
                    files.push(path);
                }
            }
        }
        assert!(files.len() >= 4, "{files:?}");
        for path in &files {
            Config::load(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        }
        let mut documents = vec![root.join("README.md")];
        for entry in std::fs::read_dir(root.join("docs")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|extension| extension == "md") {
                documents.push(path);
            }
        }
        let mut blocks = 0;
        for path in &documents {
            let text = std::fs::read_to_string(path).unwrap();
            for block in text.split("```toml\n").skip(1) {
                let block = block.split("```").next().unwrap_or_default();
                parse(block).unwrap_or_else(|error| {
                    panic!("a toml block of {}: {error}\n{block}", path.display())
                });
                blocks += 1;
            }
        }
        assert!(blocks >= 15, "{blocks} toml blocks in the docs");
    }

    #[test]
    fn every_committed_index_definition_loads_and_validates() {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = Config::parse("include = [\"indexes/*.toml\"]\n", folder).unwrap();
        let mut with_server = Config::embedded_default();
        // The embedded default brings `local.toml` already; add every other definition.
        with_server.sources.extend(
            config
                .sources
                .into_iter()
                .filter(|source| !source.id.starts_with("local-")),
        );
        with_server.indexes.extend(
            config
                .indexes
                .into_iter()
                .filter(|index| index.id != "local"),
        );
        with_server.buckets.extend(config.buckets);
        with_server.validate().unwrap();
        let ids: Vec<&str> = with_server
            .indexes
            .iter()
            .map(|index| index.id.as_str())
            .collect();
        assert_eq!(ids, ["local", "handbook"]);
        assert_eq!(with_server.buckets.len(), 1);
    }

    #[test]
    fn included_definitions_are_merged_with_their_own_relative_paths() {
        let folder = tempfile::tempdir().unwrap();
        let definitions = folder.path().join("defs");
        std::fs::create_dir(&definitions).unwrap();
        std::fs::write(
            definitions.join("notes.toml"),
            "[[source]]\nid = \"notes-bm25\"\nkind = \"tantivy\"\npath = \"data/notes\"\n\n\
             [[index]]\nid = \"notes\"\nsources = [\"notes-bm25\"]\n",
        )
        .unwrap();
        std::fs::write(definitions.join("ignored.txt"), "not toml").unwrap();
        let config = Config::parse("include = [\"defs/*.toml\"]\n", folder.path()).unwrap();
        config.validate().unwrap();
        assert_eq!(config.indexes[0].id, "notes");
        let source_path = config.sources[0].path().unwrap();
        assert_eq!(source_path, definitions.join("data/notes"));
    }

    #[test]
    fn an_include_names_the_missing_file_and_the_bad_key() {
        let folder = tempfile::tempdir().unwrap();
        let missing = Config::parse("include = [\"nope.toml\"]\n", folder.path()).unwrap_err();
        assert!(missing.message.contains("nope.toml"), "{}", missing.message);
        std::fs::write(folder.path().join("bad.toml"), "[server]\nlisten = \"x\"\n").unwrap();
        let bad = Config::parse("include = [\"bad.toml\"]\n", folder.path()).unwrap_err();
        assert!(
            bad.message.contains("bad.toml") && bad.message.contains("server"),
            "{}",
            bad.message
        );
    }

    #[test]
    fn relative_paths_are_anchored_at_the_config_dir() {
        let config = parse("[server]\ndata_dir = \"data\"\n").unwrap();
        assert_eq!(config.server.data_dir, Path::new("/base/data"));
    }
}
