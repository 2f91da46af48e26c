//! `[[source]]`: something `Search` fans out to and `Index` writes into. `kind`
//! selects a struct with exactly that store's keys, so a key of another kind is
//! refused by serde, naming the key, the source and its kind.

use std::path::PathBuf;

use serde::Deserialize;

use super::{AwsKeyLocations, SecretLocation};

/// The lexical source over an OpenSearch index with `role = "both"` is `<id>` + this.
pub const LEXICAL_TWIN_SUFFIX: &str = "-bm25";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Local tantivy BM25 index (English stemming, title + text).
    Tantivy,
    /// Local dense index: exact below `ann_min_rows` rows, HNSW with exact rescoring above.
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

/// A `[[source]]`: the keys every kind takes, and the store's own in `store`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "toml::Table")]
pub struct SourceConfig {
    pub id: String,
    pub weight: f64,
    pub timeout_ms: Option<u64>,
    /// Where the data lives (residency labels), `local` by default.
    pub cloud: String,
    pub region: String,
    /// Retries of a transient failure (throttled, unavailable, timed out).
    pub max_retries: u32,
    /// How long one write request (or local commit) may take.
    pub write_timeout_ms: u64,
    pub store: StoreConfig,
}

/// The store-specific keys, by `kind`.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    Tantivy(TantivyConfig),
    Dense(DenseConfig),
    Qdrant(QdrantConfig),
    Opensearch(OpenSearchConfig),
}

#[derive(Debug, Clone)]
pub struct TantivyConfig {
    /// The folder, default `<data_dir>/<id>`.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct DenseConfig {
    pub space: String,
    /// The folder, default `<data_dir>/<id>`.
    pub path: Option<PathBuf>,
    /// Rows from which searches use the HNSW index instead of the exact scan
    /// (default `stores::dense::DEFAULT_ANN_MIN_ROWS`).
    pub ann_min_rows: Option<usize>,
}

/// The keys Qdrant and OpenSearch share.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// The endpoint, `http://` or `https://` (TLS, system roots).
    pub url: String,
    /// Create the collection or index at startup when it is missing, sized from the
    /// source's space. Off by default: a missing one is an error.
    pub create_missing: bool,
    /// Chunks per upsert or bulk request.
    pub upsert_batch: usize,
}

#[derive(Debug, Clone)]
pub struct QdrantConfig {
    pub space: String,
    pub remote: RemoteConfig,
    pub collection: String,
    pub api_key: Option<SecretLocation>,
    /// Hits scoring below this are dropped by the server.
    pub score_threshold: Option<f32>,
}

#[derive(Debug, Clone)]
pub struct OpenSearchConfig {
    /// Required unless `role = "lexical"`.
    pub space: Option<String>,
    pub remote: RemoteConfig,
    pub index: String,
    pub role: OpenSearchRole,
    pub auth: OpenSearchAuth,
    /// `auth = "basic"`.
    pub username: Option<String>,
    pub password: Option<SecretLocation>,
    /// `auth = "sigv4"`: the signing name, `es` (default) or `aoss`.
    pub sigv4_service: Option<String>,
    /// `auth = "sigv4"`: default `region`.
    pub sigv4_region: Option<String>,
    /// `auth = "sigv4"`: default the standard `AWS_*` variables.
    pub aws: AwsKeyLocations,
    pub refresh: RefreshPolicy,
}

impl SourceConfig {
    pub fn kind(&self) -> SourceKind {
        match &self.store {
            StoreConfig::Tantivy(_) => SourceKind::Tantivy,
            StoreConfig::Dense(_) => SourceKind::Dense,
            StoreConfig::Qdrant(_) => SourceKind::Qdrant,
            StoreConfig::Opensearch(_) => SourceKind::Opensearch,
        }
    }

    /// The embedding space of a dense source.
    pub fn space(&self) -> Option<&str> {
        match &self.store {
            StoreConfig::Tantivy(_) => None,
            StoreConfig::Dense(dense) => Some(&dense.space),
            StoreConfig::Qdrant(qdrant) => Some(&qdrant.space),
            StoreConfig::Opensearch(opensearch) => opensearch.space.as_deref(),
        }
    }

