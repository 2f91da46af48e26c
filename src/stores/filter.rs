//! Metadata filters: a small expression tree over a chunk's fields that every store
//! translates into its own query language (tantivy clauses, the dense pre-filter, a
//! Qdrant `Filter`, an OpenSearch `bool` filter).
//!
//! A caller states a filter as a [`FilterRequest`] (field names and bounds as text);
//! [`FilterRequest::check`] turns it into a [`Filter`] or an INVALID_ARGUMENT naming
//! the field. Semantics every store keeps: a condition on a value the chunk does not
//! have is false (a chunk indexed before metadata was kept matches no metadata
//! condition), so `not` of it is true.

use crate::document::Chunk;
use crate::error::{Error, Result};

/// Deepest nesting of `and` / `or` / `not` a filter may have.
pub const MAX_FILTER_DEPTH: usize = 8;
/// Most nodes (operators and conditions) in one filter.
pub const MAX_FILTER_NODES: usize = 64;
/// Most values one `in` condition may list.
pub const MAX_IN_VALUES: usize = 256;
/// Longest value or prefix, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024;

/// A filter as a caller states it, before [`FilterRequest::check`].
#[derive(Debug, Clone, PartialEq)]
pub enum FilterRequest {
    And(Vec<FilterRequest>),
    Or(Vec<FilterRequest>),
    Not(Box<FilterRequest>),
    Eq {
        field: String,
        value: String,
    },
    In {
        field: String,
        values: Vec<String>,
    },
    Prefix {
        field: String,
        prefix: String,
    },
    /// Bounds as text: integers for numbers, RFC 3339 (or `YYYY-MM-DD`) for dates.
    Range {
        field: String,
        bounds: RangeBounds,
    },
}

/// The bounds of a range as stated; at least one is needed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeBounds {
    pub gte: Option<String>,
    pub gt: Option<String>,
    pub lte: Option<String>,
    pub lt: Option<String>,
}

/// A field a filter can test.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FilterField {
    ObjectKey,
    Cloud,
    Region,
    /// The skyfuse source id serving the search: decided by each store for itself.
    Source,
    DocId,
    ContentType,
    /// The object's last modification, in unix seconds.
    LastModified,
    SizeBytes,
    /// A user metadata field named in `[[index]] metadata_fields`.
    Metadata(String),
    /// The chunk's tenant ([`crate::document::ChunkMetadata::namespace`]): set by the
    /// service from the request and the caller's role, never named in a caller's filter.
    Namespace,
}

impl FilterField {
    /// The name callers use: `cloud`, `metadata.team`...
    pub fn name(&self) -> String {
        match self {
            Self::ObjectKey => "object_key".into(),
            Self::Cloud => "cloud".into(),
            Self::Region => "region".into(),
            Self::Source => "source".into(),
            Self::DocId => "doc_id".into(),
            Self::ContentType => "content_type".into(),
            Self::LastModified => "last_modified".into(),
            Self::SizeBytes => "size_bytes".into(),
            Self::Metadata(name) => format!("metadata.{name}"),
            Self::Namespace => "namespace".into(),
        }
    }

    fn is_numeric(&self) -> bool {
        matches!(self, Self::LastModified | Self::SizeBytes)
    }

    fn parse(name: &str, metadata_fields: &[String]) -> Result<Self> {
        let field = match name {
            "object_key" => Self::ObjectKey,
            "cloud" => Self::Cloud,
            "region" => Self::Region,
            "source" => Self::Source,
            "doc_id" => Self::DocId,
            "content_type" => Self::ContentType,
            "last_modified" => Self::LastModified,
            "size_bytes" => Self::SizeBytes,
            "namespace" => {
                return Err(Error::invalid(
                    "filter: `namespace` is not a filter field; set the request's namespace \
                     (a caller pinned to namespaces gets its own)",
                ));
            }
            other => match other.strip_prefix("metadata.") {
                Some(metadata) if metadata_fields.iter().any(|known| known == metadata) => {
                    Self::Metadata(metadata.to_string())
                }
                Some(metadata) => {
                    return Err(Error::invalid(format!(
                        "filter: unknown metadata field {metadata:?}; \
                         filterable ones are those an [[index]] names in metadata_fields ({})",
                        if metadata_fields.is_empty() {
                            "none configured".to_string()
                        } else {
                            metadata_fields.join(", ")
                        }
                    )));
                }
                None => {
                    return Err(Error::invalid(format!(
                        "filter: unknown field {other:?}; known fields are object_key, cloud, \
                         region, source, doc_id, content_type, last_modified, size_bytes and \
                         metadata.<name>"
                    )));
                }
            },
        };
        Ok(field)
    }
}

