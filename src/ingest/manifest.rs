//! The manifest: what was indexed from each object, so a re-run only touches what changed.
//!
//! It is written only after the stores have committed the chunks it lists, so it never
//! claims more than the stores hold; saving is atomic (temp file, fsync, rename), so a crash
//! leaves either the old or the new manifest, never a torn one. A save can be called off
//! ([`WriteCancel`]): a run that is dropped while its save is on a blocking thread must not
//! have that save land afterwards, over the manifest of whatever runs next.
//!
//! With `[shared_state]` in Redis, an index whose stores are all remote keeps the same
//! manifest in Redis instead of this file, so any replica can resume a sync
//! ([`crate::state::SharedManifest`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Bumped when the file layout changes incompatibly.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// What was indexed, per object key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// The bucket or folder the keys belong to; a manifest is never reused for another one,
    /// because every key missing from that other listing would be deleted from the stores.
    pub source: String,
    /// Where the bucket's data lives (`aws`, `oci`, `azure`, `gcp`, `local`...) and its
    /// region, for residency and egress rules over the chunks this manifest lists.
    #[serde(default)]
    pub cloud: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    pub objects: BTreeMap<String, ManifestEntry>,
}

/// One indexed object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// Normalized with [`normalize_etag`]; absent when the store gives none.
    pub etag: Option<String>,
    /// The object version that was read, on buckets with versioning (S3, Azure, GCS
    /// generations): which exact version the chunks came from. Change detection uses the
    /// etag, which every store has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub size: u64,
    /// Hex SHA-256 of the object's bytes: catches a new etag over the same content.
    pub sha256: String,
    /// Fingerprint of what the chunks depend on besides the content (stores, embedding
    /// space, chunk sizes, extractor version): when it changes the object is re-indexed.
    pub settings: String,
    pub chunk_ids: Vec<String>,
    /// Set when the object failed extraction (a crash, a limit, broken content): it has no
    /// chunks, and is not read again until its etag, size, content or the settings change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl ManifestEntry {
    /// The record of an object that failed with `reason`: what it was, no chunks.
    pub fn failed(
        etag: Option<String>,
        size: u64,
        sha256: String,
        settings: String,
        reason: String,
    ) -> Self {
        Self {
            etag,
            version: None,
            size,
            sha256,
            settings,
            chunk_ids: Vec::new(),
            failure: Some(reason),
        }
    }
}

