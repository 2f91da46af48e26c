//! The one glob dialect of names: model names, regions. `globset` syntax (`*`, `?`,
//! `[abc]`, `{a,b}`), compiled when the config is read so that a bad pattern is a
//! config error and matching costs no parsing. Bucket key filters use the same crate
//! with `*` stopping at `/` (`ingest::filter`); names have no path structure, so here
//! `*` matches any run of characters, `/` and `.` and `:` included.

use std::fmt;

use serde::Deserialize;

use crate::error::{Error, Result};

/// A name pattern: exact (`gpt-4o`) or a glob (`gpt-*`, `eu-{west,central}-*`).
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct Glob {
    text: String,
    matcher: globset::GlobMatcher,
    shape: Shape,
}

/// The two shapes nearly every routing pattern has, matched without the regex engine
/// (the route planner matches every rule against every deployment on every request).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// No metacharacter: equality.
    Literal,
    /// Metacharacters only in one trailing `*`: a prefix.
    Prefix,
    /// Anything else: globset decides.
    Pattern,
}

impl Shape {
    fn of(text: &str) -> Self {
        let is_meta =
            |character: char| matches!(character, '*' | '?' | '[' | ']' | '{' | '}' | '\\');
        match text.strip_suffix('*') {
            _ if !text.contains(is_meta) => Self::Literal,
            Some(prefix) if !prefix.contains(is_meta) => Self::Prefix,
            _ => Self::Pattern,
        }
    }
}

impl Glob {
    pub fn new(text: &str) -> Result<Self> {
        let glob = globset::GlobBuilder::new(text)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|error| {
                Error::invalid(format!("glob {text:?} is invalid: {}", error.kind()))
            })?;
        Ok(Self {
            text: text.to_string(),
            matcher: glob.compile_matcher(),
            shape: Shape::of(text),
        })
    }

    /// Compiles every pattern of a list, naming the first invalid one.
    pub fn all(texts: &[String]) -> Result<Vec<Self>> {
        texts.iter().map(|text| Self::new(text)).collect()
    }

    pub fn matches(&self, name: &str) -> bool {
        match self.shape {
            Shape::Literal => name == self.text,
            Shape::Prefix => name.starts_with(&self.text[..self.text.len() - 1]),
            Shape::Pattern => self.matcher.is_match(name),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Whether `name` matches one of `globs`; an empty list allows every name.
pub fn any_matches(globs: &[Glob], name: &str) -> bool {
    globs.is_empty() || globs.iter().any(|glob| glob.matches(name))
}

impl TryFrom<String> for Glob {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Self::new(&text).map_err(|error| error.message)
    }
}

impl PartialEq for Glob {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// Prints as its text, quoted, like the string it was written as.
impl fmt::Debug for Glob {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, formatter)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(text: &str) -> Glob {
        Glob::new(text).unwrap()
    }

    #[test]
    fn plain_names_and_trailing_stars_skip_the_regex_engine() {
        assert!(glob("gpt-4o").shape == Shape::Literal);
        assert!(glob("gpt-*").shape == Shape::Prefix);
        assert!(glob("*").shape == Shape::Prefix);
        assert!(glob("eu-{west,central}-*").shape == Shape::Pattern);
        assert!(glob("*-mini").shape == Shape::Pattern);
        assert!(glob("gpt-4?").shape == Shape::Pattern);
    }

    proptest::proptest! {
        /// The literal and prefix shortcuts answer exactly what globset answers.
        #[test]
        fn the_shortcuts_agree_with_globset(prefix in "[a-z0-9.:/-]{0,6}", rest in "[a-z0-9.:/-]{0,8}") {
            for text in [prefix.clone(), format!("{prefix}*")] {
                let pattern = glob(&text);
                for name in [rest.clone(), format!("{prefix}{rest}"), prefix.clone()] {
                    proptest::prop_assert_eq!(
                        pattern.matches(&name),
                        pattern.matcher.is_match(&name),
                        "pattern {:?} name {:?}", text, name
                    );
                }
            }
        }
    }

    #[test]
    fn star_matches_any_run_of_characters() {
        assert!(glob("gpt-*").matches("gpt-4o"));
        assert!(!glob("gpt-*").matches("claude-3.5-sonnet"));
        assert!(glob("*").matches("anything"));
        assert!(glob("*").matches(""));
        assert!(glob("claude-*-sonnet").matches("claude-3.5-sonnet"));
        assert!(!glob("claude-*-sonnet").matches("claude-3.5-haiku"));
        assert!(glob("gpt-4o").matches("gpt-4o"));
        assert!(!glob("gpt-4o").matches("gpt-4o-mini"));
        assert!(!glob("gpt-4o").matches("GPT-4o"), "case matters");
        assert!(glob("*-mini").matches("gpt-4o-mini"));
        assert!(!glob("a*a").matches("a"), "the two ends may not overlap");
        // Model ids carry `.`, `:` and `/` (Bedrock, OCI, Hugging Face names).
        assert!(glob("anthropic.*").matches("anthropic.claude-3-5-sonnet-20240620-v1:0"));
        assert!(glob("meta-llama/*").matches("meta-llama/Llama-3.1-8B/instruct"));
        assert!(glob("*sonnet*").matches("us.anthropic.claude-sonnet-4:0"));
    }

    #[test]
    fn alternation_and_classes_are_globs_not_literals() {
        let regions = glob("eu-{west,central}-*");
        assert!(regions.matches("eu-west-1"));
        assert!(regions.matches("eu-central-2"));
        assert!(!regions.matches("eu-north-1"));
        assert!(!regions.matches("eu-{west,central}-1"));
        assert!(glob("us-east-[12]").matches("us-east-2"));
        assert!(!glob("us-east-[12]").matches("us-east-3"));
        assert!(any_matches(&[], "anywhere"));
        assert!(any_matches(&[glob("x"), glob("europe-*")], "europe-west4"));
        assert!(!any_matches(&[glob("x")], "y"));
    }

    #[test]
    fn an_invalid_glob_is_refused_naming_it() {
        let error = Glob::new("eu-{west").unwrap_err();
        assert!(error.message.contains("\"eu-{west\""), "{error}");
        assert!(Glob::all(&["ok-*".into(), "bad-[".into()]).is_err());
        assert_eq!(format!("{:?}", glob("gpt-*")), "\"gpt-*\"");
    }

    #[test]
    fn an_invalid_glob_in_the_config_is_a_config_error_at_its_key() {
        let error = crate::config::Config::parse(
            "[[caller]]\nid = \"eu\"\napi_key = \"env:K\"\nregions = [\"eu-{west\"]\n",
            std::path::Path::new("/"),
        )
        .unwrap_err();
        assert_eq!(error.kind, crate::error::ErrorKind::Config);
        assert!(
            error.message.contains("regions")
                && error.message.contains("glob \"eu-{west\" is invalid"),
            "{error}"
        );
    }
}