/// A checked filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Condition(Condition),
}

/// One test of one field.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// The field's text is one of `values` (equality is a one-value list).
    In {
        field: FilterField,
        values: Vec<String>,
    },
    /// The object key starts with `prefix`.
    ObjectKeyPrefix(String),
    /// The field's number lies in `[min, max]`, both inclusive (integers, so `gt x`
    /// is `min = x + 1`); dates in unix seconds.
    Range {
        field: FilterField,
        min: Option<i64>,
        max: Option<i64>,
    },
}

/// What a filter leaves for one store once the conditions on `source` are decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Pushdown {
    /// Every chunk matches: search unfiltered.
    All,
    /// No chunk can match: answer with no hits.
    Nothing,
    /// Apply this filter, which has no `source` condition left.
    Only(Filter),
}

impl FilterRequest {
    /// The checked filter: known fields, the test fitting the field, bounds that
    /// parse and leave a non-empty range, within the size limits.
    pub fn check(&self, metadata_fields: &[String]) -> Result<Filter> {
        let mut nodes = 0;
        self.check_at(metadata_fields, 1, &mut nodes)
    }

    fn check_at(
        &self,
        metadata_fields: &[String],
        depth: usize,
        nodes: &mut usize,
    ) -> Result<Filter> {
        if depth > MAX_FILTER_DEPTH {
            return Err(Error::invalid(format!(
                "filter: nested deeper than {MAX_FILTER_DEPTH} levels"
            )));
        }
        *nodes += 1;
        if *nodes > MAX_FILTER_NODES {
            return Err(Error::invalid(format!(
                "filter: more than {MAX_FILTER_NODES} operators and conditions"
            )));
        }
        let mut children = |list: &[FilterRequest], operator: &str| -> Result<Vec<Filter>> {
            if list.is_empty() {
                return Err(Error::invalid(format!(
                    "filter: `{operator}` needs at least one filter"
                )));
            }
            list.iter()
                .map(|child| child.check_at(metadata_fields, depth + 1, nodes))
                .collect()
        };
        match self {
            Self::And(list) => Ok(Filter::And(children(list, "and")?)),
            Self::Or(list) => Ok(Filter::Or(children(list, "or")?)),
            Self::Not(inner) => Ok(Filter::Not(Box::new(inner.check_at(
                metadata_fields,
                depth + 1,
                nodes,
            )?))),
            Self::Eq { field, value } => {
                text_condition(field, std::slice::from_ref(value), metadata_fields, "eq")
            }
            Self::In { field, values } => text_condition(field, values, metadata_fields, "in"),
            Self::Prefix { field, prefix } => {
                let parsed = FilterField::parse(field, metadata_fields)?;
                if parsed != FilterField::ObjectKey {
                    return Err(Error::invalid(format!(
                        "filter: prefix applies only to object_key, not {field}"
                    )));
                }
                check_value_length(field, prefix)?;
                Ok(Filter::Condition(Condition::ObjectKeyPrefix(
                    prefix.clone(),
                )))
            }
            Self::Range { field, bounds } => range_condition(field, bounds, metadata_fields),
        }
    }
}

fn check_value_length(field: &str, value: &str) -> Result<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::invalid(format!(
            "filter: a value for {field} is longer than {MAX_VALUE_BYTES} bytes"
        )));
    }
    Ok(())
}

