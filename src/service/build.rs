//! Wiring a validated config into live parts: stores opened, models loaded,
//! providers connected. The I/O stage of config; errors name the config key.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ProviderKind, SourceConfig, SourceKind, SpaceConfig, SpaceProvider};
use crate::embed::local::LocalEmbedder;
use crate::embed::{Embedder, EmbeddingSpace, Purpose};
use crate::error::{Error, Result};
use crate::llm::ChatProvider;
use crate::llm::openai_compat::OpenAiCompatProvider;
use crate::stores::dense::DenseStore;
use crate::stores::local_bm25::LocalBm25Store;
use crate::stores::{SearchBackend, Source, SourceInfo, StoreKind};

pub(super) async fn embedders(config: &Config) -> Result<HashMap<String, Arc<dyn Embedder>>> {
    let mut embedders = HashMap::new();
    for space in &config.spaces {
        let embedder = embedder(space)
            .await
            .map_err(|error| error.context(format!("space {:?}", space.id)))?;
        embedders.insert(space.id.clone(), embedder);
    }
    Ok(embedders)
}

async fn embedder(space: &SpaceConfig) -> Result<Arc<dyn Embedder>> {
    let embedding_space = EmbeddingSpace {
        id: space.id.clone(),
        model: space.model.clone(),
        dims: space.dims,
    };
    let embedder: Arc<dyn Embedder> = match space.provider {
        SpaceProvider::Local => {
            let model_dir = Path::new(&space.model).to_path_buf();
            let loaded = tokio::task::spawn_blocking(move || {
                LocalEmbedder::load(embedding_space, &model_dir)
            })
            .await
            .map_err(|error| Error::internal(format!("model loading panicked: {error}")))??;
            Arc::new(loaded)
        }
    };
    // A model that does not produce the configured dimension would corrupt every
    // store of the space: refuse to start instead.
    let probe = embedder
        .embed(&["dimension probe".to_string()], Purpose::Query)
        .await?;
    let produced = probe.first().map_or(0, Vec::len);
    if produced != space.dims {
        return Err(Error::config(format!(
            "dims is {} but model {:?} produces {produced}-dimensional vectors",
            space.dims, space.model
        )));
    }
    Ok(embedder)
}

pub(super) async fn sources(config: &Config) -> Result<Vec<Source>> {
    let mut sources = Vec::new();
    for source in &config.sources {
        let backend = backend(config, source)
            .await
            .map_err(|error| error.context(format!("source {:?}", source.id)))?;
        let timeout_ms = source.timeout_ms.unwrap_or(config.search.source_timeout_ms);
        sources.push(Source {
            backend,
            weight: source.weight,
            timeout: Duration::from_millis(timeout_ms),
        });
    }
    Ok(sources)
}

async fn backend(config: &Config, source: &SourceConfig) -> Result<Arc<dyn SearchBackend>> {
    let dims = source.space.as_ref().and_then(|space_id| {
        config
            .spaces
            .iter()
            .find(|space| &space.id == space_id)
            .map(|space| space.dims)
    });
    let info = SourceInfo {
        id: source.id.clone(),
        backend: match source.kind {
            SourceKind::Tantivy => "tantivy",
            SourceKind::Dense => "dense",
        }
        .to_string(),
        kind: match source.kind {
            SourceKind::Tantivy => StoreKind::Lexical,
            SourceKind::Dense => StoreKind::Dense,
        },
        space: source.space.clone(),
        dims,
        cloud: source.cloud.clone(),
        region: source.region.clone(),
    };
    let dir = config.source_dir(source);
    let kind = source.kind;
    // Opening reads index files: keep it off the async workers.
    tokio::task::spawn_blocking(move || -> Result<Arc<dyn SearchBackend>> {
        std::fs::create_dir_all(&dir)
            .map_err(|error| Error::config(format!("cannot create {}: {error}", dir.display())))?;
        Ok(match kind {
            SourceKind::Tantivy => Arc::new(LocalBm25Store::open(info, &dir)?),
            SourceKind::Dense => {
                let dims = dims.ok_or_else(|| Error::config("a dense source needs a space"))?;
                Arc::new(DenseStore::open(info, dims, &dir)?)
            }
        })
    })
    .await
    .map_err(|error| Error::internal(format!("opening a store panicked: {error}")))?
}

pub(super) fn chat_provider(
    config: &Config,
    env: &HashMap<String, String>,
) -> Result<Option<Arc<dyn ChatProvider>>> {
    let Some(provider_id) = &config.answer.provider else {
        return Ok(None);
    };
    let provider = config
        .providers
        .iter()
        .find(|provider| &provider.id == provider_id)
        .ok_or_else(|| Error::config(format!("answer.provider {provider_id:?} is not defined")))?;
    let api_key = provider
        .api_key
        .as_ref()
        .map(|location| location.resolve(env))
        .transpose()
        .map_err(|error| error.context(format!("provider {:?}: api_key", provider.id)))?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|error| Error::config(format!("cannot build http client: {error}")))?;
    Ok(Some(match provider.kind {
        ProviderKind::OpenaiCompat => Arc::new(OpenAiCompatProvider::new(provider, api_key, http)),
        ProviderKind::AzureOpenai
        | ProviderKind::Bedrock
        | ProviderKind::Vertex
        | ProviderKind::Oci => {
            return Err(Error::config(format!(
                "answer.provider: provider {:?} of kind {} cannot answer yet",
                provider.id,
                provider.kind.as_str()
            )));
        }
    }))
}
