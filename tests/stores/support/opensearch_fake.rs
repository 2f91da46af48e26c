//! A strict in-process OpenSearch: index create (mapping checked), `_mapping`,
//! `_bulk` (NDJSON), `_search` with `knn` or a BM25 `match`, `_delete_by_query`,
//! `_refresh` and `_count`, answering in the documented response shapes. Writes
//! become visible on refresh, as in OpenSearch. Request bodies with keys this
//! fake does not know are refused with a 400, so a typo in the adapter fails a test.
//!
//! Auth: basic (username/password) or SigV4, whose signature is recomputed from the
//! request with the secret key and compared.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use skyfuse::cloud::sigv4::{AwsCredentials, SigV4Signer, parse_amz_date};
use skyfuse::config::Secret;

#[derive(Default)]
struct FakeIndex {
    mapping: Value,
    /// What searches see: the documents as of the last refresh.
    visible: BTreeMap<String, Value>,
    /// Every write so far.
    latest: BTreeMap<String, Value>,
}

pub enum FakeAuth {
    None,
    Basic {
        username: String,
        password: String,
    },
    SigV4 {
        access_key: String,
        secret_key: String,
        region: String,
        service: String,
    },
}

/// A scripted failure for the next request(s) whose path contains `path_part`.
pub struct Fault {
    pub path_part: String,
    pub status: u16,
    pub retry_after: Option<u64>,
    pub delay: Duration,
}

pub struct FakeOpenSearch {
    indexes: Mutex<HashMap<String, FakeIndex>>,
    pub auth: FakeAuth,
    pub faults: Mutex<VecDeque<Fault>>,
    /// Every request as (method, path and query).
    pub log: Mutex<Vec<(String, String)>>,
    /// The `traceparent` of every request, when it had one.
    pub traceparents: Mutex<Vec<Option<String>>>,
    pub base_url: Mutex<String>,
    /// The `_bulk` request (counting from 1) that is held and never answered: a writer
    /// stuck mid-run at a point the test chose.
    pub hang_bulk: Mutex<Option<usize>>,
    /// `_bulk` requests received, and how many of them are held unanswered.
    pub bulks_received: AtomicUsize,
    pub bulks_hanging: AtomicUsize,
    /// The `_id` of every document a `_bulk` wrote, in order.
    pub written_ids: Mutex<Vec<String>>,
}

type Reply = Result<Value, (StatusCode, Value)>;

fn error(status: StatusCode, kind: &str, reason: impl Into<String>) -> (StatusCode, Value) {
    let reason = reason.into();
    (
        status,
        json!({
            "error": { "root_cause": [{ "type": kind, "reason": reason }], "type": kind, "reason": reason },
            "status": status.as_u16(),
        }),
    )
}

fn bad(reason: impl Into<String>) -> (StatusCode, Value) {
    error(StatusCode::BAD_REQUEST, "parsing_exception", reason)
}

/// The document's values at the one field a leaf query names, and that field's condition.
fn single_field<'a>(
    document: &'a Value,
    body: &'a Value,
    what: &str,
) -> Result<(Vec<&'a Value>, &'a Value), (StatusCode, Value)> {
    let fields = body
        .as_object()
        .filter(|fields| fields.len() == 1)
        .ok_or_else(|| bad(format!("[{what}] query takes one field")))?;
    let (field, condition) = fields.iter().next().ok_or_else(|| bad("no field"))?;
    Ok((field_values(document, field), condition))
}

/// A document's values at a dotted field path (objects nested as `metadata.team`);
/// an array contributes each element, a missing field none.
fn field_values<'a>(document: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut value = document;
    for part in path.split('.') {
        match value.get(part) {
            Some(inner) => value = inner,
            None => return Vec::new(),
        }
    }
    match value {
        Value::Null => Vec::new(),
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    }
}

fn only_keys(value: &Value, allowed: &[&str], what: &str) -> Result<(), (StatusCode, Value)> {
    let Some(object) = value.as_object() else {
        return Err(bad(format!("{what} must be an object")));
    };
    for key in object.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(bad(format!("unknown key [{key}] in {what}")));
        }
    }
    Ok(())
}

