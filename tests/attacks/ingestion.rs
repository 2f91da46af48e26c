//! Attacks on ingestion: reading server files outside `[ingest] roots`, symlink escapes,
//! FIFOs that hang the index, buckets under no `[[bucket]]` entry, deleting an index with
//! request globs, and runs that outlive their caller. See docs/security/ingestion.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use skyfuse::api::proto;
use skyfuse::api::proto::admin_service_client::AdminServiceClient;
use skyfuse::api::proto::ingestion_service_client::IngestionServiceClient;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tonic::Code;

use super::support::AttackServer;

/// A root with a `docs` folder of three files, and a folder outside the root.
struct Folders {
    _temp: TempDir,
    data: PathBuf,
    root: PathBuf,
    outside: PathBuf,
}

fn folders() -> Folders {
    let temp = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(temp.path()).unwrap();
    let (data, root, outside) = (base.join("data"), base.join("root"), base.join("outside"));
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    for (name, text) in [
        ("a.md", "alpha kubernetes"),
        ("b.md", "bravo billing"),
        ("c.txt", "charlie"),
    ] {
        std::fs::write(root.join("docs").join(name), text).unwrap();
    }
    std::fs::write(outside.join("secret.md"), "the server's secret").unwrap();
    Folders {
        _temp: temp,
        data,
        root,
        outside,
    }
}

/// BM25 only (no model), local paths under `root`, and `extra` tables.
fn config(folders: &Folders, extra: &str) -> String {
    format!(
        r#"
[server]
data_dir = "{data}"

[[source]]
id = "bm25"
kind = "tantivy"

[[index]]
id = "docs"
sources = ["bm25"]

[ingest]
roots = ["{root}"]
{extra}
"#,
        data = folders.data.display(),
        root = folders.root.display(),
    )
}

fn request(url: &str) -> proto::IndexRequest {
    proto::IndexRequest {
        url: url.to_owned(),
        ..Default::default()
    }
}

/// The final message of a run, or its status.
async fn index(
    server: &AttackServer,
    request: proto::IndexRequest,
) -> Result<proto::IndexProgress, tonic::Status> {
    let mut client = IngestionServiceClient::new(server.channel.clone());
    let mut stream = client.index(request).await?.into_inner();
    let mut last = None;
    while let Some(message) = stream.message().await? {
        last = Some(message);
    }
    let last = last.expect("at least one message");
    assert!(last.done, "{last:?}");
    Ok(last)
}

/// One refusal for every path or bucket, echoing none of it.
fn assert_refused_alike(status: &tonic::Status, url: &str) {
    assert_eq!(status.code(), Code::PermissionDenied, "{url}: {status:?}");
    assert_eq!(status.message(), "not found or not allowed", "{url}");
}

/// The server still indexes what it may (and so the index is not locked).
async fn assert_still_indexes(server: &AttackServer, folders: &Folders) {
    let report = index(
        server,
        request(&folders.root.join("docs").display().to_string()),
    )
    .await
    .unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
}

#[tokio::test]
async fn server_paths_outside_the_roots_are_refused_with_one_message() {
    let folders = folders();
    let server = AttackServer::start(&config(&folders, ""), &folders.data).await;
    std::os::unix::fs::symlink(&folders.outside, folders.root.join("escape")).unwrap();
    std::os::unix::fs::symlink(
        folders.outside.join("secret.md"),
        folders.root.join("secret-link.md"),
    )
    .unwrap();
    let urls = [
        "/etc".to_owned(),
        "/etc/passwd".to_owned(),
        "file:///etc/passwd".to_owned(),
        "../../../../etc/passwd".to_owned(),
        format!("{}/../outside", folders.root.display()),
        format!("file://{}/../outside/secret.md", folders.root.display()),
        folders.root.join("does-not-exist.md").display().to_string(),
        folders.root.join("escape").display().to_string(),
        folders.root.join("secret-link.md").display().to_string(),
    ];
    for url in urls {
        let status = index(&server, request(&url)).await.unwrap_err();
        assert_refused_alike(&status, &url);
    }
    assert_still_indexes(&server, &folders).await;
    server.stop().await;
}

