//! Which replica may sync an (index, bucket): with `[shared_state]` in Redis and an
//! index whose stores are all remote (Qdrant, OpenSearch), the one holding its
//! ingestion lease, which keeps the manifest in Redis too; any other case keeps the
//! in-process rule (one run per index, the manifest in the data dir), since local
//! stores belong to their replica alone.

use std::time::Duration;

use super::Service;
use super::index::short_hash;
use super::index_target::{self, IndexTarget};
use crate::config::{IndexConfig, StoreConfig};
use crate::error::Result;
use crate::state::{HeldLease, LeaseSubject};

impl Service {
    /// The lease this run needs and now holds, or None when it needs none. Refused
    /// (`UNAVAILABLE`) while another run holds it, naming that run and until when.
    pub(super) async fn ingest_lease(
        &self,
        index: &IndexConfig,
        target: &IndexTarget,
    ) -> Result<Option<HeldLease>> {
        let (Some(store), Some(config)) =
            (self.shared_state.redis(), self.config.shared_state.as_ref())
        else {
            return Ok(None);
        };
        if !self.stores_are_remote(index) {
            return Ok(None);
        }
        let bucket = index_target::identity(target);
        let subject = LeaseSubject {
            index: index.id.clone(),
            slot: format!("{}:{}", index.id, short_hash(&bucket)),
            bucket,
        };
        let ttl = Duration::from_millis(config.lease_ttl_ms);
        HeldLease::acquire(store, subject, ttl).await.map(Some)
    }

    /// Whether every store `index` writes lives outside this replica.
    fn stores_are_remote(&self, index: &IndexConfig) -> bool {
        let remote = |id: &String| {
            self.config.sources.iter().any(|source| {
                &source.id == id
                    && matches!(
                        source.store,
                        StoreConfig::Qdrant(_) | StoreConfig::Opensearch(_)
                    )
            })
        };
        !index.sources.is_empty() && index.sources.iter().all(remote)
    }
}
