//! Documents over the API: `UpsertDocuments` / `DeleteDocuments` (and their facade
//! routes) against the real server, model and local stores. What is asserted is what a
//! user sees: search hits, the chunk counts `ListSources` reports, status codes.

use std::collections::HashMap;

use serde_json::json;
use tempfile::TempDir;
use tonic::Code;

use super::{TestServer, condition, proto};
use skyfuse::api::proto::admin_service_client::AdminServiceClient;
use skyfuse::api::proto::ingestion_service_client::IngestionServiceClient;

/// Long enough for several chunks at the test index's 80 words; "zeppelin" only appears
/// after the first chunk.
fn long_harbour_text() -> String {
    let opening = "The harbour opens at sunrise and the ferry crosses the bay every hour. ";
    let later = "A zeppelin hangar stands on the northern pier beside the lighthouse. ";
    format!("{}{}", opening.repeat(12), later.repeat(6))
}

fn document(id: &str, title: &str, text: &str, topic: Option<&str>) -> proto::Document {
    proto::Document {
        id: id.into(),
        title: title.into(),
        text: text.into(),
        metadata: topic
            .map(|topic| HashMap::from([("topic".to_owned(), topic.to_owned())]))
            .unwrap_or_default(),
    }
}

fn documents_client(server: &TestServer) -> IngestionServiceClient<tonic::transport::Channel> {
    IngestionServiceClient::new(server.channel.clone())
}

