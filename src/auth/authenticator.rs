//! Credentials -> principal: API keys, JWTs of trusted issuers, mapped client
//! certificates, each granting roles; the principal's permissions are their union.

use std::collections::HashMap;

use super::jwt::{JwtIssuer, looks_like_jwt, unverified_issuer};
use super::{
    ApiKeys, ChatLimits, Credentials, Permissions, Principal, certificate_names, match_certificate,
};
use crate::config::{Config, RoleConfig};
use crate::error::{Error, ErrorKind, Result};

/// Checks credentials against the configured identities.
pub struct Authenticator {
    /// False: no identity is configured and every caller is anonymous.
    enabled: bool,
    keys: ApiKeys,
    /// Permissions of each API-key caller, by caller id.
    caller_permissions: HashMap<String, Permissions>,
    issuers: Vec<JwtIssuer>,
    client_certs: Vec<crate::config::ClientCertConfig>,
    roles: HashMap<String, Permissions>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Authenticator")
            .field("enabled", &self.enabled)
            .field("keys", &self.keys)
            .field(
                "issuers",
                &self
                    .issuers
                    .iter()
                    .map(|issuer| &issuer.config.id)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Reads the identities of a validated config (hashing keys given as secret
    /// locations). Fetches nothing: issuer keys are fetched on first use.
    pub fn build(
        config: &Config,
        env: &HashMap<String, String>,
        http: &reqwest::Client,
    ) -> Result<Self> {
        let roles: HashMap<String, Permissions> = config
            .roles
            .iter()
            .map(|role| (role.id.clone(), role_permissions(config, role)))
            .collect();
        let keys = ApiKeys::load(&config.callers, env)?;
        let caller_permissions = config
            .callers
            .iter()
            .map(|caller| {
                let permissions = if caller.roles.is_empty() {
                    Permissions::legacy_caller(ChatLimits {
                        models: caller.models.clone(),
                        tiers: caller.tiers.clone(),
                        clouds: caller.clouds.clone(),
                        regions: caller.regions.clone(),
                        budget_usd_per_day: caller.budget_usd_per_day,
                    })
                } else {
                    union_of(&roles, caller.roles.iter())
                };
                (caller.id.clone(), permissions)
            })
            .collect();
        Ok(Self {
            enabled: config.has_identities(),
            keys,
            caller_permissions,
            issuers: config
                .issuers
                .iter()
                .map(|issuer| JwtIssuer::new(issuer.clone(), http.clone()))
                .collect(),
            client_certs: config.client_certs.clone(),
            roles,
        })
    }

    /// Whether callers must prove who they are.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The principal the credentials prove; `UNAUTHENTICATED` when they prove none.
    /// A bearer token, when present, must be valid; else a mapped client certificate.
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<Principal> {
        if credentials.in_process {
            return Ok(Principal::operator());
        }
        if !self.enabled {
            return Ok(Principal::anonymous());
        }
        if let Some(token) = &credentials.bearer {
            return self.bearer(token.expose()).await;
        }
        if let Some(certificate) = &credentials.peer_certificate {
            let names = certificate_names(&certificate.0)
                .ok_or_else(|| unauthenticated("the client certificate cannot be read"))?;
            let mapping = match_certificate(&self.client_certs, &names).ok_or_else(|| {
                unauthenticated("the client certificate is not mapped to a caller")
            })?;
            return Ok(Principal::new(
                mapping.id.clone(),
                union_of(&self.roles, mapping.roles.iter()),
            ));
        }
        Err(unauthenticated(
            "send authorization: Bearer <api key or token>, or a client certificate",
        ))
    }

    async fn bearer(&self, token: &str) -> Result<Principal> {
        if let Some(id) = self.keys.identify(token) {
            let permissions = self
                .caller_permissions
                .get(id)
                .cloned()
                .unwrap_or_else(Permissions::none);
            return Ok(Principal::new(id, permissions));
        }
        if !self.issuers.is_empty() && looks_like_jwt(token) {
            let issuer = unverified_issuer(token)
                .and_then(|iss| {
                    self.issuers
                        .iter()
                        .find(|issuer| issuer.config.issuer == iss)
                })
                .ok_or_else(|| unauthenticated("the token's issuer is not trusted"))?;
            let verified = issuer.verify(token).await?;
            let config = &issuer.config;
            let granted = config.roles.iter().chain(
                verified
                    .claim_values
                    .iter()
                    .filter_map(|value| config.role_mapping.get(value)),
            );
            return Ok(Principal::new(
                format!("{}:{}", config.id, verified.subject),
                union_of(&self.roles, granted),
            ));
        }
        Err(unauthenticated("the api key or token is not valid"))
    }

    /// The issuer with id `id`, for tests that count key fetches.
    pub fn issuer(&self, id: &str) -> Option<&JwtIssuer> {
        self.issuers.iter().find(|issuer| issuer.config.id == id)
    }
}

/// A role's permissions, its `search_indexes` resolved to their sources.
fn role_permissions(config: &Config, role: &RoleConfig) -> Permissions {
    let index_sources: Vec<String> = config
        .indexes
        .iter()
        .filter(|index| role.search_indexes.contains(&index.id))
        .flat_map(|index| index.sources.iter().cloned())
        .collect();
    Permissions::from_role(role, &index_sources)
}

fn union_of<'a>(
    roles: &HashMap<String, Permissions>,
    names: impl Iterator<Item = &'a String>,
) -> Permissions {
    names
        .filter_map(|name| roles.get(name))
        .fold(Permissions::none(), |all, role| all.union(role))
}

fn unauthenticated(what: &str) -> Error {
    Error::new(
        ErrorKind::Unauthenticated,
        format!("authentication failed: {what}"),
    )
}
