//! One file per command; `main.rs` keeps the clap definitions and the dispatch.

use std::path::PathBuf;

use anyhow::Result;
use tonic::transport::Channel;

use skyfuse::client::{connect, load_config};

pub mod calibrate;
pub mod eval;
pub mod extract_worker;
pub mod index;
pub mod query;
pub mod route;
pub mod serve;

/// A connection to `--server`, or to the service from the config started in this process.
pub async fn channel(server: Option<String>, config: Option<PathBuf>) -> Result<Channel> {
    let config = if server.is_some() {
        skyfuse::config::Config::embedded_default()
    } else {
        load_config(config.as_deref())?
    };
    Ok(connect(server.as_deref(), config).await?)
}
