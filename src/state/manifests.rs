//! The manifest of an index whose stores are remote, kept in Redis so that any replica
//! can resume a sync another one started.
//!
//! One hash per (index, bucket): the field `meta` (format version, source, residency
//! labels) and one field `object:KEY` per indexed object, its [`ManifestEntry`] as JSON.
//! The pipeline saves it only after the stores committed what it lists, as with the
//! file manifest. A save sends what changed since the last save, in pages; each page is
//! one script that first checks the run still holds its lease (fencing), so a replica
//! that lost its lease cannot overwrite the new holder's progress. Pages may land
//! without the ones after them (a crash between two): each entry only ever records
//! committed chunks or committed deletions, so any prefix of a save is a manifest that
//! claims no more than the stores hold, which is what the file manifest's atomic rename
//! guarantees too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::leases::HeldLease;
use super::{RedisStore, SharedStateError, StateKind};
use crate::error::{Error, Result};
use crate::ingest::manifest::{MANIFEST_FORMAT_VERSION, Manifest, ManifestEntry, ManifestHome};

/// Fields set or removed by one save script.
const FIELDS_PER_PAGE: usize = 500;

/// Fields read per `HSCAN`.
const SCAN_COUNT: usize = 1000;

/// A manifest page moves up to hundreds of entries and is off the request path: it
/// may take longer than `timeout_ms`, never forever.
const MIN_PAGE_TIMEOUT: Duration = Duration::from_secs(5);

const META_FIELD: &str = "meta";
const OBJECT_PREFIX: &str = "object:";

/// Sets `ARGV[2]` field/value pairs then deletes the remaining fields of `KEYS[2]`,
/// only while `ARGV[1]` holds the lease `KEYS[1]`. Returns 1, or 0 (lease lost).
const SAVE_LUA: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local pairs = tonumber(ARGV[2])
local i = 3
for _ = 1, pairs do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', KEYS[2], ARGV[i])
  i = i + 1
end
return 1
";

/// Everything of a [`Manifest`] but its objects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Meta {
    format_version: u32,
    source: String,
    cloud: Option<String>,
    region: Option<String>,
}

/// The manifest of one (index, bucket) in Redis, saved under a lease.
pub struct SharedManifest {
    store: Arc<RedisStore>,
    lease_key: String,
    key: String,
    holder: String,
    /// The fields as last saved (or loaded): a save sends only the difference.
    saved: Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for SharedManifest {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "SharedManifest({})", self.key)
    }
}

impl SharedManifest {
    /// The manifest `lease` guards; saves succeed while the lease is held.
    pub fn guarded_by(lease: &HeldLease) -> Self {
        let store = Arc::clone(lease.store());
        Self {
            lease_key: lease.subject().lease_key(&store),
            key: lease.subject().manifest_key(&store),
            holder: lease.holder().to_owned(),
            store,
            saved: Mutex::default(),
        }
    }

    /// Where it lives, for messages.
    pub fn key(&self) -> &str {
        &self.key
    }

    fn page_timeout(&self) -> Duration {
        self.store.timeout().max(MIN_PAGE_TIMEOUT)
    }

    fn unavailable(&self, error: &SharedStateError) -> Error {
        self.store
            .unavailable(StateKind::Leases, error)
            .context(format!("manifest {}", self.key))
    }

    /// The manifest of `source`, or an empty one when none was saved yet.
    pub async fn load(&self, source: &str) -> Result<Manifest> {
        let mut fields = BTreeMap::new();
        let mut cursor: u64 = 0;
        loop {
            let mut connection = self.store.connection();
            let mut command = redis::cmd("HSCAN");
            command
                .arg(&self.key)
                .arg(cursor)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, page): (u64, Vec<(String, String)>) = self
                .store
                .call_within(
                    StateKind::Leases,
                    self.page_timeout(),
                    command.query_async(&mut connection),
                )
                .await
                .map_err(|error| self.unavailable(&error))?;
            fields.extend(page);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let manifest = self.parse(source, &fields)?;
        *self.saved.lock().await = fields;
        Ok(manifest)
    }

