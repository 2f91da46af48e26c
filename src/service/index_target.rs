//! What an `Index` URL may reach: a local path only under `[ingest] roots`, a bucket only
//! under a `[[bucket]]` entry, never the server's ambient cloud credentials for an
//! arbitrary bucket. A caller's role narrows these further (`index_prefixes`).
//!
//! Every refusal of a local path (missing, unreadable, outside the roots, a FIFO, socket or
//! device) is the same message, `not found or not allowed`, so errors
//! cannot be used to learn which server paths exist; the reason goes to the log.

use std::path::{Path, PathBuf};

use crate::config::BucketConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::ingest::canonical::{CanonicalUrl, canonicalize};

/// Where a run may read, once allowed.
#[derive(Debug, Clone)]
pub(super) enum IndexTarget {
    Local {
        /// The indexing root the path lies under (canonical): keys are relative to it.
        root: PathBuf,
        /// The path itself, canonical: a folder or a regular file.
        path: PathBuf,
    },
    Bucket {
        canonical: CanonicalUrl,
        /// The longest matching entry. Boxed: an entry is much larger than a local target.
        entry: Box<BucketConfig>,
    },
}

/// The one message for every refused path or bucket. It does not echo the URL: the edge
/// would scrub a path or URL anyway, and a half-scrubbed echo (`../etc` stays, `/etc`
/// becomes `<path>`) would tell spellings apart. The URL is logged where it is refused.
pub(super) fn not_found_or_not_allowed() -> Error {
    Error::new(ErrorKind::Forbidden, "not found or not allowed")
}

/// Canonical forms of the configured roots; a root that cannot be resolved is a startup
/// error naming it (blocking: call at startup).
pub(super) fn canonical_roots(roots: &[PathBuf]) -> Result<Vec<PathBuf>> {
    roots
        .iter()
        .map(|root| {
            let canonical = std::fs::canonicalize(root).map_err(|error| {
                Error::config(format!(
                    "ingest.roots: {} cannot be resolved: {error}",
                    root.display()
                ))
            })?;
            if !canonical.is_dir() {
                return Err(Error::config(format!(
                    "ingest.roots: {} is not a folder",
                    root.display()
                )));
            }
            Ok(canonical)
        })
        .collect()
}

/// Whether `url` names a local path (a plain path or `file://`).
pub(super) fn is_local(url: &str) -> bool {
    !url.contains("://") || url.starts_with("file://")
}

/// Resolves a local `url` under `roots` (canonical). Blocking: it touches the disk.
pub(super) fn resolve_local(url: &str, roots: &[PathBuf]) -> Result<IndexTarget> {
    if roots.is_empty() {
        return Err(Error::new(
            ErrorKind::Forbidden,
            "indexing local paths is off: the server has no [ingest] roots; \
             add the folders Index may read to `[ingest] roots` in its config",
        ));
    }
    let refuse = |reason: &str| {
        tracing::info!(url, reason, "index of a local path refused");
        not_found_or_not_allowed()
    };
    let path = match url.strip_prefix("file://") {
        None => PathBuf::from(url),
        Some(_) => url::Url::parse(url)
            .ok()
            .filter(|parsed| parsed.host_str().is_none_or(str::is_empty))
            .and_then(|parsed| parsed.to_file_path().ok())
            .ok_or_else(|| refuse("not a local file URL"))?,
    };
    let absolute = std::path::absolute(&path).map_err(|error| refuse(&error.to_string()))?;
    let canonical = std::fs::canonicalize(&absolute).map_err(|error| refuse(&error.to_string()))?;
    // The outermost root: one manifest per root, whichever folder under it a run names.
    let root = roots
        .iter()
        .filter(|root| canonical.starts_with(root))
        .min_by_key(|root| root.components().count())
        .ok_or_else(|| refuse("outside every ingest root"))?;
    // `symlink_metadata` of a canonical path: no link left to follow. Type first, before
    // anything opens it: opening a FIFO blocks until a writer comes.
    let metadata =
        std::fs::symlink_metadata(&canonical).map_err(|error| refuse(&error.to_string()))?;
    if metadata.is_dir() {
        std::fs::read_dir(&canonical).map_err(|error| refuse(&error.to_string()))?;
    } else if metadata.is_file() {
        std::fs::File::open(&canonical).map_err(|error| refuse(&error.to_string()))?;
    } else {
        return Err(refuse("neither a folder nor a regular file"));
    }
    Ok(IndexTarget::Local {
        root: root.clone(),
        path: canonical,
    })
}

