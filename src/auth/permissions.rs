//! What a principal may do: the union of its roles. Every check returns a
//! `PERMISSION_DENIED` error that names the missing permission and nothing else.

use super::tenancy::{self, NamespaceScope};
use crate::config::{Glob, RoleConfig};
use crate::error::{Error, Result};
use crate::route::Caller;

/// Chat limits: which models, tiers, clouds and regions, and how much per day.
/// Empty tiers/clouds/regions allow all (the models list is what grants chat).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatLimits {
    pub models: Vec<Glob>,
    pub tiers: Vec<String>,
    pub clouds: Vec<String>,
    pub regions: Vec<Glob>,
    pub budget_usd_per_day: Option<f64>,
}

/// A principal's permissions. [`Permissions::all`] is the operator's (and the
/// anonymous caller's when no identity is configured).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Permissions {
    all: bool,
    search_sources: Vec<Glob>,
    index: Vec<Glob>,
    index_prefixes: Vec<String>,
    prune: bool,
    /// Indexes whose API documents it may upsert and delete.
    documents: Vec<Glob>,
    /// None: no chat model at all.
    chat: Option<ChatLimits>,
    admin: bool,
    /// The tenants it is pinned to; empty: not pinned.
    namespaces: Vec<String>,
}

fn denied(what: &str) -> Error {
    Error::forbidden(format!("permission denied: {what}"))
}

impl Permissions {
    /// Everything, unlimited.
    pub fn all() -> Self {
        Self {
            all: true,
            chat: Some(ChatLimits::default()),
            ..Self::default()
        }
    }

    /// Nothing at all (a principal without roles).
    pub fn none() -> Self {
        Self::default()
    }

    /// What one role grants; `index_sources` are the sources of its `search_indexes`.
    pub fn from_role(role: &RoleConfig, index_sources: &[String]) -> Self {
        let mut search_sources = role.search_sources.clone();
        search_sources.extend(
            index_sources
                .iter()
                .filter_map(|source| Glob::new(&glob_escape(source)).ok()),
        );
        let star = |list: &[String]| {
            if list.iter().any(|item| item == "*") {
                Vec::new()
            } else {
                list.to_vec()
            }
        };
        let chat = (!role.models.is_empty()).then(|| ChatLimits {
            models: role.models.clone(),
            tiers: star(&role.tiers),
            clouds: star(&role.clouds),
            regions: if role.regions.iter().any(|glob| glob.as_str() == "*") {
                Vec::new()
            } else {
                role.regions.clone()
            },
            budget_usd_per_day: role.budget_usd_per_day,
        });
        Self {
            all: false,
            search_sources,
            index: role.index.clone(),
            index_prefixes: role.index_prefixes.clone(),
            prune: role.prune,
            documents: role.documents.clone(),
            chat,
            admin: role.admin,
            namespaces: role.namespaces.clone(),
        }
    }

    /// A `[[caller]]` without roles: chat within its inline limits (empty: all),
    /// search everything; no `Index`, no Admin.
    pub fn legacy_caller(chat: ChatLimits) -> Self {
        Self {
            search_sources: vec![Glob::new("*").expect("a valid glob")],
            chat: Some(chat),
            ..Self::default()
        }
    }

    /// The union of two sets of permissions (a principal holding both roles).
    pub fn union(mut self, other: &Self) -> Self {
        self.all |= other.all;
        self.search_sources
            .extend(other.search_sources.iter().cloned());
        self.index.extend(other.index.iter().cloned());
        self.index_prefixes
            .extend(other.index_prefixes.iter().cloned());
        self.prune |= other.prune;
        self.documents.extend(other.documents.iter().cloned());
        self.admin |= other.admin;
        // Pinning only narrows: an unpinned role does not free a pinned principal.
        for namespace in &other.namespaces {
            if !self.namespaces.contains(namespace) {
                self.namespaces.push(namespace.clone());
            }
        }
        self.chat = match (self.chat.take(), &other.chat) {
            (None, theirs) => theirs.clone(),
            (mine, None) => mine,
            (Some(mine), Some(theirs)) => Some(union_chat(mine, theirs)),
        };
        self
    }

    /// Whether this is the unlimited set.
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// Whether the principal may search `source`.
    pub fn may_search(&self, source: &str) -> bool {
        self.all || self.search_sources.iter().any(|glob| glob.matches(source))
    }

