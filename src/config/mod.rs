//! Configuration in stages: serde types with defaults and `deny_unknown_fields`,
//! then a pure [`Config::validate`] whose messages name the bad key; wiring the
//! stores and models from a valid config (I/O) happens in `service::build`.

mod bucket;
mod glob;
mod provider;
mod routing;
mod secret;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use bucket::{AZURE_SCHEMES, BucketConfig, GCS_SCHEMES, S3_SCHEMES};
pub use provider::{ProviderConfig, ProviderKind};
pub use routing::{
    CallerConfig, DeploymentConfig, FacadeConfig, PriceConfig, RouteRule, RoutingConfig,
    TierConfig,
};
pub use glob::{Glob, any_matches};
pub use secret::{Secret, SecretLocation};

use crate::error::{Error, Result};

/// The embedded default: local folder, tantivy BM25 + dense MiniLM, fused by RRF.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
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
    #[serde(default)]
    pub facade: FacadeConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC listen address.
    pub listen: String,
    /// Where local stores and manifests live; relative paths are taken from the
    /// directory the config file is in (the current directory for the default).
    pub data_dir: PathBuf,
    /// Largest gRPC message accepted or sent.
    pub max_message_bytes: usize,
    pub max_top_k: u32,
    pub default_top_k: u32,
    pub max_query_chars: usize,
    /// Requests served at once per connection; more wait.
    pub max_concurrent_requests: usize,
    /// Deadline for a call that sets none.
    pub default_timeout_ms: u64,
    /// How long in-flight calls may finish after shutdown is asked.
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            data_dir: "indexes/local".into(),
            max_message_bytes: 4 * 1024 * 1024,
            max_top_k: 1000,
            default_top_k: 10,
            max_query_chars: 4096,
            max_concurrent_requests: 256,
            default_timeout_ms: 10_000,
            shutdown_grace_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FusionMethod {
    Rrf,
    Dbsf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    pub fusion: FusionMethod,
    /// RRF's k: each list adds weight / (k + rank), ranks from 1.
    pub rrf_k: f64,
    /// Hits asked of each source, at least top_k: fusion needs depth to work with.
    pub candidates_per_source: usize,
    /// A source's budget when it sets no `timeout_ms`; always capped by the call's deadline.
    pub source_timeout_ms: u64,
    /// Query embeddings kept for reuse (0: no cache), and for how long.
    pub query_cache_entries: usize,
    pub query_cache_ttl_ms: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            fusion: FusionMethod::Rrf,
            rrf_k: 60.0,
            candidates_per_source: 100,
            source_timeout_ms: 2_000,
            query_cache_entries: 4_096,
            query_cache_ttl_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnswerConfig {
    /// Provider id to answer with; none means extractive answers.
    pub provider: Option<String>,
    /// Passages retrieved for an answer.
    pub top_k: u32,
    /// Prompt budget for the passages, in tokens (estimated at 4 characters a token).
    pub context_budget_tokens: usize,
    pub max_output_tokens: u32,
}

impl Default for AnswerConfig {
    fn default() -> Self {
        Self {
            provider: None,
            top_k: 5,
            context_budget_tokens: 3_000,
            max_output_tokens: 512,
        }
    }
}

/// The built-in provider: the in-process model, its directory in `model`.
pub const LOCAL_PROVIDER: &str = "local";

/// How vectors of a space are compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Cosine similarity: vectors are L2-normalized on the way in and out.
    #[default]
    Cosine,
    /// Inner product on vectors as the model produced them.
    Dot,
    /// Euclidean distance on vectors as the model produced them.
    L2,
}

