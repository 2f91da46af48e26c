//! Where a run reads from: a local folder or file, or a cloud bucket, with the names that
//! tie its objects to the manifest and to the stores.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::list::PaginatedListStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, ObjectStore};

use super::IndexJob;
use super::scope::RunScope;
use crate::error::{Error, Result};
use crate::ingest::bucket::{BucketLocation, BucketOptions, open_cloud_bucket};
use crate::ingest::canonical::canonicalize;
use crate::ingest::listing::{Listed, ListingStream, list_objects, list_pages};
use crate::ingest::manifest::temporary_path_for;

/// Where objects are listed and read from.
pub(super) struct BucketSource {
    pub(super) store: Arc<dyn ObjectStore>,
    /// Page-by-page listing, for cloud buckets (see [`crate::ingest::listing`]).
    pub(super) pages: Option<Arc<dyn PaginatedListStore>>,
    pub(super) list_prefix: Option<ObjectPath>,
    /// Set when the URL names one file rather than a folder or prefix.
    pub(super) single_object: Option<ObjectPath>,
    /// Names the bucket (or indexing root) in the manifest: one manifest per bucket, so
    /// an object has one entry whichever URL reached it.
    pub(super) identity: String,
    /// The manifest and its temporary file, when they live inside the indexed folder.
    pub(super) ignored_keys: HashSet<String>,
    /// Makes keys unique across buckets in the stores: the absolute root folder path, or
    /// the canonical `scheme://bucket/`. Stores see `key_prefix + key` as the object key
    /// (and as the document id of files without record ids), so two folders that both
    /// hold a `README.md` never overwrite or delete each other's chunks. The manifest
    /// keeps the short keys, since it belongs to one bucket.
    pub(super) key_prefix: String,
    /// Stamped on every chunk.
    pub(super) location: BucketLocation,
    /// What the run covers, and the operator's and the request's globs.
    pub(super) scope: RunScope,
    /// A local root folder: listed entries whose real path leaves it are reported, not read.
    local: Option<LocalRoot>,
}

/// A local root folder, as a store and as its real path.
///
/// The path is kept rather than asked of the store: `LocalFileSystem::path_to_filesystem`
/// refuses the empty path, so the store cannot name its own root.
#[derive(Clone)]
struct LocalRoot {
    store: Arc<LocalFileSystem>,
    real_path: PathBuf,
}

/// What opening a source needs from a job, owned, so it can run on a blocking thread.
pub(super) struct SourceSpec {
    pub(super) url: String,
    pub(super) bucket: BucketOptions,
    pub(super) manifest_path: PathBuf,
    pub(super) object_store: Option<Arc<dyn ObjectStore>>,
    pub(super) local_root: Option<PathBuf>,
}

impl SourceSpec {
    pub(super) fn of(job: &IndexJob) -> Self {
        Self {
            url: job.url.clone(),
            bucket: job.bucket.clone(),
            manifest_path: job.manifest_path.clone(),
            object_store: job.object_store.clone(),
            local_root: job.local_root.clone(),
        }
    }
}

impl BucketSource {
    /// Opens the source on a blocking thread: resolving a local path touches the disk.
    pub(super) async fn open(spec: SourceSpec) -> Result<Self> {
        tokio::task::spawn_blocking(move || Self::open_blocking(&spec))
            .await
            .map_err(|error| Error::internal(format!("opening the source: {error}")))?
    }

