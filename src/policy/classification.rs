//! The classes of a retrieved passage (`pii`, `anonymized`...), from the
//! `[[classification]]` rules over its source and its object's qualified key.

use crate::config::{ClassificationRule, any_matches};

#[derive(Debug, Clone, Default)]
pub struct Classifier {
    rules: Vec<ClassificationRule>,
}

impl Classifier {
    pub fn new(rules: Vec<ClassificationRule>) -> Self {
        Self { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every class a rule gives the chunk of `object_key` served by `source`, in rule
    /// order, each once.
    pub fn classes_of(&self, source: &str, object_key: &str) -> Vec<String> {
        let mut classes: Vec<String> = Vec::new();
        for rule in &self.rules {
            if any_matches(&rule.sources, source) && any_matches(&rule.keys, object_key) {
                for class in &rule.classes {
                    if !classes.contains(class) {
                        classes.push(class.clone());
                    }
                }
            }
        }
        classes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_a_bucket_and_some_objects_each_add_their_classes() {
        let rules: Vec<ClassificationRule> = toml::from_str::<toml::Table>(
            r#"
            [[rule]]
            classes = ["pii"]
            sources = ["hr-*"]
            [[rule]]
            classes = ["public"]
            keys = ["s3://press/*"]
            [[rule]]
            classes = ["anonymized", "pii"]
            keys = ["s3://hr-data/aggregated/*"]
            "#,
        )
        .unwrap()["rule"]
            .clone()
            .try_into()
            .unwrap();
        let classifier = Classifier::new(rules);
        assert_eq!(
            classifier.classes_of("hr-dense", "s3://hr-data/people.csv"),
            ["pii"]
        );
        assert_eq!(
            classifier.classes_of("hr-dense", "s3://hr-data/aggregated/2026.csv"),
            ["pii", "anonymized"]
        );
        assert_eq!(
            classifier.classes_of("web", "s3://press/launch.md"),
            ["public"]
        );
        assert!(classifier.classes_of("web", "s3://other/x").is_empty());
    }
}
