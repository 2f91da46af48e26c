//! Domain <-> proto conversions and the one mapping from errors to gRPC statuses.

use std::time::{Duration, Instant};

use tonic::Status;

use super::proto;
use crate::config::FusionMethod;
use crate::error::{Error, ErrorKind};
use crate::retrieve::snippet::Snippet;
use crate::retrieve::{FusedHit, SearchResult, SourceOutcome, SourceStatus};
use crate::service::{SearchControls, SearchParams};
use crate::stores::filter::{FilterRequest, RangeBounds};

/// Every error kind maps to one status; retry hints travel as `retry-after` metadata.
pub fn status(error: Error) -> Status {
    let message = super::redact::error_text(&error);
    let mut status = Status::new(code(error.kind), message);
    if let Some(retry_after) = error.retry_after
        && let Ok(value) = retry_after.as_secs().max(1).to_string().parse()
    {
        status.metadata_mut().insert("retry-after", value);
    }
    status
}

/// The gRPC code each error kind is reported with.
pub fn code(kind: ErrorKind) -> tonic::Code {
    match kind {
        ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorKind::ContextLength => tonic::Code::OutOfRange,
        ErrorKind::NotFound => tonic::Code::NotFound,
        ErrorKind::AlreadyExists => tonic::Code::AlreadyExists,
        ErrorKind::Throttled => tonic::Code::ResourceExhausted,
        ErrorKind::Unavailable => tonic::Code::Unavailable,
        ErrorKind::Timeout => tonic::Code::DeadlineExceeded,
        // An endpoint refused our own credentials: the service is at fault, not the caller.
        ErrorKind::Auth => tonic::Code::Unavailable,
        ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
        ErrorKind::Forbidden => tonic::Code::PermissionDenied,
        ErrorKind::Config => tonic::Code::FailedPrecondition,
        ErrorKind::Internal => tonic::Code::Internal,
    }
}

/// The google.rpc.Code name of a gRPC code (`UNAVAILABLE`, `DEADLINE_EXCEEDED`),
/// as the proto's `AnswerError.code` documents it; tonic's own `Debug` spells
/// `Unavailable`.
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The call's deadline from its `grpc-timeout` header, if the client set one.
pub fn deadline<T>(request: &tonic::Request<T>) -> Option<Instant> {
    let header = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(header).map(|timeout| Instant::now() + timeout)
}

