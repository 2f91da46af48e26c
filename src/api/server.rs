//! Server lifecycle: both edges (gRPC with health and reflection, and the
//! OpenAI-compatible facade) with explicit limits, under one shutdown signal and
//! one bounded drain. Connections come from [`super::connection::accept`] (TLS,
//! connection cap, keepalive); an anonymous server refuses to start on a
//! non-loopback address unless `server.allow_anonymous` says so.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::ServiceExt;

use super::admin::AdminApi;
use super::browser_guard::BrowserGuard;
use super::connection::{self, AcceptOptions, Connection, ConnectionCap, mark_grpc_request};
use super::generation::GenerationApi;
use super::ingestion::IngestionApi;
use super::openai;
use super::proto;
use super::proto::admin_service_server::AdminServiceServer;
use super::proto::generation_service_server::GenerationServiceServer;
use super::proto::ingestion_service_server::IngestionServiceServer;
use super::proto::retrieval_service_server::RetrievalServiceServer;
use super::retrieval::RetrievalApi;
use super::tls::{self, ReloadingTls};
use crate::config::{Config, anonymous_bind_problem};
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
    /// `/metrics`, `/healthz` and `/readyz`; None: not served.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds `server.listen` and, when they are set, `facade.listen` and
    /// `telemetry.metrics_listen`.
    pub async fn bind(service: &Service) -> Result<Self> {
        let config = service.config();
        let grpc = bind(&config.server.listen, "server.listen").await?;
        let openai = match &config.facade.listen {
            Some(listen) => Some(bind(listen, "facade.listen").await?),
            None => None,
        };
        let metrics = match &config.telemetry.metrics_listen {
            Some(listen) => Some(bind(listen, "telemetry.metrics_listen").await?),
            None => None,
        };
        Ok(Self {
            grpc,
            openai,
            metrics,
        })
    }
}

async fn bind(address: &str, key: &str) -> Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|error| Error::config(format!("cannot listen on {address} ({key}): {error}")))
}

/// The limits `[server]` asks for.
#[derive(Debug, Clone)]
pub(super) struct ServeOptions {
    max_message_bytes: usize,
    max_concurrent_requests: usize,
    shutdown_grace: Duration,
    http2_keepalive_interval: Option<Duration>,
    http2_keepalive_timeout: Duration,
    header_read_timeout: Duration,
}

impl ServeOptions {
    pub(super) fn from_service(service: &Service) -> Self {
        let server = &service.config().server;
        Self {
            max_message_bytes: server.max_message_bytes,
            max_concurrent_requests: server.max_concurrent_requests,
            shutdown_grace: Duration::from_millis(server.shutdown_grace_ms),
            http2_keepalive_interval: (server.http2_keepalive_interval_ms > 0)
                .then(|| Duration::from_millis(server.http2_keepalive_interval_ms)),
            http2_keepalive_timeout: Duration::from_millis(server.http2_keepalive_timeout_ms),
            header_read_timeout: Duration::from_millis(server.header_read_timeout_ms),
        }
    }
}

#[cfg(test)]
impl ServeOptions {
    /// The `[server]` defaults.
    pub(super) fn for_tests() -> Self {
        let server = crate::config::ServerConfig::default();
        Self {
            max_message_bytes: server.max_message_bytes,
            max_concurrent_requests: server.max_concurrent_requests,
            shutdown_grace: Duration::from_millis(server.shutdown_grace_ms),
            http2_keepalive_interval: None,
            http2_keepalive_timeout: Duration::from_millis(server.http2_keepalive_timeout_ms),
            header_read_timeout: Duration::from_millis(server.header_read_timeout_ms),
        }
    }
}

