//! The store registry: a `[[source]]` of a validated config opened into the sources
//! `Search` fans out to. One match over the kind; adding a store touches this folder.
//! Remote stores are checked against their space here: a collection or index of
//! another dimension or metric stops startup with a message naming both.

use crate::stores::unopened::UnopenedStore;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::remote::RemoteSettings;
use super::resilient::{ResilienceSettings, ResilientBackend};
use super::{SearchBackend, Source, SourceInfo, StoreKind};
use crate::config::{
    LEXICAL_TWIN_SUFFIX, OpenSearchRole, RemoteConfig, SecretLocation, SourceConfig, SpaceConfig,
    StoreConfig,
};
use crate::error::{Error, Result};

/// What opening a source needs beyond its own `[[source]]`.
pub struct OpenContext<'a> {
    /// Every `[[space]]`: a dense source's dimension and metric.
    pub spaces: &'a [SpaceConfig],
    /// Where a local store without `path` keeps its files: `<data_dir>/<id>`.
    pub data_dir: &'a Path,
    /// A source's search budget when it sets no `timeout_ms`.
    pub default_timeout: Duration,
    /// Secrets named `env:NAME` are read from here.
    pub env: &'a HashMap<String, String>,
    /// Every `[[index]]`: the metadata fields kept by the indexes writing to a source.
    pub indexes: &'a [crate::config::IndexConfig],
}

/// Opens one `[[source]]`: one source, or two for an OpenSearch index serving both
/// roles (`<id>` dense, `<id>-bm25` lexical). Each is wrapped in its resilience
/// settings. Errors name the source.
pub async fn open(source: &SourceConfig, context: &OpenContext<'_>) -> Result<Vec<Source>> {
    let backends = open_backends(source, context)
        .await
        .map_err(|error| error.context(format!("source {:?}", source.id)))?;
    let resilience = ResilienceSettings {
        max_retries: source.max_retries,
        write_timeout: Duration::from_millis(source.write_timeout_ms),
        ..ResilienceSettings::default()
    };
    let timeout = source
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(context.default_timeout);
    Ok(backends
        .into_iter()
        .map(|backend| Source {
            backend: Arc::new(ResilientBackend::new(backend, resilience)),
            weight: source.weight,
            timeout,
        })
        .collect())
}

/// Whether this build can open every `[[source]]` of `config` (cargo features
/// `embedded` and `remote-stores`): the first it cannot, as `serve` would say it.
pub fn check_built(sources: &[SourceConfig]) -> Result<()> {
    for source in sources {
        match &source.store {
            StoreConfig::Tantivy(_) => embedded::built("tantivy"),
            StoreConfig::Dense(_) => embedded::built("dense"),
            StoreConfig::Qdrant(_) => remote::built("qdrant"),
            StoreConfig::Opensearch(_) => remote::built("opensearch"),
        }
        .map_err(|error| error.context(format!("source {:?}", source.id)))?;
    }
    Ok(())
}

/// Where a local store keeps its files: its `path`, else `<data_dir>/<id>`.
pub fn local_dir(source: &SourceConfig, data_dir: &Path) -> PathBuf {
    source
        .path()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| data_dir.join(&source.id))
}

async fn open_backends(
    source: &SourceConfig,
    context: &OpenContext<'_>,
) -> Result<Vec<Arc<dyn SearchBackend>>> {
    let space = source
        .space()
        .map(|id| {
            context
                .spaces
                .iter()
                .find(|space| space.id == id)
                .ok_or_else(|| Error::config(format!("space {id:?} is not a defined [[space]]")))
        })
        .transpose()?;
    match &source.store {
        StoreConfig::Tantivy(_) => {
            embedded::built("tantivy")?;
            let info = source_info(source, source.id.clone(), StoreKind::Lexical, None);
            let dir = local_dir(source, context.data_dir);
            open_local(dir, info, embedded::open_bm25)
                .await
                .map(|backend| vec![backend])
        }
        StoreConfig::Dense(dense) => {
            embedded::built("dense")?;
            let space = space.ok_or_else(|| Error::config("a dense source needs a space"))?;
            let info = source_info(source, source.id.clone(), StoreKind::Dense, Some(space));
            let dims = space.dims;
            let dir = local_dir(source, context.data_dir);
            let ann_min_rows = dense.ann_min_rows;
            open_local(dir, info, move |info, dir| {
                embedded::open_dense(info, dims, dir, ann_min_rows)
            })
            .await
            .map(|backend| vec![backend])
        }
        StoreConfig::Qdrant(qdrant) => {
            let api_key =
                SecretLocation::resolve_optional(qdrant.api_key.as_ref(), "api_key", context.env)?;
            let info = source_info(source, source.id.clone(), StoreKind::Dense, space);
            let mut settings = remote_settings(
                source,
                info,
                &qdrant.remote,
                &qdrant.collection,
                space,
                qdrant.score_threshold,
            );
            settings.metadata_fields = metadata_fields_of(source, context.indexes);
            Ok(vec![remote::connect_qdrant(settings, api_key).await?])
        }
        StoreConfig::Opensearch(opensearch) => {
            let dense = opensearch.role != OpenSearchRole::Lexical;
            let primary_kind = if dense {
                StoreKind::Dense
            } else {
                StoreKind::Lexical
            };
            let primary = source_info(source, source.id.clone(), primary_kind, space);
            let settings = remote_settings(
                source,
                primary.clone(),
                &opensearch.remote,
                &opensearch.index,
                space,
                None,
            );
            let twin = (opensearch.role == OpenSearchRole::Both).then(|| {
                let twin_id = format!("{}{LEXICAL_TWIN_SUFFIX}", source.id);
                source_info(source, twin_id, StoreKind::Lexical, None)
            });
            remote::connect_opensearch(
                opensearch,
                &source.region,
                context.env,
                settings,
                primary,
                twin,
            )
            .await
        }
    }
}

