//! The OpenAPI 3.1 document of the HTTP facade: checked in as `docs/openapi.json` and
//! served at `GET /v1/openapi.json`, so HTTP clients can be generated from it.

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

/// The document, as checked in.
pub const DOCUMENT: &str = include_str!("../../docs/openapi.json");

/// Served to anyone: it describes the API, not the caller's data.
pub(super) async fn document() -> Response {
    ([(CONTENT_TYPE, "application/json")], DOCUMENT).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    #[test]
    fn the_document_describes_every_route_the_facade_serves_and_no_other() {
        let document: Value = serde_json::from_str(DOCUMENT).expect("docs/openapi.json parses");
        assert!(
            document["openapi"]
                .as_str()
                .is_some_and(|version| version.starts_with("3.1"))
        );
        let documented: BTreeSet<(String, String)> = document["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, operations)| {
                operations
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(move |(method, _)| (method.to_uppercase(), path.clone()))
            })
            .collect();
        let served: BTreeSet<(String, String)> = crate::api::openai::routes()
            .into_iter()
            .map(|(method, path, _)| (method.to_string(), path.to_string()))
            .collect();
        assert_eq!(documented, served);
        for (method, path) in &documented {
            let operation = &document["paths"][path][method.to_lowercase()];
            assert!(
                operation["responses"].is_object() && operation["operationId"].is_string(),
                "{method} {path} documents its responses and operationId"
            );
        }
    }

    #[test]
    fn every_schema_reference_resolves() {
        let document: Value = serde_json::from_str(DOCUMENT).unwrap();
        let mut references = Vec::new();
        collect_references(&document, &mut references);
        assert!(!references.is_empty());
        for reference in references {
            let pointer = reference.trim_start_matches('#');
            assert!(document.pointer(pointer).is_some(), "{reference} resolves");
        }
    }

    fn collect_references(value: &Value, into: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("$ref", Value::String(reference)) => into.push(reference.clone()),
                        _ => collect_references(value, into),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| collect_references(item, into)),
            _ => {}
        }
    }
}