fn text_condition(
    field: &str,
    values: &[String],
    metadata_fields: &[String],
    test: &str,
) -> Result<Filter> {
    let parsed = FilterField::parse(field, metadata_fields)?;
    if parsed.is_numeric() {
        return Err(Error::invalid(format!(
            "filter: {field} is compared with a range, not `{test}`"
        )));
    }
    if values.is_empty() {
        return Err(Error::invalid(format!(
            "filter: `in` on {field} needs at least one value"
        )));
    }
    if values.len() > MAX_IN_VALUES {
        return Err(Error::invalid(format!(
            "filter: `in` on {field} lists more than {MAX_IN_VALUES} values"
        )));
    }
    for value in values {
        check_value_length(field, value)?;
    }
    Ok(Filter::Condition(Condition::In {
        field: parsed,
        values: values.to_vec(),
    }))
}

fn range_condition(
    field: &str,
    bounds: &RangeBounds,
    metadata_fields: &[String],
) -> Result<Filter> {
    let parsed = FilterField::parse(field, metadata_fields)?;
    if !parsed.is_numeric() {
        return Err(Error::invalid(format!(
            "filter: range applies to size_bytes and last_modified, not {field}"
        )));
    }
    let bound = |text: &Option<String>, name: &str| -> Result<Option<Bound>> {
        let Some(text) = text else {
            return Ok(None);
        };
        let parsed_bound = match parsed {
            FilterField::LastModified => parse_date(text),
            _ => text.trim().parse::<i64>().ok().map(|whole| Bound {
                whole,
                fraction: false,
            }),
        };
        parsed_bound.map(Some).ok_or_else(|| {
            let wanted = match parsed {
                FilterField::LastModified => "an RFC 3339 date such as 2024-05-01T00:00:00Z",
                _ => "an integer",
            };
            Error::invalid(format!(
                "filter: range {name} on {field} must be {wanted}, got {text:?}"
            ))
        })
    };
    let (gte, gt, lte, lt) = (
        bound(&bounds.gte, "gte")?,
        bound(&bounds.gt, "gt")?,
        bound(&bounds.lte, "lte")?,
        bound(&bounds.lt, "lt")?,
    );
    if gte.is_none() && gt.is_none() && lte.is_none() && lt.is_none() {
        return Err(Error::invalid(format!(
            "filter: range on {field} needs at least one of gte, gt, lte, lt"
        )));
    }
    // Values are whole numbers (dates in whole seconds): every bound becomes inclusive.
    let lower = [
        gte.map(|bound| bound.whole.saturating_add(i64::from(bound.fraction))),
        gt.map(|bound| bound.whole.saturating_add(1)),
    ];
    let upper = [
        lte.map(|bound| bound.whole),
        lt.map(|bound| bound.whole.saturating_sub(i64::from(!bound.fraction))),
    ];
    let min = lower.into_iter().flatten().max();
    let max = upper.into_iter().flatten().min();
    if let (Some(min), Some(max)) = (min, max)
        && min > max
    {
        return Err(Error::invalid(format!(
            "filter: the range on {field} is empty (no value is both above its lower and \
             below its upper bound)"
        )));
    }
    Ok(Filter::Condition(Condition::Range {
        field: parsed,
        min,
        max,
    }))
}

/// A bound's whole part, and whether a fraction was cut from it.
#[derive(Debug, Clone, Copy)]
struct Bound {
    whole: i64,
    fraction: bool,
}

