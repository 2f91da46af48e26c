//! Query vectors in Redis, behind each process's own cache: a query one replica
//! embedded is a lookup for the others (`[[space]] shared_query_cache`).
//!
//! A vector is kept as its f32s in little-endian bytes (4 bytes a dimension) under
//! `{prefix}:query-vector:{namespace}:{dims}:{sha256 of the query}`, where the
//! namespace is the space id and a fingerprint of its model: a space whose model
//! changes reads other keys, so it never gets a vector of the old model. Queries are
//! hashed: no caller's text sits in Redis key names.
//!
//! Every failure (Redis down, slow, a value of the wrong size) is a miss: the query
//! is embedded as without the shared tier, and the failure is counted in
//! `skyfuse_shared_state_errors_total{kind="embedding_cache"}`.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::{RedisStore, StateKind};
use crate::embed::query::SharedVectors;

/// Query vectors in the replicas' Redis.
pub struct RedisQueryVectors {
    store: Arc<RedisStore>,
    ttl: Duration,
}

impl RedisQueryVectors {
    pub fn new(store: Arc<RedisStore>, ttl: Duration) -> Self {
        Self { store, ttl }
    }

    fn key(&self, namespace: &str, dims: usize, query: &str) -> String {
        let digest = Sha256::digest(query.as_bytes());
        format!(
            "{}:query-vector:{namespace}:{dims}:{}",
            self.store.prefix(),
            hex::encode(digest)
        )
    }
}

impl SharedVectors for RedisQueryVectors {
    fn get(
        &self,
        namespace: &str,
        dims: usize,
        query: &str,
    ) -> BoxFuture<'static, Option<Vec<f32>>> {
        let key = self.key(namespace, dims, query);
        let store = Arc::clone(&self.store);
        async move {
            match store.get_bytes(StateKind::EmbeddingCache, &key).await {
                Ok(Some(bytes)) => {
                    let vector = decode(&bytes, dims);
                    if vector.is_none() {
                        tracing::warn!(
                            bytes = bytes.len(),
                            dims,
                            "a shared query vector has the wrong size; embedding the query again"
                        );
                    }
                    vector
                }
                Ok(None) => None,
                Err(error) => {
                    tracing::debug!(%error, "shared query vector lookup failed; embedding the query");
                    None
                }
            }
        }
        .boxed()
    }

    fn put(&self, namespace: &str, query: &str, vector: &[f32]) -> BoxFuture<'static, ()> {
        let key = self.key(namespace, vector.len(), query);
        let bytes = encode(vector);
        let (store, ttl) = (Arc::clone(&self.store), self.ttl);
        async move {
            if let Err(error) = store
                .set_bytes(StateKind::EmbeddingCache, &key, &bytes, ttl)
                .await
            {
                tracing::debug!(%error, "could not share a query vector");
            }
        }
        .boxed()
    }
}

/// The vector's f32s, little-endian.
pub fn encode(vector: &[f32]) -> Vec<u8> {
    vector
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

/// The vector `encode` made, when it has `dims` values.
pub fn decode(bytes: &[u8], dims: usize) -> Option<Vec<f32>> {
    if bytes.len() != dims.checked_mul(4)? {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|four| f32::from_le_bytes([four[0], four[1], four[2], four[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vector_survives_its_bytes_and_a_wrong_size_is_refused() {
        let vector = vec![0.25_f32, -1.5, f32::MIN_POSITIVE, 3.0e7];
        let bytes = encode(&vector);
        assert_eq!(bytes.len(), 16, "four bytes a dimension");
        assert_eq!(decode(&bytes, 4), Some(vector));
        assert_eq!(decode(&bytes, 3), None);
        assert_eq!(decode(&bytes[..15], 4), None);
    }
}