async fn upsert(
    server: &TestServer,
    index: &str,
    documents: Vec<proto::Document>,
) -> Result<proto::UpsertDocumentsResponse, tonic::Status> {
    documents_client(server)
        .upsert_documents(proto::UpsertDocumentsRequest {
            index: index.into(),
            documents,
            namespace: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn delete(
    server: &TestServer,
    selection: proto::delete_documents_request::Selection,
) -> proto::DeleteDocumentsResponse {
    documents_client(server)
        .delete_documents(proto::DeleteDocumentsRequest {
            index: String::new(),
            selection: Some(selection),
            namespace: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Chunks each source holds, as `ListSources` reports them.
async fn chunk_counts(server: &TestServer) -> Vec<(String, u64)> {
    AdminServiceClient::new(server.channel.clone())
        .list_sources(proto::ListSourcesRequest {})
        .await
        .unwrap()
        .into_inner()
        .sources
        .into_iter()
        .map(|source| (source.id, source.chunks.expect("local stores count")))
        .collect()
}

async fn search_text(server: &TestServer, query: &str) -> proto::SearchResponse {
    server
        .search()
        .search(proto::SearchRequest {
            query: query.into(),
            top_k: 20,
            include_text: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn hit_ids(response: &proto::SearchResponse) -> Vec<&str> {
    response
        .hits
        .iter()
        .map(|hit| hit.doc_id.as_str())
        .collect()
}

#[tokio::test]
async fn upserted_documents_are_searched_replaced_whole_and_deleted_by_id_prefix_and_filter() {
    use proto::delete_documents_request::Selection;
    let data = TempDir::new().unwrap();
    let server = TestServer::start(data.path(), "").await;

    let written = upsert(
        &server,
        "",
        vec![
            document("kb-1", "Harbour guide", &long_harbour_text(), None),
            document(
                "kb-2",
                "Invoices",
                "Invoices are issued monthly and paid within thirty days.",
                Some("billing"),
            ),
            document(
                "team-a/tapes",
                "Tapes",
                "Backups are written to tape every week.",
                Some("storage"),
            ),
        ],
    )
    .await
    .unwrap();
    assert_eq!(written.written, 3);
    assert!(
        written.chunks >= 4,
        "the long text has several chunks: {written:?}"
    );
    let stored = chunk_counts(&server).await;
    assert!(
        stored.iter().all(|(_, chunks)| *chunks == written.chunks),
        "every store holds every chunk: {stored:?} vs {written:?}"
    );

    // Found by both sources under its API key, with its title.
    let found = search_text(&server, "zeppelin hangar on the northern pier").await;
    let top = &found.hits[0];
    assert_eq!(top.doc_id, "api/docs/kb-1");
    assert_eq!(top.object_key, "api/docs/kb-1");
    assert_eq!(top.title, "Harbour guide");
    assert_eq!(top.explain.len(), 2, "{found:?}");

    // The same document again changes nothing; a shorter text leaves no old chunk.
    let again = upsert(
        &server,
        "",
        vec![document(
            "kb-1",
            "Harbour guide",
            &long_harbour_text(),
            None,
        )],
    )
    .await
    .unwrap();
    assert_eq!((again.written, again.unchanged), (0, 1));
    let shorter = upsert(
        &server,
        "",
        vec![document(
            "kb-1",
            "Harbour guide",
            "The harbour opens at sunrise.",
            None,
        )],
    )
    .await
    .unwrap();
    assert_eq!((shorter.written, shorter.chunks), (1, 1));
    let stored = chunk_counts(&server).await;
    assert!(
        stored.iter().all(|(_, chunks)| *chunks == 3),
        "one chunk per document is left: {stored:?}"
    );
    let zeppelin = search_text(&server, "zeppelin hangar").await;
    assert!(
        zeppelin
            .hits
            .iter()
            .all(|hit| !hit.text.contains("zeppelin")),
        "{zeppelin:?}"
    );

    // By id (an unknown id is no error and not counted), by prefix, by filter.
    let by_id = delete(
        &server,
        Selection::Ids(proto::DocumentIds {
            ids: vec!["kb-1".into(), "never-upserted".into()],
        }),
    )
    .await;
    assert_eq!((by_id.documents, by_id.chunks), (1, 1));
    let harbour = search_text(&server, "harbour sunrise").await;
    assert!(!hit_ids(&harbour).contains(&"api/docs/kb-1"), "{harbour:?}");

    let by_prefix = delete(
        &server,
        Selection::ObjectKeyPrefix("api/docs/team-a/".into()),
    )
    .await;
    assert_eq!(by_prefix.documents, 1);
    let tapes = search_text(&server, "backups written to tape").await;
    assert!(
        !hit_ids(&tapes).contains(&"api/docs/team-a/tapes"),
        "{tapes:?}"
    );

    let by_filter = delete(
        &server,
        Selection::Filter(condition(
            "metadata.topic",
            proto::field_condition::Test::Eq("billing".into()),
        )),
    )
    .await;
    assert_eq!(by_filter.documents, 1);
    let stored = chunk_counts(&server).await;
    assert!(
        stored.iter().all(|(_, chunks)| *chunks == 0),
        "every store is empty again: {stored:?}"
    );

    // The same over the facade.
    let (status, body) = server
        .post_json(
            "/v1/documents",
            json!({"documents": [{"id": "web-1", "title": "Lighthouse",
                "text": "The lighthouse keeper logs every passing ship."}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["written"], 1);
    let ships = search_text(&server, "lighthouse keeper ships").await;
    assert_eq!(ships.hits[0].doc_id, "api/docs/web-1");
    let (status, body) = server
        .post_json("/v1/documents/delete", json!({"ids": {"ids": ["web-1"]}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["documents"].clone(), body["chunks"].clone()),
        (json!(1), json!(1))
    );

    // An unknown index, a bucket prefix and a missing selection are named.
    let unknown = upsert(&server, "nope", vec![document("a", "", "text", None)])
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert!(
        unknown.message().contains("unknown index \"nope\""),
        "{unknown:?}"
    );
    let bucket = documents_client(&server)
        .delete_documents(proto::DeleteDocumentsRequest {
            index: String::new(),
            selection: Some(Selection::ObjectKeyPrefix("/tmp/".into())),
            namespace: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bucket.code(), Code::InvalidArgument);
    assert!(bucket.message().contains("must start with"), "{bucket:?}");
    let nothing = documents_client(&server)
        .delete_documents(proto::DeleteDocumentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(nothing.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn api_documents_survive_a_restart_and_a_bucket_sync_and_never_take_a_bucket_id() {
    let data = TempDir::new().unwrap();
    let docs = TempDir::new().unwrap();
    super::write_corpus(docs.path());
    // A global-id index whose bucket records already hold `api/global/shared`.
    std::fs::write(
        docs.path().join("records.jsonl"),
        r#"{"_id": "api/global/shared", "title": "Shared", "text": "A record whose id looks like an API document."}"#,
    )
    .unwrap();
    let global = r#"
        [[index]]
        id = "global"
        sources = ["local-bm25"]
        record_ids = "global"
    "#;
    let server = TestServer::start(data.path(), global).await;
    server.index(docs.path()).await;
    upsert(
        &server,
        "",
        vec![document(
            "ops-1",
            "Pager rota",
            "The pager rota hands over every Monday at noon.",
            None,
        )],
    )
    .await
    .unwrap();
    server.stop_releasing_data_dir().await;

    let server = TestServer::start(data.path(), global).await;
    let rota = search_text(&server, "pager rota handover Monday").await;
    assert_eq!(rota.hits[0].doc_id, "api/docs/ops-1", "{rota:?}");
    // A bucket sync that removes an object deletes that object only.
    std::fs::remove_file(docs.path().join("billing.txt")).unwrap();
    let synced = server.index(docs.path()).await;
    assert_eq!(synced.deleted, 1, "{synced:?}");
    let rota = search_text(&server, "pager rota handover Monday").await;
    assert_eq!(rota.hits[0].doc_id, "api/docs/ops-1", "{rota:?}");
    // Upserting the same text after the restart is known, not rewritten.
    let again = upsert(
        &server,
        "",
        vec![document(
            "ops-1",
            "Pager rota",
            "The pager rota hands over every Monday at noon.",
            None,
        )],
    )
    .await
    .unwrap();
    assert_eq!(again.unchanged, 1);

    // In the global-id index, a bucket record holds `api/global/shared`: refused, not overwritten.
    server.index_into(docs.path(), "global").await;
    let taken = upsert(
        &server,
        "global",
        vec![document("shared", "", "An API text.", None)],
    )
    .await
    .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    assert!(
        taken.message().contains("\"shared\" already exists")
            && taken.message().contains("records.jsonl")
            && taken.message().contains("choose another id"),
        "{taken:?}"
    );
    // The same over the facade: 409, with the message.
    let (status, body) = server
        .post_json(
            "/v1/documents",
            json!({"index": "global", "documents": [{"id": "shared", "text": "An API text."}]}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "already_exists", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("already exists")),
        "{body}"
    );
    let shared = server
        .search()
        .search(proto::SearchRequest {
            query: "record whose id looks like an API document".into(),
            top_k: 5,
            sources: vec!["local-bm25".into()],
            include_text: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shared.hits[0].doc_id, "api/global/shared");
    assert!(
        shared.hits[0].text.contains("A record whose id"),
        "{shared:?}"
    );

    // And the other way: an API document keeps its id against a record synced later.
    upsert(
        &server,
        "global",
        vec![document(
            "later",
            "Lamplighters",
            "An API document about lanterns and lamplighters.",
            None,
        )],
    )
    .await
    .unwrap();
    std::fs::write(
        docs.path().join("later.jsonl"),
        r#"{"_id": "api/global/later", "title": "Record", "text": "A bucket record about lanterns."}"#,
    )
    .unwrap();
    let synced = server.index_into(docs.path(), "global").await;
    assert!(
        synced
            .failures
            .iter()
            .any(|issue| issue.kind == proto::IssueKind::Record as i32
                && issue.reason.contains("already used by api/global/later")),
        "{synced:?}"
    );
    let lanterns = server
        .search()
        .search(proto::SearchRequest {
            query: "lanterns lamplighters".into(),
            top_k: 5,
            sources: vec!["local-bm25".into()],
            include_text: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let later: Vec<&proto::SearchHit> = lanterns
        .hits
        .iter()
        .filter(|hit| hit.doc_id == "api/global/later")
        .collect();
    assert_eq!(later.len(), 1, "{lanterns:?}");
    assert_eq!(later[0].title, "Lamplighters");

    // Two indexes sharing a store keep the same id apart.
    upsert(
        &server,
        "global",
        vec![document(
            "ops-1",
            "Global rota",
            "The global pager rota is kept in the wiki.",
            None,
        )],
    )
    .await
    .unwrap();
    let removed = documents_client(&server)
        .delete_documents(proto::DeleteDocumentsRequest {
            index: "global".into(),
            selection: Some(proto::delete_documents_request::Selection::Ids(
                proto::DocumentIds {
                    ids: vec!["ops-1".into()],
                },
            )),
            namespace: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.documents, 1);
    let rota = search_text(&server, "pager rota handover Monday").await;
    assert_eq!(rota.hits[0].doc_id, "api/docs/ops-1", "{rota:?}");
    assert!(
        rota.hits.iter().all(|hit| hit.doc_id != "api/global/ops-1"),
        "{rota:?}"
    );
    server.stop().await;
}

const WRITER_KEY: &str = "documents-writer-key";
const READER_KEY: &str = "documents-reader-key";

fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

#[tokio::test]
async fn documents_calls_are_authorized_and_bounded_with_clear_errors() {
    let data = TempDir::new().unwrap();
    let identities = format!(
        r#"
        [[role]]
        id = "writer"
        documents = ["docs"]
        search_indexes = ["docs"]
        [[role]]
        id = "reader"
        search_indexes = ["docs"]
        index = ["docs"]
        [[caller]]
        id = "writer"
        api_key_sha256 = "{writer}"
        roles = ["writer"]
        [[caller]]
        id = "reader"
        api_key_sha256 = "{reader}"
        roles = ["reader"]
        "#,
        writer = skyfuse::auth::hash_key_hex(WRITER_KEY),
        reader = skyfuse::auth::hash_key_hex(READER_KEY),
    );
    let server = TestServer::start(data.path(), &identities).await;
    let request = |documents: Vec<proto::Document>| proto::UpsertDocumentsRequest {
        index: "docs".into(),
        documents,
        namespace: String::new(),
    };
    let one = || {
        vec![document(
            "a",
            "",
            "The ferry leaves at dawn.",
            Some("travel"),
        )]
    };
    let mut client = documents_client(&server);

    // Anonymous, then a caller whose roles do not grant documents (even with `index`).
    let anonymous = client.upsert_documents(request(one())).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    for call in [
        client
            .upsert_documents(with_key(request(one()), READER_KEY))
            .await
            .map(drop),
        client
            .delete_documents(with_key(
                proto::DeleteDocumentsRequest {
                    index: "docs".into(),
                    selection: Some(proto::delete_documents_request::Selection::Ids(
                        proto::DocumentIds {
                            ids: vec!["a".into()],
                        },
                    )),
                    namespace: String::new(),
                },
                READER_KEY,
            ))
            .await
            .map(drop),
    ] {
        let denied = call.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
        assert!(denied.message().contains("write documents"), "{denied:?}");
    }
    let (status, _) = server
        .post_json("/v1/documents", json!({"index": "docs", "documents": []}))
        .await;
    assert_eq!(status, 401);

    // Over each bound: one clear INVALID_ARGUMENT, and nothing written.
    let too_long = "word ".repeat(skyfuse::service::MAX_DOCUMENT_TEXT_BYTES / 5 + 1);
    let too_many = (0..=skyfuse::service::MAX_DOCUMENTS_PER_CALL)
        .map(|n| document(&format!("d{n}"), "", "text", None))
        .collect();
    for (documents, expected) in [
        (
            vec![document("big", "", &too_long, None)],
            "documents[0]: text is 1048580 bytes, more than the 1048576",
        ),
        (too_many, "send 1 to 100 documents per call, got 101"),
        (
            vec![document("a", "", "   ", None)],
            "documents[0]: text is empty",
        ),
        (
            vec![
                document("a", "", "one", None),
                document("a", "", "two", None),
            ],
            "document id \"a\" appears twice",
        ),
    ] {
        let refused = client
            .upsert_documents(with_key(request(documents), WRITER_KEY))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(expected), "{refused:?}");
    }
    let mut unknown_field = document("a", "", "text", None);
    unknown_field.metadata.insert("team".into(), "ops".into());
    let refused = client
        .upsert_documents(with_key(request(vec![unknown_field]), WRITER_KEY))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("metadata_fields are: topic"),
        "{refused:?}"
    );
    // Nothing refused was written: the index is still empty.
    let empty = server
        .search()
        .search(with_key(
            proto::SearchRequest {
                query: "word text ferry".into(),
                top_k: 3,
                ..Default::default()
            },
            WRITER_KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(empty.hits.is_empty(), "{empty:?}");

    // The granted caller writes, and its document is found.
    let written = client
        .upsert_documents(with_key(request(one()), WRITER_KEY))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(written.written, 1);
    let found = server
        .search()
        .search(with_key(
            proto::SearchRequest {
                query: "ferry at dawn".into(),
                top_k: 3,
                ..Default::default()
            },
            WRITER_KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.hits[0].doc_id, "api/docs/a");
    server.stop().await;
}

#[tokio::test]
async fn citations_say_where_each_chunk_lies_in_its_document() {
    let data = TempDir::new().unwrap();
    let server = TestServer::start(data.path(), "").await;
    // Accents make chars and bytes differ: offsets count chars.
    let text = format!("Café notes. {}", long_harbour_text());
    upsert(
        &server,
        "",
        vec![document("kb-1", "Harbour guide", &text, None)],
    )
    .await
    .unwrap();
    let events = server
        .answer(proto::AnswerRequest {
            question: "Where does the zeppelin hangar stand?".into(),
            top_k: 5,
            ..Default::default()
        })
        .await;
    let Some(proto::answer_event::Event::Done(done)) = events.last() else {
        panic!("no done event: {events:?}");
    };
    let zeppelin = done
        .citations
        .iter()
        .find(|citation| citation.text.contains("zeppelin"))
        .expect("a cited chunk mentions the zeppelin");
    assert!(zeppelin.chunk_ordinal > 0, "{zeppelin:?}");
    for citation in &done.citations {
        let (start, end) = (
            citation.start_char.expect("start_char") as usize,
            citation.end_char.expect("end_char") as usize,
        );
        let located: String = text.chars().skip(start).take(end - start).collect();
        assert_eq!(located, citation.text, "{citation:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn search_hits_say_where_their_chunk_lies_in_its_document_over_grpc_and_http() {
    let data = TempDir::new().unwrap();
    let server = TestServer::start(data.path(), "").await;
    let text = format!("Café notes. {}", long_harbour_text());
    upsert(
        &server,
        "",
        vec![document("kb-1", "Harbour guide", &text, None)],
    )
    .await
    .unwrap();
    let query = "Where does the zeppelin hangar stand?";
    let response = search_text(&server, query).await;
    let hit = &response.hits[0];
    assert!(hit.text.contains("zeppelin"), "{hit:?}");
    let (start, end) = (
        hit.start_char.expect("start_char") as usize,
        hit.end_char.expect("end_char") as usize,
    );
    // Not the document's first chunk: the offsets are the chunk's, not zero.
    assert!(start > 0, "{hit:?}");
    let located: String = text.chars().skip(start).take(end - start).collect();
    assert_eq!(located, hit.text);

    let (status, json) = server
        .post_json(
            "/v1/search",
            json!({"query": query, "top_k": 20, "include_text": true}),
        )
        .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["hits"][0]["chunk_id"], hit.chunk_id.as_str());
    assert_eq!(json["hits"][0]["start_char"], start);
    assert_eq!(json["hits"][0]["end_char"], end);
    server.stop().await;
}
