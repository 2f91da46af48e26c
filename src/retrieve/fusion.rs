//! Merging ranked lists from different sources into one list, one entry per document.
//!
//! Scores from different sources (BM25, cosine in different spaces) are never
//! compared directly: RRF uses only ranks, DBSF normalizes each list by its own
//! score distribution first.

use std::collections::HashMap;

use crate::config::FusionMethod;
use crate::document::Hit;

/// One source's answer, best first.
#[derive(Debug, Clone)]
pub struct RankedList {
    pub source: String,
    pub weight: f64,
    pub hits: Vec<Hit>,
}

/// What one source added to a fused document.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    pub source: String,
    /// 1-based rank of the document in that source's list, after collapsing
    /// several chunks of one document to its best.
    pub rank: u32,
    pub score: f32,
    pub contribution: f64,
    pub chunk_id: String,
}

/// A document in the fused list.
#[derive(Debug, Clone, PartialEq)]
pub struct FusedHit {
    /// The chunk shown for the document: from the source that contributed most.
    pub hit: Hit,
    pub score: f64,
    /// In the order of the input lists.
    pub contributions: Vec<Contribution>,
    /// The passage of `hit` that matches the query, when the caller asked for snippets.
    pub snippet: Option<crate::retrieve::snippet::Snippet>,
}

/// Fuses the lists and returns the best `top_k` documents, deterministic for equal
/// inputs: ties break by best single rank, then by document id.
pub fn fuse(lists: &[RankedList], method: FusionMethod, rrf_k: f64, top_k: usize) -> Vec<FusedHit> {
    if top_k == 0 {
        return Vec::new();
    }
    // Tally with borrowed hits; only the `top_k` winners are copied out at the end.
    let capacity = lists.iter().map(|list| list.hits.len()).sum();
    let mut slot_of: HashMap<&str, usize> = HashMap::with_capacity(capacity);
    let mut tallies: Vec<Tally> = Vec::with_capacity(capacity);
    let mut documents: Vec<(usize, &Hit)> = Vec::new();
    for (list_index, list) in lists.iter().enumerate() {
        // A source may return several chunks of one document: the document ranks where
        // its best (first) chunk does, and the others do not push later documents down.
        documents.clear();
        for hit in &list.hits {
            let slot = *slot_of.entry(hit.doc_id.as_str()).or_insert_with(|| {
                tallies.push(Tally {
                    score: 0.0,
                    shown: hit,
                    shown_contribution: f64::NEG_INFINITY,
                    best_rank: u32::MAX,
                    last_list: usize::MAX,
                    parts: Vec::with_capacity(lists.len()),
                });
                tallies.len() - 1
            });
            if tallies[slot].last_list != list_index {
                tallies[slot].last_list = list_index;
                documents.push((slot, hit));
            }
        }
        let normalized = match method {
            FusionMethod::Rrf => None,
            FusionMethod::Dbsf => Some(DistributionBounds::of(
                documents.iter().map(|(_, hit)| hit.score),
            )),
        };
        for (index, &(slot, hit)) in documents.iter().enumerate() {
            let rank = index as u32 + 1;
            let contribution = list.weight
                * match &normalized {
                    None => 1.0 / (rrf_k + f64::from(rank)),
                    Some(bounds) => bounds.normalize(hit.score),
                };
            let tally = &mut tallies[slot];
            tally.score += contribution;
            // The chunk shown is the one from the list that contributed most; the
            // earlier list wins a tie.
            if contribution > tally.shown_contribution {
                tally.shown = hit;
                tally.shown_contribution = contribution;
            }
            tally.best_rank = tally.best_rank.min(rank);
            tally.parts.push(Part {
                list_index,
                rank,
                hit,
                contribution,
            });
        }
    }

    let order = |left: &Tally, right: &Tally| {
        right
            .score
            .total_cmp(&left.score)
            .then_with(|| left.best_rank.cmp(&right.best_rank))
            .then_with(|| left.shown.doc_id.cmp(&right.shown.doc_id))
    };
    if tallies.len() > top_k {
        tallies.select_nth_unstable_by(top_k, order);
        tallies.truncate(top_k);
    }
    tallies.sort_unstable_by(order);
    tallies
        .into_iter()
        .map(|tally| FusedHit {
            hit: tally.shown.clone(),
            score: tally.score,
            contributions: tally
                .parts
                .into_iter()
                .map(|part| Contribution {
                    source: lists[part.list_index].source.clone(),
                    rank: part.rank,
                    score: part.hit.score,
                    contribution: part.contribution,
                    chunk_id: part.hit.chunk_id.clone(),
                })
                .collect(),
            snippet: None,
        })
        .collect()
}

/// One document's running total while the lists are read.
struct Tally<'a> {
    score: f64,
    shown: &'a Hit,
    shown_contribution: f64,
    best_rank: u32,
    /// The last list this document was seen in, to skip its later chunks there.
    last_list: usize,
    parts: Vec<Part<'a>>,
}

/// One list's share of a document, turned into a [`Contribution`] only for winners.
struct Part<'a> {
    list_index: usize,
    rank: u32,
    hit: &'a Hit,
    contribution: f64,
}

/// DBSF: scores mapped to [0, 1] between mean - 3 sd and mean + 3 sd of the list.
struct DistributionBounds {
    low: f64,
    high: f64,
}

impl DistributionBounds {
    fn of(scores: impl Iterator<Item = f32>) -> Self {
        let scores: Vec<f64> = scores
            .map(f64::from)
            .filter(|score| score.is_finite())
            .collect();
        if scores.is_empty() {
            return Self {
                low: 0.0,
                high: 0.0,
            };
        }
        let count = scores.len() as f64;
        let mean = scores.iter().sum::<f64>() / count;
        let variance = scores
            .iter()
            .map(|score| (score - mean).powi(2))
            .sum::<f64>()
            / count;
        let spread = 3.0 * variance.sqrt();
        Self {
            low: mean - spread,
            high: mean + spread,
        }
    }