/// Resolves a bucket `url` (any alias) to the longest `[[bucket]]` entry over it; anything
/// else is refused before a client is built, so no request leaves with ambient credentials.
pub(super) fn resolve_bucket(url: &str, buckets: &[BucketConfig]) -> Result<IndexTarget> {
    let canonical = canonicalize(url).map_err(|_| {
        Error::invalid(format!(
            "{url} is not a bucket URL (s3://, az://, abfss://, gs:// or their https:// forms) nor a local path"
        ))
    })?;
    let entry = buckets
        .iter()
        .filter_map(|entry| Some((entry, entry.canonical()?)))
        .filter(|(_, own)| canonical.is_under(own))
        .max_by_key(|(_, own)| own.full().len())
        .map(|(entry, _)| Box::new(entry.clone()));
    if let Some(entry) = entry {
        return Ok(IndexTarget::Bucket { canonical, entry });
    }
    tracing::info!(url, "index of a bucket under no [[bucket]] entry refused");
    Err(not_found_or_not_allowed())
}

/// The name that keys the manifest of a target: its root or canonical bucket.
pub(super) fn identity(target: &IndexTarget) -> String {
    match target {
        IndexTarget::Local { root, .. } => crate::ingest::pipeline::local_identity(root),
        IndexTarget::Bucket { canonical, .. } => canonical.bucket.clone(),
    }
}

/// The URL the pipeline opens: the canonical path or bucket URL.
pub(super) fn job_url(target: &IndexTarget) -> String {
    match target {
        IndexTarget::Local { path, .. } => path.display().to_string(),
        IndexTarget::Bucket { canonical, .. } => canonical.full(),
    }
}

/// The root a local target's keys are relative to.
pub(super) fn local_root(target: &IndexTarget) -> Option<&Path> {
    match target {
        IndexTarget::Local { root, .. } => Some(root),
        IndexTarget::Bucket { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    struct Folders {
        _temp: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
    }

    fn folders() -> Folders {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().join("root");
        let outside = temp.path().join("outside");
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("docs/a.md"), "hello").unwrap();
        std::fs::write(outside.join("secret.txt"), "secret").unwrap();
        let root = std::fs::canonicalize(&root).unwrap();
        let outside = std::fs::canonicalize(&outside).unwrap();
        Folders {
            _temp: temp,
            root,
            outside,
        }
    }

    fn refused_alike(result: Result<IndexTarget>, url: &str) {
        let error = result.unwrap_err();
        assert_eq!(error.kind, ErrorKind::Forbidden, "{url}: {error}");
        assert_eq!(error.message, "not found or not allowed", "{url}");
    }

    #[test]
    fn paths_under_a_root_are_allowed_and_keyed_by_the_outermost_root() {
        let folders = folders();
        let roots = vec![folders.root.clone(), folders.root.join("docs")];
        let docs = folders.root.join("docs");
        for url in [
            docs.display().to_string(),
            format!("file://{}", docs.display()),
            format!("{}/docs/../docs/a.md", folders.root.display()),
        ] {
            let target = resolve_local(&url, &roots).unwrap();
            assert_eq!(local_root(&target), Some(folders.root.as_path()), "{url}");
        }
    }

    #[test]
    fn everything_else_gets_one_message() {
        let folders = folders();
        let roots = vec![folders.root.clone()];
        symlink(&folders.outside, folders.root.join("escape")).unwrap();
        symlink(
            folders.outside.join("secret.txt"),
            folders.root.join("link.txt"),
        )
        .unwrap();
        let fifo = folders.root.join("pipe.txt");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let urls = [
            "/etc".to_owned(),
            "file:///etc/passwd".to_owned(),
            "file://otherhost/etc/passwd".to_owned(),
            format!("{}/../outside", folders.root.display()),
            folders.root.join("missing.md").display().to_string(),
            folders.root.join("escape").display().to_string(),
            folders.root.join("link.txt").display().to_string(),
            fifo.display().to_string(),
        ];
        for url in urls {
            refused_alike(resolve_local(&url, &roots), &url);
        }
    }

    #[test]
    fn without_roots_local_paths_are_off_and_the_message_names_the_setting() {
        let error = resolve_local("/tmp", &[]).unwrap_err();
        assert_eq!(error.kind, ErrorKind::Forbidden);
        assert!(error.message.contains("[ingest] roots"), "{error}");
    }

    #[test]
    fn buckets_need_an_entry_and_aliases_find_the_entry() {
        let entries: Vec<BucketConfig> = vec![
            toml::from_str("url = \"s3://docs\"").unwrap(),
            toml::from_str("url = \"s3://docs/team\"\nexclude = [\"x/**\"]").unwrap(),
        ];
        let IndexTarget::Bucket { entry, canonical } =
            resolve_bucket("s3a://docs/team/2024", &entries).unwrap()
        else {
            panic!("a bucket target");
        };
        assert_eq!(entry.url, "s3://docs/team");
        assert_eq!(canonical.full(), "s3://docs/team/2024");
        refused_alike(resolve_bucket("s3://payroll", &entries), "s3://payroll");
        refused_alike(
            resolve_bucket("https://payroll.s3.amazonaws.com/public", &entries),
            "https://payroll.s3.amazonaws.com/public",
        );
        let error = resolve_bucket("https://example.com/x", &entries).unwrap_err();
        assert_eq!(error.kind, ErrorKind::InvalidArgument);
    }
}
