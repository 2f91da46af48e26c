//! What the attack tests share: a server built from a TOML text, serving gRPC (and
//! the facade when the text sets `facade.listen`) on 127.0.0.1 ephemeral ports.

#![allow(dead_code)] // each attack file uses its own part

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use skyfuse::api::{Listeners, serve};
use skyfuse::config::Config;
use skyfuse::service::Service;
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// A running server; stopped (and drained) when [`AttackServer::stop`] is called.
pub struct AttackServer {
    pub grpc: SocketAddr,
    /// The facade's address, when the config sets `facade.listen`.
    pub http: Option<SocketAddr>,
    pub channel: Channel,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl AttackServer {
    /// Builds the service from `toml` (relative paths from `base_dir`; listen
    /// addresses are replaced by ephemeral loopback ports) and serves it.
    pub async fn start(toml: &str, base_dir: &Path) -> Self {
        Self::try_start(toml, base_dir)
            .await
            .unwrap_or_else(|error| panic!("server did not start: {error}"))
    }

    /// As [`AttackServer::start`], returning the startup error instead.
    pub async fn try_start(toml: &str, base_dir: &Path) -> skyfuse::error::Result<Self> {
        let config = Config::parse(toml, base_dir)?;
        let with_facade = config.facade.listen.is_some();
        let service = Arc::new(Service::build(config, &Default::default()).await?);
        let grpc_listener = TcpListener::bind("127.0.0.1:0").await?;
        let grpc = grpc_listener.local_addr()?;
        let (openai, http) = if with_facade {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let address = listener.local_addr()?;
            (Some(listener), Some(address))
        } else {
            (None, None)
        };
        let listeners = Listeners {
            grpc: grpc_listener,
            openai,
            metrics: None,
        };
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = serve(service, listeners, async {
                let _ = stopped.await;
            })
            .await;
        });
        let channel = Channel::from_shared(format!("http://{grpc}"))
            .expect("a valid uri")
            .connect()
            .await
            .map_err(|error| skyfuse::error::Error::internal(error.to_string()))?;
        Ok(Self {
            grpc,
            http,
            channel,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// Stops accepting, drains and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Serves `app` (a stand-in upstream) on a loopback port; returns its base URL.
pub async fn serve_http(app: axum::Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}
