//! `[facade]`: the OpenAI-compatible HTTP port.

use serde::Deserialize;

/// The OpenAI-compatible HTTP facade.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FacadeConfig {
    /// `host:port` to serve `/v1/chat/completions` and `/v1/models` on; off when unset.
    pub listen: Option<String>,
    /// Host names (no port) the facade answers to besides loopback ones, when the
    /// server is anonymous: a browser page on another name (DNS rebinding) is refused.
    pub allowed_hosts: Vec<String>,
    /// Threads serving the facade, each with its own runtime and upstream connection
    /// pool; unset: one per core.
    pub threads: Option<usize>,
}

/// More facade threads than this is a typo, not a machine.
const MAX_THREADS: usize = 1024;

impl FacadeConfig {
    /// How many threads serve the facade.
    pub fn thread_count(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }

    /// What is wrong with `[facade]`'s own values.
    pub(super) fn problems(&self) -> Vec<String> {
        match self.threads {
            Some(threads) if !(1..=MAX_THREADS).contains(&threads) => vec![format!(
                "facade.threads: {threads} is not between 1 and {MAX_THREADS}"
            )],
            _ => Vec::new(),
        }
    }
}
