//! `include = [...]`: index definition files merged into the config. One file holds one
//! logical index (its spaces, sources with their per-store settings, the index and its
//! buckets), so an index can be reviewed, versioned and shared apart from the server's
//! settings. Relative paths inside a file are taken from that file's folder.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{BucketConfig, IndexConfig, LOCAL_PROVIDER, SourceConfig, SpaceConfig};
use crate::error::{Error, Result};

/// The tables an included file may hold; anything else in it is refused by name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexDefinition {
    #[serde(default, rename = "space")]
    pub spaces: Vec<SpaceConfig>,
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    #[serde(default, rename = "index")]
    pub indexes: Vec<IndexConfig>,
    #[serde(default, rename = "bucket")]
    pub buckets: Vec<BucketConfig>,
}

impl IndexDefinition {
    /// Reads one definition file, its relative paths anchored at its own folder.
    pub fn read(path: &Path) -> Result<Self> {
        let describe = || format!("included file {}", path.display());
        let text = std::fs::read_to_string(path)
            .map_err(|error| Error::config(format!("cannot read {}: {error}", describe())))?;
        let mut definition: Self = toml::from_str(&text)
            .map_err(|error| Error::config(format!("{}: {error}", describe())))?;
        let folder = path.parent().unwrap_or(Path::new("."));
        anchor_tables(folder, &mut definition.spaces, &mut definition.sources);
        Ok(definition)
    }
}

/// The files an `include` entry names, in name order: a path, or a `*` pattern over the
/// file names of one folder (`indexes/*.toml`). A plain path must exist; a pattern may
/// match nothing (an empty folder of definitions is a valid config).
pub fn files_matching(base_dir: &Path, pattern: &str) -> Result<Vec<PathBuf>> {
    let full = anchor(base_dir, Path::new(pattern));
    let file_pattern = full
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    if !file_pattern.contains(['*', '?', '[', '{']) {
        if !full.is_file() {
            return Err(Error::config(format!(
                "include {pattern:?}: no such file {}",
                full.display()
            )));
        }
        return Ok(vec![full]);
    }
    let folder = full.parent().unwrap_or(Path::new("."));
    if folder.to_string_lossy().contains(['*', '?', '[', '{']) {
        return Err(Error::config(format!(
            "include {pattern:?}: only the file name may be a pattern"
        )));
    }
    let matcher = globset::Glob::new(file_pattern)
        .map_err(|error| Error::config(format!("include {pattern:?}: {error}")))?
        .compile_matcher();
    let entries = std::fs::read_dir(folder).map_err(|error| {
        Error::config(format!(
            "include {pattern:?}: cannot list {}: {error}",
            folder.display()
        ))
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| {
            Error::config(format!(
                "include {pattern:?}: cannot list {}: {error}",
                folder.display()
            ))
        })?;
        let path = entry.path();
        if path.is_file() && matcher.is_match(entry.file_name()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// `path` taken from `base_dir` unless it is absolute.
pub(super) fn anchor(base_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

/// Anchors the paths the space and source tables may hold: a local model folder and a
/// local store's own folder.
pub(super) fn anchor_tables(
    base_dir: &Path,
    spaces: &mut [SpaceConfig],
    sources: &mut [SourceConfig],
) {
    for space in spaces {
        if space.provider == LOCAL_PROVIDER {
            space.model = anchor(base_dir, Path::new(&space.model))
                .display()
                .to_string();
        }
    }
    for source in sources {
        if let Some(path) = source.path_mut() {
            *path = path.as_deref().map(|path| anchor(base_dir, path));
        }
    }
}
