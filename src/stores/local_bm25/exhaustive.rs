//! A top-k collector that scores every matching document, for queries where
//! tantivy's block-max WAND ([`tantivy::collector::TopDocs`]) skips little.
//!
//! WAND pays for its skipping with per-document bookkeeping (sorting the term
//! cursors around a pivot). That pays off when a high threshold lets it jump over
//! most postings; it does not when the top k is deep compared with the lists (100
//! candidates over a few thousand matches) or when every query term is common (no
//! block can be ruled out). tantivy's plain `for_each` scores a disjunction through
//! its buffered union instead: a window of documents at a time, one score array, no
//! per-document sorting. This collector takes that path and keeps the best `limit`
//! documents with a threshold that rises as it goes.
//!
//! Results are ordered as `TopDocs` orders them: score descending, then document
//! address ascending. The pages agree up to float rounding: the two paths add a
//! document's term scores in different orders, so a score may differ in its last bit
//! and documents whose scores are that close may swap places.

use std::cmp::Ordering;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::{DocAddress, DocId, Score, SegmentOrdinal, SegmentReader};

/// The best `limit` documents by score, scoring every match.
pub(super) struct ExhaustiveTopDocs {
    limit: usize,
}

impl ExhaustiveTopDocs {
    pub(super) fn with_limit(limit: usize) -> Self {
        Self { limit }
    }
}

impl Collector for ExhaustiveTopDocs {
    type Fruit = Vec<(Score, DocAddress)>;
    type Child = SegmentTopDocs;

    fn for_segment(
        &self,
        segment_ord: SegmentOrdinal,
        _segment: &SegmentReader,
    ) -> tantivy::Result<SegmentTopDocs> {
        Ok(SegmentTopDocs {
            segment_ord,
            limit: self.limit,
            kept: Vec::with_capacity(self.limit.saturating_mul(2)),
            threshold: Score::NEG_INFINITY,
        })
    }

    fn requires_scoring(&self) -> bool {
        true
    }

    fn merge_fruits(&self, segment_fruits: Vec<Self::Fruit>) -> tantivy::Result<Self::Fruit> {
        let mut merged: Vec<(Score, DocAddress)> = segment_fruits.into_iter().flatten().collect();
        keep_best(&mut merged, self.limit);
        merged.sort_unstable_by(best_first);
        Ok(merged)
    }
}

pub(super) struct SegmentTopDocs {
    segment_ord: SegmentOrdinal,
    limit: usize,
    /// Candidates, at most `2 * limit` between compactions.
    kept: Vec<(Score, DocAddress)>,
    /// The `limit`-th best score at the last compaction: nothing at or below it can enter.
    threshold: Score,
}

impl SegmentCollector for SegmentTopDocs {
    type Fruit = Vec<(Score, DocAddress)>;

    fn collect(&mut self, doc_id: DocId, score: Score) {
        // Documents come in ascending order and a tie goes to the lower address, so a
        // score equal to the threshold cannot enter either.
        if score <= self.threshold || self.limit == 0 {
            return;
        }
        self.kept.push((
            score,
            DocAddress {
                segment_ord: self.segment_ord,
                doc_id,
            },
        ));
        if self.kept.len() >= self.limit.saturating_mul(2) {
            keep_best(&mut self.kept, self.limit);
            self.threshold = self
                .kept
                .iter()
                .map(|(score, _)| *score)
                .fold(Score::INFINITY, Score::min);
        }
    }

    fn harvest(mut self) -> Self::Fruit {
        keep_best(&mut self.kept, self.limit);
        self.kept
    }
}

/// Score descending, then address ascending (the order of `TopDocs`).
fn best_first(left: &(Score, DocAddress), right: &(Score, DocAddress)) -> Ordering {
    right
        .0
        .total_cmp(&left.0)
        .then_with(|| left.1.cmp(&right.1))
}

