//! Feedback on answers: which deployment gave each recent answer, so a caller's score
//! lands on the provider that earned it; and whether an answer's citations point at
//! passages it was actually given.

use std::num::NonZeroUsize;
use std::sync::{Mutex, PoisonError};

use lru::LruCache;

use super::Service;
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::telemetry::metrics::DeploymentLabels;

/// Answers that can still be rated; the oldest are forgotten first.
const REMEMBERED_ANSWERS: usize = 10_000;

/// Recent answers by id: who asked, and which deployment answered.
#[derive(Debug)]
pub struct AnswerLedger {
    answers: Mutex<LruCache<String, Answered>>,
}

#[derive(Debug, Clone)]
struct Answered {
    principal: String,
    deployment: DeploymentLabels,
}

impl Default for AnswerLedger {
    fn default() -> Self {
        Self {
            answers: Mutex::new(LruCache::new(
                NonZeroUsize::new(REMEMBERED_ANSWERS).expect("a positive bound"),
            )),
        }
    }
}

impl AnswerLedger {
    pub fn remember(&self, answer_id: &str, principal: &str, deployment: DeploymentLabels) {
        self.lock().put(
            answer_id.to_owned(),
            Answered {
                principal: principal.to_owned(),
                deployment,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, Answered>> {
        self.answers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Service {
    /// Records `principal`'s `score` (0 to 1) for its answer `answer_id`. Unknown,
    /// forgotten and other callers' answers read alike.
    pub fn feedback(&self, principal: &Principal, answer_id: &str, score: f64) -> Result<()> {
        self.admit_call(principal)?;
        if !(0.0..=1.0).contains(&score) {
            return Err(Error::invalid(format!(
                "score must be between 0 and 1, got {score}"
            )));
        }
        let answered = self
            .answers
            .lock()
            .get(answer_id)
            .filter(|answered| answered.principal == principal.id())
            .cloned()
            .ok_or_else(|| {
                Error::not_found(format!(
                    "no answer {answer_id:?} to rate (recent answers of the same caller only)"
                ))
            })?;
        self.metrics()
            .quality_score
            .get_or_create(&answered.deployment)
            .observe(score);
        Ok(())
    }
}

/// Whether every `[n]` in `text` names one of the `passages` given (1-based). An answer
/// that cites nothing is valid.
pub fn citations_are_valid(text: &str, passages: usize) -> bool {
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find(']') else {
            break;
        };
        if let Ok(number) = rest[..close].trim().parse::<usize>()
            && !(1..=passages).contains(&number)
        {
            return false;
        }
        rest = &rest[close + 1..];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn citations_must_name_a_passage_that_was_sent() {
        assert!(citations_are_valid("To a paired region [1].", 2));
        assert!(citations_are_valid("Both [1][2], see [note].", 2));
        assert!(citations_are_valid("No citation at all.", 0));
        assert!(!citations_are_valid("Invented [3].", 2));
        assert!(!citations_are_valid("Zero [0].", 2));
    }
}