    fn open_blocking(spec: &SourceSpec) -> Result<Self> {
        let url = spec.url.as_str();
        let options = &spec.bucket;
        let scope = RunScope::new(
            (&options.include, &options.exclude),
            options.filter_base.clone(),
            (&options.request_include, &options.request_exclude),
        )?;
        if let Some(local_path) = local_path_of(url)? {
            let mut source = Self::open_local(
                &local_path,
                spec.local_root.as_deref(),
                &spec.manifest_path,
                scope,
            )?;
            source.location = BucketLocation {
                cloud: options.cloud.clone().unwrap_or_else(|| "local".to_owned()),
                region: options.region.clone().unwrap_or_else(|| "local".to_owned()),
            };
            if let Some(store) = &spec.object_store {
                source.store = Arc::clone(store);
                source.local = None;
            }
            return Ok(source);
        }
        let parsed = url::Url::parse(url)
            .map_err(|error| Error::invalid(format!("index url {url:?} is not valid: {error}")))?;
        // One name per bucket, whatever alias the URL used; the client opens the canonical
        // form, so the alias's own host or account never reaches it.
        let canonical = canonicalize(url).ok();
        let open_url = match &canonical {
            Some(canonical) => url::Url::parse(&canonical.full()).unwrap_or(parsed.clone()),
            None => parsed.clone(),
        };
        let bucket = open_cloud_bucket(&open_url, options)?;
        let (store, pages) = match &spec.object_store {
            Some(store) => (Arc::clone(store), None),
            None => (bucket.store, Some(bucket.pages)),
        };
        let list_prefix = (!bucket.prefix.as_ref().is_empty()).then_some(bucket.prefix);
        let (identity, key_prefix) = match &canonical {
            Some(canonical) => (canonical.bucket.clone(), format!("{}/", canonical.bucket)),
            None => (
                url.trim_end_matches('/').to_owned(),
                format!(
                    "{}://{}/",
                    parsed.scheme(),
                    parsed.host_str().unwrap_or_default()
                ),
            ),
        };
        let mut scope = scope;
        scope.list_prefix = list_prefix.as_ref().map(ToString::to_string);
        Ok(Self {
            store,
            pages,
            list_prefix,
            single_object: None,
            identity,
            ignored_keys: HashSet::new(),
            key_prefix,
            location: bucket.location,
            scope,
            local: None,
        })
    }

    /// Whether the globs let a listed key in (see [`RunScope`]).
    pub(super) fn accepts(&self, object_key: &str) -> bool {
        self.scope.accepts(object_key)
    }

    /// Keys are paths relative to the root (the indexing root the path lies under, or the
    /// folder itself), so the manifest does not depend on where the folder is mounted nor
    /// on which folder under the root a run named.
    fn open_local(
        path: &Path,
        root: Option<&Path>,
        manifest_path: &Path,
        mut scope: RunScope,
    ) -> Result<Self> {
        let canonical = std::fs::canonicalize(path)
            .map_err(|error| Error::from(error).context(format!("opening {}", path.display())))?;
        let metadata = std::fs::metadata(&canonical)
            .map_err(|error| Error::from(error).context(format!("opening {}", path.display())))?;
        // Opening a FIFO blocks until a writer comes; sockets and devices are no documents.
        if !metadata.is_dir() && !metadata.is_file() {
            return Err(Error::invalid(format!(
                "{} is neither a folder nor a regular file",
                path.display()
            )));
        }
        let root = match root {
            Some(root) => root.to_path_buf(),
            None if metadata.is_dir() => canonical.clone(),
            None => canonical.parent().unwrap_or(Path::new("/")).to_path_buf(),
        };
        let relative = canonical.strip_prefix(&root).map_err(|_| {
            Error::invalid(format!("{} is outside {}", path.display(), root.display()))
        })?;
        let parts: Option<Vec<&str>> = relative.iter().map(|part| part.to_str()).collect();
        let parts = parts.ok_or_else(|| {
            Error::invalid(format!("{} has no utf-8 file name", canonical.display()))
        })?;
        let relative_key = (!parts.is_empty()).then(|| ObjectPath::from_iter(parts));
        let (list_prefix, single_object) = if metadata.is_dir() {
            (relative_key, None)
        } else {
            (None, relative_key)
        };
        scope.list_prefix = list_prefix.as_ref().map(ToString::to_string);
        scope.single_object = single_object.as_ref().map(ToString::to_string);
        let store = Arc::new(LocalFileSystem::new_with_prefix(&root).map_err(|error| {
            Error::config(format!("cannot open folder {}: {error}", root.display()))
        })?);
        let local = LocalRoot {
            store: Arc::clone(&store),
            real_path: std::fs::canonicalize(&root).unwrap_or_else(|_| root.clone()),
        };
        Ok(Self {
            store: Arc::clone(&store) as Arc<dyn ObjectStore>,
            pages: None,
            list_prefix,
            single_object,
            identity: local_identity(&root),
            ignored_keys: manifest_keys_inside(&root, manifest_path),
            key_prefix: format!("{}/", root.display()).replace("//", "/"),
            location: BucketLocation {
                cloud: "local".to_owned(),
                region: "local".to_owned(),
            },
            scope,
            local: Some(local),
        })
    }

