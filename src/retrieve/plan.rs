//! Which sources a request goes to, grouped by what the query must be turned into.

use std::collections::BTreeMap;

use crate::error::{Error, Result as SkyResult};
use crate::stores::Source;

/// The sources of one request: lexical ones take the text as is; dense ones
/// need the query embedded once per space.
#[derive(Default)]
pub struct Plan<'a> {
    pub lexical: Vec<&'a Source>,
    /// Space id -> its sources; ordered so outcomes come back in a stable order.
    pub by_space: BTreeMap<&'a str, Vec<&'a Source>>,
}

impl<'a> Plan<'a> {
    /// Takes out the sources `reaches` refuses, with its reason: the query is not
    /// sent to them.
    pub fn take_unreachable(
        &mut self,
        reaches: impl Fn(&Source) -> Result<(), String>,
    ) -> Vec<(&'a Source, String)> {
        let mut out = Vec::new();
        let mut keep = |source: &&'a Source| match reaches(source) {
            Ok(()) => true,
            Err(why) => {
                out.push((*source, why));
                false
            }
        };
        self.lexical.retain(&mut keep);
        for sources in self.by_space.values_mut() {
            sources.retain(&mut keep);
        }
        self.by_space.retain(|_, sources| !sources.is_empty());
        out
    }

    pub fn len(&self) -> usize {
        self.lexical.len() + self.by_space.values().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Plans `requested` (empty: every source). An unknown source id is the
/// caller's error, named with the ones that exist.
pub fn plan<'a>(sources: &'a [Source], requested: &[String]) -> SkyResult<Plan<'a>> {
    for id in requested {
        if !sources.iter().any(|source| source.id() == id) {
            let known: Vec<&str> = sources.iter().map(Source::id).collect();
            return Err(Error::not_found(format!(
                "unknown source {id:?}; known sources: {}",
                known.join(", ")
            )));
        }
    }
    let mut plan = Plan::default();
    let chosen = sources
        .iter()
        .filter(|source| requested.is_empty() || requested.iter().any(|id| id == source.id()));
    for source in chosen {
        match source.info().space.as_deref() {
            None => plan.lexical.push(source),
            Some(space) => plan.by_space.entry(space).or_default().push(source),
        }
    }
    Ok(plan)
}
