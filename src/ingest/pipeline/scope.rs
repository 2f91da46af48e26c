//! What one run covers and what it may delete.
//!
//! A manifest covers a whole bucket (or a whole indexing root), so that an object has one
//! manifest entry whichever URL reached it. A run lists only its URL's prefix (or one
//! object), so only manifest keys inside that scope can be judged by its listing. Inside
//! the scope, two sets of globs decide: the operator's (`[[bucket]]`), which a request can
//! never widen, and the request's, which can only narrow. An indexed object that the
//! request's globs leave out is not gone: its chunks go only when the request says `prune`.

use crate::error::Result;
use crate::ingest::filter::KeyFilter;

/// Why a manifest key absent from a complete listing is (or is not) removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Disposition {
    /// Outside what this run listed: another URL's business.
    OutOfScope,
    /// The operator's globs leave it out: its chunks go (the operator's policy).
    OperatorExcluded,
    /// Only the request's globs leave it out: its chunks go only with `prune`.
    RequestExcluded,
    /// Inside the scope and wanted: absent from the listing means gone.
    Wanted,
}

/// The keys a run covers and the two sets of globs over them.
#[derive(Debug, Clone, Default)]
pub(super) struct RunScope {
    /// Keys under this prefix (whole segments); `None`: the whole bucket.
    pub(super) list_prefix: Option<String>,
    /// Set when the run names one object: the scope is that key alone.
    pub(super) single_object: Option<String>,
    pub(super) operator: KeyFilter,
    /// The operator's globs are relative to this prefix (the `[[bucket]]` entry's);
    /// `None`: relative to what the run lists, like the request's.
    pub(super) operator_base: Option<String>,
    pub(super) request: KeyFilter,
}

impl RunScope {
    pub(super) fn new(
        operator: (&[String], &[String]),
        operator_base: Option<String>,
        request: (&[String], &[String]),
    ) -> Result<Self> {
        Ok(Self {
            operator: KeyFilter::new(operator.0, operator.1)?,
            operator_base: operator_base.filter(|base| !base.is_empty()),
            request: KeyFilter::new(request.0, request.1)?,
            ..Self::default()
        })
    }

    /// Whether a listed key is indexed: inside the scope and wanted by both sets of globs.
    pub(super) fn accepts(&self, key: &str) -> bool {
        self.disposition(key) == Disposition::Wanted
    }

    pub(super) fn disposition(&self, key: &str) -> Disposition {
        let listed_base = match (&self.single_object, &self.list_prefix) {
            (Some(object), _) if object == key => object.rsplit_once('/').map(|(parent, _)| parent),
            (Some(_), _) => return Disposition::OutOfScope,
            (None, Some(prefix)) if under(key, prefix).is_none() => {
                return Disposition::OutOfScope;
            }
            (None, prefix) => prefix.as_deref(),
        };
        let operator_base = self.operator_base.as_deref().or(listed_base);
        if !self.operator.accepts(relative(key, operator_base)) {
            return Disposition::OperatorExcluded;
        }
        if !self.request.accepts(relative(key, listed_base)) {
            return Disposition::RequestExcluded;
        }
        Disposition::Wanted
    }
}

/// The rest of `key` under `prefix` on whole segments.
fn under<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return Some(key);
    }
    key.strip_prefix(prefix)?.strip_prefix('/')
}

fn relative<'a>(key: &'a str, base: Option<&str>) -> &'a str {
    base.and_then(|base| under(key, base)).unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| (*item).to_owned()).collect()
    }

    #[test]
    fn a_request_cannot_widen_the_operator_globs() {
        // The operator indexes docs/ but never docs/secret/; the request asks for everything.
        let mut scope = RunScope::new(
            (&strings(&["**/*.md"]), &strings(&["secret/**"])),
            Some("docs".into()),
            (&strings(&["**"]), &[]),
        )
        .unwrap();
        scope.list_prefix = Some("docs".into());
        assert!(scope.accepts("docs/guide.md"));
        assert_eq!(
            scope.disposition("docs/secret/keys.md"),
            Disposition::OperatorExcluded
        );
        assert_eq!(
            scope.disposition("docs/x.pdf"),
            Disposition::OperatorExcluded
        );
        // Listing the excluded folder itself does not move the operator's base.
        scope.list_prefix = Some("docs/secret".into());
        assert!(!scope.accepts("docs/secret/keys.md"));
        assert_eq!(scope.disposition("docs/guide.md"), Disposition::OutOfScope);
    }

    #[test]
    fn request_globs_only_narrow_and_mark_what_they_leave_out() {
        let mut scope = RunScope::new(
            (&[], &[]),
            None,
            (&strings(&["**/*.md"]), &strings(&["drafts/**"])),
        )
        .unwrap();
        scope.list_prefix = Some("team".into());
        assert!(scope.accepts("team/a.md"));
        assert_eq!(
            scope.disposition("team/drafts/b.md"),
            Disposition::RequestExcluded
        );
        assert_eq!(
            scope.disposition("team/c.txt"),
            Disposition::RequestExcluded
        );
        assert_eq!(scope.disposition("teammates/a.md"), Disposition::OutOfScope);
        assert_eq!(scope.disposition("other/a.md"), Disposition::OutOfScope);
    }

    #[test]
    fn a_single_object_scope_is_that_key_alone_with_globs_on_its_name() {
        let mut scope = RunScope::new((&[], &[]), None, (&strings(&["*.md"]), &[])).unwrap();
        scope.single_object = Some("sub/a.md".into());
        assert!(scope.accepts("sub/a.md"));
        assert_eq!(scope.disposition("sub/b.md"), Disposition::OutOfScope);
        scope.single_object = Some("sub/a.txt".into());
        assert_eq!(scope.disposition("sub/a.txt"), Disposition::RequestExcluded);
    }
}
