//! `[[classification]]`: tags (`pii`, `public`, `anonymized`...) for the data of a
//! source, a bucket or some objects. Read when a passage is retrieved, so changing a
//! class takes effect without reindexing.

use serde::Deserialize;

use super::Glob;

/// Chunks of the named sources and/or of objects whose qualified key
/// (`s3://bucket/key`, `az://container/key`...) matches one of `keys` carry `classes`.
/// Both lists empty: every chunk. Every matching rule adds its classes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassificationRule {
    pub classes: Vec<String>,
    /// Source ids (exact or glob); empty: every source.
    #[serde(default)]
    pub sources: Vec<Glob>,
    /// Object key globs, qualified with the bucket: `s3://hr-data/*` is a bucket,
    /// `s3://reports/aggregated/*` some of its objects. Empty: every object.
    #[serde(default)]
    pub keys: Vec<Glob>,
}