    pub(super) fn list(&self) -> ListingStream {
        let Some(location) = self.single_object.clone() else {
            let listing = match &self.pages {
                Some(pages) => list_pages(Arc::clone(pages), self.list_prefix.as_ref()),
                None => list_objects(self.store.as_ref(), self.list_prefix.as_ref()),
            };
            return match &self.local {
                Some(local) => confined_to_root(listing, local.clone()),
                None => listing,
            };
        };
        let store = Arc::clone(&self.store);
        let head = async move {
            let options = GetOptions {
                head: true,
                ..GetOptions::default()
            };
            store
                .get_opts(&location, options)
                .await
                .map(|result| Listed::Object(result.meta))
                .map_err(|error| error.to_string())
        };
        futures::stream::once(head).boxed()
    }
}

/// How many listed entries one blocking check resolves.
const ROOT_CHECK_BATCH: usize = 256;

/// `object_store` lists a local folder following symlinks: an entry whose real path leaves
/// the root (a link to `/etc`) or is no regular file is reported as unreadable and never
/// fetched. The checks touch the disk, so they run on a blocking thread, a batch at a time.
fn confined_to_root(listing: ListingStream, root: LocalRoot) -> ListingStream {
    listing
        .ready_chunks(ROOT_CHECK_BATCH)
        .then(move |entries| {
            let root = root.clone();
            async move {
                let checked = tokio::task::spawn_blocking(move || {
                    entries
                        .into_iter()
                        .map(|entry| check_inside_root(&root, entry))
                        .collect::<Vec<_>>()
                })
                .await;
                let entries = checked.unwrap_or_else(|error| {
                    vec![Err(format!("checking listed files failed: {error}"))]
                });
                futures::stream::iter(entries)
            }
        })
        .flatten()
        .boxed()
}

fn check_inside_root(
    root: &LocalRoot,
    entry: std::result::Result<Listed, String>,
) -> std::result::Result<Listed, String> {
    let Ok(Listed::Object(meta)) = &entry else {
        return entry;
    };
    let key = meta.location.to_string();
    let refused = |reason: &str| {
        Ok(Listed::UnreadableKey {
            key: key.clone(),
            reason: reason.to_owned(),
        })
    };
    let real = root
        .store
        .path_to_filesystem(&meta.location)
        .ok()
        .and_then(|path| std::fs::canonicalize(path).ok());
    match real {
        Some(real) if !real.starts_with(&root.real_path) => {
            tracing::warn!(%key, "a symlink leads outside the indexing root; not followed");
            refused("a symlink that leads outside the indexing root: not followed")
        }
        Some(real) if std::fs::metadata(&real).is_ok_and(|meta| meta.is_file()) => entry,
        _ => refused("not a regular file"),
    }
}

/// The manifest name of a local root: one manifest per root.
pub(crate) fn local_identity(root: &Path) -> String {
    format!("file://{}", root.display())
}

/// `Some(path)` for a plain path or a `file://` URL, `None` for other URLs.
fn local_path_of(url: &str) -> Result<Option<PathBuf>> {
    if !url.contains("://") {
        return Ok(Some(PathBuf::from(url)));
    }
    if !url.starts_with("file://") {
        return Ok(None);
    }
    let parsed = url::Url::parse(url)
        .map_err(|error| Error::invalid(format!("index url {url:?} is not valid: {error}")))?;
    let path = parsed
        .to_file_path()
        .map_err(|()| Error::invalid(format!("{url} is not an absolute local path")))?;
    Ok(Some(path))
}

/// The object keys of the manifest and its temporary file when they sit inside `root`:
/// indexing them would change them on every run.
fn manifest_keys_inside(root: &Path, manifest_path: &Path) -> HashSet<String> {
    let mut keys = HashSet::new();
    let (Some(parent), Some(file_name)) = (manifest_path.parent(), manifest_path.file_name())
    else {
        return keys;
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let Ok(parent) = std::fs::canonicalize(parent) else {
        return keys;
    };
    for path in [
        parent.join(file_name),
        temporary_path_for(&parent.join(file_name)),
    ] {
        let Ok(relative) = path.strip_prefix(root) else {
            continue;
        };
        let parts: Option<Vec<&str>> = relative.iter().map(|part| part.to_str()).collect();
        if let Some(parts) = parts {
            keys.insert(ObjectPath::from_iter(parts).to_string());
        }
    }
    keys
}
