//! Who is calling. (Identity and roles are built here; see the secure-edge issue.)

use std::sync::Arc;

/// The verified client certificate of an mutual-TLS connection (the leaf, DER),
/// put into each request's extensions by the transport, for gRPC and HTTP alike.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Arc<[u8]>);

/// Marks a request that came over the CLI's in-process transport (no network port):
/// the operator who holds the config, with every permission.
#[derive(Debug, Clone, Copy)]
pub struct InProcess;
