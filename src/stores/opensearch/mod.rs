//! An OpenSearch index as a dense source (`knn` query on a `knn_vector` field), a
//! lexical source (BM25 `match` on the English-analyzed text), or both: two sources
//! over one index, fused by RRF like any others.
//!
//! Requests go through the `opensearch` crate's transport (connection, TLS, basic
//! auth, timeouts) with bodies built here as bytes. AWS SigV4 (`es` for Amazon
//! OpenSearch Service, `aoss` for Serverless) is signed by our own signer
//! (`cloud::sigv4`) over those exact bytes and passed as headers: the crate's own
//! `aws-auth` feature would pull in the AWS SDK's runtime crates for the same job.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use opensearch::OpenSearch;
use opensearch::auth::Credentials;
use opensearch::http::Method;
use opensearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

mod wire;

use wire::{bulk_errors, json_error};

use crate::cloud::sigv4::SigV4Signer;
use crate::config::{Metric, RefreshPolicy, Secret};
use crate::document::{CharSpan, ChunkMetadata, EmbeddedChunk, Hit};
use crate::error::{Error, ErrorKind, Result};
use crate::stores::filter::{Condition, Filter, Pushdown};
use crate::stores::remote::{self, RemoteSettings, fields};
use crate::stores::{SearchBackend, SourceInfo, StoreKind, StoreQuery};

/// The text field BM25 searches: title and text copied into one, as the local store does.
const BODY_FIELD: &str = "body";

/// How requests are authorized.
pub enum OpenSearchCredentials {
    None,
    Basic { username: String, password: Secret },
    SigV4(SigV4Signer),
}

/// One OpenSearch index, shared by the dense and lexical sources over it.
pub struct OpenSearchIndex {
    settings: RemoteSettings,
    client: OpenSearch,
    base_url: url::Url,
    signer: Option<SigV4Signer>,
    refresh: RefreshPolicy,
    /// Whether the index has a `knn_vector` field (a dense or both role).
    dense: bool,
    checked: OnceCell<()>,
}

/// A source over an [`OpenSearchIndex`]: dense or lexical.
pub struct OpenSearchStore {
    index: Arc<OpenSearchIndex>,
    info: SourceInfo,
    /// Whether this source writes: of the two sources over an index with both roles,
    /// only the dense one does, so each chunk is sent once.
    writes: bool,
}