/// `grpc-timeout` is up to 8 digits and a unit: H, M, S, m (ms), u (us), n (ns).
fn parse_grpc_timeout(header: &str) -> Option<Duration> {
    if header.len() < 2 {
        return None;
    }
    let (digits, unit) = header.split_at(header.len() - 1);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

fn fusion_method(method: i32) -> Result<Option<FusionMethod>, Error> {
    match proto::FusionMethod::try_from(method) {
        Ok(proto::FusionMethod::Unspecified) => Ok(None),
        Ok(proto::FusionMethod::Rrf) => Ok(Some(FusionMethod::Rrf)),
        Ok(proto::FusionMethod::Dbsf) => Ok(Some(FusionMethod::Dbsf)),
        Err(_) => Err(Error::invalid(format!("unknown fusion method {method}"))),
    }
}

/// A `SearchRequest`, from gRPC or its JSON form on the facade, as the service takes it.
pub fn search_params(
    request: &proto::SearchRequest,
    deadline: Option<Instant>,
) -> Result<SearchParams, Error> {
    Ok(SearchParams {
        query: request.query.clone(),
        top_k: optional(request.top_k),
        sources: request.sources.clone(),
        fusion: fusion_method(request.fusion)?,
        deadline,
        adapter_from: (!request.adapter_from.is_empty()).then(|| request.adapter_from.clone()),
        controls: SearchControls {
            source_weights: request.source_weights.clone().into_iter().collect(),
            // 0 is proto3's unset: k must be at least 1 anyway.
            rrf_k: (request.rrf_k != 0.0).then_some(request.rrf_k),
            candidates_per_source: optional(request.candidates_per_source),
            min_score: request.min_score,
            page_size: optional(request.page_size),
            page_token: (!request.page_token.is_empty()).then(|| request.page_token.clone()),
            snippets: request.snippets,
        },
        filter: request.filter.as_ref().map(filter_request).transpose()?,
        clouds: request.clouds.clone(),
        regions: request.regions.clone(),
        classifications: request.classifications.clone(),
        namespace: request.namespace.clone(),
    })
}

/// A proto filter as the service checks it; only its shape is checked here.
pub fn filter_request(filter: &proto::Filter) -> Result<FilterRequest, Error> {
    use proto::field_condition::Test;
    use proto::filter::Kind;
    let list = |list: &proto::FilterList| -> Result<Vec<FilterRequest>, Error> {
        list.filters.iter().map(filter_request).collect()
    };
    match &filter.kind {
        None => Err(Error::invalid(
            "filter: a filter sets none of and, or, not, condition",
        )),
        Some(Kind::And(filters)) => Ok(FilterRequest::And(list(filters)?)),
        Some(Kind::Or(filters)) => Ok(FilterRequest::Or(list(filters)?)),
        Some(Kind::Not(inner)) => Ok(FilterRequest::Not(Box::new(filter_request(inner)?))),
        Some(Kind::Condition(condition)) => {
            let field = condition.field.clone();
            match &condition.test {
                None => Err(Error::invalid(format!(
                    "filter: the condition on {field:?} sets none of eq, in, prefix, range"
                ))),
                Some(Test::Eq(value)) => Ok(FilterRequest::Eq {
                    field,
                    value: value.clone(),
                }),
                Some(Test::In(values)) => Ok(FilterRequest::In {
                    field,
                    values: values.values.clone(),
                }),
                Some(Test::Prefix(prefix)) => Ok(FilterRequest::Prefix {
                    field,
                    prefix: prefix.clone(),
                }),
                Some(Test::Range(range)) => {
                    let bound = |text: &String| (!text.is_empty()).then(|| text.clone());
                    Ok(FilterRequest::Range {
                        field,
                        bounds: RangeBounds {
                            gte: bound(&range.gte),
                            gt: bound(&range.gt),
                            lte: bound(&range.lte),
                            lt: bound(&range.lt),
                        },
                    })
                }
            }
        }
    }
}

fn fusion_to_proto(method: FusionMethod) -> proto::FusionMethod {
    match method {
        FusionMethod::Rrf => proto::FusionMethod::Rrf,
        FusionMethod::Dbsf => proto::FusionMethod::Dbsf,
    }
}

pub fn search_response(result: SearchResult, include_text: bool) -> proto::SearchResponse {
    proto::SearchResponse {
        hits: result
            .hits
            .into_iter()
            .enumerate()
            .map(|(index, hit)| search_hit(result.offset + index, hit, include_text))
            .collect(),
        sources: result.outcomes.into_iter().map(source_outcome).collect(),
        degraded: result.degraded,
        took_micros: result.took.as_micros() as u64,
        fusion: fusion_to_proto(result.fusion) as i32,
        next_page_token: result.next_page_token.unwrap_or_default(),
    }
}

fn snippet(snippet: Snippet) -> proto::Snippet {
    let range = |range: crate::retrieve::snippet::TextRange| proto::TextRange {
        start: range.start as u32,
        end: range.end as u32,
    };
    proto::Snippet {
        start: snippet.range.start as u32,
        end: snippet.range.end as u32,
        highlights: snippet.highlights.into_iter().map(range).collect(),
        text: snippet.text,
    }
}

fn search_hit(index: usize, fused: FusedHit, include_text: bool) -> proto::SearchHit {
    proto::SearchHit {
        rank: index as u32 + 1,
        doc_id: fused.hit.doc_id,
        chunk_id: fused.hit.chunk_id,
        score: fused.score,
        title: fused.hit.title.to_string(),
        // A snippet stands in for the whole text.
        text: if include_text && fused.snippet.is_none() {
            fused.hit.text.to_string()
        } else {
            String::new()
        },
        snippet: fused.snippet.map(snippet),
        object_key: fused.hit.object_key,
        cloud: fused.hit.cloud,
        region: fused.hit.region,
        classes: fused.hit.classes,
        start_char: fused.hit.span.map(|span| span.start),
        end_char: fused.hit.span.map(|span| span.end),
        explain: fused
            .contributions
            .into_iter()
            .map(|contribution| proto::SourceContribution {
                source: contribution.source,
                rank: contribution.rank,
                score: f64::from(contribution.score),
                contribution: contribution.contribution,
                chunk_id: contribution.chunk_id,
            })
            .collect(),
    }
}

pub fn source_outcome(outcome: SourceOutcome) -> proto::SourceOutcome {
    let status = match outcome.status {
        SourceStatus::Ok => proto::SourceStatus::Ok,
        SourceStatus::Error => proto::SourceStatus::Error,
        SourceStatus::Timeout => proto::SourceStatus::Timeout,
        SourceStatus::Skipped => proto::SourceStatus::Skipped,
    };
    let message = source_message(&outcome);
    proto::SourceOutcome {
        source: outcome.source,
        status: status as i32,
        message,
        hits: outcome.hits as u32,
        took_micros: outcome.took.as_micros() as u64,
        adapted_from: outcome.adapted_from.unwrap_or_default(),
    }
}

/// A source's message for the client: a failed remote store's detail (its URL,
/// its error body) stays in the log.
fn source_message(outcome: &SourceOutcome) -> String {
    let kind = match outcome.status {
        SourceStatus::Ok | SourceStatus::Skipped => return super::redact::scrub(&outcome.message),
        SourceStatus::Error => ErrorKind::Unavailable,
        SourceStatus::Timeout => ErrorKind::Timeout,
    };
    super::redact::client_message(kind, &outcome.message, Some(&outcome.source))
}

/// Treats 0 as "not set", as the proto documents for counts.
pub fn optional(value: u32) -> Option<u32> {
    (value != 0).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("12"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
    }

    #[test]
    fn throttling_carries_retry_after() {
        let status = status(Error::throttled("slow down", Some(Duration::from_secs(7))));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.metadata().get("retry-after").unwrap(), "7");
    }
}
