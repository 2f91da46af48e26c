//! `[ingest]`: which local folders `Index` may read, and how indexing runs treat what
//! they read, server-wide.

use std::path::PathBuf;

use serde::Deserialize;

/// Where untrusted formats (PDF, HTML, gzip) are parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtractionMode {
    /// In `skyfuse extract-worker` processes under the `worker_*` limits: a crash or a
    /// runaway allocation costs one object, not the server.
    #[default]
    Isolated,
    /// In the server process: faster to start, for trusted data only.
    InProcess,
}

/// `[ingest]`: local roots, extraction mode and the limits of the extraction workers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Local folders an `Index` request may read from (relative paths from the config
    /// file's folder); canonicalized at startup, and a path is allowed only when its
    /// canonical form lies under one of them. Empty (the default for `serve`): no local
    /// path may be indexed over the API. The CLI's in-process mode adds the folder it was
    /// given, since its user is the operator.
    pub roots: Vec<PathBuf>,
    pub extraction: ExtractionMode,
    /// Worker processes at most (each extracts one object at a time).
    pub extraction_workers: usize,
    /// Address space of each worker, in MiB.
    pub worker_memory_mib: u64,
    /// CPU time per object, in seconds.
    pub worker_cpu_seconds: u64,
    /// Wall-clock time per object, in seconds; the worker is killed past it.
    pub worker_wall_seconds: u64,
    /// The `skyfuse` binary run as a worker; default: this executable.
    pub worker_path: Option<PathBuf>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            roots: Vec::new(),
            extraction: ExtractionMode::Isolated,
            extraction_workers: 4,
            worker_memory_mib: 1024,
            worker_cpu_seconds: 30,
            worker_wall_seconds: 60,
            worker_path: None,
        }
    }
}

impl IngestConfig {
    /// Problems with the values, each naming its key.
    pub fn problems(&self, problems: &mut Vec<String>) {
        // An empty root would mean "the current directory" by accident.
        if self.roots.iter().any(|root| root.as_os_str().is_empty()) {
            problems.push("ingest.roots: an entry is empty".to_owned());
        }
        if self.extraction_workers == 0 {
            problems.push("ingest.extraction_workers must be at least 1".to_owned());
        }
        // The worker's own binary and stack need some room before any object does.
        if self.worker_memory_mib < 128 {
            problems.push("ingest.worker_memory_mib must be at least 128".to_owned());
        }
        if self.worker_cpu_seconds == 0 {
            problems.push("ingest.worker_cpu_seconds must be at least 1".to_owned());
        }
        if self.worker_wall_seconds == 0 {
            problems.push("ingest.worker_wall_seconds must be at least 1".to_owned());
        }
    }
}