impl OpenSearchIndex {
    /// Connects and checks the index: one whose vector field has another dimension or
    /// space type is refused; one that cannot be reached (or is missing, unless
    /// `create_missing`) is logged and checked again on first use.
    pub async fn connect(
        settings: RemoteSettings,
        credentials: OpenSearchCredentials,
        refresh: RefreshPolicy,
        dense: bool,
    ) -> Result<Arc<Self>> {
        let base_url = url::Url::parse(&settings.url).map_err(|error| {
            Error::config(format!("opensearch url {:?}: {error}", settings.url))
        })?;
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(base_url.clone()))
            .timeout(settings.write_timeout);
        let mut signer = None;
        match credentials {
            OpenSearchCredentials::None => {}
            OpenSearchCredentials::Basic { username, password } => {
                builder = builder.auth(Credentials::Basic(username, password.expose().to_string()));
            }
            OpenSearchCredentials::SigV4(sigv4) => signer = Some(sigv4),
        }
        let transport = builder
            .build()
            .map_err(|error| Error::config(format!("opensearch client: {error}")))?;
        let index = Arc::new(Self {
            settings,
            client: OpenSearch::new(transport),
            base_url,
            signer,
            refresh,
            dense,
            checked: OnceCell::new(),
        });
        match index.ensure_checked().await {
            Ok(()) => {}
            Err(error) if error.kind == ErrorKind::Config => return Err(error),
            Err(error) if error.kind == ErrorKind::NotFound && index.settings.create_missing => {
                if let Err(create_error) = index.create_index().await {
                    // A replica starting at the same moment may have created it between
                    // our check and our create (`resource_already_exists_exception`):
                    // then it checks out now, and only a real failure stops startup.
                    if index.ensure_checked().await.is_err() {
                        return Err(create_error);
                    }
                }
                index.ensure_checked().await?;
            }
            Err(error) => tracing::warn!(
                source = index.settings.info.id,
                %error,
                "opensearch index not checked at startup; searches will retry"
            ),
        }
        Ok(index)
    }

    /// A source over this index.
    pub fn source(self: &Arc<Self>, info: SourceInfo, writes: bool) -> OpenSearchStore {
        OpenSearchStore {
            index: Arc::clone(self),
            info,
            writes,
        }
    }

    async fn ensure_checked(&self) -> Result<()> {
        self.checked
            .get_or_try_init(|| self.check_index())
            .await
            .map(|_| ())
    }

    async fn check_index(&self) -> Result<()> {
        let name = &self.settings.name;
        let mapping = self
            .request(
                Method::Get,
                &format!("/{name}/_mapping"),
                &[],
                None,
                None,
                None,
            )
            .await
            .map_err(|error| error.context("reading the index mapping"))?;
        self.ensure_added_fields(&mapping).await?;
        if !self.dense {
            return Ok(());
        }
        let field = mapping
            .as_object()
            .and_then(|indexes| indexes.values().next())
            .and_then(|index| index.pointer(&format!("/mappings/properties/{}", fields::VECTOR)));
        let Some(field) = field.filter(|field| field["type"] == "knn_vector") else {
            return Err(Error::config(format!(
                "index {name:?} has no knn_vector field {:?}; create it with the mapping in docs/remote-stores.md",
                fields::VECTOR
            )));
        };
        let dims = field["dimension"].as_u64().unwrap_or(0);
        let space_type = field
            .pointer("/method/space_type")
            .or_else(|| field.get("space_type"))
            .and_then(Value::as_str)
            // OpenSearch's default space type.
            .unwrap_or("l2");
        let metric = match space_type {
            "cosinesimil" => Some(Metric::Cosine),
            "innerproduct" => Some(Metric::Dot),
            "l2" => Some(Metric::L2),
            _ => None,
        };
        remote::check_space(
            &self.settings,
            "index",
            usize::try_from(dims).unwrap_or(usize::MAX),
            metric,
            space_type,
        )
    }

    /// Maps the fields later skyfuse versions write on an index made before them (or by
    /// someone else): `namespace` as a keyword, since left to dynamic mapping it would be
    /// analysed text, where the term `acme` matches the tenant `team-acme`; the span as
    /// longs.
    async fn ensure_added_fields(&self, mapping: &Value) -> Result<()> {
        let name = &self.settings.name;
        let properties = mapping
            .as_object()
            .and_then(|indexes| indexes.values().next())
            .and_then(|index| index.pointer("/mappings/properties"));
        let mapped = |field: &str| properties.and_then(|properties| properties.get(field));
        if let Some(field) = mapped(fields::NAMESPACE)
            && field["type"] != "keyword"
        {
            return Err(Error::config(format!(
                "index {name:?} maps {:?} as {}, not keyword: tenants could not be told apart; \
                 reindex into an index created by skyfuse",
                fields::NAMESPACE,
                field["type"]
            )));
        }
        let mut missing = serde_json::Map::new();
        for (field, kind) in [
            (fields::NAMESPACE, "keyword"),
            (fields::START_CHAR, "long"),
            (fields::END_CHAR, "long"),
        ] {
            if mapped(field).is_none() {
                missing.insert(field.into(), json!({ "type": kind }));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let body = json!({ "properties": missing });
        self.request(
            Method::Put,
            &format!("/{name}/_mapping"),
            &[],
            Some(body.to_string().into_bytes()),
            None,
            None,
        )
        .await
        .map(drop)
        .map_err(|error| error.context("mapping the namespace and span fields"))
    }

    /// Creates the index: a `knn_vector` field sized and compared as the space says
    /// (dense roles), English-analyzed title and text copied into one BM25 field, and
    /// keyword fields for filters and deletes.
    pub async fn create_index(&self) -> Result<()> {
        let mut properties = serde_json::Map::new();
        for field in fields::KEYWORDS
            .into_iter()
            .chain([fields::CHUNK_ID, fields::REGION])
        {
            properties.insert(field.into(), json!({ "type": "keyword" }));
        }
        for field in [fields::TITLE, fields::TEXT] {
            properties.insert(
                field.into(),
                json!({ "type": "text", "analyzer": "english", "copy_to": BODY_FIELD }),
            );
        }
        properties.insert(
            BODY_FIELD.into(),
            json!({ "type": "text", "analyzer": "english" }),
        );
        properties.insert(fields::ORDINAL.into(), json!({ "type": "integer" }));
        for field in [fields::START_CHAR, fields::END_CHAR] {
            properties.insert(field.into(), json!({ "type": "long" }));
        }
        for field in [fields::CONTENT_TYPE, fields::ETAG, fields::NAMESPACE] {
            properties.insert(field.into(), json!({ "type": "keyword" }));
        }
        for field in fields::FILTER_INTEGERS {
            properties.insert(field.into(), json!({ "type": "long" }));
        }
        properties.insert(fields::METADATA.into(), json!({ "type": "object" }));
        // User metadata names vary by index config: every text under `metadata` is a
        // keyword, so term filters match it whole (dynamic mapping would analyse it).
        let dynamic_templates = json!([{
            "metadata_as_keywords": {
                "path_match": format!("{}.*", fields::METADATA),
                "match_mapping_type": "string",
                "mapping": { "type": "keyword" },
            }
        }]);
        let mut settings = json!({});
        if self.dense {
            let dims = self
                .settings
                .dims
                .ok_or_else(|| Error::config("a dense opensearch source needs a space"))?;
            properties.insert(
                fields::VECTOR.into(),
                json!({
                    "type": "knn_vector",
                    "dimension": dims,
                    "method": {
                        "name": "hnsw",
                        "engine": "lucene",
                        "space_type": space_type(self.settings.metric),
                    },
                }),
            );
            settings = json!({ "index": { "knn": true } });
        }
        let body = json!({
            "settings": settings,
            "mappings": { "dynamic_templates": dynamic_templates, "properties": properties },
        });
        self.request(
            Method::Put,
            &format!("/{}", self.settings.name),
            &[],
            Some(body.to_string().into_bytes()),
            None,
            None,
        )
        .await
        .map_err(|error| error.context("creating the index"))?;
        tracing::info!(
            source = self.settings.info.id,
            index = self.settings.name,
            "created opensearch index"
        );
        Ok(())
    }

    fn refresh_param(&self) -> Option<&'static str> {
        match self.refresh {
            RefreshPolicy::OnCommit => None,
            RefreshPolicy::WaitFor => Some("wait_for"),
            RefreshPolicy::Immediate => Some("true"),
        }
    }

    /// The filter as `bool` filter clauses: None when no chunk can match.
    fn filter_clauses(filter: Option<&Filter>, source_id: &str) -> Option<Vec<Value>> {
        match filter.map(|filter| filter.for_source(source_id)) {
            None | Some(Pushdown::All) => Some(Vec::new()),
            Some(Pushdown::Nothing) => None,
            Some(Pushdown::Only(filter)) => Some(vec![filter_clause(&filter)]),
        }
    }

    async fn search(
        &self,
        kind: StoreKind,
        query: &StoreQuery,
        source_id: &str,
    ) -> Result<Vec<Hit>> {
        let left = query
            .deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or_else(|| Error::timeout("the deadline passed before opensearch was asked"))?;
        let Some(filters) = Self::filter_clauses(query.filter.as_ref(), source_id) else {
            return Ok(Vec::new());
        };
        let search = match kind {
            StoreKind::Dense => {
                let Some(vector) = query.vector.as_ref() else {
                    return Err(Error::invalid(format!(
                        "source {source_id} is a dense store and needs a query vector"
                    )));
                };
                if Some(vector.len()) != self.settings.dims {
                    return Err(Error::invalid(format!(
                        "the query vector has {} dimensions but the source holds {}",
                        vector.len(),
                        self.settings.dims.unwrap_or_default()
                    )));
                }
                let mut knn = json!({ "vector": vector.as_slice(), "k": query.top_k });
                if !filters.is_empty() {
                    knn["filter"] = json!({ "bool": { "filter": filters } });
                }
                json!({ "knn": { fields::VECTOR: knn } })
            }
            StoreKind::Lexical => {
                if query.text.trim().is_empty() {
                    return Ok(Vec::new());
                }
                json!({
                    "bool": {
                        "must": [{ "match": { BODY_FIELD: { "query": query.text } } }],
                        "filter": filters,
                    }
                })
            }
        };
        let body = json!({
            "size": query.top_k,
            "query": search,
            "_source": { "excludes": [fields::VECTOR] },
            "timeout": format!("{}ms", left.as_millis().max(1)),
        });
        self.ensure_checked().await?;
        let answer = self
            .request(
                Method::Post,
                &format!("/{}/_search", self.settings.name),
                &[],
                Some(body.to_string().into_bytes()),
                None,
                Some(left),
            )
            .await
            .map_err(|error| error.context("search"))?;
        if answer["timed_out"] == true {
            return Err(Error::timeout(format!(
                "opensearch index {:?}: the search timed out on the server",
                self.settings.name
            )));
        }
        let hits = answer
            .pointer("/hits/hits")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::internal("opensearch answered a search without hits.hits"))?;
        Ok(hits
            .iter()
            .map(|hit| {
                let score = hit["_score"].as_f64().unwrap_or(0.0) as f32;
                let source = &hit["_source"];
                remote::hit_from_fields(
                    score,
                    |key| source.get(key).and_then(Value::as_str),
                    |key| source.get(key).and_then(Value::as_u64),
                )
            })
            .collect())
    }

    async fn upsert(&self, chunks: &[EmbeddedChunk], source_id: &str) -> Result<()> {
        if self.dense {
            remote::check_vectors(&self.settings, chunks)?;
        }
        self.ensure_checked().await?;
        let refresh = self.refresh_param();
        for batch in chunks.chunks(self.settings.upsert_batch) {
            let mut body = Vec::new();
            for embedded in batch {
                let chunk = &embedded.chunk;
                let action =
                    json!({ "index": { "_index": self.settings.name, "_id": chunk.chunk_id } });
                let mut document: serde_json::Map<String, Value> =
                    remote::chunk_text_fields(chunk, source_id)
                        .into_iter()
                        .map(|(key, value)| (key.to_string(), Value::from(value)))
                        .collect();
                document.insert(fields::ORDINAL.into(), Value::from(chunk.ordinal));
                add_metadata(&mut document, &chunk.metadata);
                add_span(&mut document, chunk.span);
                if self.dense {
                    document.insert(fields::VECTOR.into(), json!(embedded.vector));
                }
                serde_json::to_writer(&mut body, &action).map_err(json_error)?;
                body.push(b'\n');
                serde_json::to_writer(&mut body, &document).map_err(json_error)?;
                body.push(b'\n');
            }
            let query: Vec<(&str, &str)> = refresh
                .map(|value| ("refresh", value))
                .into_iter()
                .collect();
            let answer = self
                .request(
                    Method::Post,
                    "/_bulk",
                    &query,
                    Some(body),
                    Some("application/x-ndjson"),
                    None,
                )
                .await
                .map_err(|error| error.context("bulk upsert"))?;
            bulk_errors(&answer)?;
        }
        Ok(())
    }

    async fn delete_objects(&self, object_keys: &[String]) -> Result<()> {
        self.ensure_checked().await?;
        // _delete_by_query matches what a search sees: make earlier writes visible
        // first, or a chunk upserted since the last commit would survive its delete.
        if self.refresh == RefreshPolicy::OnCommit {
            self.refresh_index().await?;
        }
        let body = json!({ "query": { "terms": { fields::OBJECT_KEY: object_keys } } });
        let query: Vec<(&str, &str)> = match self.refresh {
            RefreshPolicy::OnCommit => Vec::new(),
            RefreshPolicy::WaitFor | RefreshPolicy::Immediate => vec![("refresh", "true")],
        };
        self.request(
            Method::Post,
            &format!("/{}/_delete_by_query", self.settings.name),
            &query,
            Some(body.to_string().into_bytes()),
            None,
            None,
        )
        .await
        .map_err(|error| error.context("delete by query"))?;
        Ok(())
    }

    async fn commit(&self) -> Result<()> {
        if self.refresh != RefreshPolicy::OnCommit {
            return Ok(());
        }
        self.ensure_checked().await?;
        self.refresh_index().await
    }

    async fn refresh_index(&self) -> Result<()> {
        // Serverless collections refresh on their own and have no _refresh API.
        let serverless = self
            .signer
            .as_ref()
            .is_some_and(|signer| signer.service == "aoss");
        if serverless {
            return Ok(());
        }
        self.request(
            Method::Post,
            &format!("/{}/_refresh", self.settings.name),
            &[],
            None,
            None,
            None,
        )
        .await
        .map_err(|error| error.context("refresh"))?;
        Ok(())
    }

    async fn count(&self) -> Result<u64> {
        self.ensure_checked().await?;
        let answer = self
            .request(
                Method::Get,
                &format!("/{}/_count", self.settings.name),
                &[],
                None,
                None,
                None,
            )
            .await
            .map_err(|error| error.context("count"))?;
        answer["count"]
            .as_u64()
            .ok_or_else(|| Error::internal("opensearch answered _count without a count"))
    }
}

