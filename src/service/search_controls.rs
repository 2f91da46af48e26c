//! A caller's search controls (weights, RRF k, candidates, minimum score, pages,
//! snippets) checked against the server's sources and limits.

use std::collections::HashMap;

use crate::config::{Config, FusionMethod};
use crate::error::{Error, Result};
use crate::retrieve::Controls;
use crate::retrieve::page::{PageRequest, PageToken};

/// RRF's k a caller may ask for: past 1000 every rank scores nearly the same.
pub const RRF_K_RANGE: std::ops::RangeInclusive<f64> = 1.0..=1000.0;

/// The controls as a caller states them; None or empty means the configured behaviour.
#[derive(Debug, Clone, Default)]
pub struct SearchControls {
    pub source_weights: HashMap<String, f64>,
    pub rrf_k: Option<f64>,
    pub candidates_per_source: Option<u32>,
    /// Applies to the fused score.
    pub min_score: Option<f64>,
    pub page_size: Option<u32>,
    pub page_token: Option<String>,
    pub snippets: bool,
}

/// The checked controls.
pub struct Checked {
    pub controls: Controls,
    /// Some when the caller asked for pages; then it, not top_k, says how deep to fuse.
    pub page: Option<PageRequest>,
}

/// Checks `asked` against the config: `known_sources` are every source id the server has,
/// `top_k` the call's, `asked_top_k` whether the caller set it.
pub fn check(
    config: &Config,
    asked: &SearchControls,
    fusion: Option<FusionMethod>,
    known_sources: &[&str],
    top_k: usize,
    asked_top_k: bool,
) -> Result<Checked> {
    for (source, weight) in &asked.source_weights {
        if !known_sources.contains(&source.as_str()) {
            return Err(Error::invalid(format!(
                "source_weights: unknown source {source:?}"
            )));
        }
        if !(weight.is_finite() && *weight >= 0.0) {
            return Err(Error::invalid(format!(
                "source_weights: the weight of {source:?} must be a number >= 0, got {weight}"
            )));
        }
    }
    if let Some(rrf_k) = asked.rrf_k {
        if !RRF_K_RANGE.contains(&rrf_k) {
            return Err(Error::invalid(format!(
                "rrf_k must be between 1 and 1000, got {rrf_k}"
            )));
        }
        if fusion.unwrap_or(config.search.fusion) != FusionMethod::Rrf {
            return Err(Error::invalid("rrf_k applies only to RRF fusion"));
        }
    }
    if let Some(min_score) = asked.min_score
        && !min_score.is_finite()
    {
        return Err(Error::invalid("min_score must be a finite number"));
    }
    let max_top_k = config.server.max_top_k as usize;
    let configured_candidates = config.search.candidates_per_source;
    let candidates_cap = max_top_k.max(configured_candidates);
    let candidates = match asked.candidates_per_source {
        None => None,
        Some(asked) if asked == 0 || asked as usize > candidates_cap => {
            return Err(Error::invalid(format!(
                "candidates_per_source must be between 1 and {candidates_cap} \
                 (the larger of server.max_top_k and search.candidates_per_source), got {asked}"
            )));
        }
        Some(asked) => Some(asked as usize),
    };
    let page = page_request(
        asked,
        asked_top_k,
        max_top_k,
        candidates,
        configured_candidates,
    )?;
    let candidates = match &page {
        // Every page asks the sources for the same number of hits: a deeper ask would
        // let documents in that reorder the pages already served.
        Some(_) => Some(candidates.unwrap_or(configured_candidates)),
        None => candidates.map(|candidates| candidates.max(top_k)),
    };
    Ok(Checked {
        controls: Controls {
            weights: asked.source_weights.clone(),
            rrf_k: asked.rrf_k,
            candidates,
            min_score: asked.min_score,
        },
        page,
    })
}

fn page_request(
    asked: &SearchControls,
    asked_top_k: bool,
    max_top_k: usize,
    candidates: Option<usize>,
    configured_candidates: usize,
) -> Result<Option<PageRequest>> {
    let token = asked
        .page_token
        .as_deref()
        .filter(|token| !token.is_empty());
    let Some(size) = asked.page_size.filter(|size| *size > 0) else {
        if token.is_some() {
            return Err(Error::invalid("page_token needs page_size"));
        }
        return Ok(None);
    };
    if asked_top_k {
        return Err(Error::invalid(
            "set top_k or page_size, not both: pages take page_size hits each",
        ));
    }
    if size as usize > max_top_k {
        return Err(Error::invalid(format!(
            "page_size must be between 1 and {max_top_k} (server.max_top_k), got {size}"
        )));
    }
    Ok(Some(PageRequest {
        size: size as usize,
        token: token.map(PageToken::decode).transpose()?,
        // Past the candidates each source gave, the list's order is no longer certain.
        limit: max_top_k.min(candidates.unwrap_or(configured_candidates)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse("", std::path::Path::new("/")).unwrap()
    }

    fn checked(asked: SearchControls) -> Result<Checked> {
        check(&config(), &asked, None, &["bm25", "dense"], 10, false)
    }

    #[test]
    fn defaults_change_nothing() {
        let checked = checked(SearchControls::default()).unwrap();
        assert!(checked.page.is_none());
        let controls = checked.controls;
        assert!(controls.weights.is_empty());
        assert_eq!(
            (controls.rrf_k, controls.candidates, controls.min_score),
            (None, None, None)
        );
    }

    #[test]
    fn bad_controls_are_refused_naming_the_field() {
        let weights = |id: &str, weight: f64| SearchControls {
            source_weights: HashMap::from([(id.to_string(), weight)]),
            ..Default::default()
        };
        for (asked, says) in [
            (weights("nope", 1.0), "unknown source \"nope\""),
            (weights("bm25", -1.0), "must be a number >= 0"),
            (weights("bm25", f64::NAN), "must be a number >= 0"),
            (
                SearchControls {
                    rrf_k: Some(0.5),
                    ..Default::default()
                },
                "rrf_k must be between 1 and 1000",
            ),
            (
                SearchControls {
                    candidates_per_source: Some(100_000),
                    ..Default::default()
                },
                "candidates_per_source must be between 1 and 1000",
            ),
            (
                SearchControls {
                    page_token: Some("abc".into()),
                    ..Default::default()
                },
                "page_token needs page_size",
            ),
            (
                SearchControls {
                    page_size: Some(5),
                    page_token: Some("garbage!".into()),
                    ..Default::default()
                },
                "not a token this server issued",
            ),
            (
                SearchControls {
                    min_score: Some(f64::INFINITY),
                    ..Default::default()
                },
                "min_score",
            ),
        ] {
            let error = checked(asked).err().unwrap();
            assert!(error.message.contains(says), "{}", error.message);
        }
        let dbsf = SearchControls {
            rrf_k: Some(10.0),
            ..Default::default()
        };
        let error = check(&config(), &dbsf, Some(FusionMethod::Dbsf), &[], 10, false)
            .err()
            .unwrap();
        assert!(error.message.contains("only to RRF"), "{}", error.message);
    }

    #[test]
    fn pages_fix_the_candidates_and_refuse_a_top_k() {
        let paged = SearchControls {
            page_size: Some(5),
            ..Default::default()
        };
        let checked = checked(paged.clone()).unwrap();
        assert_eq!(checked.controls.candidates, Some(100));
        let page = checked.page.unwrap();
        assert_eq!((page.size, page.limit, page.depth()), (5, 100, 6));
        let error = check(&config(), &paged, None, &[], 10, true).err().unwrap();
        assert!(error.message.contains("not both"), "{}", error.message);
    }
}