    fn normalize(&self, score: f32) -> f64 {
        let score = f64::from(score);
        if !score.is_finite() {
            return 0.0;
        }
        // One hit, or all equal: no spread to place it in; count it as middling.
        if self.high <= self.low {
            return 0.5;
        }
        ((score - self.low) / (self.high - self.low)).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hit(doc_id: &str, chunk: u32, score: f32) -> Hit {
        Hit {
            chunk_id: format!("{doc_id}#{chunk}"),
            doc_id: doc_id.into(),
            object_key: format!("{doc_id}.txt"),
            title: "".into(),
            text: format!("text of {doc_id}#{chunk}").into(),
            cloud: String::new(),
            region: String::new(),
            classes: Vec::new(),
            score,
            span: None,
        }
    }

    fn list(source: &str, weight: f64, docs: &[&str]) -> RankedList {
        RankedList {
            source: source.into(),
            weight,
            hits: docs
                .iter()
                .enumerate()
                .map(|(index, doc)| hit(doc, 0, 10.0 - index as f32))
                .collect(),
        }
    }

    #[test]
    fn rrf_uses_one_based_ranks_and_k() {
        let fused = fuse(
            &[list("bm25", 1.0, &["a", "b"])],
            FusionMethod::Rrf,
            60.0,
            10,
        );
        assert!((fused[0].score - 1.0 / 61.0).abs() < 1e-12);
        assert!((fused[1].score - 1.0 / 62.0).abs() < 1e-12);
    }

    #[test]
    fn a_document_found_by_both_sources_beats_one_found_by_either() {
        let lists = [
            list("bm25", 1.0, &["a", "shared"]),
            list("dense", 1.0, &["b", "shared"]),
        ];
        let fused = fuse(&lists, FusionMethod::Rrf, 60.0, 10);
        assert_eq!(fused[0].hit.doc_id, "shared");
        assert_eq!(fused[0].contributions.len(), 2);
        assert_eq!(fused[0].contributions[0].rank, 2);
        assert_eq!(fused[0].contributions[1].source, "dense");
    }

    #[test]
    fn weights_scale_contributions() {
        let lists = [list("bm25", 1.0, &["a"]), list("dense", 3.0, &["b"])];
        let fused = fuse(&lists, FusionMethod::Rrf, 60.0, 10);
        assert_eq!(fused[0].hit.doc_id, "b");
        assert!((fused[0].score - 3.0 / 61.0).abs() < 1e-12);
    }

    #[test]
    fn chunks_of_one_document_collapse_to_its_best_and_keep_later_ranks() {
        let lists = [RankedList {
            source: "dense".into(),
            weight: 1.0,
            hits: vec![hit("a", 1, 0.9), hit("a", 0, 0.8), hit("b", 0, 0.7)],
        }];
        let fused = fuse(&lists, FusionMethod::Rrf, 60.0, 10);
        assert_eq!(fused.len(), 2);
        assert_eq!(fused[0].hit.chunk_id, "a#1");
        assert_eq!(
            fused[1].contributions[0].rank, 2,
            "b is the second document"
        );
    }

    #[test]
    fn dbsf_normalizes_each_list_by_its_own_distribution() {
        // BM25 scores in the tens and cosines below one: only their place in
        // their own list matters.
        let lists = [
            RankedList {
                source: "bm25".into(),
                weight: 1.0,
                hits: vec![hit("a", 0, 30.0), hit("b", 0, 20.0), hit("c", 0, 10.0)],
            },
            RankedList {
                source: "dense".into(),
                weight: 1.0,
                hits: vec![hit("c", 0, 0.9), hit("b", 0, 0.8), hit("a", 0, 0.7)],
            },
        ];
        let fused = fuse(&lists, FusionMethod::Dbsf, 60.0, 10);
        let scores: Vec<f64> = fused.iter().map(|hit| hit.score).collect();
        for score in &scores {
            assert!(
                (score - 1.0).abs() < 1e-6,
                "symmetric lists sum to 1: {scores:?}"
            );
        }
    }

    #[test]
    fn empty_input_gives_empty_output() {
        assert!(fuse(&[], FusionMethod::Rrf, 60.0, 10).is_empty());
        assert!(fuse(&[list("x", 1.0, &["a"])], FusionMethod::Rrf, 60.0, 0).is_empty());
    }

    proptest! {
        #[test]
        fn fused_lists_are_sorted_unique_and_bounded(
            lists in proptest::collection::vec(
                proptest::collection::vec((0u8..30, 0.0f32..100.0), 0..40), 0..5),
            top_k in 0usize..50,
            use_dbsf in any::<bool>(),
        ) {
            let lists: Vec<RankedList> = lists.iter().enumerate().map(|(index, hits)| RankedList {
                source: format!("s{index}"),
                weight: 1.0,
                hits: hits.iter().map(|(doc, score)| hit(&doc.to_string(), 0, *score)).collect(),
            }).collect();
            let method = if use_dbsf { FusionMethod::Dbsf } else { FusionMethod::Rrf };
            let fused = fuse(&lists, method, 60.0, top_k);
            prop_assert!(fused.len() <= top_k);
            let mut ids = std::collections::HashSet::new();
            for window in fused.windows(2) {
                prop_assert!(window[0].score >= window[1].score);
            }
            for hit in &fused {
                prop_assert!(ids.insert(hit.hit.doc_id.clone()));
                let total: f64 = hit.contributions.iter().map(|c| c.contribution).sum();
                prop_assert!((total - hit.score).abs() < 1e-9);
            }
        }
    }
}
