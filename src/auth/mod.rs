//! Who is calling, and what it may do. The api layer turns request metadata into
//! [`Credentials`]; [`Authenticator`] turns those into a [`Principal`] (an id and
//! its [`Permissions`], the union of its roles); every `Service` entrance checks
//! the principal. See docs/security/identity.md.

mod api_keys;
mod authenticator;
mod client_cert;
mod credentials;
mod jwks;
mod jwt;
mod permissions;
mod principal;
mod tenancy;

use std::sync::Arc;

pub use api_keys::{ApiKeys, hash_key, hash_key_hex};
pub use authenticator::Authenticator;
pub use client_cert::{CertificateNames, SanPattern, certificate_names, match_certificate};
pub use credentials::{Credentials, bearer_token};
pub use jwks::MIN_REFETCH as JWKS_MIN_REFETCH;
pub use jwt::{JwtIssuer, VerifiedToken};
pub use permissions::{ChatLimits, Permissions};
pub use principal::Principal;
pub use tenancy::NamespaceScope;

/// The verified client certificate of an mutual-TLS connection (the leaf, DER),
/// put into each request's extensions by the transport, for gRPC and HTTP alike.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Arc<[u8]>);

/// Marks a request that came over the CLI's in-process transport (no network port):
/// the operator who holds the config, with every permission.
#[derive(Debug, Clone, Copy)]
pub struct InProcess;

/// Token issuer and key set URLs must be https; plain http only on loopback (tests).
pub fn check_issuer_url(text: &str) -> std::result::Result<(), String> {
    let url = url::Url::parse(text).map_err(|error| format!("{text:?} is not a URL: {error}"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err(format!("{text:?} must be https (http only on loopback)"))
            }
        }
        other => Err(format!("{text:?}: scheme {other:?} is not https")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_are_https_or_loopback() {
        assert!(check_issuer_url("https://login.microsoftonline.com/t/v2.0").is_ok());
        assert!(check_issuer_url("http://127.0.0.1:8080/realm").is_ok());
        assert!(check_issuer_url("http://[::1]:8080").is_ok());
        assert!(check_issuer_url("http://issuer.example").is_err());
        assert!(check_issuer_url("file:///etc/jwks.json").is_err());
        assert!(check_issuer_url("not a url").is_err());
    }
}
