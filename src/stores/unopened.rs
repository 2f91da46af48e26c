//! A local store whose files could not be opened at startup (a corrupt `dense.bin`, a
//! damaged tantivy index, a permission change). The service starts without it rather
//! than not at all: searches go on over the other sources and report this one failed,
//! health and `/metrics` show its circuit open, and `Index` into it fails, so nothing
//! overwrites the files an operator may still want to recover.

use async_trait::async_trait;

use crate::document::{EmbeddedChunk, Hit};
use crate::error::{Error, ErrorKind, Result};
use crate::stores::{SearchBackend, SourceInfo, StoreQuery};

pub struct UnopenedStore {
    info: SourceInfo,
    /// Why it could not be opened, as the store said it.
    reason: String,
}

impl UnopenedStore {
    pub fn new(info: SourceInfo, reason: String) -> Self {
        tracing::error!(source = %info.id, %reason, "store could not be opened: serving without it");
        Self { info, reason }
    }

    fn refusal(&self) -> Error {
        // Internal: not retried, and not a verdict on a remote endpoint.
        Error::new(
            ErrorKind::Internal,
            format!(
                "source {:?} could not be opened at startup ({}); repair or move its files and restart",
                self.info.id, self.reason
            ),
        )
    }
}

#[async_trait]
impl SearchBackend for UnopenedStore {
    fn describe(&self) -> &SourceInfo {
        &self.info
    }

    async fn search(&self, _query: &StoreQuery) -> Result<Vec<Hit>> {
        Err(self.refusal())
    }

    async fn upsert(&self, _chunks: &[EmbeddedChunk]) -> Result<()> {
        Err(self.refusal())
    }

    async fn delete_objects(&self, _object_keys: &[String]) -> Result<()> {
        Err(self.refusal())
    }

    async fn commit(&self) -> Result<()> {
        Err(self.refusal())
    }

    async fn count(&self) -> Result<u64> {
        Err(self.refusal())
    }

    fn breaker_open(&self) -> bool {
        true
    }
}
