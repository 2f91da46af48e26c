//! AWS access keys as a config names them: the same three secret locations for an
//! OpenSearch source (`aws_access_key_id`...), a Bedrock provider (same keys) and an
//! S3 bucket (`access_key_id`...), resolved by one function.

use std::collections::HashMap;

use super::{Secret, SecretLocation};
use crate::error::Result;

/// Where the key pair and session token are; each unset one falls back to whatever
/// the consumer's default is (the standard `AWS_*` variables).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsKeyLocations {
    pub access_key_id: Option<SecretLocation>,
    pub secret_access_key: Option<SecretLocation>,
    pub session_token: Option<SecretLocation>,
}

/// The configured keys, read; `None` where none was configured.
#[derive(Debug, Clone, Default)]
pub struct AwsKeys {
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
}

impl AwsKeyLocations {
    /// Reads the configured secrets; errors name the key as the config spells it
    /// (`prefix` is `aws_` in sources and providers, empty in buckets).
    pub fn resolve(&self, prefix: &str, env: &HashMap<String, String>) -> Result<AwsKeys> {
        let read = |location: &Option<SecretLocation>, key: &str| {
            SecretLocation::resolve_optional(location.as_ref(), &format!("{prefix}{key}"), env)
        };
        Ok(AwsKeys {
            access_key_id: read(&self.access_key_id, "access_key_id")?,
            secret_access_key: read(&self.secret_access_key, "secret_access_key")?,
            session_token: read(&self.session_token, "session_token")?,
        })
    }

    /// The keys that are set, as the config spells them.
    pub fn set_keys(&self, prefix: &str) -> Vec<String> {
        [
            ("access_key_id", &self.access_key_id),
            ("secret_access_key", &self.secret_access_key),
            ("session_token", &self.session_token),
        ]
        .into_iter()
        .filter(|(_, location)| location.is_some())
        .map(|(key, _)| format!("{prefix}{key}"))
        .collect()
    }

    /// Whether the pair is given together (or not at all, for the defaults).
    pub fn pair_is_whole(&self) -> bool {
        self.access_key_id.is_some() == self.secret_access_key.is_some()
    }
}
