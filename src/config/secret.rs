//! Secrets are written in config as locations, never as values, and resolve into a
//! type that never prints its contents.
//!
//! | location | read from |
//! |---|---|
//! | `env:NAME` | the environment variable `NAME` |
//! | `file:PATH` | the file's text, trailing whitespace trimmed |
//! | `aws-sm:NAME` | AWS Secrets Manager (`NAME` is a name or an ARN) |
//! | `azure-kv:VAULT/NAME[/VERSION]` | Azure Key Vault `VAULT`'s secret `NAME` |
//! | `gcp-sm:PROJECT/NAME[/VERSION]` | Google Secret Manager (version `latest` when left out) |
//! | `oci-vault:OCID` | the current version of an OCI Vault secret |
//! | `chain:LOCATION\|LOCATION...` | each in turn; the first that resolves wins |
//!
//! The four secret managers are read over the network, so only where a provider sends
//! a key or token on each call (`cloud::rotating_secret`, which also caches them);
//! elsewhere (read once at startup, synchronously) they are refused with a config
//! error naming the key, and a chain there tries only its `env:` / `file:` members.
//! A chain's members are split on `|`, which no secret manager allows in a name: a
//! `file:` path holding `|` cannot be a chain member.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Where a secret lives; see the module doc for the syntax of each.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SecretLocation {
    Env(String),
    File(std::path::PathBuf),
    /// A secret of AWS Secrets Manager (a name or an ARN), read over the network when
    /// a provider needs it (`cloud::rotating_secret`), as are the three below.
    AwsSecretsManager(String),
    /// Azure Key Vault: `parent` is the vault's name (`https://{vault}.vault.azure.net`);
    /// the current version when `version` is `None`.
    AzureKeyVault(Box<SecretPath>),
    /// Google Secret Manager: `parent` is a project id or number; version `latest`
    /// when `None`.
    GcpSecretManager(Box<SecretPath>),
    /// An OCI Vault secret's OCID; its current version is read.
    OciVault(String),
    /// Tried in order; never nested.
    Chain(Vec<SecretLocation>),
}

/// A secret inside a vault or project (boxed in [`SecretLocation`], which config types
/// hold by the dozen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretPath {
    pub parent: String,
    pub name: String,
    pub version: Option<String>,
}

const LOCATION_HELP: &str = "a secret must be a location, `env:NAME`, `file:PATH`, `aws-sm:NAME`, `azure-kv:VAULT/NAME`, `gcp-sm:PROJECT/NAME`, `oci-vault:OCID` or `chain:LOCATION|LOCATION`, not a literal value";

impl TryFrom<String> for SecretLocation {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if let Some(members) = text.strip_prefix("chain:") {
            let members = members
                .split('|')
                .map(|member| {
                    if member.starts_with("chain:") {
                        return Err("a chain cannot hold another chain".to_string());
                    }
                    Self::single(member)
                        .map_err(|error| format!("chain member {member:?}: {error}"))
                })
                .collect::<Result<Vec<_>, String>>()?;
            return Ok(Self::Chain(members));
        }
        Self::single(&text)
    }
}

impl SecretLocation {
    fn single(text: &str) -> Result<Self, String> {
        if let Some(name) = text.strip_prefix("env:").filter(|name| !name.is_empty()) {
            return Ok(Self::Env(name.to_string()));
        }
        if let Some(path) = text.strip_prefix("file:").filter(|path| !path.is_empty()) {
            return Ok(Self::File(path.into()));
        }
        if let Some(name) = text.strip_prefix("aws-sm:").filter(|name| !name.is_empty()) {
            return Ok(Self::AwsSecretsManager(name.to_string()));
        }
        if let Some(rest) = text.strip_prefix("azure-kv:") {
            let path = path_parts(rest, "azure-kv:VAULT/NAME[/VERSION]")?;
            return Ok(Self::AzureKeyVault(Box::new(path)));
        }
        if let Some(rest) = text.strip_prefix("gcp-sm:") {
            let path = path_parts(rest, "gcp-sm:PROJECT/NAME[/VERSION]")?;
            return Ok(Self::GcpSecretManager(Box::new(path)));
        }
        if let Some(ocid) = text.strip_prefix("oci-vault:") {
            if !is_plain_segment(ocid) {
                return Err(format!(
                    "oci-vault:{ocid}: expected an OCID (`ocid1.vaultsecret...`)"
                ));
            }
            return Ok(Self::OciVault(ocid.to_string()));
        }
        Err(LOCATION_HELP.into())
    }
}

/// `A/B` or `A/B/C`, each a plain URL path segment: the parts are put in a URL path,
/// so nothing in them may change which resource is read.
fn path_parts(rest: &str, shape: &str) -> Result<SecretPath, String> {
    let parts: Vec<&str> = rest.split('/').collect();
    if !(2..=3).contains(&parts.len()) || !parts.iter().all(|part| is_plain_segment(part)) {
        return Err(format!(
            "{rest:?} does not read as {shape} (letters, digits, `-`, `_`, `.` and `:` only)"
        ));
    }
    Ok(SecretPath {
        parent: parts[0].to_string(),
        name: parts[1].to_string(),
        version: parts.get(2).map(|version| version.to_string()),
    })
}

fn is_plain_segment(text: &str) -> bool {
    !text.is_empty()
        && text != "."
        && text != ".."
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b':'))
}

