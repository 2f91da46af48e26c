//! Where untrusted formats are parsed.
//!
//! The PDF crates recurse and inflate without limits we can set from outside (a 785-byte
//! PDF overflows the stack, a few MB inflate to gigabytes), and neither a stack overflow nor
//! an allocation failure can be caught: both abort the process. So PDF, HTML and anything
//! gzip-wrapped are parsed in a worker process ([`WorkerPool`]): `skyfuse extract-worker`,
//! a few of them kept alive and reused, each under an address-space limit, a CPU-time limit
//! per object and a wall-clock deadline. A crash or a limit costs that one object, reported
//! as "extraction crashed (signal 11)" or "extraction exceeded 1024 MiB", and the pool starts
//! a fresh worker. Plain text, Markdown, JSON and JSON Lines stay in process: our own linear
//! code, and serde_json with its recursion limit.
//!
//! The wire between the two is [`frame`]: length-prefixed frames on the worker's stdin and
//! stdout. [`worker`] is the worker's side, [`pool`] the server's.

mod frame;
mod limits;
mod pool;
mod worker;

use std::sync::Arc;

use crate::ingest::extract::{DocumentFormat, ExtractError, Extraction, extract_with_problems};
use crate::ingest::gzip::strip_gzip_suffix;

pub use pool::{WorkerLimits, WorkerPool, default_worker_program};
pub use worker::run_worker_process;

/// How an indexing run extracts objects.
#[derive(Clone, Default)]
pub enum Extractor {
    /// Every format in this process (on the blocking pool): for tests and trusted data.
    #[default]
    InProcess,
    /// Untrusted formats ([`needs_isolation`]) in the pool's worker processes.
    Isolated(Arc<WorkerPool>),
}

impl std::fmt::Debug for Extractor {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Extractor::InProcess => formatter.write_str("InProcess"),
            Extractor::Isolated(pool) => write!(formatter, "Isolated({pool:?})"),
        }
    }
}

/// Whether the object is parsed by a worker in isolated mode: PDF and HTML (parsers we do
/// not control, with no depth or inflate bound), and any gzip-wrapped object (its inflate
/// peaks at several times the 256 MiB cap, better paid in a worker under a memory limit).
pub fn needs_isolation(object_key: &str) -> bool {
    strip_gzip_suffix(object_key).is_some()
        || matches!(
            DocumentFormat::from_object_key(object_key),
            Some(DocumentFormat::Pdf | DocumentFormat::Html)
        )
}

impl Extractor {
    /// The documents in one object, extracted where this extractor says.
    pub async fn extract(
        &self,
        object_key: &str,
        bytes: bytes::Bytes,
    ) -> Result<Extraction, ExtractError> {
        match self {
            Extractor::Isolated(pool) if needs_isolation(object_key) => {
                pool.extract(object_key, &bytes).await
            }
            _ => extract_on_blocking_thread(object_key, bytes).await,
        }
    }
}

async fn extract_on_blocking_thread(
    object_key: &str,
    bytes: bytes::Bytes,
) -> Result<Extraction, ExtractError> {
    let object_key = object_key.to_owned();
    tokio::task::spawn_blocking(move || extract_with_problems(&object_key, &bytes))
        .await
        .unwrap_or_else(|join_error| {
            Err(ExtractError::Isolated {
                reason: format!("extraction crashed: {join_error}"),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdf_html_and_gzip_go_to_the_worker_the_rest_stays() {
        for key in ["a.pdf", "b.HTML", "c.htm", "d.txt.gz", "e.jsonl.gz"] {
            assert!(needs_isolation(key), "{key}");
        }
        for key in ["a.txt", "b.md", "c.json", "d.jsonl", "e.png"] {
            assert!(!needs_isolation(key), "{key}");
        }
    }
}
