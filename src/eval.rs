//! Retrieval quality on a BEIR-format dataset: nDCG@10 and recall@100, through
//! the real gRPC `Search`, per source and fused.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// A BEIR test split: queries and their graded relevance judgements.
pub struct Benchmark {
    /// (query id, text), only queries that have judgements, in file order.
    pub queries: Vec<(String, String)>,
    /// query id -> doc id -> grade (> 0 is relevant).
    pub qrels: HashMap<String, HashMap<String, u32>>,
}

#[derive(Deserialize)]
struct QueryLine {
    #[serde(rename = "_id")]
    id: String,
    text: String,
}

impl Benchmark {
    /// Reads `queries.jsonl` and `qrels/test.tsv` from a BEIR folder.
    pub fn load(dataset_dir: &Path) -> Result<Self> {
        let qrels_path = dataset_dir.join("qrels").join("test.tsv");
        let qrels_text = std::fs::read_to_string(&qrels_path).map_err(|error| {
            Error::invalid(format!("cannot read {}: {error}", qrels_path.display()))
        })?;
        let qrels = parse_qrels(&qrels_text)?;
        let queries_path = dataset_dir.join("queries.jsonl");
        let queries_text = std::fs::read_to_string(&queries_path).map_err(|error| {
            Error::invalid(format!("cannot read {}: {error}", queries_path.display()))
        })?;
        let mut queries = Vec::new();
        for (number, line) in queries_text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let query: QueryLine = serde_json::from_str(line).map_err(|error| {
                Error::invalid(format!("queries.jsonl line {}: {error}", number + 1))
            })?;
            if qrels.contains_key(&query.id) {
                queries.push((query.id, query.text));
            }
        }
        if queries.is_empty() {
            return Err(Error::invalid(
                "no query in queries.jsonl has judgements in qrels/test.tsv",
            ));
        }
        Ok(Self { queries, qrels })
    }
}

fn parse_qrels(text: &str) -> Result<HashMap<String, HashMap<String, u32>>> {
    let mut qrels: HashMap<String, HashMap<String, u32>> = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split('\t').collect();
        if number == 0 && fields.first() == Some(&"query-id") {
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let [query, doc, grade] = fields[..] else {
            return Err(Error::invalid(format!(
                "qrels line {}: expected 3 tab-separated fields",
                number + 1
            )));
        };
        let grade: u32 = grade.trim().parse().map_err(|_| {
            Error::invalid(format!(
                "qrels line {}: grade {grade:?} is not a number",
                number + 1
            ))
        })?;
        qrels
            .entry(query.to_string())
            .or_default()
            .insert(doc.to_string(), grade);
    }
    Ok(qrels)
}

/// nDCG@k with linear gains, as trec_eval and BEIR compute it.
pub fn ndcg_at(ranked: &[String], judgements: &HashMap<String, u32>, k: usize) -> f64 {
    let discount = |position: usize| 1.0 / ((position + 2) as f64).log2();
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .map(|(position, doc)| f64::from(*judgements.get(doc).unwrap_or(&0)) * discount(position))
        .sum();
    let mut ideal: Vec<u32> = judgements
        .values()
        .copied()
        .filter(|grade| *grade > 0)
        .collect();
    ideal.sort_unstable_by(|left, right| right.cmp(left));
    let ideal_dcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(position, grade)| f64::from(*grade) * discount(position))
        .sum();
    if ideal_dcg == 0.0 {
        0.0
    } else {
        dcg / ideal_dcg
    }
}

/// Share of the relevant documents found in the first k.
pub fn recall_at(ranked: &[String], judgements: &HashMap<String, u32>, k: usize) -> f64 {
    let relevant = judgements.values().filter(|grade| **grade > 0).count();
    if relevant == 0 {
        return 0.0;
    }
    let found = ranked
        .iter()
        .take(k)
        .filter(|doc| judgements.get(*doc).is_some_and(|grade| *grade > 0))
        .count();
    found as f64 / relevant as f64
}

/// Mean metrics of one run (one source or the fused list).
#[derive(Debug, Clone, Default)]
pub struct RunScores {
    pub ndcg_at_10: f64,
    pub recall_at_10: f64,
    pub recall_at_100: f64,
    pub queries: usize,
}

/// Averages per-query metrics; `runs` maps query id -> ranked doc ids.
pub fn score_run(benchmark: &Benchmark, runs: &HashMap<String, Vec<String>>) -> RunScores {
    let mut scores = RunScores::default();
    for (query_id, _) in &benchmark.queries {
        let ranked = runs.get(query_id).map(Vec::as_slice).unwrap_or(&[]);
        let judgements = &benchmark.qrels[query_id];
        scores.ndcg_at_10 += ndcg_at(ranked, judgements, 10);
        scores.recall_at_10 += recall_at(ranked, judgements, 10);
        scores.recall_at_100 += recall_at(ranked, judgements, 100);
        scores.queries += 1;
    }
    if scores.queries > 0 {
        scores.ndcg_at_10 /= scores.queries as f64;
        scores.recall_at_10 /= scores.queries as f64;
        scores.recall_at_100 /= scores.queries as f64;
    }
    scores
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judgements(relevant: &[&str]) -> HashMap<String, u32> {
        relevant.iter().map(|doc| (doc.to_string(), 1)).collect()
    }

    fn ranked(docs: &[&str]) -> Vec<String> {
        docs.iter().map(|doc| doc.to_string()).collect()
    }

    #[test]
    fn perfect_ranking_scores_one() {
        let judged = judgements(&["a", "b"]);
        assert!((ndcg_at(&ranked(&["a", "b", "c"]), &judged, 10) - 1.0).abs() < 1e-12);
        assert!((recall_at(&ranked(&["b", "a"]), &judged, 100) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn ndcg_matches_a_hand_computed_value() {
        // One relevant document at rank 3: 1/log2(4) = 0.5, ideal 1.
        let judged = judgements(&["c"]);
        assert!((ndcg_at(&ranked(&["a", "b", "c"]), &judged, 10) - 0.5).abs() < 1e-12);
        // Beyond the cutoff it counts for nothing.
        assert_eq!(ndcg_at(&ranked(&["a", "b", "c"]), &judged, 2), 0.0);
    }

    #[test]
    fn recall_counts_the_share_found() {
        let judged = judgements(&["a", "b", "c", "d"]);
        assert!((recall_at(&ranked(&["a", "x", "c"]), &judged, 100) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn qrels_parse_with_header_and_reject_garbage() {
        let qrels = parse_qrels("query-id\tcorpus-id\tscore\n1\t31715818\t1\n").unwrap();
        assert_eq!(qrels["1"]["31715818"], 1);
        assert!(parse_qrels("1\t2\n").is_err());
    }
}
