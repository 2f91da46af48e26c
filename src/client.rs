//! How the CLI reaches a service: a running server at `--server`, or the embedded
//! default started in this process behind an in-memory transport (no network
//! port), so every command goes through the same gRPC API either way.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tonic::transport::{Channel, Endpoint};

use crate::api::serve_in_process;
use crate::config::{Config, process_env};
use crate::error::{Error, Result};
use crate::service::Service;

/// Loads `--config` or the embedded default with its files in the skyfuse home
/// (validated either way).
pub fn load_config(path: Option<&Path>) -> Result<Config> {
    let config = match path {
        Some(path) => Config::load(path)?,
        None => Config::embedded_default_at_home(&process_env()),
    };
    config.validate()?;
    Ok(config)
}

/// Connects to `server` if given, else starts the service from `config` in this process.
pub async fn connect(server: Option<&str>, config: Config) -> Result<Channel> {
    if let Some(address) = server {
        let uri = if address.contains("://") {
            address.to_string()
        } else {
            format!("http://{address}")
        };
        return Endpoint::from_shared(uri)
            .map_err(|error| Error::invalid(format!("bad --server address {address:?}: {error}")))?
            .connect()
            .await
            .map_err(|error| {
                Error::unavailable(format!("cannot reach skyfuse at {address}: {error}"))
            });
    }
    start_embedded(config, &process_env()).await
}

/// Builds the service and serves it to this process alone, over in-memory pipes
/// (no network port), for the life of the process.
pub async fn start_embedded(config: Config, env: &HashMap<String, String>) -> Result<Channel> {
    let service = Arc::new(Service::build(config, env).await?);
    serve_in_process(service).await
}
