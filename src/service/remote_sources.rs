//! Opening the remote sources (`qdrant`, `opensearch`) of a validated config: secrets
//! resolved, clients built, the collection or index checked against the source's space.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::cloud::sigv4::{AwsCredentials, SigV4Signer};
use crate::config::{Config, OpenSearchAuth, OpenSearchRole, SourceConfig, SourceKind};
use crate::error::{Error, Result};
use crate::stores::opensearch::{OpenSearchCredentials, OpenSearchIndex};
use crate::stores::qdrant::QdrantStore;
use crate::stores::remote::RemoteSettings;
use crate::stores::resilient::ResilienceSettings;
use crate::stores::{SearchBackend, SourceInfo, StoreKind};

/// The lexical source over an OpenSearch index with `role = "both"` is `<id>` + this.
pub const LEXICAL_TWIN_SUFFIX: &str = "-bm25";

/// The backends of one remote source: one, or two for an OpenSearch index serving
/// both roles (`<id>` dense, `<id>-bm25` lexical).
pub(super) async fn open(
    config: &Config,
    source: &SourceConfig,
    env: &HashMap<String, String>,
) -> Result<Vec<Arc<dyn SearchBackend>>> {
    let space = source
        .space
        .as_ref()
        .and_then(|id| config.spaces.iter().find(|space| &space.id == id));
    let info = |id: String, kind: StoreKind| SourceInfo {
        id,
        backend: source.kind.as_str().to_string(),
        kind,
        space: if kind == StoreKind::Dense {
            source.space.clone()
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
    let settings = |info: SourceInfo, name: &Option<String>| RemoteSettings {
        dims: info.dims,
        info,
        url: source.url.clone().unwrap_or_default(),
        name: name.clone().unwrap_or_default(),
        metric: space.map(|space| space.metric).unwrap_or_default(),
        create_missing: source.create_missing,
        upsert_batch: source.upsert_batch,
        score_threshold: source.score_threshold,
        write_timeout: Duration::from_millis(source.write_timeout_ms),
    };
    let secret = |location: &Option<crate::config::SecretLocation>, key: &str| {
        location
            .as_ref()
            .map(|location| location.resolve(env))
            .transpose()
            .map_err(|error| error.context(key.to_string()))
    };
    match source.kind {
        SourceKind::Qdrant => {
            let api_key = secret(&source.api_key, "api_key")?;
            let settings = settings(
                info(source.id.clone(), StoreKind::Dense),
                &source.collection,
            );
            Ok(vec![Arc::new(
                QdrantStore::connect(settings, api_key).await?,
            )])
        }
        SourceKind::Opensearch => {
            let credentials = match source.auth {
                OpenSearchAuth::None => OpenSearchCredentials::None,
                OpenSearchAuth::Basic => OpenSearchCredentials::Basic {
                    username: source.username.clone().unwrap_or_default(),
                    password: secret(&source.password, "password")?
                        .ok_or_else(|| Error::config("password is not set"))?,
                },
                OpenSearchAuth::Sigv4 => OpenSearchCredentials::SigV4(SigV4Signer {
                    credentials: AwsCredentials::resolve(
                        source.aws_access_key_id.as_ref(),
                        source.aws_secret_access_key.as_ref(),
                        source.aws_session_token.as_ref(),
                        env,
                    )?,
                    region: source
                        .sigv4_region
                        .clone()
                        .unwrap_or_else(|| source.region.clone()),
                    service: source.sigv4_service.clone().unwrap_or_else(|| "es".into()),
                }),
            };
            let dense = source.role != OpenSearchRole::Lexical;
            let primary_kind = if dense {
                StoreKind::Dense
            } else {
                StoreKind::Lexical
            };
            let primary = info(source.id.clone(), primary_kind);
            let index = OpenSearchIndex::connect(
                settings(primary.clone(), &source.index),
                credentials,
                source.refresh,
                dense,
            )
            .await?;
            let mut backends: Vec<Arc<dyn SearchBackend>> =
                vec![Arc::new(index.source(primary, true))];
            if source.role == OpenSearchRole::Both {
                let twin = info(
                    format!("{}{LEXICAL_TWIN_SUFFIX}", source.id),
                    StoreKind::Lexical,
                );
                backends.push(Arc::new(index.source(twin, false)));
            }
            Ok(backends)
        }
        SourceKind::Tantivy | SourceKind::Dense => Err(Error::internal(format!(
            "source {:?} is not remote",
            source.id
        ))),
    }
}

/// How the resilience wrapper treats a source, from its config.
pub(super) fn resilience(source: &SourceConfig) -> ResilienceSettings {
    ResilienceSettings {
        max_retries: source.max_retries,
        write_timeout: Duration::from_millis(source.write_timeout_ms),
        ..ResilienceSettings::default()
    }
}
