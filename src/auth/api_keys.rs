//! API keys, held only as SHA-256 digests and compared in constant time.

use std::collections::HashMap;
use std::fmt;

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::config::CallerConfig;
use crate::error::{Error, Result};

/// The SHA-256 of a key, as `[[caller]] api_key_sha256` holds it.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The hex spelling of [`hash_key`], what `skyfuse keys hash` prints.
pub fn hash_key_hex(key: &str) -> String {
    hex::encode(hash_key(key))
}

/// Every caller's key digest. Debug prints caller ids only.
#[derive(Default)]
pub struct ApiKeys {
    digests: Vec<([u8; 32], String)>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_list()
            .entries(self.digests.iter().map(|(_, id)| id))
            .finish()
    }
}

impl ApiKeys {
    /// Takes each caller's digest, or reads its key location and hashes it (the
    /// raw key is dropped here). Two callers with one key is a config error.
    pub fn load(callers: &[CallerConfig], env: &HashMap<String, String>) -> Result<Self> {
        let mut digests: Vec<([u8; 32], String)> = Vec::with_capacity(callers.len());
        for caller in callers {
            let digest = match (&caller.api_key_sha256, &caller.api_key) {
                (Some(hex_digest), _) => {
                    let bytes = hex::decode(hex_digest)
                        .ok()
                        .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok());
                    bytes.ok_or_else(|| {
                        Error::config(format!(
                            "caller {:?}: api_key_sha256 must be 64 hex digits",
                            caller.id
                        ))
                    })?
                }
                (None, Some(location)) => {
                    let key = location.resolve(env).map_err(|error| {
                        error.context(format!("caller {:?}: api_key", caller.id))
                    })?;
                    hash_key(key.expose())
                }
                (None, None) => {
                    return Err(Error::config(format!(
                        "caller {:?}: needs api_key_sha256 or api_key",
                        caller.id
                    )));
                }
            };
            if digests.iter().any(|(known, _)| known == &digest) {
                return Err(Error::config(format!(
                    "caller {:?}: its api key is another caller's too",
                    caller.id
                )));
            }
            digests.push((digest, caller.id.clone()));
        }
        Ok(Self { digests })
    }

    /// Whether any key is configured.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The caller id whose key is `presented`. Every digest is compared, in
    /// constant time, so the time taken says nothing about which one (nearly) matched.
    pub fn identify(&self, presented: &str) -> Option<&str> {
        let digest = hash_key(presented);
        let mut found: Option<&str> = None;
        for (known, id) in &self.digests {
            let equal: Choice = known.ct_eq(&digest);
            if bool::from(equal) {
                found = Some(id);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretLocation;

    fn caller(id: &str, hash: Option<&str>, location: Option<&str>) -> CallerConfig {
        CallerConfig {
            id: id.into(),
            api_key_sha256: hash.map(str::to_string),
            api_key: location.map(|text| SecretLocation::try_from(text.to_string()).unwrap()),
            roles: Vec::new(),
            models: Vec::new(),
            tiers: Vec::new(),
            clouds: Vec::new(),
            regions: Vec::new(),
            budget_usd_per_day: None,
        }
    }

    #[test]
    fn keys_are_known_by_their_hash_and_never_printed() {
        let env = HashMap::from([("KEY_B".to_string(), "key-b-secret".to_string())]);
        let keys = ApiKeys::load(
            &[
                caller("a", Some(&hash_key_hex("key-a-secret")), None),
                caller("b", None, Some("env:KEY_B")),
            ],
            &env,
        )
        .unwrap();
        assert_eq!(keys.identify("key-a-secret"), Some("a"));
        assert_eq!(keys.identify("key-b-secret"), Some("b"));
        assert_eq!(keys.identify("key-a-secre"), None);
        assert_eq!(keys.identify(""), None);
        let printed = format!("{keys:?}");
        assert_eq!(printed, r#"["a", "b"]"#);
        assert!(!printed.contains("secret"));
    }

    #[test]
    fn a_shared_key_or_a_bad_digest_is_a_config_error() {
        let digest = hash_key_hex("same");
        let shared = ApiKeys::load(
            &[
                caller("a", Some(&digest), None),
                caller("b", Some(&digest), None),
            ],
            &HashMap::new(),
        )
        .unwrap_err();
        assert!(
            shared.message.contains("caller \"b\""),
            "{}",
            shared.message
        );
        let bad = ApiKeys::load(&[caller("a", Some("abc"), None)], &HashMap::new()).unwrap_err();
        assert!(bad.message.contains("64 hex"), "{}", bad.message);
    }

    #[test]
    fn the_hash_is_plain_sha256_hex() {
        assert_eq!(
            hash_key_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
