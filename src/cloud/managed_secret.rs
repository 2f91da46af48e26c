//! One secret in a secret manager: the client its location needs, configured from
//! the environment, and the call that reads its current value. What the four
//! managers share; [`crate::cloud::rotating_secret`] decides when to call.

use std::collections::HashMap;

use base64::Engine;

use crate::cloud::aws_secrets::AwsSecretsManager;
use crate::cloud::azure_key_vault::AzureKeyVault;
use crate::cloud::gcp_secret_manager::GcpSecretManager;
use crate::cloud::oci_vault::OciVault;
use crate::config::{Secret, SecretLocation};
use crate::error::{Error, Result};

#[derive(Debug)]
pub struct ManagedSecret {
    client: Client,
    location: SecretLocation,
}

#[derive(Debug)]
enum Client {
    Aws(Box<AwsSecretsManager>),
    Azure(Box<AzureKeyVault>),
    Gcp(Box<GcpSecretManager>),
    Oci(Box<OciVault>),
}

impl ManagedSecret {
    /// The client for a secret-manager location; `None` for `env:`, `file:` and
    /// chains. A missing region, key or endpoint is a config error naming the manager.
    pub fn from_location(
        location: &SecretLocation,
        env: &HashMap<String, String>,
        http: &reqwest::Client,
    ) -> Result<Option<Self>> {
        let client = match location {
            SecretLocation::Env(_) | SecretLocation::File(_) | SecretLocation::Chain(_) => {
                return Ok(None);
            }
            SecretLocation::AwsSecretsManager(_) => {
                Client::Aws(Box::new(AwsSecretsManager::from_env(env, http)?))
            }
            SecretLocation::AzureKeyVault(_) => {
                Client::Azure(Box::new(AzureKeyVault::from_env(env, http)?))
            }
            SecretLocation::GcpSecretManager(_) => {
                Client::Gcp(Box::new(GcpSecretManager::from_env(env, http)?))
            }
            SecretLocation::OciVault(_) => Client::Oci(Box::new(OciVault::from_env(env, http)?)),
        };
        Ok(Some(Self {
            client,
            location: location.clone(),
        }))
    }

    pub fn location(&self) -> &SecretLocation {
        &self.location
    }

    /// The value the manager holds now.
    pub async fn fetch(&self) -> Result<Secret> {
        match (&self.client, &self.location) {
            (Client::Aws(client), SecretLocation::AwsSecretsManager(secret_id)) => {
                client.get(secret_id).await
            }
            (Client::Azure(client), SecretLocation::AzureKeyVault(path)) => {
                client
                    .get(&path.parent, &path.name, path.version.as_deref())
                    .await
            }
            (Client::Gcp(client), SecretLocation::GcpSecretManager(path)) => {
                client
                    .get(&path.parent, &path.name, path.version.as_deref())
                    .await
            }
            (Client::Oci(client), SecretLocation::OciVault(ocid)) => client.get(ocid).await,
            _ => Err(Error::internal(format!(
                "{}: built with another manager's client",
                self.location
            ))),
        }
    }
}

/// A base64 payload (Secret Manager, OCI Vault) as text, trailing whitespace trimmed
/// as for `file:` secrets: a payload made with `echo` ends in a newline no header may
/// carry. The decoders' errors are dropped: they quote bytes of the value.
pub fn decode_base64_text(data: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    Some(text.trim_end().to_string())
}
