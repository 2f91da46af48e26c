//! `[[issuer]]`: an OpenID Connect issuer whose JWT bearer tokens identify callers.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A trusted token issuer (Entra ID, Okta, Keycloak, Google, Cognito...).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Names the issuer in principal ids (`<id>:<subject>`) and messages.
    pub id: String,
    /// The exact `iss` of its tokens; https (plain http only on loopback, for tests).
    pub issuer: String,
    /// Accepted `aud` values; a token must name one of them.
    pub audiences: Vec<String>,
    /// The JWKS; default: `jwks_uri` of `<issuer>/.well-known/openid-configuration`.
    pub jwks_url: Option<String>,
    /// Accepted signature algorithms: `RS256`, `ES256`.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_s")]
    pub leeway_s: u64,
    /// The claim naming the caller.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Claims carrying roles, groups or scopes (arrays, or space-separated strings
    /// as Entra's `scp`).
    #[serde(default = "default_role_claims")]
    pub role_claims: Vec<String>,
    /// A claim value (`AI_Engineer`) -> the `[[role]]` it grants (`ai-engineer`).
    #[serde(default)]
    pub role_mapping: BTreeMap<String, String>,
    /// Roles every valid token of this issuer gets.
    #[serde(default)]
    pub roles: Vec<String>,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}

fn default_leeway_s() -> u64 {
    60
}

fn default_subject_claim() -> String {
    "sub".into()
}

fn default_role_claims() -> Vec<String> {
    vec!["roles".into(), "groups".into(), "scp".into()]
}
