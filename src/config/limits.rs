//! `[limits]`: per-caller rate limits (requests and tokens per minute), a default
//! for every caller and overrides by caller id. Unset means unlimited.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Calls each caller may start per minute; None: unlimited.
    pub requests_per_minute: Option<u32>,
    /// Tokens (prompt estimate + the output asked for) each caller may use per
    /// minute; None: unlimited.
    pub tokens_per_minute: Option<u64>,
    /// Overrides for single callers, by id.
    #[serde(rename = "caller")]
    pub callers: Vec<CallerLimitsConfig>,
}

/// One caller's own limits; a field left out falls back to the `[limits]` default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerLimitsConfig {
    /// The caller's id (`[[caller]] id`; the principal's id once identities land).
    pub id: String,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
}

impl LimitsConfig {
    /// Problems with `[limits]`, each naming its key.
    pub fn problems(&self, problems: &mut Vec<String>) {
        if self.requests_per_minute == Some(0) {
            problems.push(
                "limits.requests_per_minute must be at least 1 (leave it out for no limit)".into(),
            );
        }
        if self.tokens_per_minute == Some(0) {
            problems.push(
                "limits.tokens_per_minute must be at least 1 (leave it out for no limit)".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for caller in &self.callers {
            if !seen.insert(caller.id.as_str()) {
                problems.push(format!("limits.caller {:?} is defined twice", caller.id));
            }
            if caller.requests_per_minute == Some(0) || caller.tokens_per_minute == Some(0) {
                problems.push(format!(
                    "limits.caller {:?}: limits must be at least 1 (leave one out for the default)",
                    caller.id
                ));
            }
        }
    }
}
