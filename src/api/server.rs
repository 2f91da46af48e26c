//! Server lifecycle: both edges (gRPC with health and reflection, and the
//! OpenAI-compatible facade) with explicit limits, under one shutdown signal and
//! one bounded drain.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::admin::AdminApi;
use super::generation::GenerationApi;
use super::ingestion::IngestionApi;
use super::openai;
use super::proto;
use super::proto::admin_service_server::AdminServiceServer;
use super::proto::generation_service_server::GenerationServiceServer;
use super::proto::ingestion_service_server::IngestionServiceServer;
use super::proto::retrieval_service_server::RetrievalServiceServer;
use super::retrieval::RetrievalApi;
use crate::error::{Error, Result};
use crate::service::Service;

/// Where each edge listens. The caller binds them (port 0 in tests), so the
/// addresses are known before serving starts.
#[derive(Debug)]
pub struct Listeners {
    /// Every skyfuse gRPC service, plus `grpc.health.v1` and reflection.
    pub grpc: TcpListener,
    /// The OpenAI-compatible facade; None: not served.
    pub openai: Option<TcpListener>,
}

impl Listeners {
    /// Binds `server.listen` and, when it is set, `facade.listen`.
    pub async fn bind(service: &Service) -> Result<Self> {
        let config = service.config();
        let grpc = bind(&config.server.listen, "server.listen").await?;
        let openai = match &config.facade.listen {
            Some(listen) => Some(bind(listen, "facade.listen").await?),
            None => None,
        };
        Ok(Self { grpc, openai })
    }
}

async fn bind(address: &str, key: &str) -> Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|error| Error::config(format!("cannot listen on {address} ({key}): {error}")))
}

/// The limits `[server]` asks for.
struct ServeOptions {
    max_message_bytes: usize,
    max_concurrent_requests: usize,
    shutdown_grace: Duration,
}

impl ServeOptions {
    fn from_service(service: &Service) -> Self {
        let server = &service.config().server;
        Self {
            max_message_bytes: server.max_message_bytes,
            max_concurrent_requests: server.max_concurrent_requests,
            shutdown_grace: Duration::from_millis(server.shutdown_grace_ms),
        }
    }
}

/// Serves gRPC (every skyfuse service, `grpc.health.v1`, reflection) and, when its
/// listener is given, the OpenAI-compatible facade, until `shutdown` resolves.
/// Then both stop accepting, health turns NOT_SERVING, and calls in flight on
/// either edge get `server.shutdown_grace_ms` to finish; returns when both are
/// drained or the grace period is over.
pub async fn serve(
    service: Arc<Service>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if listeners.openai.is_some() && !service.has_chat() {
        return Err(Error::config(
            "facade.listen is set but no chat model is configured ([[deployment]] or answer.provider)",
        ));
    }
    let options = ServeOptions::from_service(&service);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    set_health(&health_reporter, ServingStatus::Serving).await;

    // One drain signal for both edges.
    let (drain, draining) = watch::channel(false);
    let drained = |mut draining: watch::Receiver<bool>| async move {
        let _ = draining.wait_for(|draining| *draining).await;
    };
    let grpc = grpc_server(
        service.clone(),
        listeners.grpc,
        &options,
        health,
        drained(draining.clone()),
    )?;
    let openai = async move {
        let Some(listener) = listeners.openai else {
            return Ok(());
        };
        axum::serve(listener, openai::app(service))
            .with_graceful_shutdown(drained(draining))
            .await
            .map_err(|error| Error::internal(format!("facade: {error}")))
    };
    let servers = async move { tokio::try_join!(grpc, openai).map(|_| ()) };
    tokio::pin!(servers);
    tokio::select! {
        served = &mut servers => return served,
        () = shutdown => {}
    }
    tracing::info!(
        grace_ms = options.shutdown_grace.as_millis() as u64,
        "shutting down: draining in-flight calls"
    );
    let _ = drain.send(true);
    // Load balancers and probes stop sending calls; those in flight finish.
    set_health(&health_reporter, ServingStatus::NotServing).await;
    match tokio::time::timeout(options.shutdown_grace, servers).await {
        Ok(served) => served,
        Err(_) => {
            tracing::warn!("calls still running after the shutdown grace period were cut off");
            Ok(())
        }
    }
}

/// The whole server ("") and each skyfuse service.
async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in [
        <RetrievalServiceServer<RetrievalApi> as tonic::server::NamedService>::NAME,
        <GenerationServiceServer<GenerationApi> as tonic::server::NamedService>::NAME,
        <IngestionServiceServer<IngestionApi> as tonic::server::NamedService>::NAME,
        <AdminServiceServer<AdminApi> as tonic::server::NamedService>::NAME,
    ] {
        reporter.set_service_status(name, status).await;
    }
}

/// The gRPC server on `listener`, stopping to accept when `drained` resolves and
/// ending when its calls in flight are done.
fn grpc_server(
    service: Arc<Service>,
    listener: TcpListener,
    options: &ServeOptions,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    drained: impl Future<Output = ()> + Send + 'static,
) -> Result<impl Future<Output = Result<()>>> {
    let limit = options.max_message_bytes;
    let call_limit = service.call_limit().layer(crate::limits::Protocol::Grpc);
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
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|error| Error::internal(format!("reflection: {error}")))?;
    let server = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(options.max_concurrent_requests)
        .layer(call_limit)
        .add_service(health)
        .add_service(reflection)
        .add_service(retrieval)
        .add_service(generation)
        .add_service(ingestion)
        .add_service(admin)
        // `Server::tcp_nodelay` applies only to sockets tonic binds itself; ours is bound by
        // the caller, so say it here. Without it Nagle's algorithm meets delayed ACKs and a
        // small response waits ~40 ms.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            drained,
        );
    Ok(async move {
        server
            .await
            .map_err(|error| Error::internal(format!("server: {error}")))
    })
}