fn space_type(metric: Metric) -> &'static str {
    match metric {
        Metric::Cosine => "cosinesimil",
        Metric::Dot => "innerproduct",
        Metric::L2 => "l2",
    }
}

#[async_trait]
impl SearchBackend for OpenSearchStore {
    fn describe(&self) -> &SourceInfo {
        &self.info
    }

    async fn search(&self, query: &StoreQuery) -> Result<Vec<Hit>> {
        if query.top_k == 0 {
            return Ok(Vec::new());
        }
        self.index
            .search(self.info.kind, query, &self.info.id)
            .await
    }

    async fn upsert(&self, chunks: &[EmbeddedChunk]) -> Result<()> {
        if !self.writes || chunks.is_empty() {
            return Ok(());
        }
        self.index.upsert(chunks, &self.info.id).await
    }

    async fn delete_objects(&self, object_keys: &[String]) -> Result<()> {
        if !self.writes || object_keys.is_empty() {
            return Ok(());
        }
        self.index.delete_objects(object_keys).await
    }

    async fn commit(&self) -> Result<()> {
        if !self.writes {
            return Ok(());
        }
        self.index.commit().await
    }

    async fn count(&self) -> Result<u64> {
        self.index.count().await
    }
}

/// One node of a filter in OpenSearch's query DSL: `and` / `or` / `not` as `bool`
/// filter / should / must_not, conditions as term(s), prefix and range on the keyword
/// and long fields of the mapping.
fn filter_clause(filter: &Filter) -> Value {
    let all = |children: &[Filter]| children.iter().map(filter_clause).collect::<Vec<_>>();
    // `source` conditions were decided before translation; should one remain, it
    // matches nothing rather than everything.
    let matches_nothing = json!({ "bool": { "must_not": [{ "match_all": {} }] } });
    match filter {
        Filter::And(children) => json!({ "bool": { "filter": all(children) } }),
        Filter::Or(children) => {
            json!({ "bool": { "should": all(children), "minimum_should_match": 1 } })
        }
        Filter::Not(inner) => json!({ "bool": { "must_not": [filter_clause(inner)] } }),
        Filter::Condition(Condition::ObjectKeyPrefix(prefix)) => {
            json!({ "prefix": { fields::OBJECT_KEY: { "value": prefix } } })
        }
        Filter::Condition(Condition::In { field, values }) => {
            let Some(key) = remote::filter_key(field) else {
                return matches_nothing;
            };
            match values.as_slice() {
                [value] => json!({ "term": { key: { "value": value } } }),
                _ => json!({ "terms": { key: values } }),
            }
        }
        Filter::Condition(Condition::Range { field, min, max }) => {
            let Some(key) = remote::filter_key(field) else {
                return matches_nothing;
            };
            let mut bounds = serde_json::Map::new();
            if let Some(min) = min {
                bounds.insert("gte".into(), Value::from(*min));
            }
            if let Some(max) = max {
                bounds.insert("lte".into(), Value::from(*max));
            }
            json!({ "range": { key: bounds } })
        }
    }
}

