//! `[[role]]`: a named set of permissions that callers, token claims and client
//! certificates are granted. A principal's permissions are the union of its roles.

use serde::Deserialize;

use super::Glob;

/// What a role may do. Every list is an allow-list: empty allows nothing, `"*"`
/// allows everything of its kind.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    pub id: String,
    /// Sources it may search (ids or globs): `Search`, `Answer`.
    #[serde(default)]
    pub search_sources: Vec<Glob>,
    /// Indexes whose sources it may search.
    #[serde(default)]
    pub search_indexes: Vec<String>,
    /// Indexes it may write with `Index` (ids or globs).
    #[serde(default)]
    pub index: Vec<Glob>,
    /// Bucket or folder URL prefixes it may `Index` (`s3://docs/public/`, `/srv/docs/`).
    #[serde(default)]
    pub index_prefixes: Vec<String>,
    /// Whether its `Index` runs may delete chunks of objects a filter left out.
    #[serde(default)]
    pub prune: bool,
    /// Indexes whose documents it may upsert and delete over the API (ids or globs):
    /// `UpsertDocuments`, `DeleteDocuments`, `POST /v1/documents`.
    #[serde(default)]
    pub documents: Vec<Glob>,
    /// Chat models it may ask for on `Answer` and the facade (exact or glob).
    #[serde(default)]
    pub models: Vec<Glob>,
    /// Budget tiers it may ask for; `"*"` for all.
    #[serde(default)]
    pub tiers: Vec<String>,
    /// Clouds its prompts may go to; `"*"` for all.
    #[serde(default)]
    pub clouds: Vec<String>,
    /// Regions its prompts may go to (exact or glob); `"*"` for all.
    #[serde(default)]
    pub regions: Vec<Glob>,
    /// Spend allowed per UTC day, in USD; none = unlimited.
    pub budget_usd_per_day: Option<f64>,
    /// Whether it may call the Admin service (which lists only what it may see).
    #[serde(default)]
    pub admin: bool,
    /// Tenants it is pinned to: its searches, answers and documents calls reach only
    /// these namespaces (one of them by default), and asking for another is
    /// PERMISSION_DENIED. Empty: not pinned. A principal holding any pinned role is
    /// pinned to the union of those roles' namespaces, whatever its other roles grant.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

/// Checks `[[caller]]`, `[[role]]`, `[[issuer]]` and `[[client_cert]]` together:
/// every role named exists, every key is given one way, every issuer is usable.
pub(super) fn identity_problems(config: &super::Config, problems: &mut Vec<String>) {
    let mut role_ids = std::collections::HashSet::new();
    for role in &config.roles {
        if !role_ids.insert(role.id.as_str()) {
            problems.push(format!("role {:?}: defined twice", role.id));
        }
        if role
            .budget_usd_per_day
            .is_some_and(|budget| !(budget >= 0.0 && budget.is_finite()))
        {
            problems.push(format!(
                "role {:?}: budget_usd_per_day must be 0 or more",
                role.id
            ));
        }
        for namespace in &role.namespaces {
            if !crate::stores::filter::valid_namespace(namespace) {
                problems.push(format!(
                    "role {:?}: namespaces: {namespace:?} must be 1 to 64 letters, digits, _ or -",
                    role.id
                ));
            }
        }
        for index in &role.search_indexes {
            if !config.indexes.iter().any(|known| &known.id == index) {
                problems.push(format!(
                    "role {:?}: search_indexes names {index:?}, which is not an [[index]]",
                    role.id
                ));
            }
        }
    }
    let check_roles = |owner: String, roles: &[String], problems: &mut Vec<String>| {
        for role in roles {
            if !role_ids.contains(role.as_str()) {
                problems.push(format!("{owner}: role {role:?} is not a [[role]]"));
            }
        }
    };
    for caller in &config.callers {
        let name = format!("caller {:?}", caller.id);
        match (&caller.api_key_sha256, &caller.api_key) {
            (Some(_), Some(_)) => {
                problems.push(format!("{name}: give api_key_sha256 or api_key, not both"))
            }
            (None, None) => problems.push(format!(
                "{name}: needs api_key_sha256 (`skyfuse keys hash`) or api_key"
            )),
            (Some(hash), None) if !super::is_sha256_hex(hash) => problems.push(format!(
                "{name}: api_key_sha256 must be 64 hex digits (`skyfuse keys hash`)"
            )),
            _ => {}
        }
        if !caller.roles.is_empty() && caller.has_inline_limits() {
            problems.push(format!(
                "{name}: with roles, put models/tiers/clouds/regions/budget on the [[role]]s"
            ));
        }
        check_roles(name, &caller.roles, problems);
    }
    let mut issuer_ids = std::collections::HashSet::new();
    for issuer in &config.issuers {
        let name = format!("issuer {:?}", issuer.id);
        if !issuer_ids.insert(issuer.id.as_str()) {
            problems.push(format!("{name}: defined twice"));
        }
        for (key, url) in std::iter::once(("issuer", &issuer.issuer))
            .chain(issuer.jwks_url.as_ref().map(|url| ("jwks_url", url)))
        {
            if let Err(problem) = crate::auth::check_issuer_url(url) {
                problems.push(format!("{name}: {key}: {problem}"));
            }
        }
        if issuer.audiences.is_empty() {
            problems.push(format!("{name}: audiences must name at least one audience"));
        }
        if issuer.algorithms.is_empty() {
            problems.push(format!("{name}: algorithms must name RS256 and/or ES256"));
        }
        for algorithm in &issuer.algorithms {
            if !matches!(algorithm.as_str(), "RS256" | "ES256") {
                problems.push(format!(
                    "{name}: algorithm {algorithm:?} is not supported (RS256, ES256)"
                ));
            }
        }
        let mapped: Vec<String> = issuer.role_mapping.values().cloned().collect();
        check_roles(name.clone(), &mapped, problems);
        check_roles(name, &issuer.roles, problems);
    }
    for cert in &config.client_certs {
        let name = format!("client_cert {:?}", cert.id);
        if cert.subject_cn.is_none() == cert.san.is_none() {
            problems.push(format!("{name}: give subject_cn or san (one of them)"));
        }
        if let Some(san) = &cert.san
            && crate::auth::SanPattern::parse(san).is_none()
        {
            problems.push(format!(
                "{name}: san {san:?} must be dns:NAME, uri:URI, email:ADDRESS or ip:ADDRESS"
            ));
        }
        check_roles(name, &cert.roles, problems);
    }
}
