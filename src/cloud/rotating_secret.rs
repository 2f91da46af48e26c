//! A provider credential that follows its source: Kubernetes secrets, Vault agents and
//! `az account get-access-token > token` rotate a key or token by rewriting a file, and
//! AWS Secrets Manager rotates it in place; the next call sends the new value, without
//! a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::cloud::aws_secrets::AwsSecretsManager;
use crate::config::{Secret, SecretLocation};
use crate::error::{Error, Result};

/// How long a value read from a secret manager is used before it is read again, unless
/// the environment sets `SKYFUSE_SECRETS_CACHE_SECONDS`.
const DEFAULT_CACHE: Duration = Duration::from_secs(300);

/// A secret from `env:` (fixed for the process), `file:` (read again whenever the
/// file's modification time or size changes) or `aws-sm:` (read on first use, then
/// again once the cached value is older than the cache time).
#[derive(Debug)]
pub struct RotatingSecret {
    source: Source,
    current: Mutex<Current>,
}

#[derive(Debug)]
enum Source {
    Fixed,
    File(PathBuf),
    AwsSecretsManager {
        client: Box<AwsSecretsManager>,
        secret_id: String,
        cache: Duration,
    },
}

#[derive(Debug)]
struct Current {
    value: Option<Secret>,
    /// A file's (modification time, size), or when a managed secret was read.
    file_stamp: Option<(SystemTime, u64)>,
    fetched: Option<Instant>,
}

impl RotatingSecret {
    /// Reads an `env:` or `file:` secret at once (unreadable: a startup error); sets up
    /// the client of an `aws-sm:` one, which is read on first use.
    pub fn resolve(
        location: &SecretLocation,
        env: &HashMap<String, String>,
        http: &reqwest::Client,
    ) -> Result<Self> {
        let (source, value) = match location {
            SecretLocation::Env(_) => (Source::Fixed, Some(location.resolve(env)?)),
            SecretLocation::File(path) => {
                (Source::File(path.clone()), Some(location.resolve(env)?))
            }
            SecretLocation::AwsSecretsManager(secret_id) => {
                let cache = env
                    .get("SKYFUSE_SECRETS_CACHE_SECONDS")
                    .map(|seconds| {
                        seconds.parse().map(Duration::from_secs).map_err(|_| {
                            Error::config(format!(
                                "SKYFUSE_SECRETS_CACHE_SECONDS={seconds:?} is not a number of seconds"
                            ))
                        })
                    })
                    .transpose()?
                    .unwrap_or(DEFAULT_CACHE);
                let source = Source::AwsSecretsManager {
                    client: Box::new(AwsSecretsManager::from_env(env, http)?),
                    secret_id: secret_id.clone(),
                    cache,
                };
                (source, None)
            }
        };
        let file_stamp = match &source {
            Source::File(path) => stamp_of(path),
            _ => None,
        };
        Ok(Self {
            source,
            current: Mutex::new(Current {
                value,
                file_stamp,
                fetched: None,
            }),
        })
    }

    /// The value to send now. A file that changed is read again (one `stat` per call;
    /// secret files live on local disk or tmpfs); a managed secret past its cache time
    /// is fetched again. A source that fails mid-rotation (a file empty or unreadable,
    /// the manager unreachable) keeps the last good value; with none yet, the error.
    pub async fn current(&self) -> Result<Secret> {
        match &self.source {
            Source::Fixed => self.last().ok_or_else(unread),
            Source::File(path) => self.current_file(path).ok_or_else(unread),
            Source::AwsSecretsManager {
                client,
                secret_id,
                cache,
            } => {
                let fresh = {
                    let current = self.lock();
                    current
                        .fetched
                        .filter(|fetched| fetched.elapsed() < *cache)
                        .and(current.value.clone())
                };
                if let Some(value) = fresh {
                    return Ok(value);
                }
                match client.get(secret_id).await {
                    Ok(value) => {
                        let mut current = self.lock();
                        current.value = Some(value.clone());
                        current.fetched = Some(Instant::now());
                        Ok(value)
                    }
                    Err(error) => match self.last() {
                        Some(value) => {
                            tracing::warn!(secret = %secret_id, %error, "secret manager unreachable: keeping the last value");
                            Ok(value)
                        }
                        None => Err(error),
                    },
                }
            }
        }
    }

    fn current_file(&self, path: &std::path::Path) -> Option<Secret> {
        let mut current = self.lock();
        let stamp = stamp_of(path);
        if stamp.is_some() && stamp != current.file_stamp {
            match std::fs::read_to_string(path) {
                Ok(text) if !text.trim().is_empty() => {
                    current.value = Some(Secret::new(text.trim_end()));
                    current.file_stamp = stamp;
                    tracing::info!(file = %path.display(), "secret file changed: using the new value");
                }
                Ok(_) => {
                    tracing::warn!(file = %path.display(), "secret file is empty: keeping the last value");
                }
                Err(error) => {
                    tracing::warn!(file = %path.display(), %error, "secret file unreadable: keeping the last value");
                }
            }
        }
        current.value.clone()
    }

    fn last(&self) -> Option<Secret> {
        self.lock().value.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Unreachable: `env:` and `file:` secrets are read in [`RotatingSecret::resolve`].
fn unread() -> Error {
    Error::internal("a secret was used before it was read")
}

fn stamp_of(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rewritten_file_is_read_again_and_a_broken_rewrite_keeps_the_last_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "first-key\n").unwrap();
        let http = reqwest::Client::new();
        let secret =
            RotatingSecret::resolve(&SecretLocation::File(path.clone()), &HashMap::new(), &http)
                .unwrap();
        let now = || async { secret.current().await.unwrap().expose().to_owned() };
        assert_eq!(now().await, "first-key");
        // A different size is a change even within the file system's mtime granularity.
        std::fs::write(&path, "second-key-rotated\n").unwrap();
        assert_eq!(now().await, "second-key-rotated");
        std::fs::write(&path, "").unwrap();
        assert_eq!(now().await, "second-key-rotated");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(now().await, "second-key-rotated");
    }

    #[tokio::test]
    async fn an_env_secret_is_fixed_and_a_managed_one_needs_a_region() {
        let env = HashMap::from([("KEY".to_owned(), "from-env".to_owned())]);
        let http = reqwest::Client::new();
        let secret =
            RotatingSecret::resolve(&SecretLocation::Env("KEY".into()), &env, &http).unwrap();
        assert_eq!(secret.current().await.unwrap().expose(), "from-env");
        let managed = SecretLocation::AwsSecretsManager("prod/openai".into());
        let error = RotatingSecret::resolve(&managed, &env, &http).unwrap_err();
        assert!(error.message.contains("AWS_REGION"), "{error}");
    }
}
