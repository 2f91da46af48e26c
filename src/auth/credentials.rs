//! What a request presents to prove who is calling, read from gRPC metadata or
//! HTTP headers and the request's extensions. Debug never prints the token.

use std::fmt;

use super::{InProcess, PeerCertificate};
use crate::config::Secret;

/// A request's proofs of identity.
#[derive(Clone, Default)]
pub struct Credentials {
    /// The token of `authorization: Bearer` (an API key or a JWT).
    pub bearer: Option<Secret>,
    /// The verified mTLS client certificate.
    pub peer_certificate: Option<PeerCertificate>,
    /// Whether the request came over the CLI's in-process transport.
    pub in_process: bool,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Credentials")
            .field("bearer", &self.bearer.as_ref().map(|_| "[redacted]"))
            .field("peer_certificate", &self.peer_certificate.is_some())
            .field("in_process", &self.in_process)
            .finish()
    }
}

impl Credentials {
    /// From an `authorization` header value and the request's extensions.
    fn from_parts(
        authorization: Option<&str>,
        peer_certificate: Option<&PeerCertificate>,
        in_process: bool,
    ) -> Self {
        Self {
            bearer: authorization
                .and_then(bearer_token)
                .map(crate::config::Secret::new),
            peer_certificate: peer_certificate.cloned(),
            in_process,
        }
    }

    /// The credentials of a gRPC request.
    pub fn from_grpc<T>(request: &tonic::Request<T>) -> Self {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok());
        let extensions = request.extensions();
        Self::from_parts(
            authorization,
            extensions.get::<PeerCertificate>(),
            extensions.get::<InProcess>().is_some(),
        )
    }

    /// The credentials of an HTTP request.
    pub fn from_http(headers: &axum::http::HeaderMap, extensions: &axum::http::Extensions) -> Self {
        let authorization = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        Self::from_parts(
            authorization,
            extensions.get::<PeerCertificate>(),
            extensions.get::<InProcess>().is_some(),
        )
    }
}

/// The token of an `Authorization: Bearer <token>` value.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_and_never_printed() {
        assert_eq!(bearer_token("Bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("authorization", "Bearer sk-secret".parse().unwrap());
        let credentials = Credentials::from_http(&headers, &axum::http::Extensions::new());
        assert_eq!(credentials.bearer.as_ref().unwrap().expose(), "sk-secret");
        assert!(!format!("{credentials:?}").contains("sk-secret"));
    }
}
