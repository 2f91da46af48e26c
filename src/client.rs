//! How the CLI reaches a service: a running server at `--server`, or the embedded
//! default started in this process on a loopback port, so every command goes
//! through the same gRPC API either way.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};

use crate::api::{Listeners, serve};
use crate::config::{Config, process_env};
use crate::error::{Error, Result};
use crate::service::Service;

/// Loads `--config` or the embedded default (validated either way).
pub fn load_config(path: Option<&Path>) -> Result<Config> {
    let config = match path {
        Some(path) => Config::load(path)?,
        None => Config::embedded_default(),
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
    let address = start_embedded(config, &process_env()).await?;
    Endpoint::from_shared(format!("http://{address}"))
        .map_err(|error| Error::internal(error.to_string()))?
        .connect()
        .await
        .map_err(|error| Error::internal(format!("embedded server: {error}")))
}

/// Builds the service and serves it on an ephemeral loopback port for the life of the process.
pub async fn start_embedded(
    config: Config,
    env: &HashMap<String, String>,
) -> Result<std::net::SocketAddr> {
    let service = Arc::new(Service::build(config, env).await?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let listeners = Listeners {
        grpc: listener,
        openai: None,
    };
    tokio::spawn(async move {
        if let Err(error) = serve(service, listeners, std::future::pending()).await {
            tracing::error!(%error, "embedded server stopped");
        }
    });
    Ok(address)
}
