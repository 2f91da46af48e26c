//! A provider credential that follows its source: Kubernetes secrets, Vault agents and
//! `az account get-access-token > token` rotate a key or token by rewriting a file, and
//! the secret managers (AWS Secrets Manager, Azure Key Vault, Google Secret Manager,
//! OCI Vault) rotate it in place; the next call sends the new value, without a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::cloud::managed_secret::ManagedSecret;
use crate::config::{Secret, SecretLocation, chain_failure, labeled};
use crate::error::{Error, ErrorKind, Result};

/// How long a value read from a secret manager is used before it is read again, unless
/// the environment sets `SKYFUSE_SECRETS_CACHE_SECONDS`.
const DEFAULT_CACHE: Duration = Duration::from_secs(300);

/// A secret from `env:` (fixed for the process), `file:` (read again whenever the
/// file's modification time or size changes), a secret manager (read on first use,
/// then again once the cached value is older than the cache time), or a `chain:` of
/// those (each member follows its own source).
#[derive(Debug)]
pub struct RotatingSecret {
    source: Source,
    current: Mutex<Current>,
    /// Held while a managed secret is fetched: callers that find it stale together
    /// wait for one fetch instead of each sending their own.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
enum Source {
    Fixed,
    File(PathBuf),
    Managed {
        secret: Box<ManagedSecret>,
        cache: Duration,
    },
    Chain {
        location: SecretLocation,
        members: Vec<ChainMember>,
        cache: Duration,
    },
}

/// One location of a chain: set up at startup, or why it could not be (an unset
/// variable, a manager with no region), kept for the chain's error.
#[derive(Debug)]
struct ChainMember {
    location: SecretLocation,
    secret: std::result::Result<RotatingSecret, Error>,
    /// The last failure and when: a member that failed is skipped for the cache time,
    /// so a chain whose first manager lacks the secret costs no round trip per call.
    failed: Mutex<Option<(Instant, Error)>>,
}

#[derive(Debug)]
struct Current {
    value: Option<Secret>,
    /// A file's (modification time, size).
    file_stamp: Option<(SystemTime, u64)>,
    /// When a managed secret was read.
    fetched: Option<Instant>,
}

impl RotatingSecret {
    /// Reads an `env:` or `file:` secret at once (unreadable: a startup error); sets up
    /// the client of a secret manager, which is read on first use. A chain is set up
    /// member by member and fails here only when none of them could be.
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
            SecretLocation::Chain(locations) => {
                let members: Vec<ChainMember> = locations
                    .iter()
                    .map(|member| {
                        let secret = Self::resolve(member, env, http)
                            .map_err(|error| labeled(error, member));
                        if let Err(error) = &secret {
                            tracing::warn!(chain = %location, %error, "secret chain member cannot be read: it will be skipped");
                        }
                        ChainMember {
                            location: member.clone(),
                            secret,
                            failed: Mutex::new(None),
                        }
                    })
                    .collect();
                if members.iter().all(|member| member.secret.is_err()) {
                    let attempts: Vec<String> = members
                        .iter()
                        .filter_map(|member| member.secret.as_ref().err())
                        .map(|error| error.message.clone())
                        .collect();
                    return Err(Error::config(chain_failure(location, &attempts)));
                }
                let source = Source::Chain {
                    location: location.clone(),
                    members,
                    cache: cache_time(env)?,
                };
                (source, None)
            }
            managed => {
                let secret =
                    ManagedSecret::from_location(managed, env, http)?.ok_or_else(|| {
                        Error::internal(format!("{managed}: not a secret manager location"))
                    })?;
                let source = Source::Managed {
                    secret: Box::new(secret),
                    cache: cache_time(env)?,
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
            fetching: tokio::sync::Mutex::new(()),
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
    /// the manager unreachable or failing) keeps the last good value; with none yet,
    /// the error. A manager that answers the secret is gone or refused (404, 401/403)
    /// ends its use: revoking a key takes effect on the next fetch.
    pub async fn current(&self) -> Result<Secret> {
        match &self.source {
            Source::Fixed | Source::File(_) => self.current_local(),
            Source::Managed { secret, cache } => self.current_managed(secret, *cache).await,
            Source::Chain {
                location,
                members,
                cache,
            } => current_of_chain(location, members, *cache).await,
        }
    }

    /// The value of an `env:` or `file:` secret, without waiting on anything (for a
    /// token that is itself needed to read a secret manager).
    pub fn current_local(&self) -> Result<Secret> {
        match &self.source {
            Source::Fixed => self.last().ok_or_else(unread),
            Source::File(path) => self.current_file(path).ok_or_else(unread),
            Source::Managed { .. } | Source::Chain { .. } => Err(Error::internal(
                "a secret manager's value was asked for without waiting on it",
            )),
        }
    }

    async fn current_managed(&self, secret: &ManagedSecret, cache: Duration) -> Result<Secret> {
        let fresh = || {
            let current = self.lock();
            current
                .fetched
                .filter(|fetched| fetched.elapsed() < cache)
                .and(current.value.clone())
        };
        if let Some(value) = fresh() {
            return Ok(value);
        }
        let _fetching = self.fetching.lock().await;
        // Another caller may have fetched it while this one waited.
        if let Some(value) = fresh() {
            return Ok(value);
        }
        match secret.fetch().await {
            Ok(value) => {
                let mut current = self.lock();
                current.value = Some(value.clone());
                current.fetched = Some(Instant::now());
                Ok(value)
            }
            // The manager answered that the secret is gone or no longer ours to read:
            // a deleted or revoked secret stops being used at once.
            Err(error) if matches!(error.kind, ErrorKind::NotFound | ErrorKind::Auth) => {
                let mut current = self.lock();
                if current.value.take().is_some() {
                    tracing::warn!(secret = %secret.location(), %error, "secret deleted or access revoked: no longer used");
                }
                current.fetched = None;
                Err(error)
            }
            Err(error) => match self.last() {
                Some(value) => {
                    tracing::warn!(secret = %secret.location(), %error, "secret manager unreachable: keeping the last value");
                    Ok(value)
                }
                None => Err(error),
            },
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

/// The first member that gives a value, in order; else every member's failure (the
/// failures name locations and kinds of trouble, never values). The error's kind is
/// the last member's, so a chain ending in a refused manager reads as `Auth`.
async fn current_of_chain(
    location: &SecretLocation,
    members: &[ChainMember],
    cache: Duration,
) -> Result<Secret> {
    let mut attempts = Vec::new();
    let mut kind = ErrorKind::Config;
    for member in members {
        let secret = match &member.secret {
            Ok(secret) => secret,
            Err(error) => {
                attempts.push(error.message.clone());
                kind = error.kind;
                continue;
            }
        };
        let recent = {
            let failed = member.failed.lock().unwrap_or_else(PoisonError::into_inner);
            failed
                .as_ref()
                .filter(|(at, _)| at.elapsed() < cache)
                .map(|(_, error)| error.clone())
        };
        if let Some(error) = recent {
            attempts.push(format!("{} (not tried again yet)", error.message));
            kind = error.kind;
            continue;
        }
        // Boxed: a member is itself a RotatingSecret, so this future contains its own type.
        match Box::pin(secret.current())
            .await
            .map_err(|error| labeled(error, &member.location))
        {
            Ok(value) => {
                *member.failed.lock().unwrap_or_else(PoisonError::into_inner) = None;
                return Ok(value);
            }
            Err(error) => {
                tracing::info!(chain = %location, %error, "secret chain member failed: trying the next");
                attempts.push(error.message.clone());
                kind = error.kind;
                *member.failed.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((Instant::now(), error));
            }
        }
    }
    Err(Error::new(kind, chain_failure(location, &attempts)))
}

/// `SKYFUSE_SECRETS_CACHE_SECONDS`, else [`DEFAULT_CACHE`].
fn cache_time(env: &HashMap<String, String>) -> Result<Duration> {
    Ok(env
        .get("SKYFUSE_SECRETS_CACHE_SECONDS")
        .map(|seconds| {
            seconds.parse().map(Duration::from_secs).map_err(|_| {
                Error::config(format!(
                    "SKYFUSE_SECRETS_CACHE_SECONDS={seconds:?} is not a number of seconds"
                ))
            })
        })
        .transpose()?
        .unwrap_or(DEFAULT_CACHE))
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