    fn parse(&self, source: &str, fields: &BTreeMap<String, String>) -> Result<Manifest> {
        let Some(meta) = fields.get(META_FIELD) else {
            return Ok(Manifest::new(source));
        };
        let unreadable = |error: serde_json::Error| {
            Error::config(format!(
                "manifest {} is not readable ({error}); delete the key to re-index from scratch",
                self.key
            ))
        };
        let meta: Meta = serde_json::from_str(meta).map_err(unreadable)?;
        if meta.format_version != MANIFEST_FORMAT_VERSION {
            return Err(Error::config(format!(
                "manifest {} has format version {}, this build reads {MANIFEST_FORMAT_VERSION}",
                self.key, meta.format_version
            )));
        }
        if meta.source != source {
            return Err(Error::config(format!(
                "manifest {} belongs to {}, not {source}",
                self.key, meta.source
            )));
        }
        let mut manifest = Manifest::new(source);
        manifest.cloud = meta.cloud;
        manifest.region = meta.region;
        for (field, value) in fields {
            if let Some(object_key) = field.strip_prefix(OBJECT_PREFIX) {
                let entry: ManifestEntry = serde_json::from_str(value).map_err(unreadable)?;
                manifest.objects.insert(object_key.to_owned(), entry);
            }
        }
        Ok(manifest)
    }

    /// Records `manifest`: sends the fields that changed since the last save and
    /// removes the ones it no longer has. Refused once the lease is lost.
    pub async fn save(&self, manifest: &Manifest) -> Result<()> {
        let fields = fields_of(manifest)?;
        let mut saved = self.saved.lock().await;
        let changed: Vec<(String, String)> = fields
            .into_iter()
            .filter(|(field, value)| saved.get(field) != Some(value))
            .collect();
        let removed: Vec<String> = saved
            .keys()
            .filter(|field| !manifest_has(manifest, field))
            .cloned()
            .collect();
        for page in changed.chunks(FIELDS_PER_PAGE) {
            self.save_page(page, &[]).await?;
            saved.extend(page.iter().cloned());
        }
        for page in removed.chunks(FIELDS_PER_PAGE) {
            self.save_page(&[], page).await?;
            for field in page {
                saved.remove(field);
            }
        }
        Ok(())
    }

    /// One fenced script: sets `sets`, deletes `deletes`.
    async fn save_page(&self, sets: &[(String, String)], deletes: &[String]) -> Result<()> {
        let script = Script::new(SAVE_LUA);
        let mut invocation = script.key(&self.lease_key);
        invocation.key(&self.key).arg(&self.holder).arg(sets.len());
        for (field, value) in sets {
            invocation.arg(field).arg(value);
        }
        for field in deletes {
            invocation.arg(field);
        }
        let mut connection = self.store.connection();
        let saved: i64 = self
            .store
            .call_within(
                StateKind::Leases,
                self.page_timeout(),
                invocation.invoke_async(&mut connection),
            )
            .await
            .map_err(|error| self.unavailable(&error))?;
        if saved != 1 {
            return Err(Error::unavailable(format!(
                "manifest {} not saved: this run no longer holds its ingestion lease, another replica may have taken the bucket over",
                self.key
            )));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ManifestHome for SharedManifest {
    async fn load(&self, source: &str) -> Result<Manifest> {
        SharedManifest::load(self, source).await
    }

    async fn save(&self, manifest: &Manifest) -> Result<()> {
        SharedManifest::save(self, manifest).await
    }
}

/// Whether `field` is one of the fields that record `manifest`.
fn manifest_has(manifest: &Manifest, field: &str) -> bool {
    field == META_FIELD
        || field
            .strip_prefix(OBJECT_PREFIX)
            .is_some_and(|object_key| manifest.objects.contains_key(object_key))
}

/// The hash fields that record `manifest`.
fn fields_of(manifest: &Manifest) -> Result<BTreeMap<String, String>> {
    let meta = Meta {
        format_version: manifest.format_version,
        source: manifest.source.clone(),
        cloud: manifest.cloud.clone(),
        region: manifest.region.clone(),
    };
    let mut fields = BTreeMap::new();
    fields.insert(META_FIELD.to_owned(), to_json(&meta)?);
    for (object_key, entry) in &manifest.objects {
        fields.insert(format!("{OBJECT_PREFIX}{object_key}"), to_json(entry)?);
    }
    Ok(fields)
}

fn to_json(value: &impl Serialize) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|error| Error::internal(format!("serializing the manifest: {error}")))
}
