//! `POST /v1/search`: gRPC `Search` as JSON, for HTTP retrievers (LangChain, LlamaIndex,
//! Haystack). The body has the proto's field names (snake_case) and the response mirrors
//! `SearchResponse`; both go through the same conversions and [`Service::search`] as
//! gRPC, so authentication, permissions, rate limits and limits are the same.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::openai::{authenticate, error_response};
use super::{convert, proto};
use crate::error::{Error, Result};
use crate::service::Service;
use crate::telemetry::trace;

/// `SearchRequest` in JSON: enums by their proto names, absent fields unset.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    query: String,
    #[serde(default)]
    top_k: u32,
    #[serde(default)]
    sources: Vec<String>,
    #[serde(default)]
    fusion: Option<String>,
    #[serde(default)]
    include_text: bool,
    #[serde(default)]
    adapter_from: String,
    #[serde(default)]
    source_weights: HashMap<String, f64>,
    #[serde(default)]
    rrf_k: f64,
    #[serde(default)]
    candidates_per_source: u32,
    #[serde(default)]
    min_score: Option<f64>,
    #[serde(default)]
    page_size: u32,
    #[serde(default)]
    page_token: String,
    #[serde(default)]
    snippets: bool,
    #[serde(default)]
    filter: Option<FilterBody>,
    /// Residency: the `SearchRequest` fields of the same names.
    #[serde(default)]
    clouds: Vec<String>,
    #[serde(default)]
    regions: Vec<String>,
    #[serde(default)]
    classifications: Vec<String>,
    #[serde(default)]
    namespace: String,
}