impl Manifest {
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            format_version: MANIFEST_FORMAT_VERSION,
            source: source.into(),
            cloud: None,
            region: None,
            objects: BTreeMap::new(),
        }
    }

    /// The manifest at `path`, or an empty one when there is no file yet.
    pub fn load_or_new(path: &Path, source: &str) -> Result<Self> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::new(source));
            }
            Err(error) => {
                return Err(
                    Error::from(error).context(format!("reading manifest {}", path.display()))
                );
            }
        };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|error| {
            Error::config(format!(
                "manifest {} is not readable ({error}); delete it to re-index from scratch",
                path.display()
            ))
        })?;
        if manifest.format_version != MANIFEST_FORMAT_VERSION {
            return Err(Error::config(format!(
                "manifest {} has format version {}, this build reads {MANIFEST_FORMAT_VERSION}",
                path.display(),
                manifest.format_version
            )));
        }
        if manifest.source != source {
            return Err(Error::config(format!(
                "manifest {} belongs to {}, not {source}; use another manifest path",
                path.display(),
                manifest.source
            )));
        }
        Ok(manifest)
    }

    /// Whether the listing alone proves the object is as indexed: same etag and size.
    pub fn is_unchanged_by_etag(
        &self,
        object_key: &str,
        normalized_etag: Option<&str>,
        size: u64,
        settings: &str,
    ) -> bool {
        self.same_by_etag(object_key, normalized_etag, size, settings)
            .is_some_and(|entry| entry.failure.is_none())
    }

    /// Whether the fetched content is what was indexed, whatever its etag says.
    pub fn is_unchanged_by_content(&self, object_key: &str, sha256: &str, settings: &str) -> bool {
        self.same_by_content(object_key, sha256, settings)
            .is_some_and(|entry| entry.failure.is_none())
    }

    /// Why the object failed before, when the listing proves it is as it was then.
    pub fn known_failure_by_etag(
        &self,
        object_key: &str,
        normalized_etag: Option<&str>,
        size: u64,
        settings: &str,
    ) -> Option<&str> {
        self.same_by_etag(object_key, normalized_etag, size, settings)
            .and_then(|entry| entry.failure.as_deref())
    }

    /// Why the object failed before, when the fetched content is what failed.
    pub fn known_failure_by_content(
        &self,
        object_key: &str,
        sha256: &str,
        settings: &str,
    ) -> Option<&str> {
        self.same_by_content(object_key, sha256, settings)
            .and_then(|entry| entry.failure.as_deref())
    }

    /// Whether the stores may hold chunks of the object (a failed object has none).
    pub fn has_chunks(&self, object_key: &str) -> bool {
        self.objects
            .get(object_key)
            .is_some_and(|entry| entry.failure.is_none())
    }

    fn same_by_etag(
        &self,
        object_key: &str,
        normalized_etag: Option<&str>,
        size: u64,
        settings: &str,
    ) -> Option<&ManifestEntry> {
        let entry = self.objects.get(object_key)?;
        let etag = normalized_etag?;
        (entry.settings == settings && entry.size == size && entry.etag.as_deref() == Some(etag))
            .then_some(entry)
    }

    fn same_by_content(
        &self,
        object_key: &str,
        sha256: &str,
        settings: &str,
    ) -> Option<&ManifestEntry> {
        self.objects
            .get(object_key)
            .filter(|entry| entry.settings == settings && entry.sha256 == sha256)
    }

    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self)
            .map_err(|error| Error::internal(format!("serializing manifest: {error}")))
    }

    /// Write atomically: a crash leaves the previous manifest or this one.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomically(path, &self.to_json()?)
    }
}

/// Where a manifest lives when it is not a file: the shared state, for an index whose
/// stores are remote ([`crate::state::SharedManifest`]). Saved at the same points as
/// the file, with the same promise: it never claims more than the stores committed.
#[async_trait::async_trait]
pub trait ManifestHome: Send + Sync {
    /// The manifest of `source`, or an empty one when none was saved yet.
    async fn load(&self, source: &str) -> Result<Manifest>;
    async fn save(&self, manifest: &Manifest) -> Result<()>;
}

/// Etags compare equal whatever their quoting: `W/"abc"`, `"abc"` and `abc` are all `abc`.
pub fn normalize_etag(raw_etag: &str) -> String {
    let trimmed = raw_etag.trim();
    let without_weak = trimmed
        .strip_prefix("W/")
        .or_else(|| trimmed.strip_prefix("w/"))
        .unwrap_or(trimmed);
    without_weak.trim_matches('"').to_owned()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The temporary file [`write_atomically`] writes beside `path`.
pub fn temporary_path_for(path: &Path) -> PathBuf {
    let mut file_name = path.file_name().unwrap_or_default().to_os_string();
    file_name.push(".tmp");
    path.with_file_name(file_name)
}

/// One atomic write at a time in this process: a called-off write that is still on its
/// blocking thread never shares the temporary file with the next run's write.
static ATOMIC_WRITES: Mutex<()> = Mutex::new(());

/// Calls off a [`write_atomically_unless_called_off`] from another thread.
#[derive(Debug, Clone, Default)]
pub struct WriteCancel {
    called_off: Arc<Mutex<bool>>,
}

impl WriteCancel {
    /// Once this returns, the write has either replaced the file already or never will: the
    /// replacement happens under the same lock.
    pub fn call_off(&self) {
        *lock_ignoring_poison(&self.called_off) = true;
    }

    /// A guard that calls the write off when dropped, for the future that awaits the write:
    /// when that future is dropped, nobody wants the write to land any more.
    pub fn call_off_on_drop(&self) -> CallOffOnDrop {
        CallOffOnDrop(self.clone())
    }
}

/// See [`WriteCancel::call_off_on_drop`]. Dropping it after the write finished changes nothing.
#[derive(Debug)]
pub struct CallOffOnDrop(WriteCancel);

impl Drop for CallOffOnDrop {
    fn drop(&mut self) {
        self.0.call_off();
    }
}

/// A poisoned lock only means another writer panicked; the flag and the unit it guards
/// stay meaningful.
fn lock_ignoring_poison<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Temp file, fsync, rename over the target, fsync the directory so the rename is durable.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    write_atomically_unless_called_off(path, contents, &WriteCancel::default()).map(|_| ())
}

