//! A provider credential that follows its file: Kubernetes secrets, Vault agents and
//! `az account get-access-token > token` rotate a key or token by rewriting the file,
//! and the next call sends the new value, without a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use crate::config::{Secret, SecretLocation};
use crate::error::Result;

/// A secret from `env:` (fixed for the process) or `file:` (read again whenever the
/// file's modification time or size changes).
#[derive(Debug)]
pub struct RotatingSecret {
    file: Option<PathBuf>,
    current: Mutex<Current>,
}

#[derive(Debug)]
struct Current {
    value: Secret,
    stamp: Option<(SystemTime, u64)>,
}

impl RotatingSecret {
    /// Reads the secret once: an unreadable one is a startup error.
    pub fn resolve(location: &SecretLocation, env: &HashMap<String, String>) -> Result<Self> {
        let file = match location {
            SecretLocation::File(path) => Some(path.clone()),
            SecretLocation::Env(_) => None,
        };
        let stamp = file.as_deref().and_then(stamp_of);
        Ok(Self {
            current: Mutex::new(Current {
                value: location.resolve(env)?,
                stamp,
            }),
            file,
        })
    }

    /// The value to send now. A file that changed is read again (one `stat` per call;
    /// secret files live on local disk or tmpfs); one that cannot be read or is empty
    /// mid-rotation keeps the last good value.
    pub fn current(&self) -> Secret {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(path) = &self.file {
            let stamp = stamp_of(path);
            if stamp.is_some() && stamp != current.stamp {
                match std::fs::read_to_string(path) {
                    Ok(text) if !text.trim().is_empty() => {
                        current.value = Secret::new(text.trim_end());
                        current.stamp = stamp;
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
        }
        current.value.clone()
    }
}

fn stamp_of(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_file_is_read_again_and_a_broken_rewrite_keeps_the_last_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "first-key\n").unwrap();
        let secret =
            RotatingSecret::resolve(&SecretLocation::File(path.clone()), &HashMap::new()).unwrap();
        assert_eq!(secret.current().expose(), "first-key");
        // A different size is a change even within the file system's mtime granularity.
        std::fs::write(&path, "second-key-rotated\n").unwrap();
        assert_eq!(secret.current().expose(), "second-key-rotated");
        std::fs::write(&path, "").unwrap();
        assert_eq!(secret.current().expose(), "second-key-rotated");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(secret.current().expose(), "second-key-rotated");
    }

    #[test]
    fn an_env_secret_is_fixed() {
        let env = HashMap::from([("KEY".to_owned(), "from-env".to_owned())]);
        let secret = RotatingSecret::resolve(&SecretLocation::Env("KEY".into()), &env).unwrap();
        assert_eq!(secret.current().expose(), "from-env");
    }
}