/// `Filter` in JSON, as gRPC's JSON mapping spells it: exactly one of the four keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FilterBody {
    #[serde(default)]
    and: Option<FilterListBody>,
    #[serde(default)]
    or: Option<FilterListBody>,
    #[serde(default)]
    not: Option<Box<FilterBody>>,
    #[serde(default)]
    condition: Option<ConditionBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterListBody {
    filters: Vec<FilterBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionBody {
    field: String,
    #[serde(default)]
    eq: Option<String>,
    #[serde(default, rename = "in")]
    one_of: Option<StringListBody>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    range: Option<RangeBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StringListBody {
    values: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeBody {
    #[serde(default)]
    gte: Option<BoundBody>,
    #[serde(default)]
    gt: Option<BoundBody>,
    #[serde(default)]
    lte: Option<BoundBody>,
    #[serde(default)]
    lt: Option<BoundBody>,
}

/// A bound as the proto's text, or (for sizes) a JSON integer.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum BoundBody {
    Integer(i64),
    Text(String),
}

impl BoundBody {
    fn into_text(self) -> String {
        match self {
            Self::Integer(number) => number.to_string(),
            Self::Text(text) => text,
        }
    }
}

/// A filter written as JSON in the shape of `/v1/search`'s `filter` (the CLI's
/// `--filter`), as the proto the service checks.
pub fn filter_from_json(text: &str) -> Result<proto::Filter> {
    let body: FilterBody = serde_json::from_str(text)
        .map_err(|error| Error::invalid(format!("filter: not a filter in JSON: {error}")))?;
    body.into_proto()
}

impl FilterBody {
    pub(super) fn into_proto(self) -> Result<proto::Filter> {
        use proto::field_condition::Test;
        use proto::filter::Kind;
        let list = |list: FilterListBody| -> Result<proto::FilterList> {
            Ok(proto::FilterList {
                filters: list
                    .filters
                    .into_iter()
                    .map(FilterBody::into_proto)
                    .collect::<Result<_>>()?,
            })
        };
        let kind = match (self.and, self.or, self.not, self.condition) {
            (Some(filters), None, None, None) => Kind::And(list(filters)?),
            (None, Some(filters), None, None) => Kind::Or(list(filters)?),
            (None, None, Some(inner), None) => Kind::Not(Box::new(inner.into_proto()?)),
            (None, None, None, Some(condition)) => {
                let field = condition.field;
                let test = match (
                    condition.eq,
                    condition.one_of,
                    condition.prefix,
                    condition.range,
                ) {
                    (Some(value), None, None, None) => Test::Eq(value),
                    (None, Some(list), None, None) => Test::In(proto::StringList {
                        values: list.values,
                    }),
                    (None, None, Some(prefix), None) => Test::Prefix(prefix),
                    (None, None, None, Some(range)) => {
                        let text = |bound: Option<BoundBody>| {
                            bound.map(BoundBody::into_text).unwrap_or_default()
                        };
                        Test::Range(proto::Range {
                            gte: text(range.gte),
                            gt: text(range.gt),
                            lte: text(range.lte),
                            lt: text(range.lt),
                        })
                    }
                    _ => {
                        return Err(Error::invalid(format!(
                            "filter: the condition on {field:?} must set exactly one of eq, in, \
                             prefix, range"
                        )));
                    }
                };
                Kind::Condition(proto::FieldCondition {
                    field,
                    test: Some(test),
                })
            }
            _ => {
                return Err(Error::invalid(
                    "filter: a filter must set exactly one of and, or, not, condition",
                ));
            }
        };
        Ok(proto::Filter { kind: Some(kind) })
    }
}

impl SearchBody {
    fn into_proto(self) -> Result<proto::SearchRequest> {
        let fusion = match self.fusion.as_deref() {
            None => proto::FusionMethod::Unspecified,
            Some(name) => proto::FusionMethod::from_str_name(name).ok_or_else(|| {
                Error::invalid(format!(
                    "fusion must be FUSION_METHOD_RRF or FUSION_METHOD_DBSF, not {name:?}"
                ))
            })?,
        };
        Ok(proto::SearchRequest {
            query: self.query,
            top_k: self.top_k,
            sources: self.sources,
            fusion: fusion as i32,
            include_text: self.include_text,
            adapter_from: self.adapter_from,
            source_weights: self.source_weights,
            rrf_k: self.rrf_k,
            candidates_per_source: self.candidates_per_source,
            min_score: self.min_score,
            page_size: self.page_size,
            page_token: self.page_token,
            snippets: self.snippets,
            filter: self.filter.map(FilterBody::into_proto).transpose()?,
            clouds: self.clouds,
            regions: self.regions,
            classifications: self.classifications,
            namespace: self.namespace,
        })
    }
}

pub(super) async fn search(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    body: axum::body::Bytes,
) -> Response {
    let trace = service.traces().http_call("POST", "/v1/search", &headers);
    let response = trace::within(
        trace.as_ref(),
        search_call(&service, &headers, &extensions, &body),
    )
    .await;
    if let (Some(trace), Err(error)) = (&trace, &response) {
        trace.fail(error.kind.as_str(), &error.message);
    }
    response.unwrap_or_else(|error| error_response(&error))
}

async fn search_call(
    service: &Service,
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
    body: &[u8],
) -> Result<Response> {
    let started = std::time::Instant::now();
    // Who is calling comes first: an anonymous caller learns nothing from the body's checks.
    let principal = match authenticate(service, headers, extensions).await {
        Ok(principal) => principal,
        Err(response) => return Ok(response),
    };
    let body: SearchBody = serde_json::from_slice(body)
        .map_err(|error| Error::invalid(format!("invalid request body: {error}")))?;
    let request = body.into_proto()?;
    let params = convert::search_params(&request, None)?;
    let result = service.search(&principal, params).await?;
    let waited = result.longest_source();
    let body = response_json(convert::search_response(result, request.include_text));
    let mut response = Json(body).into_response();
    let overhead = started.elapsed().saturating_sub(waited);
    if let Ok(value) = HeaderValue::from_str(&format!("{:.3}", overhead.as_secs_f64() * 1000.0)) {
        response
            .headers_mut()
            .insert(super::retrieval::OVERHEAD_HEADER, value);
    }
    Ok(response)
}

/// `SearchResponse` in JSON, field for field; enums by name, 64-bit integers as numbers.
fn response_json(response: proto::SearchResponse) -> Value {
    let enum_name = |fusion: i32| {
        proto::FusionMethod::try_from(fusion)
            .unwrap_or_default()
            .as_str_name()
    };
    let hits: Vec<Value> = response
        .hits
        .into_iter()
        .map(|hit| {
            let explain: Vec<Value> = hit
                .explain
                .into_iter()
                .map(|part| {
                    json!({
                        "source": part.source, "rank": part.rank, "score": part.score,
                        "contribution": part.contribution, "chunk_id": part.chunk_id,
                    })
                })
                .collect();
            let mut out = json!({
                "rank": hit.rank, "doc_id": hit.doc_id, "chunk_id": hit.chunk_id,
                "score": hit.score, "title": hit.title, "text": hit.text,
                "object_key": hit.object_key, "explain": explain,
                "cloud": hit.cloud, "region": hit.region, "classes": hit.classes,
            });
            // Unset (chunks indexed before spans were kept): left out, as in proto3 JSON.
            if let (Some(start), Some(end)) = (hit.start_char, hit.end_char) {
                out["start_char"] = json!(start);
                out["end_char"] = json!(end);
            }
            if let Some(snippet) = hit.snippet {
                let highlights: Vec<Value> = snippet
                    .highlights
                    .iter()
                    .map(|range| json!({"start": range.start, "end": range.end}))
                    .collect();
                out["snippet"] = json!({
                    "text": snippet.text, "start": snippet.start, "end": snippet.end,
                    "highlights": highlights,
                });
            }
            out
        })
        .collect();
    let sources: Vec<Value> = response
        .sources
        .into_iter()
        .map(|outcome| {
            let status = proto::SourceStatus::try_from(outcome.status)
                .unwrap_or_default()
                .as_str_name();
            json!({
                "source": outcome.source, "status": status, "message": outcome.message,
                "hits": outcome.hits, "took_micros": outcome.took_micros,
                "adapted_from": outcome.adapted_from,
            })
        })
        .collect();
    json!({
        "hits": hits,
        "sources": sources,
        "degraded": response.degraded,
        "took_micros": response.took_micros,
        "fusion": enum_name(response.fusion),
        "next_page_token": response.next_page_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_takes_the_proto_field_names_and_refuses_others() {
        let body: SearchBody = serde_json::from_value(json!({
            "query": "q", "fusion": "FUSION_METHOD_DBSF", "source_weights": {"a": 2.0},
            "page_size": 3, "snippets": true, "min_score": 0.0,
        }))
        .unwrap();
        let request = body.into_proto().unwrap();
        assert_eq!(request.fusion, proto::FusionMethod::Dbsf as i32);
        assert_eq!(request.source_weights["a"], 2.0);
        assert_eq!((request.page_size, request.min_score), (3, Some(0.0)));
        assert!(serde_json::from_value::<SearchBody>(json!({"query": "q", "topk": 3})).is_err());
        let unknown: SearchBody =
            serde_json::from_value(json!({"query": "q", "fusion": "best"})).unwrap();
        let error = unknown.into_proto().unwrap_err();
        assert!(
            error.message.contains("FUSION_METHOD_RRF"),
            "{}",
            error.message
        );
    }
}
