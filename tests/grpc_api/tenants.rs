//! Tenants over gRPC: callers pinned to a namespace upsert identical documents under the
//! same ids, and neither ever sees the other's in Search or Answer (nor in the facade's
//! chat completions with retrieval), whatever it asks.

use tempfile::TempDir;
use tonic::Code;

use super::{TestServer, proto};
use skyfuse::api::proto::generation_service_client::GenerationServiceClient;
use skyfuse::api::proto::ingestion_service_client::IngestionServiceClient;

const ACME_KEY: &str = "tenant-acme-key";
const GLOBEX_KEY: &str = "tenant-globex-key";
const OPERATOR_KEY: &str = "tenant-operator-key";

fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

fn identities() -> String {
    format!(
        r#"
        [[role]]
        id = "acme"
        search_indexes = ["docs"]
        documents = ["docs"]
        namespaces = ["acme"]
        [[role]]
        id = "globex"
        search_indexes = ["docs"]
        documents = ["docs"]
        namespaces = ["globex"]
        [[role]]
        id = "operator"
        search_indexes = ["docs"]
        documents = ["docs"]
        [[caller]]
        id = "acme"
        api_key_sha256 = "{acme}"
        roles = ["acme"]
        [[caller]]
        id = "globex"
        api_key_sha256 = "{globex}"
        roles = ["globex"]
        [[caller]]
        id = "operator"
        api_key_sha256 = "{operator}"
        roles = ["operator"]
        "#,
        acme = skyfuse::auth::hash_key_hex(ACME_KEY),
        globex = skyfuse::auth::hash_key_hex(GLOBEX_KEY),
        operator = skyfuse::auth::hash_key_hex(OPERATOR_KEY),
    )
}

/// What both tenants send: the same ids, titles and texts.
fn handbook() -> Vec<proto::Document> {
    [
        (
            "handbook",
            "Vault",
            "The vault code is kept in the harbour office safe.",
        ),
        (
            "ferry",
            "Ferry",
            "The ferry to the island leaves the harbour at dawn.",
        ),
    ]
    .into_iter()
    .map(|(id, title, text)| proto::Document {
        id: id.into(),
        title: title.into(),
        text: text.into(),
        ..Default::default()
    })
    .collect()
}

async fn upsert(server: &TestServer, key: &str, namespace: &str) -> Result<u64, tonic::Status> {
    IngestionServiceClient::new(server.channel.clone())
        .upsert_documents(with_key(
            proto::UpsertDocumentsRequest {
                index: "docs".into(),
                documents: handbook(),
                namespace: namespace.into(),
            },
            key,
        ))
        .await
        .map(|response| response.into_inner().written)
}

