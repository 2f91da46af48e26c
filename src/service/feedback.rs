//! Feedback on answers: which deployment gave each recent answer, so a caller's score
//! lands on the provider that earned it; and whether an answer's citations point at
//! passages it was actually given.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};

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
    answers: Mutex<Ledger>,
}

#[derive(Debug)]
struct Ledger {
    recent: LruCache<String, Answered>,
    /// Each deployment's labels once, shared by its answers: deployments are few
    /// and fixed by the config, answers up to [`REMEMBERED_ANSWERS`]. A list: a scan
    /// of a few labels whose names share their pointers beats hashing five strings.
    deployments: Vec<Arc<DeploymentLabels>>,
}

#[derive(Debug, Clone)]
struct Answered {
    principal: String,
    deployment: Arc<DeploymentLabels>,
}

impl Default for AnswerLedger {
    fn default() -> Self {
        Self {
            answers: Mutex::new(Ledger {
                recent: LruCache::new(
                    NonZeroUsize::new(REMEMBERED_ANSWERS).expect("a positive bound"),
                ),
                deployments: Vec::new(),
            }),
        }
    }
}

impl AnswerLedger {
    pub fn remember(&self, answer_id: String, principal: String, deployment: DeploymentLabels) {
        let mut ledger = self.lock();
        let known = ledger
            .deployments
            .iter()
            .find(|known| ***known == deployment);
        let deployment = match known {
            Some(known) => Arc::clone(known),
            None => {
                let labels = Arc::new(deployment);
                ledger.deployments.push(Arc::clone(&labels));
                labels
            }
        };
        ledger.recent.put(
            answer_id,
            Answered {
                principal,
                deployment,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.answers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Service {
    /// Records `principal`'s `score` (0 to 1) for its answer `answer_id`. Unknown,
    /// forgotten and other callers' answers read alike.
    pub fn feedback(&self, principal: &Principal, answer_id: &str, score: f64) -> Result<()> {
        self.admit_call_in_process(principal)?;
        if !(0.0..=1.0).contains(&score) {
            return Err(Error::invalid(format!(
                "score must be between 0 and 1, got {score}"
            )));
        }
        let answered = self
            .answers
            .lock()
            .recent
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
            .get_or_create(&*answered.deployment)
            .observe(score);
        Ok(())
    }
}

/// The passage numbers an answer cites, split by whether a passage of that number was
/// sent (1-based, each number once, in order of first mention).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CitedPassages {
    pub cited: Vec<u32>,
    pub invalid: Vec<u32>,
}

impl CitedPassages {
    /// Reads `[1]`, `[2][3]` and `[1, 2]` in `text`; brackets holding anything but
    /// numbers (`[note]`, `[a]`) are not citations.
    pub fn of(text: &str, passages: usize) -> Self {
        let mut found = Self::default();
        let mut rest = text;
        while let Some(open) = rest.find('[') {
            rest = &rest[open + 1..];
            let Some(close) = rest.find(']') else {
                break;
            };
            let inside = &rest[..close];
            let numbers: Option<Vec<u32>> = inside
                .split(',')
                .map(|number| number.trim().parse::<u32>().ok())
                .collect();
            for number in numbers.unwrap_or_default() {
                let sent = (1..=passages).contains(&(number as usize));
                let list = if sent {
                    &mut found.cited
                } else {
                    &mut found.invalid
                };
                if !list.contains(&number) {
                    list.push(number);
                }
            }
            rest = &rest[close + 1..];
        }
        found
    }

    /// Every citation names a passage that was sent (citing nothing is valid).
    pub fn all_valid(&self) -> bool {
        self.invalid.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(deployment: &str) -> DeploymentLabels {
        DeploymentLabels {
            provider: "p".into(),
            deployment: deployment.into(),
            model: "m".into(),
            cloud: "aws".into(),
            region: "eu-west-1".into(),
        }
    }

    #[test]
    fn answers_of_one_deployment_share_its_labels_and_each_keeps_its_own() {
        let ledger = AnswerLedger::default();
        for id in 0..100 {
            ledger.remember(format!("a{id}"), "team".into(), labels("p/east"));
        }
        ledger.remember("b".into(), "team".into(), labels("p/west"));
        let mut ledger = ledger.lock();
        assert_eq!(ledger.deployments.len(), 2);
        let east = ledger.recent.get("a7").expect("remembered").clone();
        assert_eq!(*east.deployment, labels("p/east"));
        assert_eq!(east.principal, "team");
        assert_eq!(
            *ledger.recent.get("b").unwrap().deployment,
            labels("p/west")
        );
    }

    #[test]
    fn citations_must_name_a_passage_that_was_sent() {
        let of = CitedPassages::of;
        assert!(of("To a paired region [1].", 2).all_valid());
        assert!(of("Both [1][2], see [note].", 2).all_valid());
        assert!(of("No citation at all.", 0).all_valid());
        assert!(!of("Invented [3].", 2).all_valid());
        assert!(!of("Zero [0].", 2).all_valid());
    }

    #[test]
    fn cited_numbers_are_listed_once_in_order_split_by_validity() {
        let found = CitedPassages::of("See [2], [1, 2] and [7][1]; not [a] or [1 and 2].", 3);
        assert_eq!(found.cited, vec![2, 1]);
        assert_eq!(found.invalid, vec![7]);
    }
}
