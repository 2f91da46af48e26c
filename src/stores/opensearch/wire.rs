//! The wire: one request through the `opensearch` transport (signed with SigV4 when
//! configured), and OpenSearch's error answers as our errors.

use std::time::{Duration, SystemTime};

use opensearch::http::headers::{HeaderMap, HeaderName, HeaderValue};
use opensearch::http::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::OpenSearchIndex;
use crate::error::{Error, ErrorKind, Result};

impl OpenSearchIndex {
    /// Sends one request and returns the JSON answer of a 2xx; any other status
    /// becomes an error of the matching kind.
    pub(super) async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Vec<u8>>,
        content_type: Option<&'static str>,
        timeout: Option<Duration>,
    ) -> Result<Value> {
        let content_type = content_type.unwrap_or("application/json");
        let mut headers = HeaderMap::new();
        headers.insert(
            opensearch::http::headers::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        if let Some(signer) = &self.signer {
            let mut url = self
                .base_url
                .join(path.trim_start_matches('/'))
                .map_err(|error| Error::internal(format!("opensearch path {path:?}: {error}")))?;
            if !query.is_empty() {
                url.query_pairs_mut().extend_pairs(query);
            }
            let body_bytes = body.as_deref().unwrap_or_default();
            let payload_hash = hex::encode(Sha256::digest(body_bytes));
            let signed_headers = vec![
                ("content-type".to_string(), content_type.to_string()),
                ("x-amz-content-sha256".to_string(), payload_hash.clone()),
            ];
            let added = signer
                .sign(
                    method_name(method),
                    &url,
                    &signed_headers,
                    body_bytes,
                    SystemTime::now(),
                )
                .await
                .map_err(|error| error.context(format!("opensearch {}", self.settings.url)))?;
            headers.insert(
                HeaderName::from_static("x-amz-content-sha256"),
                header_value(&payload_hash)?,
            );
            for (name, value) in added {
                headers.insert(HeaderName::from_static(name), header_value(&value)?);
            }
        }
        // Outside the SigV4 signature (it lists its headers): OpenSearch's own traces
        // join the search that asked.
        crate::telemetry::trace::inject_traceparent(&mut headers);
        let query_string = (!query.is_empty()).then_some(query);
        let response = self
            .client
            .transport()
            .send(method, path, headers, query_string, body, timeout)
            .await
            .map_err(|error| {
                if error.is_timeout() {
                    Error::timeout(format!(
                        "opensearch {}: no answer in time",
                        self.settings.url
                    ))
                } else {
                    Error::unavailable(format!(
                        "opensearch {} unreachable: {error}",
                        self.settings.url
                    ))
                }
            })?;
        let status = response.status_code();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.trim().parse::<u64>().ok())
            .map(crate::time_caps::retry_after_secs);
        let text = response.text().await.map_err(|error| {
            Error::unavailable(format!(
                "opensearch {}: reading the answer: {error}",
                self.settings.url
            ))
        })?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|error| {
                Error::internal(format!("opensearch answered with malformed json: {error}"))
            });
        }
        Err(status_error(
            status,
            &text,
            retry_after,
            &self.settings.name,
        ))
    }
}

pub(super) fn method_name(method: Method) -> &'static str {
    match method {
        Method::Get => "GET",
        Method::Put => "PUT",
        Method::Post => "POST",
        Method::Delete => "DELETE",
        Method::Head => "HEAD",
    }
}

pub(super) fn header_value(text: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(text)
        .map_err(|_| Error::config("a signed header value is not valid in http".to_string()))
}

pub(super) fn json_error(error: serde_json::Error) -> Error {
    Error::internal(format!("cannot encode a bulk line: {error}"))
}

/// The first failed item of a bulk answer, as an error (429 items as throttling).
pub(super) fn bulk_errors(answer: &Value) -> Result<()> {
    if answer["errors"] != true {
        return Ok(());
    }
    let items = answer["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let failed = items
        .iter()
        .filter_map(|item| item.as_object()?.values().next())
        .find(|result| result.get("error").is_some());
    let Some(failed) = failed else {
        return Err(Error::internal(
            "opensearch bulk reported errors but no failed item",
        ));
    };
    let status = failed["status"].as_u64().unwrap_or(500);
    let reason = failed
        .pointer("/error/reason")
        .and_then(Value::as_str)
        .unwrap_or("no reason given");
    let message = format!("bulk item {} failed with {status}: {reason}", failed["_id"]);
    Err(match status {
        429 => Error::throttled(message, None),
        400..=499 => Error::invalid(message),
        _ => Error::unavailable(message),
    })
}

/// An HTTP error status as our error, with OpenSearch's reason when it gave one.
pub(super) fn status_error(
    status: StatusCode,
    body: &str,
    retry_after: Option<Duration>,
    index: &str,
) -> Error {
    let reason = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|value| {
            value
                .pointer("/error/reason")
                .or_else(|| value.get("message"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.chars().take(200).collect());
    let code = status.as_u16();
    match code {
        401 | 403 => Error::new(
            ErrorKind::Auth,
            format!("credentials refused ({code}): {reason}"),
        ),
        404 => Error::not_found(format!("index {index:?} does not exist ({reason})")),
        408 | 504 => Error::timeout(format!("timed out ({code}): {reason}")),
        429 => Error::throttled(format!("throttled (429): {reason}"), retry_after),
        400..=499 => Error::invalid(format!("request refused ({code}): {reason}")),
        _ => Error {
            retry_after,
            ..Error::unavailable(format!("server error ({code}): {reason}"))
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_429_keeps_its_retry_after_and_auth_failures_are_named() {
        let error = status_error(
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"message":"Too Many Requests"}"#,
            Some(Duration::from_secs(2)),
            "docs",
        );
        assert_eq!(error.kind, ErrorKind::Throttled);
        assert_eq!(error.retry_after, Some(Duration::from_secs(2)));
        let error = status_error(StatusCode::FORBIDDEN, "{}", None, "docs");
        assert_eq!(error.kind, ErrorKind::Auth);
        let error = status_error(
            StatusCode::NOT_FOUND,
            r#"{"error":{"reason":"no such index [docs]"}}"#,
            None,
            "docs",
        );
        assert!(error.message.contains("no such index"), "{}", error.message);
    }

    #[test]
    fn a_bulk_answer_with_a_failed_item_is_an_error() {
        let answer = json!({
            "errors": true,
            "items": [
                { "index": { "_id": "a#0", "status": 201 } },
                { "index": { "_id": "b#0", "status": 429, "error": { "reason": "queue full" } } },
            ],
        });
        let error = bulk_errors(&answer).unwrap_err();
        assert_eq!(error.kind, ErrorKind::Throttled);
        assert!(error.message.contains("queue full"), "{}", error.message);
        bulk_errors(&json!({ "errors": false, "items": [] })).unwrap();
    }
}
