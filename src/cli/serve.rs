//! `skyfuse serve`: gRPC and, when configured, the OpenAI-compatible facade, until
//! Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use skyfuse::api::{Listeners, serve};
use skyfuse::client::load_config;
use skyfuse::config::process_env;
use skyfuse::service::Service;

pub async fn run_serve(config: Option<PathBuf>, listen: Option<String>) -> Result<()> {
    let mut config = load_config(config.as_deref())?;
    if let Some(listen) = listen {
        config.server.listen = listen;
    }
    let started = Instant::now();
    let service = Arc::new(Service::build(config, &process_env()).await?);
    let listeners = Listeners::bind(&service).await?;
    let sources: Vec<String> = service
        .list_sources(&skyfuse::auth::Principal::operator())
        .await?
        .into_iter()
        .map(|source| format!("{} ({} chunks)", source.info.id, source.chunks.unwrap_or(0)))
        .collect();
    tracing::info!(
        address = %listeners.grpc.local_addr()?,
        sources = %sources.join(", "),
        startup_ms = started.elapsed().as_millis() as u64,
        "skyfuse listening (gRPC, health, reflection)"
    );
    if let Some(listener) = &listeners.openai {
        tracing::info!(address = %listener.local_addr()?, models = %service.chat_models().join(", "), "OpenAI-compatible facade listening");
    }
    serve(Arc::clone(&service), listeners, shutdown_signal()).await?;
    // The last traces go out before the process does (the exporter blocks).
    tokio::task::spawn_blocking(move || service.traces().shutdown()).await?;
    Ok(())
}

/// Ctrl-C, or SIGTERM (how container runtimes and systemd stop a process).
async fn shutdown_signal() {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