/// The location as written in config (never a value): for error messages.
impl fmt::Display for SecretLocation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let versioned = |formatter: &mut fmt::Formatter<'_>, prefix: &str, path: &SecretPath| {
            write!(formatter, "{prefix}:{}/{}", path.parent, path.name)?;
            match &path.version {
                Some(version) => write!(formatter, "/{version}"),
                None => Ok(()),
            }
        };
        match self {
            Self::Env(name) => write!(formatter, "env:{name}"),
            Self::File(path) => write!(formatter, "file:{}", path.display()),
            Self::AwsSecretsManager(name) => write!(formatter, "aws-sm:{name}"),
            Self::AzureKeyVault(path) => versioned(formatter, "azure-kv", path),
            Self::GcpSecretManager(path) => versioned(formatter, "gcp-sm", path),
            Self::OciVault(ocid) => write!(formatter, "oci-vault:{ocid}"),
            Self::Chain(members) => {
                formatter.write_str("chain:")?;
                for (index, member) in members.iter().enumerate() {
                    if index > 0 {
                        formatter.write_str("|")?;
                    }
                    write!(formatter, "{member}")?;
                }
                Ok(())
            }
        }
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
            Self::AwsSecretsManager(_)
            | Self::AzureKeyVault(_)
            | Self::GcpSecretManager(_)
            | Self::OciVault(_) => Err(Error::config(format!(
                "{self}: a secret manager is read only for a provider's api_key or access_token; use env: or file: here"
            ))),
            Self::Chain(members) => {
                let mut attempts = Vec::new();
                for member in members {
                    match member.resolve(env) {
                        Ok(secret) => return Ok(secret),
                        Err(error) => attempts.push(labeled(error, member).message),
                    }
                }
                Err(Error::config(chain_failure(self, &attempts)))
            }
        }
    }
}

/// `error` led by `location` unless it already names it, so a chain's error says
/// which member each failure belongs to.
pub fn labeled(error: Error, location: &SecretLocation) -> Error {
    let name = location.to_string();
    if error.message.starts_with(&name) {
        error
    } else {
        error.context(name)
    }
}

/// A chain's error: every member's failure (the failures name locations, never values).
pub fn chain_failure(chain: &SecretLocation, attempts: &[String]) -> String {
    format!("{chain}: no member resolved ({})", attempts.join("; "))
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

    #[test]
    fn managed_locations_parse_into_their_parts_and_print_back() {
        let parse = |text: &str| SecretLocation::try_from(text.to_string());
        assert_eq!(
            parse("azure-kv:prod-vault/openai-key").unwrap(),
            SecretLocation::AzureKeyVault(Box::new(SecretPath {
                parent: "prod-vault".into(),
                name: "openai-key".into(),
                version: None,
            }))
        );
        assert_eq!(
            parse("gcp-sm:my-project/api_key/3").unwrap(),
            SecretLocation::GcpSecretManager(Box::new(SecretPath {
                parent: "my-project".into(),
                name: "api_key".into(),
                version: Some("3".into()),
            }))
        );
        let ocid = "oci-vault:ocid1.vaultsecret.oc1.iad.amaaaaaa";
        assert_eq!(
            parse(ocid).unwrap(),
            SecretLocation::OciVault("ocid1.vaultsecret.oc1.iad.amaaaaaa".into())
        );
        for text in [
            "azure-kv:prod-vault/openai-key/0123abcd",
            "gcp-sm:p/n",
            ocid,
            "chain:aws-sm:prod/key|azure-kv:v/k|env:KEY",
        ] {
            assert_eq!(parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn locations_that_could_reach_another_resource_are_refused() {
        for text in [
            "azure-kv:vault",
            "azure-kv:vault/a/b/c",
            "azure-kv:vault/../keys/k",
            "gcp-sm:p/n?x=1",
            "gcp-sm:p//n",
            "oci-vault:",
            "oci-vault:ocid1/../x",
            "chain:env:A|chain:env:B",
            "chain:env:A|",
            "chain:",
        ] {
            assert!(
                SecretLocation::try_from(text.to_string()).is_err(),
                "{text} was accepted"
            );
        }
    }

    #[test]
    fn a_chain_resolved_at_startup_takes_its_first_local_member_and_lists_every_failure() {
        let chain =
            SecretLocation::try_from("chain:aws-sm:prod/key|env:MISSING|env:KEY".to_string())
                .unwrap();
        let env = HashMap::from([("KEY".to_string(), "from-env".to_string())]);
        assert_eq!(chain.resolve(&env).unwrap().expose(), "from-env");
        let error = chain.resolve(&HashMap::new()).unwrap_err();
        for part in ["aws-sm:prod/key", "MISSING", "KEY", "no member resolved"] {
            assert!(error.message.contains(part), "{}", error.message);
        }
    }

    #[test]
    fn secret_managers_are_refused_where_secrets_are_read_once() {
        for text in ["azure-kv:v/k", "gcp-sm:p/n", "oci-vault:ocid1.x"] {
            let location = SecretLocation::try_from(text.to_string()).unwrap();
            let error = location.resolve(&HashMap::new()).unwrap_err();
            assert!(error.message.starts_with(text), "{}", error.message);
            assert!(
                error.message.contains("use env: or file: here"),
                "{}",
                error.message
            );
        }
    }
}