/// The stores of the embedded default (cargo feature `embedded`): tantivy BM25 and the
/// dense store; without it a `[[source]]` of either kind is a startup error.
#[cfg(feature = "embedded")]
mod embedded {
    use std::path::Path;
    use std::sync::Arc;

    use crate::error::Result;
    use crate::stores::dense::{DEFAULT_ANN_MIN_ROWS, DenseOptions, DenseStore};
    use crate::stores::local_bm25::LocalBm25Store;
    use crate::stores::{SearchBackend, SourceInfo};

    pub fn built(_kind: &str) -> Result<()> {
        Ok(())
    }

    pub fn open_bm25(info: SourceInfo, dir: &Path) -> Result<Arc<dyn SearchBackend>> {
        Ok(Arc::new(LocalBm25Store::open(info, dir)?))
    }

    pub fn open_dense(
        info: SourceInfo,
        dims: usize,
        dir: &Path,
        ann_min_rows: Option<usize>,
    ) -> Result<Arc<dyn SearchBackend>> {
        let options = DenseOptions {
            ann_min_rows: ann_min_rows.unwrap_or(DEFAULT_ANN_MIN_ROWS),
            ..DenseOptions::default()
        };
        Ok(Arc::new(DenseStore::open_with_options(
            info, dims, dir, options,
        )?))
    }
}

#[cfg(not(feature = "embedded"))]
mod embedded {
    use std::path::Path;
    use std::sync::Arc;

    use crate::error::{Error, Result};
    use crate::stores::{SearchBackend, SourceInfo};

    fn not_built(kind: &str) -> Error {
        Error::config(format!(
            "this skyfuse was built without the embedded stores (cargo feature `embedded`), so it cannot open a {kind} source"
        ))
    }

    pub fn built(kind: &str) -> Result<()> {
        Err(not_built(kind))
    }

    pub fn open_bm25(_: SourceInfo, _: &Path) -> Result<Arc<dyn SearchBackend>> {
        Err(not_built("tantivy"))
    }

    pub fn open_dense(
        _: SourceInfo,
        _: usize,
        _: &Path,
        _: Option<usize>,
    ) -> Result<Arc<dyn SearchBackend>> {
        Err(not_built("dense"))
    }
}

/// The clients of remote stores (cargo feature `remote-stores`): Qdrant and OpenSearch;
/// without it a `[[source]]` of either kind is a startup error.
#[cfg(feature = "remote-stores")]
mod remote {
    use std::collections::HashMap;
    use std::sync::Arc;

    use crate::cloud::aws_credentials::AwsCredentialsProvider;
    use crate::cloud::sigv4::SigV4Signer;
    use crate::config::{OpenSearchAuth, OpenSearchConfig, Secret, SecretLocation};
    use crate::error::{Error, Result};
    use crate::stores::opensearch::{OpenSearchCredentials, OpenSearchIndex};
    use crate::stores::qdrant::QdrantStore;
    use crate::stores::remote::RemoteSettings;
    use crate::stores::{SearchBackend, SourceInfo};

    pub fn built(_kind: &str) -> Result<()> {
        Ok(())
    }

    pub async fn connect_qdrant(
        settings: RemoteSettings,
        api_key: Option<Secret>,
    ) -> Result<Arc<dyn SearchBackend>> {
        Ok(Arc::new(QdrantStore::connect(settings, api_key).await?))
    }

    fn opensearch_credentials(
        opensearch: &OpenSearchConfig,
        region: &str,
        env: &HashMap<String, String>,
    ) -> Result<OpenSearchCredentials> {
        Ok(match opensearch.auth {
            OpenSearchAuth::None => OpenSearchCredentials::None,
            OpenSearchAuth::Basic => {
                let password = SecretLocation::resolve_optional(
                    opensearch.password.as_ref(),
                    "password",
                    env,
                )?
                .ok_or_else(|| Error::config("password is not set"))?;
                OpenSearchCredentials::Basic {
                    username: opensearch.username.clone().unwrap_or_default(),
                    password,
                }
            }
            OpenSearchAuth::Sigv4 => {
                let region = opensearch
                    .sigv4_region
                    .clone()
                    .unwrap_or_else(|| region.to_string());
                // Temporary credentials are fetched over this client (STS, container, IMDS).
                let http = reqwest::Client::new();
                OpenSearchCredentials::SigV4(SigV4Signer {
                    credentials: AwsCredentialsProvider::from_env(
                        &opensearch.aws,
                        "aws_",
                        Some(&region),
                        env,
                        &http,
                    )?,
                    region,
                    service: opensearch
                        .sigv4_service
                        .clone()
                        .unwrap_or_else(|| "es".into()),
                })
            }
        })
    }