    /// A local store's configured folder.
    pub fn path(&self) -> Option<&std::path::Path> {
        match &self.store {
            StoreConfig::Tantivy(tantivy) => tantivy.path.as_deref(),
            StoreConfig::Dense(dense) => dense.path.as_deref(),
            StoreConfig::Qdrant(_) | StoreConfig::Opensearch(_) => None,
        }
    }

    pub(super) fn path_mut(&mut self) -> Option<&mut Option<PathBuf>> {
        match &mut self.store {
            StoreConfig::Tantivy(tantivy) => Some(&mut tantivy.path),
            StoreConfig::Dense(dense) => Some(&mut dense.path),
            StoreConfig::Qdrant(_) | StoreConfig::Opensearch(_) => None,
        }
    }

    /// Pure checks of the values serde cannot judge; each message names the key.
    pub(super) fn problems(&self, problems: &mut Vec<String>) {
        let name = format!("source {:?}", self.id);
        if !(self.weight.is_finite() && self.weight >= 0.0) {
            problems.push(format!("{name}: weight must be a number >= 0"));
        }
        if self.timeout_ms == Some(0) {
            problems.push(format!("{name}: timeout_ms must be at least 1"));
        }
        let remote = match &self.store {
            StoreConfig::Tantivy(_) | StoreConfig::Dense(_) => return,
            StoreConfig::Qdrant(qdrant) => {
                if qdrant.collection.is_empty() {
                    problems.push(format!("{name}: collection must not be empty"));
                }
                if let Some(threshold) = qdrant.score_threshold
                    && !threshold.is_finite()
                {
                    problems.push(format!("{name}: score_threshold must be a finite number"));
                }
                &qdrant.remote
            }
            StoreConfig::Opensearch(opensearch) => {
                opensearch.problems(&name, &self.region, problems);
                &opensearch.remote
            }
        };
        match url::Url::parse(&remote.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
            _ => problems.push(format!(
                "{name}: url {:?} is not an http:// or https:// address",
                remote.url
            )),
        }
        if remote.upsert_batch == 0 {
            problems.push(format!("{name}: upsert_batch must be at least 1"));
        }
        if self.write_timeout_ms == 0 {
            problems.push(format!("{name}: write_timeout_ms must be at least 1"));
        }
    }
}

impl OpenSearchConfig {
    fn problems(&self, name: &str, region: &str, problems: &mut Vec<String>) {
        if self.index.is_empty() {
            problems.push(format!("{name}: index must not be empty"));
        }
        if self.role != OpenSearchRole::Lexical && self.space.is_none() {
            problems.push(format!("{name}: a dense source (opensearch) needs `space`"));
        }
        if self.role == OpenSearchRole::Lexical && self.space.is_some() {
            problems.push(format!(
                "{name}: a lexical source (opensearch) takes no `space`"
            ));
        }
        // `auth` picks among keys of the same table: which apply is checked here.
        let basic = self.auth == OpenSearchAuth::Basic;
        let sigv4 = self.auth == OpenSearchAuth::Sigv4;
        let mut refuse = |key: &str, set: bool, auth: &str| {
            if set {
                problems.push(format!("{name}: `{key}` needs auth = \"{auth}\""));
            }
        };
        refuse("username", !basic && self.username.is_some(), "basic");
        refuse("password", !basic && self.password.is_some(), "basic");
        refuse(
            "sigv4_service",
            !sigv4 && self.sigv4_service.is_some(),
            "sigv4",
        );
        refuse(
            "sigv4_region",
            !sigv4 && self.sigv4_region.is_some(),
            "sigv4",
        );
        for key in self.aws.set_keys("aws_") {
            refuse(&key, !sigv4, "sigv4");
        }
        if basic && (self.username.is_none() || self.password.is_none()) {
            problems.push(format!(
                "{name}: auth = \"basic\" needs `username` and `password`"
            ));
        }
        if let Some(service) = &self.sigv4_service
            && !matches!(service.as_str(), "es" | "aoss")
        {
            problems.push(format!(
                "{name}: sigv4_service must be \"es\" (OpenSearch Service) or \"aoss\" (Serverless), not {service:?}"
            ));
        }
        if sigv4 && self.sigv4_region.is_none() && region == super::DEFAULT_LOCATION {
            problems.push(format!(
                "{name}: auth = \"sigv4\" needs the AWS region: set `region` or `sigv4_region`"
            ));
        }
    }
}

