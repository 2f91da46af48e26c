//! `[tls]`: one certificate (and optionally a client CA for mutual TLS) for both
//! listeners, gRPC and the facade. The files are read again when they change.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// TLS for gRPC and the facade; absent: both serve plaintext.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf.
    pub key_file: PathBuf,
    /// PEM CA certificates that sign client certificates; set: mutual TLS.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Whether a client must present a certificate; needs `client_ca_file`. Default
    /// with a client CA: `required`.
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
}

/// Whether a client certificate is asked for or demanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// A client may present a certificate signed by the client CA, or none.
    Optional,
    /// Every client must present a certificate signed by the client CA.
    Required,
}

impl TlsConfig {
    /// Whether connections without a client certificate are refused.
    pub fn client_auth_required(&self) -> bool {
        self.client_ca_file.is_some() && self.client_auth != Some(ClientAuth::Optional)
    }

    pub(super) fn anchor_paths(&mut self, base_dir: &Path) {
        self.cert_file = super::include::anchor(base_dir, &self.cert_file);
        self.key_file = super::include::anchor(base_dir, &self.key_file);
        if let Some(ca) = &mut self.client_ca_file {
            *ca = super::include::anchor(base_dir, ca);
        }
    }

    pub(super) fn problems(&self, problems: &mut Vec<String>) {
        if self.client_auth.is_some() && self.client_ca_file.is_none() {
            problems.push(
                "tls.client_auth needs tls.client_ca_file (the CA that signs client certificates)"
                    .into(),
            );
        }
    }
}