/// [`write_atomically`], unless `cancel` is called off before the rename: then the file is
/// left as it was, no temporary file stays behind, and the answer is `Ok(false)`.
pub fn write_atomically_unless_called_off(
    path: &Path,
    contents: &[u8],
    cancel: &WriteCancel,
) -> Result<bool> {
    let _one_writer = lock_ignoring_poison(&ATOMIC_WRITES);
    if *lock_ignoring_poison(&cancel.called_off) {
        return Ok(false);
    }
    let describe = |what: &str| format!("{what} {}", path.display());
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&directory)
        .map_err(|error| Error::from(error).context(describe("creating the folder of")))?;
    let temporary_path = temporary_path_for(path);
    let mut file = std::fs::File::create(&temporary_path)
        .map_err(|error| Error::from(error).context(describe("creating a temporary file for")))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|error| Error::from(error).context(describe("writing")))?;
    drop(file);
    {
        let called_off = lock_ignoring_poison(&cancel.called_off);
        if *called_off {
            // Best effort: a leftover is overwritten by the next write anyway.
            let _ = std::fs::remove_file(&temporary_path);
            return Ok(false);
        }
        std::fs::rename(&temporary_path, path)
            .map_err(|error| Error::from(error).context(describe("replacing")))?;
    }
    sync_directory(&directory);
    Ok(true)
}

#[cfg(unix)]
fn sync_directory(directory: &Path) {
    // Best effort: the rename is already visible; this only makes it survive a power cut.
    if let Ok(handle) = std::fs::File::open(directory) {
        let _ = handle.sync_all();
    }
}

