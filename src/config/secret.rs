//! Secrets are written in config as locations (`env:NAME`, `file:PATH`, and for
//! provider keys and tokens `aws-sm:NAME`), never as values, and resolve into a type
//! that never prints its contents.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Where a secret lives. Parsed from `env:NAME`, `file:PATH` or `aws-sm:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SecretLocation {
    Env(String),
    File(std::path::PathBuf),
    /// A secret of AWS Secrets Manager (a name or an ARN), read over the network when
    /// a provider needs it (`cloud::rotating_secret`).
    AwsSecretsManager(String),
}

impl TryFrom<String> for SecretLocation {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if let Some(name) = text.strip_prefix("env:").filter(|name| !name.is_empty()) {
            return Ok(Self::Env(name.to_string()));
        }
        if let Some(path) = text.strip_prefix("file:").filter(|path| !path.is_empty()) {
            return Ok(Self::File(path.into()));
        }
        if let Some(name) = text.strip_prefix("aws-sm:").filter(|name| !name.is_empty()) {
            return Ok(Self::AwsSecretsManager(name.to_string()));
        }
        Err(
            "a secret must be a location, `env:NAME`, `file:PATH` or `aws-sm:NAME`, not a literal value"
                .into(),
        )
    }
}

impl SecretLocation {
    /// Reads the secret of config key `key` when one is configured; an error names
    /// the key. The one way every optional secret of a config is read.
    pub fn resolve_optional(
        location: Option<&Self>,
        key: &str,
        env: &HashMap<String, String>,
    ) -> Result<Option<Secret>> {
        location
            .map(|location| location.resolve(env).map_err(|error| error.context(key)))
            .transpose()
    }

    /// Reads the secret; `env` is passed in so tests and startup control it.
    pub fn resolve(&self, env: &HashMap<String, String>) -> Result<Secret> {
        match self {
            Self::Env(name) => env
                .get(name)
                .map(|value| Secret(value.clone()))
                .ok_or_else(|| Error::config(format!("environment variable {name} is not set"))),
            Self::File(path) => std::fs::read_to_string(path)
                .map(|value| Secret(value.trim_end().to_string()))
                .map_err(|error| {
                    Error::config(format!(
                        "cannot read secret file {}: {error}",
                        path.display()
                    ))
                }),
            Self::AwsSecretsManager(name) => Err(Error::config(format!(
                "aws-sm:{name}: a secret manager is read only for a provider's api_key or access_token; use env: or file: here"
            ))),
        }
    }
}

/// A resolved secret. Debug and Display print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value obtained at run time (an access token from a token endpoint).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_values_are_refused() {
        assert!(SecretLocation::try_from("sk-live-123".to_string()).is_err());
        assert!(SecretLocation::try_from("env:".to_string()).is_err());
    }

    #[test]
    fn env_secret_resolves_and_never_prints() {
        let location = SecretLocation::try_from("env:API_KEY".to_string()).unwrap();
        let env = HashMap::from([("API_KEY".to_string(), "sk-very-secret".to_string())]);
        let secret = location.resolve(&env).unwrap();
        assert_eq!(secret.expose(), "sk-very-secret");
        assert_eq!(format!("{secret:?} {secret}"), "[redacted] [redacted]");
    }

    #[test]
    fn missing_env_secret_names_the_variable() {
        let location = SecretLocation::Env("NOPE".into());
        let error = location.resolve(&HashMap::new()).unwrap_err();
        assert!(error.message.contains("NOPE"), "{}", error.message);
    }
}
