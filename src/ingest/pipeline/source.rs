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
use crate::error::{Error, Result};
use crate::ingest::bucket::{BucketLocation, open_cloud_bucket};
use crate::ingest::filter::KeyFilter;
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
    /// Names the bucket in the manifest.
    pub(super) identity: String,
    /// The manifest and its temporary file, when they live inside the indexed folder.
    pub(super) ignored_keys: HashSet<String>,
    /// Makes keys unique across buckets in the stores: the absolute folder path, or
    /// `scheme://bucket/`. Stores see `key_prefix + key` as the object key (and as the
    /// document id of files without record ids), so two folders that both hold a
    /// `README.md` never overwrite or delete each other's chunks. The manifest keeps
    /// the short keys, since it belongs to one bucket.
    pub(super) key_prefix: String,
    /// Stamped on every chunk.
    pub(super) location: BucketLocation,
    /// Include/exclude globs, matched against keys relative to `list_prefix`.
    pub(super) filter: KeyFilter,
}

impl BucketSource {
    pub(super) fn open(job: &IndexJob) -> Result<Self> {
        let url = job.url.as_str();
        let filter = KeyFilter::new(&job.bucket.include, &job.bucket.exclude)?;
        if let Some(local_path) = local_path_of(url)? {
            let mut source = Self::open_local(&local_path, &job.manifest_path, filter)?;
            source.location = BucketLocation {
                cloud: job
                    .bucket
                    .cloud
                    .clone()
                    .unwrap_or_else(|| "local".to_owned()),
                region: job
                    .bucket
                    .region
                    .clone()
                    .unwrap_or_else(|| "local".to_owned()),
            };
            if let Some(store) = &job.object_store {
                source.store = Arc::clone(store);
            }
            return Ok(source);
        }
        let parsed = url::Url::parse(url)
            .map_err(|error| Error::invalid(format!("index url {url:?} is not valid: {error}")))?;
        let bucket = open_cloud_bucket(&parsed, &job.bucket)?;
        let (store, pages) = match &job.object_store {
            Some(store) => (Arc::clone(store), None),
            None => (bucket.store, Some(bucket.pages)),
        };
        let list_prefix = (!bucket.prefix.as_ref().is_empty()).then_some(bucket.prefix);
        Ok(Self {
            store,
            pages,
            list_prefix,
            single_object: None,
            identity: url.trim_end_matches('/').to_owned(),
            ignored_keys: HashSet::new(),
            key_prefix: format!(
                "{}://{}/",
                parsed.scheme(),
                parsed.host_str().unwrap_or_default()
            ),
            location: bucket.location,
            filter,
        })
    }

    /// Whether the globs let a listed key in; they see it relative to the listed prefix.
    pub(super) fn accepts(&self, object_key: &str) -> bool {
        let relative = match &self.list_prefix {
            Some(prefix) => object_key
                .strip_prefix(prefix.as_ref())
                .map_or(object_key, |rest| rest.trim_start_matches('/')),
            None => object_key,
        };
        self.filter.accepts(relative)
    }

    /// Keys are paths relative to the folder (or the file name, for a single file), so the
    /// manifest does not depend on where the folder is mounted.
    fn open_local(path: &Path, manifest_path: &Path, filter: KeyFilter) -> Result<Self> {
        let canonical = std::fs::canonicalize(path)
            .map_err(|error| Error::from(error).context(format!("opening {}", path.display())))?;
        let (root, single_object) = if canonical.is_dir() {
            (canonical.clone(), None)
        } else {
            let file_name = canonical
                .file_name()
                .and_then(|name| name.to_str())
                .ok_or_else(|| {
                    Error::invalid(format!("{} has no utf-8 file name", canonical.display()))
                })?;
            let parent = canonical.parent().unwrap_or(Path::new("/")).to_path_buf();
            (parent, Some(ObjectPath::from(file_name)))
        };
        let store = LocalFileSystem::new_with_prefix(&root).map_err(|error| {
            Error::config(format!("cannot open folder {}: {error}", root.display()))
        })?;
        Ok(Self {
            store: Arc::new(store),
            pages: None,
            list_prefix: None,
            single_object,
            identity: format!("file://{}", canonical.display()),
            ignored_keys: manifest_keys_inside(&root, manifest_path),
            key_prefix: format!("{}/", root.display()).replace("//", "/"),
            location: BucketLocation {
                cloud: "local".to_owned(),
                region: "local".to_owned(),
            },
            filter,
        })
    }

    pub(super) fn list(&self) -> ListingStream {
        let Some(location) = self.single_object.clone() else {
            return match &self.pages {
                Some(pages) => list_pages(Arc::clone(pages), self.list_prefix.as_ref()),
                None => list_objects(self.store.as_ref(), self.list_prefix.as_ref()),
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