/// An embedding space: a model at a dimension and metric. Vectors of different spaces
/// never meet; a space fails over only to the same model served elsewhere.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpaceConfig {
    pub id: String,
    /// `local` (in-process; `model` is the model directory) or a `[[provider]]` id.
    pub provider: String,
    /// More providers serving the same model, tried in order when the ones before
    /// are throttled, down or open-circuited.
    #[serde(default)]
    pub fallback: Vec<String>,
    /// The model; its identity is what makes two providers interchangeable.
    pub model: String,
    /// The model's id at a provider where it differs from `model` (Cohere Embed is
    /// `cohere.embed-english-v3` on Bedrock, `cohere.embed-english-v3.0` on OCI).
    #[serde(default)]
    pub model_ids: std::collections::BTreeMap<String, String>,
    pub dims: usize,
    #[serde(default)]
    pub metric: Metric,
    /// A Matryoshka model (text-embedding-3, gemini-embedding, nomic): its vectors may
    /// be truncated to `dims` and re-normalized. Spaces of one model that are all
    /// `matryoshka` share one query embedding at the largest dimension among them.
    #[serde(default)]
    pub matryoshka: bool,
}

impl SpaceConfig {
    /// The providers of this space in the order they are tried.
    pub fn providers(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.provider.as_str()).chain(self.fallback.iter().map(String::as_str))
    }

    /// The model's id at `provider`.
    pub fn model_at<'a>(&'a self, provider: &str) -> &'a str {
        self.model_ids.get(provider).unwrap_or(&self.model)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Local tantivy BM25 index (English stemming, title + text).
    Tantivy,
    /// Local exact dense index.
    Dense,
    /// A Qdrant collection over gRPC (self-hosted or Qdrant Cloud).
    Qdrant,
    /// An OpenSearch index: k-NN, BM25 or both (`role`).
    Opensearch,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tantivy => "tantivy",
            Self::Dense => "dense",
            Self::Qdrant => "qdrant",
            Self::Opensearch => "opensearch",
        }
    }

    pub fn is_remote(self) -> bool {
        matches!(self, Self::Qdrant | Self::Opensearch)
    }
}

/// What an OpenSearch index serves as: its `knn_vector` field, its text fields, or
/// both (two sources, `<id>` dense and `<id>-bm25` lexical, fused like any others).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenSearchRole {
    #[default]
    Dense,
    Lexical,
    Both,
}

/// How requests to OpenSearch are authorized.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenSearchAuth {
    #[default]
    None,
    /// `username` + `password` (a secret location).
    Basic,
    /// AWS SigV4: Amazon OpenSearch Service (`sigv4_service = "es"`) or Serverless (`aoss`).
    Sigv4,
}

/// When bulk writes become visible to searches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshPolicy {
    /// Not per request: `commit` refreshes the index once (the fast path for indexing).
    #[default]
    OnCommit,
    /// `refresh=wait_for` on each bulk request.
    WaitFor,
    /// `refresh=true` on each bulk request.
    Immediate,
}

/// Something `Search` fans out to and `Index` writes into.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub id: String,
    pub kind: SourceKind,
    /// Embedding space, required for dense sources.
    pub space: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: f64,
    pub timeout_ms: Option<u64>,
    #[serde(default = "default_location")]
    pub cloud: String,
    #[serde(default = "default_location")]
    pub region: String,
    /// Local stores: the folder, default `<data_dir>/<id>`.
    pub path: Option<PathBuf>,
    /// Remote stores: the endpoint, `http://` or `https://` (TLS, system roots).
    pub url: Option<String>,
    /// Qdrant: the collection.
    pub collection: Option<String>,
    /// OpenSearch: the index.
    pub index: Option<String>,
    /// Qdrant: the API key (a secret location).
    pub api_key: Option<SecretLocation>,
    /// Remote stores: create the collection or index at startup when it is missing,
    /// sized from the source's space. Off by default: a missing one is an error.
    #[serde(default)]
    pub create_missing: bool,
    /// Qdrant: hits scoring below this are dropped by the server.
    pub score_threshold: Option<f32>,
    /// Remote stores: chunks per upsert or bulk request.
    #[serde(default = "default_upsert_batch")]
    pub upsert_batch: usize,
    /// Remote stores: how long one write request may take.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// Retries of a transient failure (throttled, unavailable, timed out).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// OpenSearch: `dense` (default), `lexical` or `both`.
    #[serde(default)]
    pub role: OpenSearchRole,
    /// OpenSearch: `none` (default), `basic` or `sigv4`.
    #[serde(default)]
    pub auth: OpenSearchAuth,
    pub username: Option<String>,
    pub password: Option<SecretLocation>,
    /// SigV4 signing name: `es` (default) or `aoss`.
    pub sigv4_service: Option<String>,
    /// SigV4 region; default `region`.
    pub sigv4_region: Option<String>,
    /// SigV4 credentials; default the standard `AWS_*` variables.
    pub aws_access_key_id: Option<SecretLocation>,
    pub aws_secret_access_key: Option<SecretLocation>,
    pub aws_session_token: Option<SecretLocation>,
    /// OpenSearch: when bulk writes become visible.
    #[serde(default)]
    pub refresh: RefreshPolicy,
}