/// Declares one kind's table: the keys every source takes, then the kind's own,
/// `deny_unknown_fields` over the whole (serde's `flatten` would defeat it).
macro_rules! source_table {
    ($name:ident { $($(#[$meta:meta])* $field:ident: $type:ty,)* }) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            id: String,
            #[serde(default = "default_weight")]
            weight: f64,
            timeout_ms: Option<u64>,
            #[serde(default = "default_location")]
            cloud: String,
            #[serde(default = "default_location")]
            region: String,
            #[serde(default = "default_max_retries")]
            max_retries: u32,
            #[serde(default = "default_write_timeout_ms")]
            write_timeout_ms: u64,
            $($(#[$meta])* $field: $type,)*
        }

        impl $name {
            fn common(&self, store: StoreConfig) -> SourceConfig {
                SourceConfig {
                    id: self.id.clone(),
                    weight: self.weight,
                    timeout_ms: self.timeout_ms,
                    cloud: self.cloud.clone(),
                    region: self.region.clone(),
                    max_retries: self.max_retries,
                    write_timeout_ms: self.write_timeout_ms,
                    store,
                }
            }
        }
    };
}

source_table!(TantivyTable {
    path: Option<PathBuf>,
});

source_table!(DenseTable {
    space: String,
    path: Option<PathBuf>,
    ann_min_rows: Option<usize>,
});

source_table!(QdrantTable {
    space: String,
    url: String,
    collection: String,
    api_key: Option<SecretLocation>,
    score_threshold: Option<f32>,
    #[serde(default)]
    create_missing: bool,
    #[serde(default = "default_upsert_batch")]
    upsert_batch: usize,
});

source_table!(OpenSearchTable {
    space: Option<String>,
    url: String,
    index: String,
    #[serde(default)]
    role: OpenSearchRole,
    #[serde(default)]
    auth: OpenSearchAuth,
    username: Option<String>,
    password: Option<SecretLocation>,
    sigv4_service: Option<String>,
    sigv4_region: Option<String>,
    aws_access_key_id: Option<SecretLocation>,
    aws_secret_access_key: Option<SecretLocation>,
    aws_session_token: Option<SecretLocation>,
    #[serde(default)]
    refresh: RefreshPolicy,
    #[serde(default)]
    create_missing: bool,
    #[serde(default = "default_upsert_batch")]
    upsert_batch: usize,
});

/// The tables by `kind`, as serde reads them.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum SourceTable {
    Tantivy(TantivyTable),
    Dense(DenseTable),
    Qdrant(QdrantTable),
    Opensearch(OpenSearchTable),
}

impl TryFrom<toml::Table> for SourceConfig {
    type Error = String;

    /// Serde's message names the key; this adds which source and kind it is in.
    fn try_from(table: toml::Table) -> Result<Self, String> {
        let parsed: SourceTable = super::parse_tagged(table, "source")?;
        Ok(match parsed {
            SourceTable::Tantivy(table) => table.common(StoreConfig::Tantivy(TantivyConfig {
                path: table.path.clone(),
            })),
            SourceTable::Dense(table) => table.common(StoreConfig::Dense(DenseConfig {
                space: table.space.clone(),
                path: table.path.clone(),
                ann_min_rows: table.ann_min_rows,
            })),
            SourceTable::Qdrant(table) => table.common(StoreConfig::Qdrant(QdrantConfig {
                space: table.space.clone(),
                remote: RemoteConfig {
                    url: table.url.clone(),
                    create_missing: table.create_missing,
                    upsert_batch: table.upsert_batch,
                },
                collection: table.collection.clone(),
                api_key: table.api_key.clone(),
                score_threshold: table.score_threshold,
            })),
            SourceTable::Opensearch(table) => {
                table.common(StoreConfig::Opensearch(OpenSearchConfig {
                    space: table.space.clone(),
                    remote: RemoteConfig {
                        url: table.url.clone(),
                        create_missing: table.create_missing,
                        upsert_batch: table.upsert_batch,
                    },
                    index: table.index.clone(),
                    role: table.role,
                    auth: table.auth,
                    username: table.username.clone(),
                    password: table.password.clone(),
                    sigv4_service: table.sigv4_service.clone(),
                    sigv4_region: table.sigv4_region.clone(),
                    aws: AwsKeyLocations {
                        access_key_id: table.aws_access_key_id.clone(),
                        secret_access_key: table.aws_secret_access_key.clone(),
                        session_token: table.aws_session_token.clone(),
                    },
                    refresh: table.refresh,
                }))
            }
        })
    }
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
    super::DEFAULT_LOCATION.into()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn parse_error(text: &str) -> String {
        Config::parse(text, Path::new("/base")).unwrap_err().message
    }

    fn problems(text: &str) -> String {
        let config = Config::parse(text, Path::new("/base")).unwrap();
        config
            .validate()
            .err()
            .map(|error| error.message)
            .unwrap_or_default()
    }

    const SPACE: &str = r#"
        [[space]]
        id = "minilm"
        provider = "local"
        model = "models/m"
        dims = 384
        metric = "dot"
    "#;

    #[test]
    fn an_unknown_key_on_a_qdrant_source_is_named_with_the_source_and_kind() {
        let message = parse_error(
            r#"
            [[source]]
            id = "q"
            kind = "qdrant"
            space = "minilm"
            url = "http://127.0.0.1:6334"
            collection = "docs"
            colection_size = 3
            "#,
        );
        assert!(message.contains("source \"q\" (kind qdrant)"), "{message}");
        assert!(
            message.contains("unknown field `colection_size`"),
            "{message}"
        );
    }

    #[test]
    fn a_key_of_another_kind_is_refused() {
        let message = parse_error(
            r#"
            [[source]]
            id = "q"
            kind = "qdrant"
            space = "minilm"
            url = "http://127.0.0.1:6334"
            collection = "docs"
            index = "docs"
            "#,
        );
        assert!(message.contains("source \"q\" (kind qdrant)"), "{message}");
        assert!(message.contains("unknown field `index`"), "{message}");
        let message = parse_error(
            "[[source]]\nid = \"os-bm25\"\nkind = \"tantivy\"\nurl = \"http://127.0.0.1:1\"\n",
        );
        assert!(
            message.contains("source \"os-bm25\" (kind tantivy): unknown field `url`"),
            "{message}"
        );
        let message =
            parse_error("[[source]]\nid = \"d\"\nkind = \"tantivy\"\nspace = \"minilm\"\n");
        assert!(message.contains("unknown field `space`"), "{message}");
    }

    #[test]
    fn a_missing_required_key_is_named() {
        let message = parse_error(
            r#"
            [[source]]
            id = "q"
            kind = "qdrant"
            space = "minilm"
            url = "http://127.0.0.1:6334"
            "#,
        );
        assert!(
            message.contains("source \"q\" (kind qdrant): missing field `collection`"),
            "{message}"
        );
        let message = parse_error("[[source]]\nid = \"d\"\nkind = \"dense\"\n");
        assert!(message.contains("missing field `space`"), "{message}");
        let message = parse_error("[[source]]\nid = \"x\"\nkind = \"faiss\"\n");
        assert!(message.contains("unknown variant `faiss`"), "{message}");
    }

    #[test]
    fn values_serde_cannot_judge_are_named() {
        let message = problems(&format!(
            r#"{SPACE}
            [[source]]
            id = "q"
            kind = "qdrant"
            space = "minilm"
            url = "ftp://example"
            collection = "docs"
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
            "#
        ));
        for expected in [
            r#"source "q": url "ftp://example" is not an http:// or https:// address"#,
            r#"source "os": a dense source (opensearch) needs `space`"#,
            r#"source "os": `username` needs auth = "basic""#,
            r#"source "os": sigv4_service must be "es""#,
            r#"source "os": auth = "sigv4" needs the AWS region"#,
            r#"source "os": role = "both" adds the lexical source "os-bm25""#,
        ] {
            assert!(message.contains(expected), "{expected} in {message}");
        }
        assert!(
            !message.contains("ranks by cosine"),
            "qdrant serves dot spaces: {message}"
        );
    }
}
