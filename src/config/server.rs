//! `[server]`: the gRPC listener, limits and the local data folder.

use std::net::SocketAddr;
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
    /// Serve without identities on a non-loopback address (anyone who reaches the
    /// port gets every permission); refused at startup unless set.
    pub allow_anonymous: bool,
    /// Open connections per listener; further ones are accepted and closed at once.
    pub max_connections: usize,
    /// How long a new connection may take to finish its TLS handshake (or, in
    /// plaintext, to send its first bytes).
    pub handshake_timeout_ms: u64,
    /// TCP keepalive idle time on accepted connections; 0: off.
    pub tcp_keepalive_ms: u64,
    /// HTTP/2 PING interval on idle connections (both edges); 0: off.
    pub http2_keepalive_interval_ms: u64,
    /// How long a PING may go unanswered before the connection is closed.
    pub http2_keepalive_timeout_ms: u64,
    /// How long an HTTP/1 client may take to send a request's headers (slowloris).
    pub header_read_timeout_ms: u64,
}

impl ServerConfig {
    /// Problems with the listen addresses and connection limits; `anonymous`: no
    /// identity is configured, so only loopback may be bound without `allow_anonymous`.
    pub(super) fn problems(&self, facade_listen: Option<&str>, anonymous: bool) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, listen) in [
            ("server.listen", Some(self.listen.as_str())),
            ("facade.listen", facade_listen),
        ] {
            let Some(address) = listen.and_then(|listen| listen.parse::<SocketAddr>().ok()) else {
                continue; // a bad address is reported where it is parsed
            };
            if anonymous && !self.allow_anonymous && !address.ip().is_loopback() {
                problems.push(anonymous_bind_problem(key, &address));
            }
        }
        for (key, value) in [
            ("server.max_connections", self.max_connections as u64),
            ("server.handshake_timeout_ms", self.handshake_timeout_ms),
            ("server.header_read_timeout_ms", self.header_read_timeout_ms),
            (
                "server.http2_keepalive_timeout_ms",
                self.http2_keepalive_timeout_ms,
            ),
        ] {
            if value == 0 {
                problems.push(format!("{key} must be at least 1"));
            }
        }
        problems
    }
}

/// The startup error for an anonymous server on a non-loopback address: names the
/// key and the ways out.
pub fn anonymous_bind_problem(key: &str, address: &SocketAddr) -> String {
    format!(
        "{key}: {address} is not a loopback address and no identities are configured, so \
         anyone who reaches it could call every API; configure identities ([[caller]]), \
         listen on 127.0.0.1, or set server.allow_anonymous = true"
    )
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
            allow_anonymous: false,
            max_connections: 1024,
            handshake_timeout_ms: 10_000,
            tcp_keepalive_ms: 60_000,
            http2_keepalive_interval_ms: 30_000,
            http2_keepalive_timeout_ms: 20_000,
            header_read_timeout_ms: 10_000,
        }
    }
}
