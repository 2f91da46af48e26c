//! Tenants: which namespaces a request reaches, from what it asks for and the
//! namespaces the caller's roles pin it to.

use crate::error::{Error, Result};
use crate::stores::filter::valid_namespace;

/// The namespaces a search covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceScope {
    /// Every chunk, with a namespace or not: an unpinned caller that named none.
    Any,
    /// Only chunks of one of these.
    Within(Vec<String>),
}

/// What a search by a caller pinned to `pinned` (empty: not pinned) that asked for
/// `requested` (empty: none) covers. A pinned caller that names none gets all of its
/// own; naming another is PERMISSION_DENIED.
pub fn search_scope(pinned: &[String], requested: &str) -> Result<NamespaceScope> {
    if requested.is_empty() {
        return Ok(if pinned.is_empty() {
            NamespaceScope::Any
        } else {
            NamespaceScope::Within(pinned.to_vec())
        });
    }
    check_name(requested)?;
    check_allowed(pinned, requested)?;
    Ok(NamespaceScope::Within(vec![requested.to_owned()]))
}

/// The one namespace a write (upsert, delete) by a caller pinned to `pinned` goes to:
/// `requested`, else the index's `default`, else the caller's only namespace. A caller
/// pinned to several must name one when the index has none of them as default.
pub fn write_namespace(
    pinned: &[String],
    requested: &str,
    default: Option<&str>,
) -> Result<Option<String>> {
    let chosen = if !requested.is_empty() {
        check_name(requested)?;
        Some(requested)
    } else if let Some(default) = default {
        Some(default)
    } else {
        match pinned {
            [] => None,
            [only] => Some(only.as_str()),
            several => {
                return Err(Error::invalid(format!(
                    "namespace: name one of your namespaces ({})",
                    several.join(", ")
                )));
            }
        }
    };
    match chosen {
        None => Ok(None),
        Some(namespace) => {
            check_allowed(pinned, namespace)?;
            Ok(Some(namespace.to_owned()))
        }
    }
}

fn check_name(namespace: &str) -> Result<()> {
    if valid_namespace(namespace) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "namespace {namespace:?} must be 1 to 64 letters, digits, _ or -"
        )))
    }
}

/// Says nothing about which namespaces exist or whom they belong to.
fn check_allowed(pinned: &[String], namespace: &str) -> Result<()> {
    if pinned.is_empty() || pinned.iter().any(|own| own == namespace) {
        Ok(())
    } else {
        Err(Error::forbidden("permission denied: namespace"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn a_pinned_caller_searches_its_own_namespaces_and_no_other() {
        assert_eq!(search_scope(&[], "").unwrap(), NamespaceScope::Any);
        assert_eq!(
            search_scope(&[], "acme").unwrap(),
            NamespaceScope::Within(names(&["acme"]))
        );
        let pinned = names(&["acme", "globex"]);
        assert_eq!(
            search_scope(&pinned, "").unwrap(),
            NamespaceScope::Within(pinned.clone())
        );
        assert_eq!(
            search_scope(&pinned, "globex").unwrap(),
            NamespaceScope::Within(names(&["globex"]))
        );
        let error = search_scope(&pinned, "initech").unwrap_err();
        assert_eq!(error.kind, ErrorKind::Forbidden);
        assert!(!error.message.contains("acme"), "{error}");
        assert_eq!(
            search_scope(&[], "no spaces").unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn writes_go_to_one_namespace_the_caller_holds() {
        assert_eq!(write_namespace(&[], "", None).unwrap(), None);
        assert_eq!(
            write_namespace(&[], "", Some("shared")).unwrap().as_deref(),
            Some("shared")
        );
        let acme = names(&["acme"]);
        assert_eq!(
            write_namespace(&acme, "", None).unwrap().as_deref(),
            Some("acme")
        );
        assert_eq!(
            write_namespace(&acme, "globex", None).unwrap_err().kind,
            ErrorKind::Forbidden
        );
        // An index's default the caller does not hold is no way in.
        assert_eq!(
            write_namespace(&acme, "", Some("globex")).unwrap_err().kind,
            ErrorKind::Forbidden
        );
        let error = write_namespace(&names(&["acme", "globex"]), "", None).unwrap_err();
        assert!(error.message.contains("acme, globex"), "{error}");
    }
}
