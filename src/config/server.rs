//! `[server]`: the gRPC listener, limits and the local data folder.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC listen address.
    pub listen: String,
    /// Where local stores and manifests live; relative paths are taken from the
    /// directory the config file is in (the current directory for the default).
    pub data_dir: PathBuf,
    /// Largest gRPC message accepted or sent.
    pub max_message_bytes: usize,
    pub max_top_k: u32,
    pub default_top_k: u32,
    pub max_query_chars: usize,
    /// Requests served at once per connection; more wait.
    pub max_concurrent_requests: usize,
    /// Calls served at once by the whole server, both edges together, each counted
    /// until its response (a stream included) ends; more are refused at once with
    /// `RESOURCE_EXHAUSTED` / HTTP 429. Health checks and reflection are not counted.
    pub max_concurrent_calls: usize,
    /// Deadline for a call that sets none.
    pub default_timeout_ms: u64,
    /// How long in-flight calls may finish after shutdown is asked.
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            data_dir: "indexes/local".into(),
            max_message_bytes: 4 * 1024 * 1024,
            max_top_k: 1000,
            default_top_k: 10,
            max_query_chars: 4096,
            max_concurrent_requests: 256,
            max_concurrent_calls: 1024,
            default_timeout_ms: 10_000,
            shutdown_grace_ms: 5_000,
        }
    }
}
