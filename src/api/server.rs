//! Server lifecycle: health, reflection, explicit limits, bounded drain on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use super::admin::AdminApi;
use super::generation::GenerationApi;
use super::ingestion::IngestionApi;
use super::proto;
use super::proto::admin_service_server::AdminServiceServer;
use super::proto::generation_service_server::GenerationServiceServer;
use super::proto::ingestion_service_server::IngestionServiceServer;
use super::proto::retrieval_service_server::RetrievalServiceServer;
use super::retrieval::RetrievalApi;
use crate::error::{Error, Result};
use crate::service::Service;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub max_message_bytes: usize,
    pub max_concurrent_requests: usize,
    pub shutdown_grace: Duration,
}

impl ServeOptions {
    pub fn from_service(service: &Service) -> Self {
        let server = &service.config().server;
        Self {
            max_message_bytes: server.max_message_bytes,
            max_concurrent_requests: server.max_concurrent_requests,
            shutdown_grace: Duration::from_millis(server.shutdown_grace_ms),
        }
    }
}

/// Serves every skyfuse service plus `grpc.health.v1` and reflection on `listener`
/// until `shutdown` resolves, then lets in-flight calls finish within the grace period.
pub async fn serve(
    service: Arc<Service>,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let limit = options.max_message_bytes;
    let retrieval = RetrievalServiceServer::new(RetrievalApi {
        service: service.clone(),
    })
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let generation = GenerationServiceServer::new(GenerationApi {
        service: service.clone(),
    })
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let ingestion = IngestionServiceServer::new(IngestionApi {
        service: service.clone(),
    })
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let admin = AdminServiceServer::new(AdminApi { service })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<RetrievalServiceServer<RetrievalApi>>()
        .await;
    health_reporter
        .set_serving::<GenerationServiceServer<GenerationApi>>()
        .await;
    health_reporter
        .set_serving::<IngestionServiceServer<IngestionApi>>()
        .await;
    health_reporter
        .set_serving::<AdminServiceServer<AdminApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|error| Error::internal(format!("reflection: {error}")))?;

    // Stop accepting on shutdown, then give in-flight calls the grace period.
    let (drain_started, drain_signal) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = drain_started.send(());
    };
    let server = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(options.max_concurrent_requests)
        .add_service(health)
        .add_service(reflection)
        .add_service(retrieval)
        .add_service(generation)
        .add_service(ingestion)
        .add_service(admin)
        // `Server::tcp_nodelay` applies only to sockets tonic binds itself; ours is bound by
        // the caller, so say it here. Without it Nagle's algorithm meets delayed ACKs and a
        // small response waits ~40 ms.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), signal);
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => return served.map_err(|error| Error::internal(format!("server: {error}"))),
        _ = drain_signal => {}
    }
    match tokio::time::timeout(options.shutdown_grace, server).await {
        Ok(served) => served.map_err(|error| Error::internal(format!("server: {error}"))),
        Err(_) => {
            tracing::warn!("calls still running after the shutdown grace period were cut off");
            Ok(())
        }
    }
}
