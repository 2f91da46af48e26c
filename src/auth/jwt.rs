//! OIDC / JWT bearer tokens: RS256 or ES256 signatures checked against the
//! issuer's JWKS, then `iss`, `aud`, `exp` and `nbf` (with the issuer's leeway).
//! The algorithm must be one the issuer allows *and* match the key's type, so
//! `alg: none` and HS256 signed with a public key are refused.

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::jwks::Jwks;
use crate::config::IssuerConfig;
use crate::error::{Error, ErrorKind, Result};

/// A verified token: who it names and the values of its role claims.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    pub subject: String,
    pub claim_values: Vec<String>,
}

/// One trusted issuer and its keys.
pub struct JwtIssuer {
    pub config: IssuerConfig,
    jwks: Jwks,
    algorithms: Vec<Algorithm>,
}

impl JwtIssuer {
    /// The issuer `config` describes; its keys are fetched on first use.
    pub fn new(config: IssuerConfig, http: reqwest::Client) -> Self {
        let algorithms = config
            .algorithms
            .iter()
            .filter_map(|name| match name.as_str() {
                "RS256" => Some(Algorithm::RS256),
                "ES256" => Some(Algorithm::ES256),
                _ => None,
            })
            .collect();
        let jwks = Jwks::new(http, &config.issuer, config.jwks_url.as_deref());
        Self {
            config,
            jwks,
            algorithms,
        }
    }

    /// How many times its key set was fetched.
    pub async fn key_fetches(&self) -> u64 {
        self.jwks.fetches().await
    }

    /// Verifies `token` and reads its subject and role claims.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(invalid("the token's algorithm is not accepted"));
        }
        let jwk = self.jwks.key(header.kid.as_deref()).await?;
        if !key_fits(&jwk, header.alg) {
            return Err(invalid("the token's algorithm does not match its key"));
        }
        let key =
            DecodingKey::from_jwk(&jwk).map_err(|_| invalid("the issuer's key is unusable"))?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.config.leeway_s;
        validation.validate_nbf = true;
        validation.set_audience(&self.config.audiences);
        validation.set_issuer(&[self.config.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|error| invalid(reason(error.kind())))?;
        let claims = data.claims;
        let subject = claims
            .get(&self.config.subject_claim)
            .and_then(Value::as_str)
            .filter(|subject| !subject.is_empty())
            .ok_or_else(|| invalid("the token names no subject"))?
            .to_string();
        let claim_values = self
            .config
            .role_claims
            .iter()
            .filter_map(|name| claims.get(name))
            .flat_map(claim_strings)
            .collect();
        Ok(VerifiedToken {
            subject,
            claim_values,
        })
    }
}

/// The unverified `iss` of a JWT-shaped token, to pick the issuer that checks it.
pub fn unverified_issuer(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_string)
}

/// Whether a token looks like a JWT (three dot-separated parts) rather than an API key.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

/// RS256 needs an RSA key, ES256 a P-256 key.
fn key_fits(jwk: &Jwk, algorithm: Algorithm) -> bool {
    match (&jwk.algorithm, algorithm) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
        (AlgorithmParameters::EllipticCurve(params), Algorithm::ES256) => {
            params.curve == EllipticCurve::P256
        }
        _ => false,
    }
}

/// Strings of a claim: an array of strings, or a space-separated string (Entra's `scp`).
fn claim_strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(text) => text.split_whitespace().map(str::to_string).collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

fn reason(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as Jwt;
    match kind {
        Jwt::ExpiredSignature => "the token has expired",
        Jwt::ImmatureSignature => "the token is not valid yet",
        Jwt::InvalidAudience => "the token is not for this service (audience)",
        Jwt::InvalidIssuer => "the token's issuer is not trusted",
        Jwt::InvalidSignature => "the token's signature is not valid",
        Jwt::MissingRequiredClaim(_) => "the token lacks a required claim",
        Jwt::InvalidAlgorithm => "the token's algorithm is not accepted",
        _ => "the token is not valid",
    }
}

fn invalid(reason: &str) -> Error {
    Error::new(
        ErrorKind::Unauthenticated,
        format!("authentication failed: {reason}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_claims_read_arrays_and_space_separated_scopes() {
        assert_eq!(
            claim_strings(&serde_json::json!("search.read index.write")),
            vec!["search.read", "index.write"]
        );
        assert_eq!(
            claim_strings(&serde_json::json!(["AI_Engineer", 3, "Ops"])),
            vec!["AI_Engineer", "Ops"]
        );
        assert!(claim_strings(&serde_json::json!({"a": 1})).is_empty());
    }

    #[test]
    fn the_issuer_of_a_token_is_read_before_it_is_checked() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"iss":"https://login.example/tenant/v2.0"}"#);
        let token = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.sig");
        assert!(looks_like_jwt(&token));
        assert_eq!(
            unverified_issuer(&token).as_deref(),
            Some("https://login.example/tenant/v2.0")
        );
        assert_eq!(unverified_issuer("sk-abc"), None);
        assert!(!looks_like_jwt("sk-abc"));
    }
}