/// How each listener accepts: `[server]`'s connection limits and, with `[tls]`,
/// a certificate that follows its files (loaded now: bad files fail startup).
fn accept_options(config: &Config, key: &'static str, alpn: &[&[u8]]) -> Result<AcceptOptions> {
    let server = &config.server;
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(ReloadingTls::load(files, alpn)?)),
        None => None,
    };
    Ok(AcceptOptions {
        key,
        max_connections: ConnectionCap::new(server.max_connections),
        handshake_timeout: Duration::from_millis(server.handshake_timeout_ms),
        tcp_keepalive: (server.tcp_keepalive_ms > 0)
            .then(|| Duration::from_millis(server.tcp_keepalive_ms)),
        tls,
    })
}

/// The safe default: without identities only loopback may be bound, unless the
/// operator wrote `server.allow_anonymous = true`. Checked on the bound sockets,
/// so `serve --listen` and callers that bind themselves are held to it too. Without
/// TLS, identities on a non-loopback address travel in clear text: a warning.
fn check_exposure(config: &Config, listeners: &Listeners) -> Result<()> {
    let mut bound = vec![("server.listen", listeners.grpc.local_addr()?)];
    if let Some(openai) = &listeners.openai {
        bound.push(("facade.listen", openai.local_addr()?));
    }
    for (key, address) in bound {
        if address.ip().is_loopback() {
            continue;
        }
        if !config.has_identities() && !config.server.allow_anonymous {
            return Err(Error::config(anonymous_bind_problem(key, &address)));
        }
        if config.tls.is_none() {
            tracing::warn!(
                %address,
                "{key} is not loopback and [tls] is not configured: keys and tokens cross the network in clear text"
            );
        }
    }
    Ok(())
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
    let config = service.config();
    check_exposure(config, &listeners)?;
    let service_for_metrics = service.clone();
    let service_for_health = service.clone();
    let options = ServeOptions::from_service(&service);
    let grpc_accept = accept_options(config, "server.listen", tls::GRPC_ALPN)?;
    let openai_accept = accept_options(config, "facade.listen", tls::HTTP_ALPN)?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    set_health(&health_reporter, ServingStatus::Serving).await;

    // One drain signal for both edges.
    let (drain, draining) = watch::channel(false);
    let grpc_connections =
        connection::accept(listeners.grpc, grpc_accept, drained(draining.clone()));
    let grpc = grpc_server(
        service.clone(),
        tokio_stream::wrappers::ReceiverStream::new(grpc_connections).map(Ok::<_, std::io::Error>),
        options.clone(),
        health,
        drained(draining.clone()),
    )?;
    let facade_threads = config.facade.thread_count();
    let openai = match listeners.openai {
        Some(listener) => futures::future::Either::Left(super::facade_threads::serve_on_threads(
            facade_app(service),
            listener,
            openai_accept,
            options.clone(),
            facade_threads,
            draining.clone(),
        )?),
        None => futures::future::Either::Right(async { Ok(()) }),
    };
    let metrics = match listeners.metrics {
        Some(listener) => futures::future::Either::Left(serve_metrics(
            super::telemetry::app(service_for_metrics),
            listener,
            drained(draining.clone()),
        )),
        None => futures::future::Either::Right(async { Ok(()) }),
    };
    let health_watch = watch_health(
        service_for_health,
        health_reporter.clone(),
        drained(draining.clone()),
    );
    let servers = async move {
        let watched = async {
            health_watch.await;
            Ok(())
        };
        tokio::try_join!(grpc, openai, metrics, watched).map(|_| ())
    };
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

/// Resolves once the drain has started (or its sender is gone).
pub(super) async fn drained(mut draining: watch::Receiver<bool>) {
    let _ = draining.wait_for(|draining| *draining).await;
}

/// The operator's port: plain HTTP/1, no TLS or identity (it carries no data).
async fn serve_metrics(
    app: axum::Router,
    listener: TcpListener,
    drained: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(drained)
        .await
        .map_err(|error| Error::internal(format!("metrics listener: {error}")))
}

/// How often health follows the breakers of stores and deployments.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps `grpc.health.v1` true to the service until the drain starts: Retrieval is
/// NOT_SERVING while every source's circuit is open, Generation while some configured
/// model has no closed deployment, the server ("") while either is.
async fn watch_health(
    service: Arc<Service>,
    reporter: HealthReporter,
    drained: impl Future<Output = ()>,
) {
    let status = |serving: bool| match serving {
        true => ServingStatus::Serving,
        false => ServingStatus::NotServing,
    };
    let watch = async {
        let mut last = None;
        let mut ticks = tokio::time::interval(HEALTH_INTERVAL);
        loop {
            ticks.tick().await;
            let health = service.health();
            if last == Some(health) {
                continue;
            }
            last = Some(health);
            let retrieval =
                <RetrievalServiceServer<RetrievalApi> as tonic::server::NamedService>::NAME;
            let generation =
                <GenerationServiceServer<GenerationApi> as tonic::server::NamedService>::NAME;
            reporter
                .set_service_status(retrieval, status(health.retrieval))
                .await;
            reporter
                .set_service_status(generation, status(health.generation))
                .await;
            reporter
                .set_service_status("", status(health.retrieval && health.generation))
                .await;
        }
    };
    // Drained first: once shutdown has set NOT_SERVING, no tick may undo it.
    tokio::select! {
        biased;
        () = drained => {}
        () = watch => {}
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

/// The facade's routes behind the browser checks.
fn facade_app(service: Arc<Service>) -> axum::Router {
    let guard = BrowserGuard::new(service.config());
    openai::app(service).layer(guard)
}

/// Serves HTTP/1.1 and HTTP/2 on each connection (headers within
/// `server.header_read_timeout_ms`, HTTP/2 keepalive pings) until `drained`
/// resolves; then lets requests in flight finish and closes idle connections.
pub(super) async fn serve_facade(
    app: axum::Router,
    mut connections: mpsc::Receiver<Connection>,
    options: &ServeOptions,
    drained: impl Future<Output = ()>,
) -> Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(options.http2_keepalive_interval)
        .keep_alive_timeout(options.http2_keepalive_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(drained);
    loop {
        let connection = tokio::select! {
            () = &mut drained => break,
            connection = connections.recv() => match connection {
                Some(connection) => connection,
                None => break,
            },
        };
        let info = connection.info().clone();
        let app = app.clone();
        let service = hyper::service::service_fn(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                info.mark(request.extensions_mut());
                app.clone().oneshot(request)
            },
        );
        let served = graceful.watch(
            builder
                .serve_connection(TokioIo::new(connection), service)
                .into_owned(),
        );
        tokio::spawn(async move {
            if let Err(error) = served.await {
                tracing::debug!(%error, "facade connection ended with an error");
            }
        });
    }
    // Stops the accept loop; then waits for the connections (the caller bounds the wait).
    drop(connections);
    graceful.shutdown().await;
    Ok(())
}

/// The gRPC server over `incoming` connections, stopping to accept when `drained`
/// resolves and ending when its calls in flight are done.
pub(super) fn grpc_server(
    service: Arc<Service>,
    incoming: impl Stream<Item = std::io::Result<Connection>> + Send + 'static,
    options: ServeOptions,
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
    // Both reflection versions: grpcurl before 1.9 and most Python clients still ask
    // `grpc.reflection.v1alpha`.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .map_err(|error| Error::internal(format!("reflection: {error}")))?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|error| Error::internal(format!("reflection v1alpha: {error}")))?;
    let server = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(options.max_concurrent_requests)
        .http2_keepalive_interval(options.http2_keepalive_interval)
        .http2_keepalive_timeout(Some(options.http2_keepalive_timeout))
        // The connection's peer certificate and in-process mark, for the auth layer.
        .layer(tower::util::MapRequestLayer::new(mark_grpc_request))
        .layer(call_limit)
        .layer(super::redact::RequestIdLayer)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(retrieval)
        .add_service(generation)
        .add_service(ingestion)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming, drained);
    Ok(async move {
        server
            .await
            .map_err(|error| Error::internal(format!("server: {error}")))
    })
}
