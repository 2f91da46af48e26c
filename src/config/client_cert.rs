//! `[[client_cert]]`: a verified mTLS client certificate mapped to a caller.

use serde::Deserialize;

/// Matches a client certificate by its subject CN or one SAN, exactly.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertConfig {
    /// The caller id the certificate identifies.
    pub id: String,
    /// The subject's common name.
    pub subject_cn: Option<String>,
    /// A subject alternative name: `dns:host`, `uri:spiffe://...`, `email:a@b`.
    pub san: Option<String>,
    /// `[[role]]`s the caller holds.
    #[serde(default)]
    pub roles: Vec<String>,
}
