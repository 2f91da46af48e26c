//! The CLI's in-process transport: the gRPC API served over in-memory pipes to
//! this process alone, so a CLI run (`index --watch` included) opens no network
//! port that another local user could find. Every request on it is marked
//! [`crate::auth::InProcess`] (the operator who holds the config).

use std::sync::Arc;

use futures::StreamExt;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint, Uri};

use super::connection::Connection;
use super::server::{ServeOptions, grpc_server};
use crate::error::{Error, Result};
use crate::service::Service;

/// Bytes each direction of a pipe buffers before the writer waits.
const PIPE_BYTES: usize = 256 * 1024;

/// Serves `service` for the life of the process to the returned channel only.
pub async fn serve_in_process(service: Arc<Service>) -> Result<Channel> {
    let options = ServeOptions::from_service(&service);
    let (_, health) = tonic_health::server::health_reporter();
    let (pipes, accepted) = mpsc::channel::<Connection>(16);
    let incoming =
        tokio_stream::wrappers::ReceiverStream::new(accepted).map(Ok::<_, std::io::Error>);
    let server = grpc_server(service, incoming, options, health, std::future::pending())?;
    tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "in-process server stopped");
        }
    });
    // The URI is never resolved: each (re)connect makes a new pipe.
    Endpoint::from_static("http://in-process.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let pipes = pipes.clone();
            async move {
                let (client, server) = tokio::io::duplex(PIPE_BYTES);
                pipes
                    .send(Connection::in_process(server))
                    .await
                    .map_err(|_| std::io::Error::other("the in-process server has stopped"))?;
                Ok::<_, std::io::Error>(TokioIo::new(client))
            }
        }))
        .await
        .map_err(|error| Error::internal(format!("in-process server: {error}")))
}