fn index_not_found(name: &str) -> (StatusCode, Value) {
    error(
        StatusCode::NOT_FOUND,
        "index_not_found_exception",
        format!("no such index [{name}]"),
    )
}

/// Lower-case alphanumeric words with a trailing `s` cut: enough of an English analyzer.
fn terms(text: &str) -> Vec<String> {
    const STOP: [&str; 8] = ["the", "a", "an", "and", "of", "at", "over", "to"];
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(|word| word.to_lowercase())
        .filter(|word| !STOP.contains(&word.as_str()))
        .map(|word| word.strip_suffix('s').map(str::to_string).unwrap_or(word))
        .collect()
}

impl FakeOpenSearch {
    pub async fn start(auth: FakeAuth) -> Arc<Self> {
        let fake = Arc::new(Self {
            indexes: Mutex::new(HashMap::new()),
            auth,
            faults: Mutex::new(VecDeque::new()),
            log: Mutex::new(Vec::new()),
            traceparents: Mutex::new(Vec::new()),
            base_url: Mutex::new(String::new()),
            hang_bulk: Mutex::new(None),
            bulks_received: AtomicUsize::new(0),
            bulks_hanging: AtomicUsize::new(0),
            written_ids: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        *fake.base_url.lock().unwrap() = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::clone(&fake);
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = Arc::clone(&state);
                async move { state.handle(method, uri, headers, body).await }
            },
        );
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        fake
    }

    pub fn url(&self) -> String {
        self.base_url.lock().unwrap().clone()
    }

    pub fn fail_next(&self, fault: Fault) {
        self.faults.lock().unwrap().push_back(fault);
    }

    /// Creates an index directly with a vector field (an index someone else made).
    pub fn create_knn_index(&self, name: &str, dims: usize, space_type: &str) {
        let mapping = json!({ "properties": {
            "embedding": { "type": "knn_vector", "dimension": dims,
                           "method": { "name": "hnsw", "engine": "lucene", "space_type": space_type } },
        }});
        self.create_with_mapping(name, mapping);
    }

    /// The ids of the documents an index holds (every write so far).
    pub fn document_ids(&self, name: &str) -> Vec<String> {
        self.indexes.lock().unwrap()[name]
            .latest
            .keys()
            .cloned()
            .collect()
    }

    /// The mapping of an index, as `GET <index>/_mapping` gives it under `mappings`.
    pub fn mapping(&self, name: &str) -> Value {
        self.indexes.lock().unwrap()[name].mapping.clone()
    }

    /// Creates an index directly with `mapping` (an index someone else made).
    pub fn create_with_mapping(&self, name: &str, mapping: Value) {
        self.indexes.lock().unwrap().insert(
            name.to_string(),
            FakeIndex {
                mapping,
                ..FakeIndex::default()
            },
        );
    }

    async fn handle(&self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let path = uri.path().to_string();
        let query = uri.query().unwrap_or_default().to_string();
        self.log
            .lock()
            .unwrap()
            .push((method.to_string(), uri.to_string()));
        self.traceparents.lock().unwrap().push(
            headers
                .get("traceparent")
                .and_then(|value| value.to_str().ok())
                .map(str::to_string),
        );
        let fault = {
            let mut faults = self.faults.lock().unwrap();
            let position = faults
                .iter()
                .position(|fault| path.contains(&fault.path_part));
            position.and_then(|position| faults.remove(position))
        };
        if let Some(fault) = fault {
            tokio::time::sleep(fault.delay).await;
            if fault.status != 200 {
                let status = StatusCode::from_u16(fault.status).unwrap();
                let mut response = (
                    status,
                    axum::Json(json!({ "message": format!("scripted {}", fault.status) })),
                )
                    .into_response();
                if let Some(seconds) = fault.retry_after {
                    response
                        .headers_mut()
                        .insert("retry-after", seconds.to_string().parse().unwrap());
                }
                return response;
            }
        }
        if let Err((status, body)) = self.authorize(&method, &uri, &headers, &body) {
            return (status, axum::Json(body)).into_response();
        }
        if method == Method::POST && path == "/_bulk" {
            let number = self.bulks_received.fetch_add(1, Ordering::SeqCst) + 1;
            if *self.hang_bulk.lock().unwrap() == Some(number) {
                self.bulks_hanging.fetch_add(1, Ordering::SeqCst);
                // Until the client goes away (its connection closes): nothing is written.
                std::future::pending::<()>().await;
            }
        }
        let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let reply = self.route(&method, &path, &params, &headers, &body);
        match reply {
            Ok(value) => (StatusCode::OK, axum::Json(value)).into_response(),
            Err((status, value)) => (status, axum::Json(value)).into_response(),
        }
    }

