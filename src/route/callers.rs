//! The router's view of a caller: which models, tiers, clouds and regions it may
//! use and its daily budget. Built from an authenticated principal's roles
//! (`auth::Permissions::chat_caller`); `Caller::anonymous` may use everything.

use crate::config::{CallerConfig, Glob, any_matches};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_lists_allow_everything_and_globs_narrow() {
        let caller = Caller {
            id: "team-a".into(),
            models: vec![Glob::new("gpt-*").unwrap()],
            ..Caller::anonymous()
        };
        assert!(caller.may_use_model("gpt-4o") && !caller.may_use_model("claude-3.5-sonnet"));
        assert!(Caller::anonymous().may_use_model("anything"));
        assert!(Caller::anonymous().may_use_region("eu-west-1"));
    }
}