#[tokio::test]
async fn a_symlink_inside_an_indexed_folder_is_reported_and_not_followed() {
    let folders = folders();
    std::os::unix::fs::symlink(
        folders.outside.join("secret.md"),
        folders.root.join("docs/secret.md"),
    )
    .unwrap();
    std::os::unix::fs::symlink(&folders.outside, folders.root.join("docs/outside")).unwrap();
    let server = AttackServer::start(&config(&folders, ""), &folders.data).await;
    let report = index(
        &server,
        request(&folders.root.join("docs").display().to_string()),
    )
    .await
    .unwrap();
    assert_eq!(report.indexed, 3, "{report:?}");
    let refused: Vec<&str> = report
        .failures
        .iter()
        .filter(|failure| failure.reason.contains("outside the indexing root"))
        .map(|failure| failure.key.as_str())
        .collect();
    assert_eq!(refused.len(), 2, "{report:?}");
    assert!(!format!("{report:?}").contains(&folders.outside.display().to_string()));
    server.stop().await;
}

#[tokio::test]
async fn a_fifo_is_refused_at_once_and_the_index_stays_free() {
    let folders = folders();
    let fifo = folders.root.join("docs/pipe.md");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let server = AttackServer::start(&config(&folders, ""), &folders.data).await;
    let url = fifo.display().to_string();
    // Before the fix this never returned (opening a FIFO blocks); the guard only turns a
    // hang into a failure message.
    let status = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        index(&server, request(&url)),
    )
    .await
    .expect("the call returns")
    .unwrap_err();
    assert_refused_alike(&status, &url);
    // A folder holding the FIFO indexes the rest and skips it.
    assert_still_indexes(&server, &folders).await;
    server.stop().await;
}

#[tokio::test]
async fn without_roots_serve_refuses_local_paths_and_names_the_setting() {
    let folders = folders();
    let text = config(&folders, "").replace(
        &format!("roots = [\"{}\"]", folders.root.display()),
        "roots = []",
    );
    let server = AttackServer::start(&text, &folders.data).await;
    let status = index(&server, request("/etc")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("[ingest] roots"), "{status:?}");
    assert!(!status.message().contains("/etc"), "{status:?}");
    server.stop().await;
}

/// A loopback listener that counts connections; `hold` keeps them open, silent.
async fn counting_listener() -> (String, Arc<AtomicUsize>, tokio::sync::mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    let (closed_sender, closed) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let closed_sender = closed_sender.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buffer = [0u8; 4096];
                // Read the request and never answer; report when the client hangs up.
                while let Ok(read) = socket.read(&mut buffer).await {
                    if read == 0 {
                        break;
                    }
                }
                let _ = closed_sender.send(()).await;
            });
        }
    });
    (format!("http://{address}"), connections, closed)
}

/// A `[[bucket]]` for `s3://{name}` at `endpoint`, with keys in files (no ambient chain).
fn bucket_entry(folders: &Folders, name: &str, endpoint: &str, extra: &str) -> String {
    let key = folders.data.join("key");
    std::fs::write(&key, "test").unwrap();
    format!(
        r#"
[[bucket]]
url = "s3://{name}"
endpoint = "{endpoint}"
allow_http = true
region = "us-east-1"
max_retries = 0
access_key_id = "file:{key}"
secret_access_key = "file:{key}"
{extra}
"#,
        key = key.display()
    )
}

#[tokio::test]
async fn a_bucket_under_no_entry_is_refused_before_any_request() {
    let folders = folders();
    let (endpoint, connections, _closed) = counting_listener().await;
    let entry = bucket_entry(&folders, "docs", &endpoint, "");
    let server = AttackServer::start(&config(&folders, &entry), &folders.data).await;
    for url in [
        "s3://payroll",
        "s3a://payroll/2024",
        "https://payroll.s3.eu-west-1.amazonaws.com/x",
        "https://s3.amazonaws.com/payroll",
        "gs://payroll",
        "abfss://payroll@acct.dfs.core.windows.net/x",
        "s3://docsx",
    ] {
        let status = index(&server, request(url)).await.unwrap_err();
        assert_refused_alike(&status, url);
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0, "no request left");
    assert_still_indexes(&server, &folders).await;
    server.stop().await;
}