#[cfg(not(unix))]
fn sync_directory(_directory: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(etag: Option<&str>, sha256: &str) -> ManifestEntry {
        ManifestEntry {
            etag: etag.map(str::to_owned),
            version: None,
            size: 10,
            sha256: sha256.to_owned(),
            settings: "s1".to_owned(),
            chunk_ids: vec!["a#0".to_owned()],
            failure: None,
        }
    }

    #[test]
    fn a_failed_object_is_known_bad_until_it_changes() {
        let mut manifest = Manifest::new("file:///data");
        let failed = ManifestEntry::failed(
            Some("e1".to_owned()),
            10,
            "h1".to_owned(),
            "s1".to_owned(),
            "extraction crashed (signal 11)".to_owned(),
        );
        manifest.objects.insert("bad.pdf".to_owned(), failed);
        assert!(!manifest.is_unchanged_by_etag("bad.pdf", Some("e1"), 10, "s1"));
        assert!(!manifest.is_unchanged_by_content("bad.pdf", "h1", "s1"));
        assert!(!manifest.has_chunks("bad.pdf"));
        assert_eq!(
            manifest.known_failure_by_etag("bad.pdf", Some("e1"), 10, "s1"),
            Some("extraction crashed (signal 11)")
        );
        assert_eq!(
            manifest.known_failure_by_etag("bad.pdf", Some("e2"), 10, "s1"),
            None
        );
        assert_eq!(
            manifest.known_failure_by_etag("bad.pdf", Some("e1"), 11, "s1"),
            None
        );
        assert_eq!(
            manifest.known_failure_by_etag("bad.pdf", Some("e1"), 10, "s2"),
            None
        );
        assert!(
            manifest
                .known_failure_by_content("bad.pdf", "h1", "s1")
                .is_some()
        );
        assert_eq!(
            manifest.known_failure_by_content("bad.pdf", "h2", "s1"),
            None
        );
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("m.json");
        manifest.save(&path).unwrap();
        assert_eq!(
            Manifest::load_or_new(&path, "file:///data").unwrap(),
            manifest
        );
    }

    #[test]
    fn etags_are_normalized() {
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag(" abc "), "abc");
        assert_eq!(normalize_etag("\"5-1a-3\""), "5-1a-3");
    }

    #[test]
    fn unchanged_needs_same_settings_and_etag_or_hash() {
        let mut manifest = Manifest::new("file:///data");
        manifest
            .objects
            .insert("a.txt".to_owned(), entry(Some("e1"), "h1"));
        assert!(manifest.is_unchanged_by_etag("a.txt", Some("e1"), 10, "s1"));
        assert!(!manifest.is_unchanged_by_etag("a.txt", Some("e1"), 11, "s1"));
        assert!(!manifest.is_unchanged_by_etag("a.txt", Some("e2"), 10, "s1"));
        assert!(!manifest.is_unchanged_by_etag("a.txt", None, 10, "s1"));
        assert!(!manifest.is_unchanged_by_etag("a.txt", Some("e1"), 10, "s2"));
        assert!(!manifest.is_unchanged_by_etag("b.txt", Some("e1"), 10, "s1"));
        assert!(manifest.is_unchanged_by_content("a.txt", "h1", "s1"));
        assert!(!manifest.is_unchanged_by_content("a.txt", "h2", "s1"));
        assert!(!manifest.is_unchanged_by_content("a.txt", "h1", "s2"));
    }

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temp_file() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("nested/manifest.json");
        let mut manifest = Manifest::new("file:///data");
        manifest
            .objects
            .insert("a.txt".to_owned(), entry(Some("e1"), &sha256_hex(b"x")));
        manifest.save(&path).unwrap();
        assert!(!temporary_path_for(&path).exists());
        assert_eq!(
            Manifest::load_or_new(&path, "file:///data").unwrap(),
            manifest
        );

        manifest.objects.clear();
        manifest.save(&path).unwrap();
        assert!(
            Manifest::load_or_new(&path, "file:///data")
                .unwrap()
                .objects
                .is_empty()
        );
    }

    #[test]
    fn a_manifest_written_before_residency_and_versions_still_loads() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("old.json");
        std::fs::write(
            &path,
            r#"{"format_version":1,"source":"s3://b","objects":{"a.txt":{"etag":"e1","size":3,"sha256":"h","settings":"s","chunk_ids":["a#0"]}}}"#,
        )
        .unwrap();
        let manifest = Manifest::load_or_new(&path, "s3://b").unwrap();
        assert_eq!(manifest.cloud, None);
        assert_eq!(manifest.objects["a.txt"].version, None);
    }

    #[test]
    fn a_called_off_write_leaves_the_file_and_no_temporary_file() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("manifest.json");
        std::fs::write(&path, b"before").unwrap();
        let cancel = WriteCancel::default();
        drop(cancel.call_off_on_drop());
        assert!(!write_atomically_unless_called_off(&path, b"after", &cancel).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"before");
        assert!(!temporary_path_for(&path).exists());

        let cancel = WriteCancel::default();
        assert!(write_atomically_unless_called_off(&path, b"after", &cancel).unwrap());
        cancel.call_off();
        assert_eq!(std::fs::read(&path).unwrap(), b"after");
    }

    #[test]
    fn missing_file_is_an_empty_manifest() {
        let folder = tempfile::tempdir().unwrap();
        let manifest = Manifest::load_or_new(&folder.path().join("none.json"), "src").unwrap();
        assert_eq!(manifest, Manifest::new("src"));
    }

    #[test]
    fn corrupt_or_foreign_manifest_is_a_clear_error() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("manifest.json");
        std::fs::write(&path, b"{ torn").unwrap();
        let error = Manifest::load_or_new(&path, "src").unwrap_err();
        assert!(error.message.contains("delete it"), "{error}");

        Manifest::new("file:///one").save(&path).unwrap();
        let error = Manifest::load_or_new(&path, "file:///two").unwrap_err();
        assert!(error.message.contains("belongs to file:///one"), "{error}");
    }

    #[test]
    fn sha256_is_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
