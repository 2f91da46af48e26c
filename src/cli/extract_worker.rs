//! `skyfuse extract-worker` (hidden): the extraction worker the server starts itself; it
//! speaks frames on stdin/stdout (see `skyfuse::ingest::isolate`), not to people.

use anyhow::Result;

/// Serves extraction requests until stdin closes. Runs before any async runtime or logger
/// starts, so the worker is one thread and its address space is the binary and the object.
pub fn run(cpu_seconds: u64) -> Result<()> {
    skyfuse::ingest::isolate::run_worker_process(cpu_seconds)?;
    Ok(())
}
