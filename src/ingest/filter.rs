//! Include/exclude globs over object keys, relative to the indexed prefix.

use globset::{GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

/// Include/exclude globs over keys relative to the indexed prefix.
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

impl KeyFilter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        Ok(Self {
            include: glob_set("include", include)?,
            exclude: glob_set("exclude", exclude)?,
        })
    }

    pub fn accepts(&self, relative_key: &str) -> bool {
        let included = self
            .include
            .as_ref()
            .is_none_or(|set| set.is_match(relative_key));
        let excluded = self
            .exclude
            .as_ref()
            .is_some_and(|set| set.is_match(relative_key));
        included && !excluded
    }
}

fn glob_set(what: &str, patterns: &[String]) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        // `*` stops at `/` so that `*.md` means top-level files and `**/*.md` any depth.
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|error| Error::invalid(format!("{what} glob {pattern:?}: {error}")))?;
        builder.add(glob);
    }
    let set = builder
        .build()
        .map_err(|error| Error::invalid(format!("{what} globs: {error}")))?;
    Ok(Some(set))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_are_relative_and_star_stops_at_slashes() {
        let filter =
            KeyFilter::new(&["**/*.md".into(), "*.txt".into()], &["drafts/**".into()]).unwrap();
        assert!(filter.accepts("guide/intro.md"));
        assert!(filter.accepts("intro.md"));
        assert!(filter.accepts("notes.txt"));
        assert!(!filter.accepts("deep/notes.txt"));
        assert!(!filter.accepts("drafts/idea.md"));
        assert!(!filter.accepts("image.png"));
        assert!(KeyFilter::default().accepts("anything/at/all.bin"));
        let error = KeyFilter::new(&["a/[".into()], &[]).unwrap_err();
        assert!(error.message.contains("include glob"), "{error}");
    }
}