fn default_upsert_batch() -> usize {
    256
}

fn default_write_timeout_ms() -> u64 {
    30_000
}

fn default_max_retries() -> u32 {
    2
}

fn default_weight() -> f64 {
    1.0
}

fn default_location() -> String {
    "local".into()
}

/// A logical index: how documents are chunked and which sources they are written to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    pub id: String,
    pub sources: Vec<String>,
    #[serde(default = "default_chunk_max_words")]
    pub chunk_max_words: usize,
    #[serde(default = "default_chunk_overlap_words")]
    pub chunk_overlap_words: usize,
    #[serde(default = "default_embed_batch_size")]
    pub embed_batch_size: usize,
    #[serde(default = "default_max_object_bytes")]
    pub max_object_bytes: u64,
    /// Commit the stores and save the manifest after about this many chunks: the most
    /// work a crash can make the next run redo.
    #[serde(default = "default_commit_every_chunks")]
    pub commit_every_chunks: usize,
}

fn default_commit_every_chunks() -> usize {
    4096
}

fn default_chunk_max_words() -> usize {
    200
}

fn default_chunk_overlap_words() -> usize {
    40
}

fn default_embed_batch_size() -> usize {
    32
}

fn default_max_object_bytes() -> u64 {
    64 * 1024 * 1024
}

impl Config {
    /// The embedded default, relative paths taken from the current directory.
    pub fn embedded_default() -> Self {
        toml::from_str(DEFAULT_CONFIG_TOML).expect("the embedded default config parses")
    }