    /// The sources a search may cover, given those that exist: the request's own
    /// (each must exist and be permitted, else one answer for both cases), or all
    /// the principal may search when the request names none.
    pub fn search_sources(&self, requested: &[String], existing: &[&str]) -> Result<Vec<String>> {
        if self.all {
            return Ok(requested.to_vec());
        }
        if requested.is_empty() {
            let permitted: Vec<String> = existing
                .iter()
                .filter(|source| self.may_search(source))
                .map(|source| source.to_string())
                .collect();
            if permitted.is_empty() {
                return Err(denied("search (no source is granted)"));
            }
            return Ok(permitted);
        }
        let allowed = requested
            .iter()
            .all(|source| existing.contains(&source.as_str()) && self.may_search(source));
        if !allowed {
            return Err(denied("search on the requested sources"));
        }
        Ok(requested.to_vec())
    }

    /// Whether the principal may write the index `index_id` with `Index`.
    pub fn may_index_into(&self, index_id: &str) -> bool {
        self.all || self.index.iter().any(|glob| glob.matches(index_id))
    }

    /// Whether the principal may `Index` from `url`: the URL (as given, trimmed;
    /// the lead may pass the canonical URL here) lies under one of its prefixes,
    /// on a path-segment boundary, without `..` segments.
    pub fn may_index(&self, url: &str) -> bool {
        if self.all {
            return true;
        }
        let url = url.trim();
        if url.split(['/', '\\']).any(|segment| segment == "..") {
            return false;
        }
        self.index_prefixes
            .iter()
            .any(|prefix| under_prefix(url, prefix.trim()))
    }

    /// Whether the principal's `Index` runs may delete chunks that a request's
    /// filter left out (the `prune` flag of a request).
    pub fn may_prune(&self) -> bool {
        self.all || self.prune
    }

    /// Refuses an `Index` of `url` into `index_id` this principal may not run.
    pub fn check_index(&self, index_id: &str, url: &str) -> Result<()> {
        if !self.may_index_into(index_id) {
            return Err(denied("index into the requested index"));
        }
        if !self.may_index(url) {
            return Err(denied("index from the requested url"));
        }
        Ok(())
    }

    /// Whether the principal may upsert and delete documents over the API in the index
    /// `index_id` (`UpsertDocuments`, `DeleteDocuments`). `index` does not grant it: it
    /// reads only under its URL prefixes, while documents bring any text.
    /// The namespaces a search or answer asking for `requested` (empty: none) covers.
    pub fn search_namespaces(&self, requested: &str) -> Result<NamespaceScope> {
        tenancy::search_scope(&self.namespaces, requested)
    }

    /// The namespace a documents call asking for `requested` (empty: none) writes to,
    /// given the index's own namespace.
    pub fn write_namespace(
        &self,
        requested: &str,
        index_namespace: Option<&str>,
    ) -> Result<Option<String>> {
        tenancy::write_namespace(&self.namespaces, requested, index_namespace)
    }

    pub fn may_write_documents(&self, index_id: &str) -> bool {
        self.all || self.documents.iter().any(|glob| glob.matches(index_id))
    }

    /// Whether the principal may call the Admin service.
    pub fn may_admin(&self) -> bool {
        self.all || self.admin
    }

    /// Refuses an Admin call this principal may not make.
    pub fn check_admin(&self) -> Result<()> {
        if self.may_admin() {
            Ok(())
        } else {
            Err(denied("admin"))
        }
    }

    /// The router's view of the principal named `id`, or a refusal when no
    /// chat model is granted.
    pub fn chat_caller(&self, id: &str) -> Result<Caller> {
        let chat = self
            .chat
            .as_ref()
            .ok_or_else(|| denied("chat (no model is granted)"))?;
        Ok(Caller {
            id: id.to_string(),
            models: if chat.models.iter().any(|glob| glob.as_str() == "*") {
                Vec::new()
            } else {
                chat.models.clone()
            },
            tiers: chat.tiers.clone(),
            clouds: chat.clouds.clone(),
            regions: chat.regions.clone(),
            budget_usd_per_day: chat.budget_usd_per_day,
        })
    }
}

/// Two roles' chat limits together: every model either grants; a restriction
/// holds only if both restrict (empty = all); the larger budget.
fn union_chat(mine: ChatLimits, theirs: &ChatLimits) -> ChatLimits {
    fn either<T: Clone>(mine: Vec<T>, theirs: &[T]) -> Vec<T> {
        if mine.is_empty() || theirs.is_empty() {
            Vec::new()
        } else {
            mine.into_iter().chain(theirs.iter().cloned()).collect()
        }
    }
    let mut models = mine.models;
    models.extend(theirs.models.iter().cloned());
    ChatLimits {
        models,
        tiers: either(mine.tiers, &theirs.tiers),
        clouds: either(mine.clouds, &theirs.clouds),
        regions: either(mine.regions, &theirs.regions),
        budget_usd_per_day: match (mine.budget_usd_per_day, theirs.budget_usd_per_day) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        },
    }
}