    fn authorize(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), (StatusCode, Value)> {
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        match &self.auth {
            FakeAuth::None => Ok(()),
            FakeAuth::Basic { username, password } => {
                use base64::Engine;
                let expected = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{password}"))
                );
                if header("authorization") == Some(expected.as_str()) {
                    Ok(())
                } else {
                    Err(error(
                        StatusCode::UNAUTHORIZED,
                        "security_exception",
                        "Unauthorized",
                    ))
                }
            }
            FakeAuth::SigV4 {
                access_key,
                secret_key,
                region,
                service,
            } => {
                let sent = header("authorization").unwrap_or_default();
                let date = header("x-amz-date").ok_or_else(|| {
                    error(
                        StatusCode::FORBIDDEN,
                        "security_exception",
                        "missing x-amz-date",
                    )
                })?;
                let hash = header("x-amz-content-sha256").unwrap_or_default();
                use sha2::Digest;
                if hash != hex::encode(sha2::Sha256::digest(body)) {
                    return Err(error(
                        StatusCode::FORBIDDEN,
                        "security_exception",
                        "x-amz-content-sha256 does not match the body",
                    ));
                }
                let credentials = AwsCredentials {
                    access_key_id: Secret::new(access_key.clone()),
                    secret_access_key: Secret::new(secret_key.clone()),
                    session_token: None,
                };
                let signer = SigV4Signer {
                    credentials: credentials.clone().into(),
                    region: region.clone(),
                    service: service.clone(),
                };
                let host = header("host").unwrap_or_default();
                let url = url::Url::parse(&format!("http://{host}{uri}")).unwrap();
                let signed_headers = vec![
                    (
                        "content-type".to_string(),
                        header("content-type").unwrap_or_default().to_string(),
                    ),
                    ("x-amz-content-sha256".to_string(), hash.to_string()),
                ];
                let time = parse_amz_date(date).map_err(|_| {
                    error(
                        StatusCode::FORBIDDEN,
                        "security_exception",
                        "bad x-amz-date",
                    )
                })?;
                let expected = signer.sign_with(
                    &credentials,
                    method.as_str(),
                    &url,
                    &signed_headers,
                    body,
                    time,
                );
                let expected = expected
                    .iter()
                    .find(|(name, _)| *name == "authorization")
                    .map(|(_, value)| value.as_str());
                if expected == Some(sent) {
                    Ok(())
                } else {
                    Err(error(
                        StatusCode::FORBIDDEN,
                        "security_exception",
                        "The request signature we calculated does not match the signature you provided.",
                    ))
                }
            }
        }
    }

    fn route(
        &self,
        method: &Method,
        path: &str,
        params: &HashMap<String, String>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Reply {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let json_body = || -> Result<Value, (StatusCode, Value)> {
            let content_type = headers
                .get("content-type")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default();
            if !content_type.starts_with("application/json") {
                return Err(bad(format!(
                    "content-type must be application/json, not {content_type:?}"
                )));
            }
            serde_json::from_slice(body).map_err(|error| bad(format!("malformed json: {error}")))
        };
        for (name, value) in params {
            match name.as_str() {
                "refresh" if ["true", "false", "wait_for"].contains(&value.as_str()) => {}
                _ => {
                    return Err(bad(format!(
                        "unknown or bad url parameter [{name}={value}]"
                    )));
                }
            }
        }
        match (method.as_str(), segments.as_slice()) {
            ("PUT", [index]) => self.create_index(index, json_body()?),
            ("GET", [index, "_mapping"]) => {
                let indexes = self.indexes.lock().unwrap();
                let found = indexes.get(*index).ok_or_else(|| index_not_found(index))?;
                Ok(json!({ *index: { "mappings": found.mapping } }))
            }
            ("PUT", [index, "_mapping"]) => self.put_mapping(index, json_body()?),
            ("POST", ["_bulk"]) => self.bulk(params, headers, body),
            ("POST", [index, "_search"]) => self.search(index, json_body()?),
            ("POST", [index, "_delete_by_query"]) => {
                self.delete_by_query(index, params, json_body()?)
            }
            ("POST", [index, "_refresh"]) => {
                let mut indexes = self.indexes.lock().unwrap();
                let found = indexes
                    .get_mut(*index)
                    .ok_or_else(|| index_not_found(index))?;
                found.visible = found.latest.clone();
                Ok(json!({ "_shards": { "total": 1, "successful": 1, "failed": 0 } }))
            }
            ("GET", [index, "_count"]) => {
                let indexes = self.indexes.lock().unwrap();
                let found = indexes.get(*index).ok_or_else(|| index_not_found(index))?;
                Ok(
                    json!({ "count": found.visible.len(), "_shards": { "total": 1, "successful": 1, "failed": 0 } }),
                )
            }
            _ => Err(bad(format!("no handler for {method} {path}"))),
        }
    }

    /// Adds fields to a mapping; as OpenSearch, a mapped field keeps its type.
    fn put_mapping(&self, name: &str, body: Value) -> Reply {
        only_keys(&body, &["properties"], "put mapping")?;
        let added = body["properties"]
            .as_object()
            .ok_or_else(|| bad("properties must be an object"))?;
        let mut indexes = self.indexes.lock().unwrap();
        let index = indexes.get_mut(name).ok_or_else(|| index_not_found(name))?;
        for (field, definition) in added {
            let existing = &index.mapping["properties"][field.as_str()];
            if !existing.is_null() && existing != definition {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "illegal_argument_exception",
                    format!("mapper [{field}] cannot be changed"),
                ));
            }
            index.mapping["properties"][field.as_str()] = definition.clone();
        }
        Ok(json!({ "acknowledged": true }))
    }

    fn create_index(&self, name: &str, body: Value) -> Reply {
        only_keys(&body, &["settings", "mappings"], "index creation")?;
        only_keys(
            &body["mappings"],
            &["properties", "dynamic_templates"],
            "mappings",
        )?;
        for template in body["mappings"]["dynamic_templates"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let definition = template
                .as_object()
                .filter(|template| template.len() == 1)
                .and_then(|template| template.values().next())
                .ok_or_else(|| bad("a dynamic template is one named object"))?;
            only_keys(
                definition,
                &["path_match", "match_mapping_type", "mapping"],
                "dynamic template",
            )?;
        }
        let properties = body["mappings"]["properties"]
            .as_object()
            .ok_or_else(|| bad("mappings.properties must be an object"))?;
        let mut has_knn = false;
        for (field, definition) in properties {
            match definition["type"].as_str() {
                Some("keyword") | Some("integer") | Some("long") | Some("object") => {
                    only_keys(definition, &["type"], field)?
                }
                Some("text") => {
                    only_keys(definition, &["type", "analyzer", "copy_to"], field)?;
                    if definition["analyzer"] != "english" {
                        return Err(bad(format!(
                            "text field [{field}] should use the english analyzer"
                        )));
                    }
                }
                Some("knn_vector") => {
                    only_keys(definition, &["type", "dimension", "method"], field)?;
                    only_keys(
                        &definition["method"],
                        &["name", "engine", "space_type"],
                        "method",
                    )?;
                    if definition["dimension"].as_u64().unwrap_or(0) == 0 {
                        return Err(bad("knn_vector needs a dimension"));
                    }
                    let space = definition["method"]["space_type"]
                        .as_str()
                        .unwrap_or_default();
                    if !["l2", "cosinesimil", "innerproduct"].contains(&space) {
                        return Err(bad(format!("unknown space_type [{space}]")));
                    }
                    has_knn = true;
                }
                other => return Err(bad(format!("unknown field type {other:?} for [{field}]"))),
            }
        }
        if has_knn && body["settings"]["index"]["knn"] != true {
            return Err(bad("a knn_vector field needs settings.index.knn = true"));
        }
        let mut indexes = self.indexes.lock().unwrap();
        if indexes.contains_key(name) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "resource_already_exists_exception",
                format!("index [{name}] already exists"),
            ));
        }
        indexes.insert(
            name.to_string(),
            FakeIndex {
                mapping: body["mappings"].clone(),
                ..FakeIndex::default()
            },
        );
        Ok(json!({ "acknowledged": true, "shards_acknowledged": true, "index": name }))
    }

    fn bulk(&self, params: &HashMap<String, String>, headers: &HeaderMap, body: &[u8]) -> Reply {
        let content_type = headers
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if content_type != "application/x-ndjson" {
            return Err(bad(format!(
                "_bulk needs application/x-ndjson, not {content_type:?}"
            )));
        }
        let text = std::str::from_utf8(body).map_err(|_| bad("bulk body is not utf-8"))?;
        if !text.ends_with('\n') {
            return Err(bad(
                "The bulk request must be terminated by a newline [\\n]",
            ));
        }
        let lines: Vec<&str> = text.lines().collect();
        if !lines.len().is_multiple_of(2) {
            return Err(bad("bulk body must be action and document pairs"));
        }
        let mut indexes = self.indexes.lock().unwrap();
        let mut items = Vec::new();
        for pair in lines.chunks(2) {
            let action: Value = serde_json::from_str(pair[0]).map_err(|e| bad(e.to_string()))?;
            let document: Value = serde_json::from_str(pair[1]).map_err(|e| bad(e.to_string()))?;
            only_keys(&action, &["index"], "bulk action")?;
            only_keys(&action["index"], &["_index", "_id"], "bulk index action")?;
            let name = action["index"]["_index"]
                .as_str()
                .ok_or_else(|| bad("_index missing"))?;
            let id = action["index"]["_id"]
                .as_str()
                .ok_or_else(|| bad("_id missing"))?;
            let index = indexes.get_mut(name).ok_or_else(|| index_not_found(name))?;
            // Strict mapping: every field must be mapped, vectors must fit.
            let properties = &index.mapping["properties"];
            let mut problem = None;
            for (field, value) in document
                .as_object()
                .ok_or_else(|| bad("document must be an object"))?
            {
                let definition = &properties[field.as_str()];
                if definition.is_null() {
                    problem = Some(format!(
                        "mapping set to strict, dynamic introduction of [{field}] is not allowed"
                    ));
                } else if definition["type"] == "knn_vector" {
                    let dims = definition["dimension"].as_u64().unwrap_or(0) as usize;
                    if value.as_array().map(Vec::len) != Some(dims) {
                        problem = Some(format!("Vector dimension mismatch. Expected: {dims}"));
                    }
                }
            }
            let item = match problem {
                Some(reason) => json!({ "index": { "_index": name, "_id": id, "status": 400,
                    "error": { "type": "mapper_parsing_exception", "reason": reason } } }),
                None => {
                    self.written_ids.lock().unwrap().push(id.to_string());
                    let created = index.latest.insert(id.to_string(), document).is_none();
                    json!({ "index": { "_index": name, "_id": id, "_version": 1,
                        "result": if created { "created" } else { "updated" },
                        "status": if created { 201 } else { 200 } } })
                }
            };
            items.push(item);
        }
        if matches!(
            params.get("refresh").map(String::as_str),
            Some("true" | "wait_for")
        ) {
            for index in indexes.values_mut() {
                index.visible = index.latest.clone();
            }
        }
        let errors = items
            .iter()
            .any(|item| item["index"].get("error").is_some());
        Ok(json!({ "took": 1, "errors": errors, "items": items }))
    }

    /// Whether the document passes every clause of a `filter` array.
    fn matching_filter(document: &Value, filters: &Value) -> Result<bool, (StatusCode, Value)> {
        let Some(filters) = filters.as_array() else {
            return Err(bad("filter must be an array of clauses"));
        };
        for clause in filters {
            if !Self::matching_clause(document, clause)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One query-DSL clause in filter context, as OpenSearch documents it: `bool`
    /// (filter / must / should / must_not, `minimum_should_match`), `term`, `terms`,
    /// `prefix`, `range`, `match_all`. A clause on a field the document lacks is false.
    fn matching_clause(document: &Value, clause: &Value) -> Result<bool, (StatusCode, Value)> {
        let object = clause
            .as_object()
            .filter(|object| object.len() == 1)
            .ok_or_else(|| bad("a query clause must be an object with one key"))?;
        let (kind, body) = object.iter().next().ok_or_else(|| bad("empty clause"))?;
        let single_field = |what: &str| single_field(document, body, what);
        match kind.as_str() {
            "match_all" => Ok(true),
            "bool" => {
                only_keys(
                    body,
                    &[
                        "filter",
                        "must",
                        "should",
                        "must_not",
                        "minimum_should_match",
                    ],
                    "bool",
                )?;
                let list = |key: &str| -> Result<Vec<Value>, (StatusCode, Value)> {
                    match &body[key] {
                        Value::Null => Ok(Vec::new()),
                        Value::Array(items) => Ok(items.clone()),
                        single @ Value::Object(_) => Ok(vec![single.clone()]),
                        _ => Err(bad(format!("bool.{key} must be a clause or an array"))),
                    }
                };
                for clause in list("filter")?.iter().chain(list("must")?.iter()) {
                    if !Self::matching_clause(document, clause)? {
                        return Ok(false);
                    }
                }
                for clause in &list("must_not")? {
                    if Self::matching_clause(document, clause)? {
                        return Ok(false);
                    }
                }
                let should = list("should")?;
                let wanted = body["minimum_should_match"]
                    .as_u64()
                    .unwrap_or(0)
                    .max(u64::from(
                        !should.is_empty()
                            && list("filter")?.is_empty()
                            && list("must")?.is_empty(),
                    ));
                let mut matched = 0;
                for clause in &should {
                    if Self::matching_clause(document, clause)? {
                        matched += 1;
                    }
                }
                Ok(matched >= wanted)
            }
            "term" => {
                let (values, condition) = single_field("term")?;
                let wanted = match condition.get("value") {
                    Some(wanted) => wanted,
                    None => condition,
                };
                Ok(values.contains(&wanted))
            }
            "terms" => {
                let (values, wanted) = single_field("terms")?;
                let wanted = wanted
                    .as_array()
                    .ok_or_else(|| bad("terms values must be an array"))?;
                Ok(values.iter().any(|value| wanted.contains(value)))
            }
            "prefix" => {
                let (values, condition) = single_field("prefix")?;
                let prefix = condition
                    .get("value")
                    .unwrap_or(condition)
                    .as_str()
                    .ok_or_else(|| bad("prefix value must be a string"))?;
                Ok(values
                    .iter()
                    .any(|value| value.as_str().is_some_and(|text| text.starts_with(prefix))))
            }
            "range" => {
                let (values, bounds) = single_field("range")?;
                only_keys(bounds, &["gte", "gt", "lte", "lt"], "range")?;
                let bound = |key: &str| bounds[key].as_f64();
                Ok(values
                    .iter()
                    .filter_map(|value| value.as_f64())
                    .any(|number| {
                        bound("gte").is_none_or(|bound| number >= bound)
                            && bound("gt").is_none_or(|bound| number > bound)
                            && bound("lte").is_none_or(|bound| number <= bound)
                            && bound("lt").is_none_or(|bound| number < bound)
                    }))
            }
            other => Err(bad(format!(
                "the fake does not serve [{other}] in a filter"
            ))),
        }
    }

    fn search(&self, name: &str, body: Value) -> Reply {
        only_keys(
            &body,
            &["size", "query", "_source", "timeout"],
            "search body",
        )?;
        let size = body["size"]
            .as_u64()
            .ok_or_else(|| bad("size must be a number"))? as usize;
        let indexes = self.indexes.lock().unwrap();
        let index = indexes.get(name).ok_or_else(|| index_not_found(name))?;
        let query = &body["query"];
        let mut scored: Vec<(f64, &String, &Value)> = Vec::new();
        if let Some(knn) = query.get("knn") {
            only_keys(query, &["knn"], "query")?;
            let (field, knn) = knn
                .as_object()
                .and_then(|object| object.iter().next())
                .ok_or_else(|| bad("knn needs a field"))?;
            only_keys(knn, &["vector", "k", "filter"], "knn")?;
            let definition = &index.mapping["properties"][field.as_str()];
            if definition["type"] != "knn_vector" {
                return Err(bad(format!("field [{field}] is not a knn_vector")));
            }
            let vector: Vec<f64> = knn["vector"]
                .as_array()
                .ok_or_else(|| bad("knn.vector must be an array"))?
                .iter()
                .filter_map(Value::as_f64)
                .collect();
            if vector.len() as u64 != definition["dimension"].as_u64().unwrap_or(0) {
                return Err(bad("query vector has the wrong dimension"));
            }
            let k = knn["k"]
                .as_u64()
                .ok_or_else(|| bad("knn.k must be a number"))? as usize;
            let filters = if knn.get("filter").is_some() {
                only_keys(&knn["filter"], &["bool"], "knn.filter")?;
                only_keys(&knn["filter"]["bool"], &["filter"], "knn.filter.bool")?;
                knn["filter"]["bool"]["filter"].clone()
            } else {
                json!([])
            };
            let space = definition["method"]["space_type"].as_str().unwrap_or("l2");
            for (id, document) in &index.visible {
                if !Self::matching_filter(document, &filters)? {
                    continue;
                }
                let stored: Vec<f64> = document[field.as_str()]
                    .as_array()
                    .map(|values| values.iter().filter_map(Value::as_f64).collect())
                    .unwrap_or_default();
                let dot: f64 = stored.iter().zip(&vector).map(|(a, b)| a * b).sum();
                let norm = |values: &[f64]| values.iter().map(|v| v * v).sum::<f64>().sqrt();
                // OpenSearch's documented score translations per space type.
                let score = match space {
                    "cosinesimil" => (1.0 + dot / (norm(&stored) * norm(&vector))) / 2.0,
                    "innerproduct" if dot >= 0.0 => dot + 1.0,
                    "innerproduct" => 1.0 / (1.0 - dot),
                    _ => {
                        let distance: f64 = stored
                            .iter()
                            .zip(&vector)
                            .map(|(a, b)| (a - b) * (a - b))
                            .sum();
                        1.0 / (1.0 + distance)
                    }
                };
                scored.push((score, id, document));
            }
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
            scored.truncate(k);
        } else if let Some(boolean) = query.get("bool") {
            only_keys(query, &["bool"], "query")?;
            only_keys(boolean, &["must", "filter"], "bool")?;
            let must = boolean["must"]
                .as_array()
                .ok_or_else(|| bad("bool.must must be an array"))?;
            let [clause] = must.as_slice() else {
                return Err(bad("the fake serves one match clause"));
            };
            only_keys(clause, &["match"], "must clause")?;
            let (field, matched) = clause["match"]
                .as_object()
                .and_then(|object| object.iter().next())
                .ok_or_else(|| bad("match needs a field"))?;
            only_keys(matched, &["query"], "match")?;
            let definition = &index.mapping["properties"][field.as_str()];
            if definition["type"] != "text" {
                return Err(bad(format!("field [{field}] is not a text field")));
            }
            // The text a copy_to field receives: every field that copies into it.
            let sources: Vec<&String> = index.mapping["properties"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(_, definition)| definition["copy_to"] == field.as_str())
                .map(|(name, _)| name)
                .collect();
            let text_of = |document: &Value| -> Vec<String> {
                let mut words = terms(document[field.as_str()].as_str().unwrap_or_default());
                for source in &sources {
                    words.extend(terms(
                        document[source.as_str()].as_str().unwrap_or_default(),
                    ));
                }
                words
            };
            let query_terms = terms(matched["query"].as_str().unwrap_or_default());
            let documents: Vec<(&String, &Value, Vec<String>)> = index
                .visible
                .iter()
                .map(|(id, document)| (id, document, text_of(document)))
                .collect();
            let count = documents.len() as f64;
            let average =
                documents.iter().map(|d| d.2.len()).sum::<usize>() as f64 / count.max(1.0);
            for (id, document, words) in &documents {
                if !Self::matching_filter(document, &boolean["filter"])? {
                    continue;
                }
                // BM25, k1 = 1.2, b = 0.75, as Lucene.
                let mut score = 0.0;
                for term in &query_terms {
                    let frequency = words.iter().filter(|word| *word == term).count() as f64;
                    if frequency == 0.0 {
                        continue;
                    }
                    let containing = documents.iter().filter(|d| d.2.contains(term)).count() as f64;
                    let idf = (1.0 + (count - containing + 0.5) / (containing + 0.5)).ln();
                    score += idf * frequency * 2.2
                        / (frequency + 1.2 * (0.25 + 0.75 * words.len() as f64 / average));
                }
                if score > 0.0 {
                    scored.push((score, id, document));
                }
            }
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        } else {
            return Err(bad("the fake serves knn and bool/match queries"));
        }
        let excluded: Vec<&str> = body["_source"]["excludes"]
            .as_array()
            .map(|values| values.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let total = scored.len();
        let hits: Vec<Value> = scored
            .into_iter()
            .take(size)
            .map(|(score, id, document)| {
                let mut source = document.clone();
                if let Some(object) = source.as_object_mut() {
                    for field in &excluded {
                        object.remove(*field);
                    }
                }
                json!({ "_index": name, "_id": id, "_score": score, "_source": source })
            })
            .collect();
        Ok(json!({
            "took": 1,
            "timed_out": false,
            "_shards": { "total": 1, "successful": 1, "skipped": 0, "failed": 0 },
            "hits": {
                "total": { "value": total, "relation": "eq" },
                "max_score": hits.first().map(|hit| hit["_score"].clone()),
                "hits": hits,
            },
        }))
    }

    fn delete_by_query(&self, name: &str, params: &HashMap<String, String>, body: Value) -> Reply {
        only_keys(&body, &["query"], "delete_by_query body")?;
        only_keys(&body["query"], &["terms"], "delete_by_query query")?;
        if params
            .get("refresh")
            .is_some_and(|value| value == "wait_for")
        {
            return Err(bad("_delete_by_query does not take refresh=wait_for"));
        }
        let mut indexes = self.indexes.lock().unwrap();
        let index = indexes.get_mut(name).ok_or_else(|| index_not_found(name))?;
        let filters = json!([body["query"].clone()]);
        // Like OpenSearch, it deletes what a search sees: writes not yet refreshed
        // are not matched.
        let mut deleted = 0;
        let ids: Vec<String> = index.visible.keys().cloned().collect();
        for id in ids {
            if Self::matching_filter(&index.visible[&id], &filters)? {
                index.latest.remove(&id);
                deleted += 1;
            }
        }
        if params.get("refresh").is_some_and(|value| value == "true") {
            index.visible = index.latest.clone();
        }
        Ok(
            json!({ "took": 1, "timed_out": false, "total": deleted, "deleted": deleted, "failures": [] }),
        )
    }
}