/// Unix seconds of `YYYY-MM-DD` or RFC 3339 `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
fn parse_date(text: &str) -> Option<Bound> {
    let text = text.trim();
    let number = |part: &str| -> Option<i64> {
        if part.is_empty() || !part.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (date, time) = match text.split_once(['T', 't', ' ']) {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let mut date_parts = date.split('-');
    let (year, month, day) = (
        number(date_parts.next()?)?,
        number(date_parts.next()?)?,
        number(date_parts.next()?)?,
    );
    if date_parts.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let Some(time) = time else {
        return Some(Bound {
            whole: days * 86_400,
            fraction: false,
        });
    };
    let (clock, offset_seconds) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let sign_at = time.rfind(['+', '-'])?;
        let (clock, offset) = time.split_at(sign_at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (hours, minutes) = offset[1..].split_once(':')?;
        (
            clock,
            sign * (number(hours)? * 3600 + number(minutes)? * 60),
        )
    };
    let (clock, fraction) = match clock.split_once('.') {
        Some((clock, digits)) => {
            number(digits)?;
            (clock, digits.bytes().any(|digit| digit != b'0'))
        }
        None => (clock, false),
    };
    let mut clock_parts = clock.split(':');
    let (hour, minute, second) = (
        number(clock_parts.next()?)?,
        number(clock_parts.next()?)?,
        number(clock_parts.next()?)?,
    );
    if clock_parts.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(Bound {
        whole: days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds,
        fraction,
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

impl Filter {
    /// `filter` (if any) restricted to chunks of one of `namespaces`: how the service binds
    /// a search to a tenant, so every store enforces it as it enforces any filter.
    pub fn within_namespaces(filter: Option<Filter>, namespaces: &[String]) -> Filter {
        let tenant = Self::Condition(Condition::In {
            field: FilterField::Namespace,
            values: namespaces.to_vec(),
        });
        match filter {
            None => tenant,
            Some(filter) => Self::And(vec![tenant, filter]),
        }
    }

    /// The filter as it applies to source `source_id`: its `source` conditions decided.
    pub fn for_source(&self, source_id: &str) -> Pushdown {
        match self {
            Self::Condition(Condition::In {
                field: FilterField::Source,
                values,
            }) => {
                if values.iter().any(|value| value == source_id) {
                    Pushdown::All
                } else {
                    Pushdown::Nothing
                }
            }
            Self::Condition(condition) => Pushdown::Only(Self::Condition(condition.clone())),
            Self::Not(inner) => match inner.for_source(source_id) {
                Pushdown::All => Pushdown::Nothing,
                Pushdown::Nothing => Pushdown::All,
                Pushdown::Only(inner) => Pushdown::Only(Self::Not(Box::new(inner))),
            },
            Self::And(children) => {
                let mut kept = Vec::new();
                for child in children {
                    match child.for_source(source_id) {
                        Pushdown::All => {}
                        Pushdown::Nothing => return Pushdown::Nothing,
                        Pushdown::Only(child) => kept.push(child),
                    }
                }
                match kept.len() {
                    0 => Pushdown::All,
                    1 => Pushdown::Only(kept.remove(0)),
                    _ => Pushdown::Only(Self::And(kept)),
                }
            }
            Self::Or(children) => {
                let mut kept = Vec::new();
                for child in children {
                    match child.for_source(source_id) {
                        Pushdown::All => return Pushdown::All,
                        Pushdown::Nothing => {}
                        Pushdown::Only(child) => kept.push(child),
                    }
                }
                match kept.len() {
                    0 => Pushdown::Nothing,
                    1 => Pushdown::Only(kept.remove(0)),
                    _ => Pushdown::Only(Self::Or(kept)),
                }
            }
        }
    }

    /// Whether `chunk` passes; `source` conditions must have been decided
    /// ([`Filter::for_source`]) and count as false here.
    pub fn matches(&self, chunk: &Chunk) -> bool {
        match self {
            Self::And(children) => children.iter().all(|child| child.matches(chunk)),
            Self::Or(children) => children.iter().any(|child| child.matches(chunk)),
            Self::Not(inner) => !inner.matches(chunk),
            Self::Condition(Condition::ObjectKeyPrefix(prefix)) => {
                chunk.object_key.starts_with(prefix.as_str())
            }
            Self::Condition(Condition::In { field, values }) => text_value(chunk, field)
                .is_some_and(|value| values.iter().any(|wanted| wanted == value)),
            Self::Condition(Condition::Range { field, min, max }) => number_value(chunk, field)
                .is_some_and(|value| {
                    min.is_none_or(|min| value >= min) && max.is_none_or(|max| value <= max)
                }),
        }
    }

    /// The metadata field names the filter reads.
    pub fn metadata_fields(&self) -> Vec<&str> {
        let mut names = Vec::new();
        self.visit(&mut |condition| {
            if let Condition::In {
                field: FilterField::Metadata(name),
                ..
            } = condition
            {
                names.push(name.as_str());
            }
        });
        names
    }

    fn visit<'a>(&'a self, visitor: &mut impl FnMut(&'a Condition)) {
        match self {
            Self::And(children) | Self::Or(children) => {
                children.iter().for_each(|child| child.visit(visitor))
            }
            Self::Not(inner) => inner.visit(visitor),
            Self::Condition(condition) => visitor(condition),
        }
    }
}

/// A chunk's text value of `field`; None when it has none (empty counts as none for
/// metadata, not for the fields every chunk carries).
fn text_value<'a>(chunk: &'a Chunk, field: &FilterField) -> Option<&'a str> {
    match field {
        FilterField::ObjectKey => Some(&chunk.object_key),
        FilterField::Cloud => Some(&chunk.cloud),
        FilterField::Region => Some(&chunk.region),
        FilterField::DocId => Some(&chunk.doc_id),
        FilterField::ContentType => chunk.metadata.content_type.as_deref(),
        FilterField::Metadata(name) => chunk.metadata.fields.get(name).map(String::as_str),
        FilterField::Namespace => chunk.metadata.namespace.as_deref(),
        FilterField::Source | FilterField::LastModified | FilterField::SizeBytes => None,
    }
}

fn number_value(chunk: &Chunk, field: &FilterField) -> Option<i64> {
    match field {
        FilterField::LastModified => chunk.metadata.last_modified,
        FilterField::SizeBytes => chunk
            .metadata
            .size_bytes
            .and_then(|size| i64::try_from(size).ok()),
        _ => None,
    }
}

/// The error of a store that cannot apply part of a filter: the search reports it in
/// its outcome and gives no hits, never unfiltered ones.
pub fn unsupported(part: &str) -> Error {
    Error::invalid(format!("filter not supported: {part}"))
}

/// Namespace names follow the same rule as metadata names: they become payload values,
/// document keys and file names.
pub fn valid_namespace(name: &str) -> bool {
    valid_metadata_name(name)
}

/// Metadata names are plain words: they become payload keys and document paths.
pub fn valid_metadata_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::document::ChunkMetadata;

    fn eq(field: &str, value: &str) -> FilterRequest {
        FilterRequest::Eq {
            field: field.into(),
            value: value.into(),
        }
    }

    fn range(field: &str, bounds: RangeBounds) -> FilterRequest {
        FilterRequest::Range {
            field: field.into(),
            bounds,
        }
    }

    fn known() -> Vec<String> {
        vec!["team".to_string()]
    }

    fn chunk(object_key: &str, cloud: &str, metadata: ChunkMetadata) -> Chunk {
        Chunk {
            chunk_id: format!("{object_key}#0"),
            doc_id: object_key.into(),
            object_key: object_key.into(),
            title: "".into(),
            text: "".into(),
            ordinal: 0,
            cloud: cloud.into(),
            region: String::new(),
            metadata,
            span: None,
        }
    }

    #[test]
    fn dates_parse_to_unix_seconds() {
        let seconds = |text: &str| parse_date(text).map(|bound| (bound.whole, bound.fraction));
        assert_eq!(seconds("1970-01-01"), Some((0, false)));
        assert_eq!(
            seconds("2024-05-01T00:00:00Z"),
            Some((1_714_521_600, false))
        );
        assert_eq!(
            seconds("2024-05-01T02:00:00+02:00"),
            Some((1_714_521_600, false))
        );
        assert_eq!(
            seconds("2024-05-01T00:00:00.5Z"),
            Some((1_714_521_600, true))
        );
        assert_eq!(seconds("2024-13-01"), None);
        assert_eq!(seconds("yesterday"), None);
    }

    #[test]
    fn bad_filters_are_refused_naming_the_field() {
        let deep = (0..MAX_FILTER_DEPTH).fold(eq("cloud", "aws"), |inner, _| {
            FilterRequest::Not(Box::new(inner))
        });
        let wide = FilterRequest::Or((0..MAX_FILTER_NODES).map(|_| eq("cloud", "aws")).collect());
        for (request, says) in [
            (eq("colour", "red"), "unknown field \"colour\""),
            (
                eq("metadata.owner", "x"),
                "unknown metadata field \"owner\"",
            ),
            (
                eq("size_bytes", "10"),
                "size_bytes is compared with a range",
            ),
            (
                FilterRequest::Prefix {
                    field: "cloud".into(),
                    prefix: "a".into(),
                },
                "prefix applies only to object_key",
            ),
            (
                range("cloud", RangeBounds::default()),
                "range applies to size_bytes and last_modified, not cloud",
            ),
            (
                range("size_bytes", RangeBounds::default()),
                "range on size_bytes needs at least one",
            ),
            (
                range(
                    "size_bytes",
                    RangeBounds {
                        gte: Some("ten".into()),
                        ..Default::default()
                    },
                ),
                "range gte on size_bytes must be an integer",
            ),
            (
                range(
                    "last_modified",
                    RangeBounds {
                        gt: Some("2024-05-02".into()),
                        lt: Some("2024-05-01".into()),
                        ..Default::default()
                    },
                ),
                "the range on last_modified is empty",
            ),
            (FilterRequest::And(Vec::new()), "`and` needs at least one"),
            (deep, "nested deeper than"),
            (wide, "more than 64"),
        ] {
            let error = request.check(&known()).unwrap_err();
            assert_eq!(error.kind, crate::error::ErrorKind::InvalidArgument);
            assert!(error.message.contains(says), "{}", error.message);
        }
    }

    #[test]
    fn bounds_become_inclusive_integers() {
        let checked = range(
            "size_bytes",
            RangeBounds {
                gt: Some("10".into()),
                lt: Some("20".into()),
                ..Default::default()
            },
        )
        .check(&[])
        .unwrap();
        assert_eq!(
            checked,
            Filter::Condition(Condition::Range {
                field: FilterField::SizeBytes,
                min: Some(11),
                max: Some(19),
            })
        );
    }

    #[test]
    fn chunks_match_as_the_tree_says_and_missing_values_match_no_condition() {
        let with_metadata = chunk(
            "reports/2024/q1.pdf",
            "aws",
            ChunkMetadata {
                content_type: Some("application/pdf".into()),
                size_bytes: Some(2048),
                last_modified: Some(1_714_521_600),
                etag: None,
                namespace: None,
                fields: BTreeMap::from([("team".into(), "search".into())]),
            },
        );
        let bare = chunk("notes/readme.txt", "gcp", ChunkMetadata::default());
        let filter = FilterRequest::And(vec![
            FilterRequest::Prefix {
                field: "object_key".into(),
                prefix: "reports/".into(),
            },
            eq("metadata.team", "search"),
            range(
                "last_modified",
                RangeBounds {
                    gte: Some("2024-05-01".into()),
                    ..Default::default()
                },
            ),
        ])
        .check(&known())
        .unwrap();
        assert!(filter.matches(&with_metadata));
        assert!(!filter.matches(&bare));
        let not_pdf = FilterRequest::Not(Box::new(eq("content_type", "application/pdf")))
            .check(&known())
            .unwrap();
        assert!(!not_pdf.matches(&with_metadata));
        assert!(not_pdf.matches(&bare), "no content type is not a pdf");
    }

    #[test]
    fn source_conditions_are_decided_per_store() {
        let filter = FilterRequest::Or(vec![eq("source", "bm25"), eq("cloud", "aws")])
            .check(&[])
            .unwrap();
        assert_eq!(filter.for_source("bm25"), Pushdown::All);
        assert!(matches!(filter.for_source("dense"), Pushdown::Only(_)));
        let only_dense = FilterRequest::Not(Box::new(eq("source", "bm25")))
            .check(&[])
            .unwrap();
        assert_eq!(only_dense.for_source("bm25"), Pushdown::Nothing);
        assert_eq!(only_dense.for_source("dense"), Pushdown::All);
    }
}
