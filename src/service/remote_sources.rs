//! Opening the remote sources (`qdrant`, `opensearch`) of a validated config: secrets
//! resolved, clients built, the collection or index checked against the source's space.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::cloud::sigv4::{AwsCredentials, SigV4Signer};
use crate::config::{
    Config, LEXICAL_TWIN_SUFFIX, OpenSearchAuth, OpenSearchConfig, OpenSearchRole, QdrantConfig,
    RemoteConfig, SecretLocation, SourceConfig, StoreConfig,
};
use crate::error::{Error, Result};
use crate::stores::opensearch::{OpenSearchCredentials, OpenSearchIndex};
use crate::stores::qdrant::QdrantStore;
use crate::stores::remote::RemoteSettings;
use crate::stores::resilient::ResilienceSettings;
use crate::stores::{SearchBackend, SourceInfo, StoreKind};

/// The backends of one remote source: one, or two for an OpenSearch index serving
/// both roles (`<id>` dense, `<id>-bm25` lexical).
pub(super) async fn open(
    config: &Config,
    source: &SourceConfig,
    env: &HashMap<String, String>,
) -> Result<Vec<Arc<dyn SearchBackend>>> {
    let space = source
        .space()
        .and_then(|id| config.spaces.iter().find(|space| space.id == id));
    let info = |id: String, kind: StoreKind| SourceInfo {
        id,
        backend: source.kind().as_str().to_string(),
        kind,
        space: if kind == StoreKind::Dense {
            source.space().map(str::to_owned)
        } else {
            None
        },
        dims: if kind == StoreKind::Dense {
            space.map(|space| space.dims)
        } else {
            None
        },
        cloud: source.cloud.clone(),
        region: source.region.clone(),
    };
    let settings =
        |info: SourceInfo, remote: &RemoteConfig, name: &str, score_threshold| RemoteSettings {
            dims: info.dims,
            info,
            url: remote.url.clone(),
            name: name.to_string(),
            metric: space.map(|space| space.metric).unwrap_or_default(),
            create_missing: remote.create_missing,
            upsert_batch: remote.upsert_batch,
            score_threshold,
            write_timeout: Duration::from_millis(source.write_timeout_ms),
        };
    match &source.store {
        StoreConfig::Qdrant(qdrant) => {
            let QdrantConfig {
                remote,
                collection,
                api_key,
                score_threshold,
                ..
            } = qdrant;
            let api_key = SecretLocation::resolve_optional(api_key.as_ref(), "api_key", env)?;
            let settings = settings(
                info(source.id.clone(), StoreKind::Dense),
                remote,
                collection,
                *score_threshold,
            );
            Ok(vec![Arc::new(
                QdrantStore::connect(settings, api_key).await?,
            )])
        }
        StoreConfig::Opensearch(opensearch) => {
            let credentials = opensearch_credentials(opensearch, &source.region, env)?;
            let dense = opensearch.role != OpenSearchRole::Lexical;
            let primary_kind = if dense {
                StoreKind::Dense
            } else {
                StoreKind::Lexical
            };
            let primary = info(source.id.clone(), primary_kind);
            let index = OpenSearchIndex::connect(
                settings(primary.clone(), &opensearch.remote, &opensearch.index, None),
                credentials,
                opensearch.refresh,
                dense,
            )
            .await?;
            let mut backends: Vec<Arc<dyn SearchBackend>> =
                vec![Arc::new(index.source(primary, true))];
            if opensearch.role == OpenSearchRole::Both {
                let twin = info(
                    format!("{}{LEXICAL_TWIN_SUFFIX}", source.id),
                    StoreKind::Lexical,
                );
                backends.push(Arc::new(index.source(twin, false)));
            }
            Ok(backends)
        }
        StoreConfig::Tantivy(_) | StoreConfig::Dense(_) => Err(Error::internal(format!(
            "source {:?} is not remote",
            source.id
        ))),
    }
}

fn opensearch_credentials(
    opensearch: &OpenSearchConfig,
    region: &str,
    env: &HashMap<String, String>,
) -> Result<OpenSearchCredentials> {
    Ok(match opensearch.auth {
        OpenSearchAuth::None => OpenSearchCredentials::None,
        OpenSearchAuth::Basic => OpenSearchCredentials::Basic {
            username: opensearch.username.clone().unwrap_or_default(),
            password: SecretLocation::resolve_optional(
                opensearch.password.as_ref(),
                "password",
                env,
            )?
            .ok_or_else(|| Error::config("password is not set"))?,
        },
        OpenSearchAuth::Sigv4 => OpenSearchCredentials::SigV4(SigV4Signer {
            credentials: AwsCredentials::resolve(&opensearch.aws, "aws_", env)?,
            region: opensearch
                .sigv4_region
                .clone()
                .unwrap_or_else(|| region.to_string()),
            service: opensearch
                .sigv4_service
                .clone()
                .unwrap_or_else(|| "es".into()),
        }),
    })
}

/// How the resilience wrapper treats a source, from its config.
pub(super) fn resilience(source: &SourceConfig) -> ResilienceSettings {
    ResilienceSettings {
        max_retries: source.max_retries,
        write_timeout: Duration::from_millis(source.write_timeout_ms),
        ..ResilienceSettings::default()
    }
}