/// The document ids a search by `key` finds, sorted.
async fn search(
    server: &TestServer,
    key: &str,
    namespace: &str,
) -> Result<Vec<String>, tonic::Status> {
    let response = server
        .search()
        .search(with_key(
            proto::SearchRequest {
                query: "harbour vault ferry".into(),
                top_k: 20,
                namespace: namespace.into(),
                ..Default::default()
            },
            key,
        ))
        .await?
        .into_inner();
    let mut ids: Vec<String> = response.hits.into_iter().map(|hit| hit.doc_id).collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// The document ids an extractive answer by `key` cites, sorted.
async fn cited(
    server: &TestServer,
    key: &str,
    namespace: &str,
) -> Result<Vec<String>, tonic::Status> {
    let mut stream = GenerationServiceClient::new(server.channel.clone())
        .answer(with_key(
            proto::AnswerRequest {
                question: "Where is the vault code kept?".into(),
                top_k: 10,
                namespace: namespace.into(),
                ..Default::default()
            },
            key,
        ))
        .await?
        .into_inner();
    let mut citations = Vec::new();
    while let Some(event) = stream.message().await? {
        if let Some(proto::answer_event::Event::Done(done)) = event.event {
            citations = done.citations;
        }
    }
    let mut ids: Vec<String> = citations
        .into_iter()
        .map(|citation| citation.doc_id)
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// The document ids the facade's chat completion with `retrieval` by `key` cites, sorted;
/// or its status and error message.
async fn facade_cited(
    server: &TestServer,
    key: &str,
    namespace: &str,
) -> Result<Vec<String>, (u16, String)> {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.facade))
        .bearer_auth(key)
        .json(&serde_json::json!({
            "messages": [{"role": "user", "content": "Where is the vault code kept?"}],
            "retrieval": {"top_k": 10, "namespace": namespace},
        }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    if status != 200 {
        return Err((status, body["error"]["message"].to_string()));
    }
    let mut ids: Vec<String> = body["skyfuse"]["citations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|citation| citation["doc_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

fn ids_of(namespace: &str) -> Vec<String> {
    ["ferry", "handbook"]
        .iter()
        .map(|id| format!("api/docs@{namespace}/{id}"))
        .collect()
}

#[tokio::test]
async fn two_tenants_with_identical_documents_never_see_each_others() {
    let data = TempDir::new().unwrap();
    let server = TestServer::start(data.path(), &identities()).await;

    // Same ids, same texts: each tenant gets its own documents, in its own namespace
    // without naming it.
    assert_eq!(upsert(&server, ACME_KEY, "").await.unwrap(), 2);
    assert_eq!(upsert(&server, GLOBEX_KEY, "").await.unwrap(), 2);
    // Documents of no tenant, which no tenant sees either.
    assert_eq!(upsert(&server, OPERATOR_KEY, "").await.unwrap(), 2);

    assert_eq!(search(&server, ACME_KEY, "").await.unwrap(), ids_of("acme"));
    assert_eq!(
        search(&server, ACME_KEY, "acme").await.unwrap(),
        ids_of("acme")
    );
    assert_eq!(
        search(&server, GLOBEX_KEY, "").await.unwrap(),
        ids_of("globex")
    );
    let acme_cites = cited(&server, ACME_KEY, "").await.unwrap();
    assert!(!acme_cites.is_empty());
    assert!(
        acme_cites.iter().all(|id| id.starts_with("api/docs@acme/")),
        "{acme_cites:?}"
    );
    let globex_cites = cited(&server, GLOBEX_KEY, "").await.unwrap();
    assert!(!globex_cites.is_empty());
    assert!(
        globex_cites
            .iter()
            .all(|id| id.starts_with("api/docs@globex/")),
        "{globex_cites:?}"
    );

    // The facade's chat completions with retrieval: the same tenancy as Answer.
    assert_eq!(
        facade_cited(&server, ACME_KEY, "").await.unwrap(),
        acme_cites
    );
    assert_eq!(
        facade_cited(&server, GLOBEX_KEY, "").await.unwrap(),
        globex_cites
    );
    let (status, message) = facade_cited(&server, ACME_KEY, "globex").await.unwrap_err();
    assert_eq!(status, 403, "{message}");
    assert!(!message.contains("globex"), "{message}");

    // Asking for the other tenant, in any call, is refused, not answered empty.
    for denied in [
        search(&server, ACME_KEY, "globex").await.unwrap_err(),
        cited(&server, ACME_KEY, "globex").await.unwrap_err(),
        upsert(&server, ACME_KEY, "globex").await.unwrap_err(),
    ] {
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
        assert!(!denied.message().contains("globex"), "{denied:?}");
    }

    // An unpinned caller chooses: one tenant, or everything.
    assert_eq!(
        search(&server, OPERATOR_KEY, "globex").await.unwrap(),
        ids_of("globex")
    );
    let everything = search(&server, OPERATOR_KEY, "").await.unwrap();
    assert_eq!(everything.len(), 6, "{everything:?}");

    // Deleting a tenant's document by id leaves the other's of the same id.
    let deleted = IngestionServiceClient::new(server.channel.clone())
        .delete_documents(with_key(
            proto::DeleteDocumentsRequest {
                index: "docs".into(),
                selection: Some(proto::delete_documents_request::Selection::Ids(
                    proto::DocumentIds {
                        ids: vec!["handbook".into()],
                    },
                )),
                namespace: String::new(),
            },
            GLOBEX_KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.documents, 1);
    assert_eq!(
        search(&server, GLOBEX_KEY, "").await.unwrap(),
        vec!["api/docs@globex/ferry".to_string()]
    );
    assert_eq!(search(&server, ACME_KEY, "").await.unwrap(), ids_of("acme"));
    server.stop().await;
}
