//! `POST /v1/documents` and `POST /v1/documents/delete`: `UpsertDocuments` and
//! `DeleteDocuments` as JSON, with the proto's field names (a oneof's member as its own
//! key). Both go through the same conversions and service entrances as gRPC, so
//! authentication, permissions, rate limits and limits are the same.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::http_search::FilterBody;
use super::openai::{authenticate, error_response};
use super::{documents, proto};
use crate::error::{Error, Result};
use crate::service::Service;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertBody {
    #[serde(default)]
    index: String,
    documents: Vec<DocumentBody>,
    #[serde(default)]
    namespace: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocumentBody {
    id: String,
    #[serde(default)]
    title: String,
    text: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// Exactly one of `ids`, `object_key_prefix`, `filter`, as in `DeleteDocumentsRequest`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    #[serde(default)]
    index: String,
    #[serde(default)]
    ids: Option<IdsBody>,
    #[serde(default)]
    object_key_prefix: Option<String>,
    #[serde(default)]
    filter: Option<FilterBody>,
    #[serde(default)]
    namespace: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdsBody {
    ids: Vec<String>,
}

impl DeleteBody {
    fn into_proto(self) -> Result<proto::DeleteDocumentsRequest> {
        use proto::delete_documents_request::Selection;
        let selection = match (self.ids, self.object_key_prefix, self.filter) {
            (None, None, None) => None,
            (Some(ids), None, None) => Some(Selection::Ids(proto::DocumentIds { ids: ids.ids })),
            (None, Some(prefix), None) => Some(Selection::ObjectKeyPrefix(prefix)),
            (None, None, Some(filter)) => Some(Selection::Filter(filter.into_proto()?)),
            _ => {
                return Err(Error::invalid(
                    "set exactly one of ids, object_key_prefix or filter",
                ));
            }
        };
        Ok(proto::DeleteDocumentsRequest {
            index: self.index,
            selection,
            namespace: self.namespace,
        })
    }
}

pub(super) async fn upsert(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    body: axum::body::Bytes,
) -> Response {
    upsert_call(&service, &headers, &extensions, &body)
        .await
        .unwrap_or_else(|error| error_response(&error))
}

async fn upsert_call(
    service: &Service,
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
    body: &[u8],
) -> Result<Response> {
    // Who is calling comes first: an anonymous caller learns nothing from the body's checks.
    let principal = match authenticate(service, headers, extensions).await {
        Ok(principal) => principal,
        Err(response) => return Ok(response),
    };
    let body: UpsertBody = serde_json::from_slice(body)
        .map_err(|error| Error::invalid(format!("invalid request body: {error}")))?;
    let new_documents = body
        .documents
        .into_iter()
        .map(|document| {
            documents::new_document(proto::Document {
                id: document.id,
                title: document.title,
                text: document.text,
                metadata: document.metadata.into_iter().collect(),
            })
        })
        .collect();
    let report = service
        .upsert_documents(&principal, &body.index, &body.namespace, new_documents)
        .await?;
    let response = documents::upsert_response(&report);
    Ok(Json(json!({
        "written": response.written,
        "unchanged": response.unchanged,
        "chunks": response.chunks,
    }))
    .into_response())
}

pub(super) async fn delete(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    body: axum::body::Bytes,
) -> Response {
    delete_call(&service, &headers, &extensions, &body)
        .await
        .unwrap_or_else(|error| error_response(&error))
}

async fn delete_call(
    service: &Service,
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
    body: &[u8],
) -> Result<Response> {
    let principal = match authenticate(service, headers, extensions).await {
        Ok(principal) => principal,
        Err(response) => return Ok(response),
    };
    let body: DeleteBody = serde_json::from_slice(body)
        .map_err(|error| Error::invalid(format!("invalid request body: {error}")))?;
    let request = body.into_proto()?;
    let selection = documents::delete_selection(request.selection)?;
    let report = service
        .delete_documents(&principal, &request.index, &request.namespace, selection)
        .await?;
    let response = documents::delete_response(&report);
    Ok(Json(json!({
        "documents": response.documents,
        "chunks": response.chunks,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delete_sets_exactly_one_selection() {
        let by_ids: DeleteBody =
            serde_json::from_value(json!({"index": "docs", "ids": {"ids": ["a"]}})).unwrap();
        let request = by_ids.into_proto().unwrap();
        assert_eq!(request.index, "docs");
        assert!(matches!(
            request.selection,
            Some(proto::delete_documents_request::Selection::Ids(_))
        ));
        let both: DeleteBody =
            serde_json::from_value(json!({"ids": {"ids": ["a"]}, "object_key_prefix": "api/"}))
                .unwrap();
        assert!(both.into_proto().is_err());
        assert!(serde_json::from_value::<DeleteBody>(json!({"id": "a"})).is_err());
    }
}
