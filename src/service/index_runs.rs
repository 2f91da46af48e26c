//! Detached `Index` runs: an id per run, its latest progress, and the outcome of finished
//! runs in a bounded table (the oldest finished ones go first).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::Error;
use crate::ingest::{IndexProgress, IndexReport};

/// Finished runs kept for `GetIndexRun`.
pub const KEPT_FINISHED_RUNS: usize = 256;

/// Where a run stands.
#[derive(Debug, Clone)]
pub enum IndexRunState {
    Running(IndexProgress),
    Succeeded(Box<IndexReport>),
    Failed(Error),
}

/// One run as `GetIndexRun` reports it.
#[derive(Debug, Clone)]
pub struct IndexRunStatus {
    pub run_id: String,
    /// The principal that started it: only it (or an admin) may read the run.
    pub owner: String,
    pub url: String,
    pub index: String,
    pub state: IndexRunState,
}

/// The table of detached runs.
#[derive(Debug, Default)]
pub struct IndexRuns {
    runs: Mutex<VecDeque<IndexRunStatus>>,
}

impl IndexRuns {
    /// Registers a running run of `owner` under a fresh unguessable id.
    pub fn start(self: &Arc<Self>, owner: &str, url: &str, index: &str) -> String {
        // Unguessable: a run id cannot be guessed to read another caller's report.
        let run_id = crate::ids::random_id();
        self.lock().push_back(IndexRunStatus {
            run_id: run_id.clone(),
            owner: owner.to_owned(),
            url: url.to_owned(),
            index: index.to_owned(),
            state: IndexRunState::Running(IndexProgress::default()),
        });
        run_id
    }

    /// Records the latest progress of a running run.
    pub fn progress(&self, run_id: &str, progress: &IndexProgress) {
        if let Some(run) = self.lock().iter_mut().find(|run| run.run_id == run_id)
            && matches!(run.state, IndexRunState::Running(_))
        {
            run.state = IndexRunState::Running(progress.clone());
        }
    }

    /// Records the outcome, and forgets the oldest finished runs past the bound.
    pub fn finish(&self, run_id: &str, outcome: Result<IndexReport, Error>) {
        let mut runs = self.lock();
        if let Some(run) = runs.iter_mut().find(|run| run.run_id == run_id) {
            run.state = match outcome {
                Ok(report) => IndexRunState::Succeeded(Box::new(report)),
                Err(error) => IndexRunState::Failed(error),
            };
        }
        let finished = runs
            .iter()
            .filter(|run| !matches!(run.state, IndexRunState::Running(_)))
            .count();
        let mut excess = finished.saturating_sub(KEPT_FINISHED_RUNS);
        runs.retain(|run| {
            let drop = excess > 0 && !matches!(run.state, IndexRunState::Running(_));
            excess -= usize::from(drop);
            !drop
        });
    }

    pub fn get(&self, run_id: &str) -> Option<IndexRunStatus> {
        self.lock().iter().find(|run| run.run_id == run_id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<IndexRunStatus>> {
        self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_runs_are_kept_up_to_the_bound_running_ones_always() {
        let runs = Arc::new(IndexRuns::default());
        let running = runs.start("ops", "s3://docs", "");
        let first = runs.start("ops", "s3://docs", "");
        runs.finish(&first, Ok(IndexReport::default()));
        for _ in 0..KEPT_FINISHED_RUNS {
            let id = runs.start("ops", "s3://docs", "");
            runs.finish(&id, Err(Error::invalid("x")));
        }
        assert!(runs.get(&first).is_none(), "the oldest finished run goes");
        assert!(matches!(
            runs.get(&running).unwrap().state,
            IndexRunState::Running(_)
        ));
        assert_ne!(runs.start("ops", "a", ""), runs.start("ops", "a", ""));
    }
}
