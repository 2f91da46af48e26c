//! TLS for both edges: the rustls server config built from `[tls]` (aws-lc-rs, the
//! provider the rest of the tree uses), rebuilt when the certificate, key or client
//! CA files change. Each handshake stats the files (three cheap syscalls, in the
//! connection's own task); a change is loaded once, and a file that does not load
//! keeps the previous certificate and logs an error, so a half-written renewal never
//! takes the listener down.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use crate::error::{Error, Result};

/// ALPN for gRPC: HTTP/2 only.
pub(super) const GRPC_ALPN: &[&[u8]] = &[b"h2"];
/// ALPN for the facade: HTTP/2 or HTTP/1.1.
pub(super) const HTTP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A TLS acceptor that follows its files.
pub(super) struct ReloadingTls {
    files: TlsConfig,
    alpn: Vec<Vec<u8>>,
    state: Mutex<State>,
}

struct State {
    /// The files as last tried (loaded or not), so a bad file is reported once.
    tried: Fingerprint,
    acceptor: TlsAcceptor,
}

/// Modification time and length of each file; a rewrite changes one of them.
type Fingerprint = Vec<Option<(SystemTime, u64)>>;

impl ReloadingTls {
    /// Loads the files now; a startup with files that do not load is an error.
    pub(super) fn load(files: &TlsConfig, alpn: &[&[u8]]) -> Result<Self> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        let tried = fingerprint(files);
        let acceptor = build(files, &alpn)?;
        Ok(Self {
            files: files.clone(),
            alpn,
            state: Mutex::new(State { tried, acceptor }),
        })
    }

    /// The acceptor for a new connection, reloaded first if a file changed.
    pub(super) fn acceptor(&self) -> TlsAcceptor {
        let now = fingerprint(&self.files);
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now != state.tried {
            state.tried = now;
            match build(&self.files, &self.alpn) {
                Ok(acceptor) => {
                    state.acceptor = acceptor;
                    tracing::info!(cert = %self.files.cert_file.display(), "tls: certificate reloaded");
                }
                Err(error) => tracing::error!(
                    %error,
                    "tls: the changed files do not load; still serving the previous certificate"
                ),
            }
        }
        state.acceptor.clone()
    }
}

fn fingerprint(files: &TlsConfig) -> Fingerprint {
    [
        Some(&files.cert_file),
        Some(&files.key_file),
        files.client_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|path| {
        let metadata = std::fs::metadata(path).ok()?;
        Some((metadata.modified().ok()?, metadata.len()))
    })
    .collect()
}

fn build(files: &TlsConfig, alpn: &[Vec<u8>]) -> Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = certificates(&files.cert_file, "tls.cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file).map_err(|error| {
        Error::config(format!(
            "tls.key_file {}: no private key ({error})",
            files.key_file.display()
        ))
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| Error::internal(format!("tls: {error}")))?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => builder.with_client_cert_verifier(client_verifier(
            path,
            files.client_auth_required(),
            provider,
        )?),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|error| {
        Error::config(format!(
            "tls.cert_file and tls.key_file do not make a usable pair: {error}"
        ))
    })?;
    config.alpn_protocols = alpn.to_vec();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn client_verifier(
    path: &Path,
    required: bool,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path, "tls.client_ca_file")? {
        roots.add(certificate).map_err(|error| {
            Error::config(format!("tls.client_ca_file {}: {error}", path.display()))
        })?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder
        .build()
        .map_err(|error| Error::config(format!("tls.client_ca_file {}: {error}", path.display())))
}

/// Every certificate in a PEM file; none is an error.
fn certificates(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>> {
    let unreadable =
        |error: &dyn std::fmt::Display| Error::config(format!("{key} {}: {error}", path.display()));
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| unreadable(&error))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|error| unreadable(&error))?;
    if certificates.is_empty() {
        return Err(unreadable(&"no PEM certificate in the file"));
    }
    Ok(certificates)
}
