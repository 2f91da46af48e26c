//! One file per command; `main.rs` keeps the clap definitions and the dispatch.

use std::path::PathBuf;

use anyhow::Result;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use skyfuse::client::{connect, load_config};

pub mod calibrate;
pub mod config;
pub mod eval;
pub mod extract_worker;
pub mod index;
pub mod keys;
pub mod placement;
pub mod query;
pub mod route;
pub mod serve;

/// A connection that presents `--token` on every call.
pub type Connection = InterceptedService<Channel, BearerToken>;

/// Adds `authorization: Bearer <token>` to each request when a token is given.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// `channel` presenting `token` (an API key or a JWT) as a bearer token.
pub fn with_token(channel: Channel, token: Option<&str>) -> Result<Connection> {
    let value = token
        .map(|token| {
            let mut value: MetadataValue<Ascii> = format!("Bearer {}", token.trim())
                .parse()
                .map_err(|_| anyhow::anyhow!("--token holds characters a header cannot carry"))?;
            value.set_sensitive(true);
            Ok::<_, anyhow::Error>(value)
        })
        .transpose()?;
    Ok(InterceptedService::new(channel, BearerToken(value)))
}

/// A connection to `--server`, or to the service from the config started in this
/// process; `token` is sent on every call.
pub async fn channel(
    server: Option<String>,
    config: Option<PathBuf>,
    token: Option<&str>,
) -> Result<Connection> {
    let config = if server.is_some() {
        skyfuse::config::Config::embedded_default()
    } else {
        load_config(config.as_deref())?
    };
    with_token(connect(server.as_deref(), config).await?, token)
}
