//! `[ingest]`: which local folders `Index` may read.

use std::path::PathBuf;

use serde::Deserialize;

/// Local folders an `Index` request may read from. Empty (the default for `serve`): no
/// local path may be indexed over the API. The CLI's in-process mode adds the folder it
/// was given, since its user is the operator.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Folders (relative paths from the config file's folder); canonicalized at startup,
    /// and a path is allowed only when its canonical form lies under one of them.
    pub roots: Vec<PathBuf>,
}

impl IngestConfig {
    /// Pure checks: an empty root would mean "the current directory" by accident.
    pub fn problems(&self) -> Vec<String> {
        self.roots
            .iter()
            .filter(|root| root.as_os_str().is_empty())
            .map(|_| "ingest.roots: an entry is empty".to_owned())
            .collect()
    }
}