    /// The index as its primary source, and as a lexical `twin` when it serves both.
    pub async fn connect_opensearch(
        opensearch: &OpenSearchConfig,
        region: &str,
        env: &HashMap<String, String>,
        settings: RemoteSettings,
        primary: SourceInfo,
        twin: Option<SourceInfo>,
    ) -> Result<Vec<Arc<dyn SearchBackend>>> {
        let credentials = opensearch_credentials(opensearch, region, env)?;
        let dense = primary.kind == crate::stores::StoreKind::Dense;
        let index =
            OpenSearchIndex::connect(settings, credentials, opensearch.refresh, dense).await?;
        let mut backends: Vec<Arc<dyn SearchBackend>> = vec![Arc::new(index.source(primary, true))];
        if let Some(twin) = twin {
            backends.push(Arc::new(index.source(twin, false)));
        }
        Ok(backends)
    }
}

#[cfg(not(feature = "remote-stores"))]
mod remote {
    use std::collections::HashMap;
    use std::sync::Arc;

    use crate::config::{OpenSearchConfig, Secret};
    use crate::error::{Error, Result};
    use crate::stores::remote::RemoteSettings;
    use crate::stores::{SearchBackend, SourceInfo};

    fn not_built(kind: &str) -> Error {
        Error::config(format!(
            "this skyfuse was built without the remote store clients (cargo feature `remote-stores`), so it cannot open a {kind} source"
        ))
    }

    pub fn built(kind: &str) -> Result<()> {
        Err(not_built(kind))
    }

    pub async fn connect_qdrant(
        _: RemoteSettings,
        _: Option<Secret>,
    ) -> Result<Arc<dyn SearchBackend>> {
        Err(not_built("qdrant"))
    }

    pub async fn connect_opensearch(
        _: &OpenSearchConfig,
        _: &str,
        _: &HashMap<String, String>,
        _: RemoteSettings,
        _: SourceInfo,
        _: Option<SourceInfo>,
    ) -> Result<Vec<Arc<dyn SearchBackend>>> {
        Err(not_built("opensearch"))
    }
}

/// The one place a source's description is made; a lexical one has no space.
fn source_info(
    source: &SourceConfig,
    id: String,
    kind: StoreKind,
    space: Option<&SpaceConfig>,
) -> SourceInfo {
    let space = space.filter(|_| kind == StoreKind::Dense);
    SourceInfo {
        id,
        backend: source.kind().as_str().to_string(),
        kind,
        space: space.map(|space| space.id.clone()),
        dims: space.map(|space| space.dims),
        cloud: source.cloud.clone(),
        region: source.region.clone(),
    }
}

/// Creates a local store's folder and opens it off the async workers: opening reads
/// index files.
/// Opens a local store in `dir` (created when missing: a folder that cannot be made is
/// a config error). Files that are there but cannot be opened give an
/// [`UnopenedStore`]: the service starts without this source instead of not at all.
async fn open_local(
    dir: PathBuf,
    info: SourceInfo,
    open: impl FnOnce(SourceInfo, &Path) -> Result<Arc<dyn SearchBackend>> + Send + 'static,
) -> Result<Arc<dyn SearchBackend>> {
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)
            .map_err(|error| Error::config(format!("cannot create {}: {error}", dir.display())))?;
        Ok(open(info.clone(), &dir).unwrap_or_else(|error| {
            Arc::new(UnopenedStore::new(info, error.message)) as Arc<dyn SearchBackend>
        }))
    })
    .await
    .map_err(|error| Error::internal(format!("opening a store panicked: {error}")))?
}

fn remote_settings(
    source: &SourceConfig,
    info: SourceInfo,
    remote: &RemoteConfig,
    name: &str,
    space: Option<&SpaceConfig>,
    score_threshold: Option<f32>,
) -> RemoteSettings {
    RemoteSettings {
        dims: info.dims,
        info,
        url: remote.url.clone(),
        name: name.to_string(),
        metric: space.map(|space| space.metric).unwrap_or_default(),
        create_missing: remote.create_missing,
        upsert_batch: remote.upsert_batch,
        score_threshold,
        write_timeout: Duration::from_millis(source.write_timeout_ms),
        metadata_fields: Vec::new(),
    }
}

/// The `metadata_fields` of every index that writes to `source`, each once.
fn metadata_fields_of(
    source: &SourceConfig,
    indexes: &[crate::config::IndexConfig],
) -> Vec<String> {
    let mut fields: Vec<String> = indexes
        .iter()
        .filter(|index| index.sources.contains(&source.id))
        .flat_map(|index| index.metadata_fields.iter().cloned())
        .collect();
    fields.sort();
    fields.dedup();
    fields
}