    /// Parses TOML text; `base_dir` anchors relative paths. Does not validate.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self> {
        let mut config: Self =
            toml::from_str(text).map_err(|error| Error::config(error.to_string()))?;
        config.anchor_paths(base_dir);
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
        let anchor = |path: &Path| -> PathBuf {
            if path.is_absolute() {
                path.to_path_buf()
            } else {
                base_dir.join(path)
            }
        };
        self.server.data_dir = anchor(&self.server.data_dir);
        for space in &mut self.spaces {
            if space.provider == LOCAL_PROVIDER {
                space.model = anchor(Path::new(&space.model)).display().to_string();
            }
        }
        for source in &mut self.sources {
            source.path = source.path.as_deref().map(anchor);
        }
    }

    /// Where a local source keeps its files.
    pub fn source_dir(&self, source: &SourceConfig) -> PathBuf {
        source
            .path
            .clone()
            .unwrap_or_else(|| self.server.data_dir.join(&source.id))
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

    pub fn default_index(&self) -> Option<&IndexConfig> {
        self.indexes.first()
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
        }
        // Checked against the providers further down, once their ids are known.

        let source_ids = unique_ids(
            "source",
            self.sources.iter().map(|source| source.id.as_str()),
            &mut problems,
        );
        for source in &self.sources {
            let name = format!("source {:?}", source.id);
            if source.kind == SourceKind::Opensearch && source.role == OpenSearchRole::Both {
                let twin = format!("{}-bm25", source.id);
                if source_ids.contains(twin.as_str()) {
                    problems.push(format!(
                        "{name}: role = \"both\" adds the lexical source {twin:?}, which is already defined"
                    ));
                }
            }
            if !(source.weight.is_finite() && source.weight >= 0.0) {
                problems.push(format!("{name}: weight must be a number >= 0"));
            }
            if source.timeout_ms == Some(0) {
                problems.push(format!("{name}: timeout_ms must be at least 1"));
            }
            source_kind_problems(source, &name, &mut problems);
            let dense = match source.kind {
                SourceKind::Dense | SourceKind::Qdrant => true,
                SourceKind::Tantivy => false,
                SourceKind::Opensearch => source.role != OpenSearchRole::Lexical,
            };
            match (dense, &source.space) {
                (true, None) => {
                    problems.push(format!(
                        "{name}: a dense source ({}) needs `space`",
                        source.kind.as_str()
                    ));
                }
                (false, Some(_)) => {
                    problems.push(format!(
                        "{name}: a lexical source ({}) takes no `space`",
                        source.kind.as_str()
                    ));
                }
                (_, Some(space)) if !space_ids.contains(space.as_str()) => {
                    problems.push(format!(
                        "{name}: space {space:?} is not a defined [[space]]"
                    ));
                }
                _ => {}
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
                .filter_map(|source| source.space.as_deref())
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
            if index.embed_batch_size == 0 {
                problems.push(format!("{name}: embed_batch_size must be at least 1"));
            }
            if index.commit_every_chunks == 0 {
                problems.push(format!("{name}: commit_every_chunks must be at least 1"));
            }
        }

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
            if !bucket_urls.insert(bucket.url.trim_end_matches('/')) {
                problems.push(format!("bucket {:?} is defined twice", bucket.url));
            }
            problems.extend(bucket.problems());
        }
        if self.answer.context_budget_tokens < 16 {
            problems.push("answer.context_budget_tokens must be at least 16".into());
        }
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
                if source.kind == SourceKind::Dense && source.space.as_ref() == Some(&space.id) {
                    problems.push(format!(
                        "source {:?}: the local dense store ranks by cosine, but space {:?} uses {:?}",
                        source.id, space.id, space.metric
                    ));
                }
            }
        }
    }
}