#[tokio::test]
async fn request_globs_delete_nothing_without_prune_and_prune_reports_each_object() {
    let folders = folders();
    let server = AttackServer::start(&config(&folders, ""), &folders.data).await;
    let docs = folders.root.join("docs").display().to_string();
    let first = index(&server, request(&docs)).await.unwrap();
    assert_eq!(first.indexed, 3);
    for (include, exclude) in [
        (vec![], vec!["**".to_owned()]),
        (vec!["nothing".to_owned()], vec![]),
    ] {
        let report = index(
            &server,
            proto::IndexRequest {
                include,
                exclude,
                ..request(&docs)
            },
        )
        .await
        .unwrap();
        assert_eq!(report.deleted, 0, "{report:?}");
        assert_eq!(report.pruned, 0, "{report:?}");
        assert_eq!(report.kept_not_pruned, 3, "{report:?}");
    }
    // Still indexed: a plain run finds all three unchanged.
    let again = index(&server, request(&docs)).await.unwrap();
    assert_eq!(again.unchanged, 3, "{again:?}");

    let pruned = index(
        &server,
        proto::IndexRequest {
            exclude: vec!["*.txt".into()],
            prune: true,
            ..request(&docs)
        },
    )
    .await
    .unwrap();
    assert_eq!(pruned.pruned, 1, "{pruned:?}");
    let reported: Vec<&str> = pruned
        .failures
        .iter()
        .filter(|failure| failure.kind == proto::IssueKind::Pruned as i32)
        .map(|failure| failure.key.as_str())
        .collect();
    assert_eq!(reported, ["docs/c.txt"]);
    server.stop().await;
}

#[tokio::test]
async fn an_empty_listing_of_an_indexed_folder_deletes_nothing_without_prune() {
    let folders = folders();
    let server = AttackServer::start(&config(&folders, ""), &folders.data).await;
    let docs = folders.root.join("docs");
    let url = docs.display().to_string();
    assert_eq!(index(&server, request(&url)).await.unwrap().indexed, 3);
    // The folder is emptied (an unmounted disk looks the same).
    for entry in std::fs::read_dir(&docs).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let report = index(&server, request(&url)).await.unwrap();
    assert_eq!(report.deleted, 0, "{report:?}");
    assert_eq!(report.kept_not_pruned, 3, "{report:?}");
    assert!(
        report
            .failures
            .iter()
            .any(|failure| failure.kind == proto::IssueKind::NotPruned as i32),
        "{report:?}"
    );
    let pruned = index(
        &server,
        proto::IndexRequest {
            prune: true,
            ..request(&url)
        },
    )
    .await
    .unwrap();
    assert_eq!(pruned.deleted, 3, "{pruned:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_cancelled_run_stops_and_frees_the_index() {
    let folders = folders();
    let (endpoint, connections, _closed) = counting_listener().await;
    let entry = bucket_entry(&folders, "slow", &endpoint, "");
    let server = AttackServer::start(&config(&folders, &entry), &folders.data).await;
    let mut client = IngestionServiceClient::new(server.channel.clone());
    let stream = client
        .index(request("s3a://slow/docs"))
        .await
        .unwrap()
        .into_inner();
    // Wait until the run is listing (its request reached the silent bucket), then cancel.
    while connections.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    drop(stream);
    // The server learns of the cancel when the stream's reset arrives; until then the
    // run may still hold the index. Held for good, it would stay UNAVAILABLE.
    let mut attempts = 0;
    loop {
        match index(
            &server,
            request(&folders.root.join("docs").display().to_string()),
        )
        .await
        {
            Ok(report) => {
                assert_eq!(report.indexed, 3);
                break;
            }
            Err(status) if status.code() == Code::Unavailable && attempts < 200 => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(status) => panic!("the index stayed locked: {status:?}"),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_detached_run_goes_on_and_admin_reports_it() {
    let folders = folders();
    let server = AttackServer::start(&config(&folders, ""), &folders.data).await;
    let mut client = IngestionServiceClient::new(server.channel.clone());
    let mut stream = client
        .index(proto::IndexRequest {
            detached: true,
            ..request(&folders.root.join("docs").display().to_string())
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.run_id.len(), 32, "{first:?}");
    drop(stream);
    let mut admin = AdminServiceClient::new(server.channel.clone());
    let status = loop {
        let status = admin
            .get_index_run(proto::GetIndexRunRequest {
                run_id: first.run_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if status.state != "running" {
            break status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(status.state, "succeeded", "{status:?}");
    assert_eq!(status.progress.unwrap().indexed, 3);
    let unknown = admin
        .get_index_run(proto::GetIndexRunRequest {
            run_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    server.stop().await;
}
