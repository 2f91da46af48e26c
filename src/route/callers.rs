//! Who is calling: `[[caller]]` keys, and what each caller may use. With no
//! callers configured every call is anonymous and may use everything.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{CallerConfig, Glob, any_matches};
use crate::error::{Error, Result};

/// A resolved caller and its permissions; an empty list allows everything.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub id: String,
    /// Model globs.
    pub models: Vec<Glob>,
    pub tiers: Vec<String>,
    pub clouds: Vec<String>,
    /// Region globs.
    pub regions: Vec<Glob>,
    pub budget_usd_per_day: Option<f64>,
}

impl Caller {
    pub fn anonymous() -> Self {
        Self {
            id: "anonymous".into(),
            models: Vec::new(),
            tiers: Vec::new(),
            clouds: Vec::new(),
            regions: Vec::new(),
            budget_usd_per_day: None,
        }
    }

    /// The caller a `[[caller]]` describes (its key aside).
    pub fn from_config(config: &CallerConfig) -> Self {
        Self {
            id: config.id.clone(),
            models: config.models.clone(),
            tiers: config.tiers.clone(),
            clouds: config.clouds.clone(),
            regions: config.regions.clone(),
            budget_usd_per_day: config.budget_usd_per_day,
        }
    }

    pub fn may_use_model(&self, model: &str) -> bool {
        any_matches(&self.models, model)
    }

    pub fn may_use_tier(&self, tier: &str) -> bool {
        self.tiers.is_empty() || self.tiers.iter().any(|allowed| allowed == tier)
    }

    pub fn may_use_cloud(&self, cloud: &str) -> bool {
        self.clouds.is_empty() || self.clouds.iter().any(|allowed| allowed == cloud)
    }

    pub fn may_use_region(&self, region: &str) -> bool {
        any_matches(&self.regions, region)
    }
}

/// Callers by API key.
#[derive(Debug, Default)]
pub struct Callers {
    by_key: HashMap<String, Arc<Caller>>,
}

impl Callers {
    /// Resolves each caller's key (reads env variables or files; prints nothing).
    pub fn load(configs: &[CallerConfig], env: &HashMap<String, String>) -> Result<Self> {
        let mut by_key = HashMap::new();
        for config in configs {
            let key = config
                .api_key
                .resolve(env)
                .map_err(|error| error.context(format!("caller {:?}: api_key", config.id)))?;
            let caller = Arc::new(Caller::from_config(config));
            if by_key.insert(key.expose().to_string(), caller).is_some() {
                return Err(Error::config(format!(
                    "caller {:?}: its api_key is another caller's too",
                    config.id
                )));
            }
        }
        Ok(Self { by_key })
    }

    pub fn from_callers(callers: Vec<(String, Caller)>) -> Self {
        Self {
            by_key: callers
                .into_iter()
                .map(|(key, caller)| (key, Arc::new(caller)))
                .collect(),
        }
    }

    /// The caller presenting `bearer` (the token of an `authorization: Bearer`
    /// header). Without configured callers everyone is anonymous.
    pub fn authenticate(&self, bearer: Option<&str>) -> Result<Arc<Caller>> {
        if self.by_key.is_empty() {
            return Ok(Arc::new(Caller::anonymous()));
        }
        let Some(key) = bearer else {
            return Err(Error::new(
                crate::error::ErrorKind::Auth,
                "this service needs an api key: authorization: Bearer <key>",
            ));
        };
        self.by_key
            .get(key)
            .cloned()
            .ok_or_else(|| Error::new(crate::error::ErrorKind::Auth, "the api key is not valid"))
    }
}

/// The token of an `Authorization: Bearer <token>` value.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn keys_identify_callers_and_unknown_or_missing_keys_are_refused() {
        let callers = Callers::from_callers(vec![(
            "k1".into(),
            Caller {
                id: "team-a".into(),
                models: vec![Glob::new("gpt-*").unwrap()],
                ..Caller::anonymous()
            },
        )]);
        assert_eq!(callers.authenticate(Some("k1")).unwrap().id, "team-a");
        assert_eq!(
            callers.authenticate(Some("k2")).unwrap_err().kind,
            ErrorKind::Auth
        );
        assert_eq!(
            callers.authenticate(None).unwrap_err().kind,
            ErrorKind::Auth
        );
        let caller = callers.authenticate(Some("k1")).unwrap();
        assert!(caller.may_use_model("gpt-4o") && !caller.may_use_model("claude-3.5-sonnet"));
        assert!(
            Callers::default()
                .authenticate(None)
                .unwrap()
                .may_use_model("anything")
        );
        assert_eq!(bearer_token("Bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
    }
}