/// Keep the best `limit` of `hits`, in no order, in linear time.
fn keep_best(hits: &mut Vec<(Score, DocAddress)>, limit: usize) {
    if hits.len() > limit {
        if limit > 0 {
            hits.select_nth_unstable_by(limit - 1, best_first);
        }
        hits.truncate(limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(segment_ord: u32, limit: usize) -> SegmentTopDocs {
        SegmentTopDocs {
            segment_ord,
            limit,
            kept: Vec::new(),
            threshold: Score::NEG_INFINITY,
        }
    }

    fn address(segment_ord: u32, doc_id: u32) -> DocAddress {
        DocAddress {
            segment_ord,
            doc_id,
        }
    }

    #[test]
    fn keeps_the_best_scores_through_compactions_with_ties_to_the_lower_address() {
        // Enough documents to compact many times; the top scores are spread out and
        // tie within and across segments.
        let mut first = segment(0, 3);
        let mut second = segment(1, 3);
        for doc in 0..50u32 {
            let score = match doc {
                12 => 9.0,
                7 | 40 => 5.0,
                _ => (doc % 5) as Score,
            };
            first.collect(doc, score);
            second.collect(doc, if doc == 3 { 5.0 } else { 1.0 });
        }
        let collector = ExhaustiveTopDocs::with_limit(3);
        let merged = collector
            .merge_fruits(vec![second.harvest(), first.harvest()])
            .unwrap();
        assert_eq!(
            merged,
            vec![
                (9.0, address(0, 12)),
                (5.0, address(0, 7)),
                (5.0, address(0, 40))
            ]
        );
    }

    #[test]
    fn pages_equal_those_of_block_max_wand_over_several_segments() {
        use tantivy::collector::TopDocs;
        use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
        use tantivy::schema::{IndexRecordOption, Schema, TEXT};
        use tantivy::{Index, TantivyDocument, Term};

        let mut schema = Schema::builder();
        let body = schema.add_text_field("body", TEXT);
        let index = Index::create_in_ram(schema.build());
        let mut writer = index.writer_with_num_threads(1, 15_000_000).unwrap();
        // Three segments of documents made of a skewed 40-word vocabulary, so some
        // words are in most documents and scores tie often.
        let word = |seed: u64| format!("w{}", (seed * seed) % 1_601 / 40);
        let mut seed = 7u64;
        for _segment in 0..3 {
            for _doc in 0..700 {
                let words: Vec<String> = (0..12)
                    .map(|_| {
                        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        word(seed >> 33)
                    })
                    .collect();
                let mut document = TantivyDocument::new();
                document.add_text(body, words.join(" "));
                writer.add_document(document).unwrap();
            }
            writer.commit().unwrap();
        }
        let searcher = index.reader().unwrap().searcher();
        assert_eq!(searcher.segment_readers().len(), 3);
        for probe in 0..30u64 {
            let clauses: Vec<(Occur, Box<dyn Query>)> = (0..1 + probe % 5)
                .map(|term| {
                    let term =
                        Term::from_field_text(body, &format!("w{}", (probe * 7 + term * 3) % 40));
                    let query: Box<dyn Query> =
                        Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs));
                    (Occur::Should, query)
                })
                .collect();
            let query = BooleanQuery::new(clauses);
            for limit in [1, 10, 100] {
                let wand = searcher
                    .search(&query, &TopDocs::with_limit(limit).order_by_score())
                    .unwrap();
                let exhaustive = searcher
                    .search(&query, &ExhaustiveTopDocs::with_limit(limit))
                    .unwrap();
                assert_same_page(&exhaustive, &wand, &format!("probe {probe}, limit {limit}"));
            }
        }
    }

    /// The two paths add a document's term scores in different orders, so a score may
    /// differ in its last bits and near-equal scores may swap places: the pages must
    /// have the same scores rank by rank, and the same documents above the last score.
    fn assert_same_page(left: &[(Score, DocAddress)], right: &[(Score, DocAddress)], case: &str) {
        const ROUNDING: Score = 1e-5;
        assert_eq!(left.len(), right.len(), "{case}");
        for ((left_score, _), (right_score, _)) in left.iter().zip(right) {
            assert!(
                (left_score - right_score).abs() <= ROUNDING,
                "{case}: {left:?} {right:?}"
            );
        }
        let Some((last, _)) = right.last() else {
            return;
        };
        let clearly_in = |page: &[(Score, DocAddress)]| {
            let mut addresses: Vec<DocAddress> = page
                .iter()
                .filter(|(score, _)| *score > last + ROUNDING)
                .map(|(_, address)| *address)
                .collect();
            addresses.sort();
            addresses
        };
        assert_eq!(clearly_in(left), clearly_in(right), "{case}");
    }

    #[test]
    fn a_limit_of_zero_keeps_nothing() {
        let mut collector = segment(0, 0);
        collector.collect(1, 3.0);
        assert!(collector.harvest().is_empty());
    }
}