/// `url` is `prefix` itself or lies under it on a `/` boundary (`/srv/docs` does
/// not cover `/srv/docs-secret`).
fn under_prefix(url: &str, prefix: &str) -> bool {
    if prefix.is_empty() {
        return false;
    }
    let bare = prefix.trim_end_matches('/');
    url == prefix
        || url == bare
        || url
            .strip_prefix(bare)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A source id as a literal glob (ids may hold glob characters in theory).
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if matches!(character, '*' | '?' | '[' | ']' | '{' | '}' | '\\') {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(text: &str) -> RoleConfig {
        toml::from_str(&format!("id = \"r\"\n{text}")).unwrap()
    }

    #[test]
    fn search_is_narrowed_to_granted_sources_and_unknown_looks_like_forbidden() {
        let permissions =
            Permissions::from_role(&role("search_sources = [\"public-*\"]"), &["hr".into()]);
        let existing = ["public-docs", "hr", "secret"];
        assert_eq!(
            permissions.search_sources(&[], &existing).unwrap(),
            vec!["public-docs", "hr"]
        );
        let forbidden = permissions
            .search_sources(&["secret".into()], &existing)
            .unwrap_err();
        let unknown = permissions
            .search_sources(&["public-nope".into()], &existing)
            .unwrap_err();
        assert_eq!(forbidden.message, unknown.message);
        assert_eq!(
            forbidden.message,
            "permission denied: search on the requested sources"
        );
        assert_eq!(forbidden.kind, crate::error::ErrorKind::Forbidden);
    }

    #[test]
    fn index_prefixes_hold_on_segment_boundaries_and_refuse_dot_dot() {
        let permissions = Permissions::from_role(
            &role("index = [\"docs\"]\nindex_prefixes = [\"s3://bucket/public/\", \"/srv/docs\"]"),
            &[],
        );
        assert!(permissions.may_index("s3://bucket/public/a.md"));
        assert!(permissions.may_index(" /srv/docs "));
        assert!(permissions.may_index("/srv/docs/sub"));
        assert!(!permissions.may_index("/srv/docs-secret"));
        assert!(!permissions.may_index("/srv/docs/../etc"));
        assert!(!permissions.may_index("s3://bucket/private/a.md"));
        assert!(permissions.check_index("docs", "/srv/docs").is_ok());
        assert!(permissions.check_index("other", "/srv/docs").is_err());
        assert!(!permissions.may_prune());
        assert!(!permissions.may_write_documents("docs"));
    }

    #[test]
    fn documents_are_granted_per_index_and_add_up() {
        let writer = Permissions::from_role(&role("documents = [\"kb-*\"]"), &[]);
        assert!(writer.may_write_documents("kb-support"));
        assert!(!writer.may_write_documents("docs"));
        let both = writer.union(&Permissions::from_role(
            &role("documents = [\"docs\"]"),
            &[],
        ));
        assert!(both.may_write_documents("docs") && both.may_write_documents("kb-x"));
        assert!(Permissions::all().may_write_documents("anything"));
    }

    #[test]
    fn roles_add_up_and_chat_needs_a_model() {
        let reader = Permissions::from_role(&role("search_sources = [\"*\"]"), &[]);
        assert!(reader.chat_caller("x").is_err());
        let chat = Permissions::from_role(
            &role("models = [\"gpt-*\"]\nregions = [\"eu-*\"]\nbudget_usd_per_day = 1.0"),
            &[],
        );
        let both = reader.clone().union(&chat);
        let caller = both.chat_caller("x").unwrap();
        assert!(caller.may_use_model("gpt-4o") && !caller.may_use_model("claude"));
        assert!(caller.may_use_region("eu-west-1") && !caller.may_use_region("us-east-1"));
        assert!(both.may_search("anything") && !both.may_admin());
        let admin = Permissions::from_role(&role("admin = true\nprune = true"), &[]);
        assert!(admin.clone().union(&both).may_admin());
        assert!(admin.may_prune());
        assert!(Permissions::all().may_index("/anything") && Permissions::all().may_admin());
    }
}