/// The chunk's metadata as document fields: only the parts it has.
fn add_metadata(document: &mut serde_json::Map<String, Value>, metadata: &ChunkMetadata) {
    if let Some(content_type) = &metadata.content_type {
        document.insert(
            fields::CONTENT_TYPE.into(),
            Value::from(content_type.as_str()),
        );
    }
    if let Some(etag) = &metadata.etag {
        document.insert(fields::ETAG.into(), Value::from(etag.as_str()));
    }
    if let Some(namespace) = &metadata.namespace {
        document.insert(fields::NAMESPACE.into(), Value::from(namespace.as_str()));
    }
    if let Some(size) = metadata.size_bytes {
        document.insert(fields::SIZE_BYTES.into(), Value::from(size));
    }
    if let Some(last_modified) = metadata.last_modified {
        document.insert(fields::LAST_MODIFIED.into(), Value::from(last_modified));
    }
    if !metadata.fields.is_empty() {
        document.insert(fields::METADATA.into(), json!(metadata.fields));
    }
}

/// The chunk's span as two integer fields, when it has one.
fn add_span(document: &mut serde_json::Map<String, Value>, span: Option<CharSpan>) {
    if let Some(span) = span {
        document.insert(fields::START_CHAR.into(), Value::from(span.start));
        document.insert(fields::END_CHAR.into(), Value::from(span.end));
    }
}