/// The keys each kind of source takes, and their values.
fn source_kind_problems(source: &SourceConfig, name: &str, problems: &mut Vec<String>) {
    let kind = source.kind.as_str();
    let mut refuse = |key: &str, present: bool| {
        if present {
            problems.push(format!("{name}: a {kind} source takes no `{key}`"));
        }
    };
    let qdrant = source.kind == SourceKind::Qdrant;
    let opensearch = source.kind == SourceKind::Opensearch;
    let remote = source.kind.is_remote();
    refuse("path", remote && source.path.is_some());
    refuse("url", !remote && source.url.is_some());
    refuse("create_missing", !remote && source.create_missing);
    refuse("collection", !qdrant && source.collection.is_some());
    refuse("api_key", !qdrant && source.api_key.is_some());
    refuse(
        "score_threshold",
        !qdrant && source.score_threshold.is_some(),
    );
    refuse("index", !opensearch && source.index.is_some());
    refuse(
        "role",
        !opensearch && source.role != OpenSearchRole::default(),
    );
    refuse(
        "auth",
        !opensearch && source.auth != OpenSearchAuth::default(),
    );
    refuse(
        "refresh",
        !opensearch && source.refresh != RefreshPolicy::default(),
    );
    let basic = opensearch && source.auth == OpenSearchAuth::Basic;
    let sigv4 = opensearch && source.auth == OpenSearchAuth::Sigv4;
    refuse("username", !basic && source.username.is_some());
    refuse("password", !basic && source.password.is_some());
    refuse("sigv4_service", !sigv4 && source.sigv4_service.is_some());
    refuse("sigv4_region", !sigv4 && source.sigv4_region.is_some());
    refuse(
        "aws_access_key_id",
        !sigv4 && source.aws_access_key_id.is_some(),
    );
    refuse(
        "aws_secret_access_key",
        !sigv4 && source.aws_secret_access_key.is_some(),
    );
    refuse(
        "aws_session_token",
        !sigv4 && source.aws_session_token.is_some(),
    );
    if !remote {
        return;
    }
    match source.url.as_deref().map(url::Url::parse) {
        None => problems.push(format!("{name}: a {kind} source needs `url`")),
        Some(Ok(url)) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
        Some(_) => problems.push(format!(
            "{name}: url {:?} is not an http:// or https:// address",
            source.url.as_deref().unwrap_or_default()
        )),
    }
    let nonempty = |value: &Option<String>| value.as_deref().is_some_and(|text| !text.is_empty());
    if qdrant && !nonempty(&source.collection) {
        problems.push(format!("{name}: a qdrant source needs `collection`"));
    }
    if opensearch && !nonempty(&source.index) {
        problems.push(format!("{name}: an opensearch source needs `index`"));
    }
    if basic && (source.username.is_none() || source.password.is_none()) {
        problems.push(format!(
            "{name}: auth = \"basic\" needs `username` and `password`"
        ));
    }
    if let Some(service) = &source.sigv4_service
        && !matches!(service.as_str(), "es" | "aoss")
    {
        problems.push(format!(
            "{name}: sigv4_service must be \"es\" (OpenSearch Service) or \"aoss\" (Serverless), not {service:?}"
        ));
    }
    if sigv4 && source.sigv4_region.is_none() && source.region == default_location() {
        problems.push(format!(
            "{name}: auth = \"sigv4\" needs the AWS region: set `region` or `sigv4_region`"
        ));
    }
    if source.upsert_batch == 0 {
        problems.push(format!("{name}: upsert_batch must be at least 1"));
    }
    if source.write_timeout_ms == 0 {
        problems.push(format!("{name}: write_timeout_ms must be at least 1"));
    }
    if let Some(threshold) = source.score_threshold
        && !threshold.is_finite()
    {
        problems.push(format!("{name}: score_threshold must be a finite number"));
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
    fn remote_sources_need_their_keys_and_refuse_the_others() {
        let config = parse(
            r#"
            [[space]]
            id = "minilm"
            provider = "local"
            model = "models/m"
            dims = 384
            metric = "dot"
            [[source]]
            id = "q"
            kind = "qdrant"
            space = "minilm"
            url = "ftp://example"
            index = "docs"
            [[source]]
            id = "os"
            kind = "opensearch"
            role = "both"
            index = "docs"
            url = "https://search.example:9200"
            auth = "sigv4"
            sigv4_service = "lambda"
            username = "admin"
            [[source]]
            id = "os-bm25"
            kind = "tantivy"
            url = "http://127.0.0.1:1"
            "#,
        )
        .unwrap();
        let message = config.validate().unwrap_err().message;
        for expected in [
            r#"source "q": a qdrant source takes no `index`"#,
            r#"source "q": url "ftp://example" is not an http:// or https:// address"#,
            r#"source "q": a qdrant source needs `collection`"#,
            r#"source "os": a dense source (opensearch) needs `space`"#,
            r#"source "os": a opensearch source takes no `username`"#,
            r#"source "os": sigv4_service must be "es""#,
            r#"source "os": auth = "sigv4" needs the AWS region"#,
            r#"source "os": role = "both" adds the lexical source "os-bm25""#,
            r#"source "os-bm25": a tantivy source takes no `url`"#,
        ] {
            assert!(message.contains(expected), "{expected} in {message}");
        }
        assert!(
            !message.contains("ranks by cosine"),
            "qdrant serves dot spaces: {message}"
        );
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

    #[test]
    fn relative_paths_are_anchored_at_the_config_dir() {
        let config = parse("[server]\ndata_dir = \"data\"\n").unwrap();
        assert_eq!(config.server.data_dir, Path::new("/base/data"));
    }
}
