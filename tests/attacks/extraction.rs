//! Attacks on extraction (issue 13 point 5): documents crafted to crash, exhaust or stall
//! the parsers, indexed over gRPC by a real `skyfuse serve` process (the crash tests need
//! the real binary: its extraction workers are that binary re-executed).
//! See docs/security/extraction.md.

use std::io::Write;
use std::net::TcpListener as StdTcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pdf_extract::{Dictionary, Document, Object, Stream};
use skyfuse::api::proto;
use skyfuse::api::proto::ingestion_service_client::IngestionServiceClient;
use skyfuse::api::proto::retrieval_service_client::RetrievalServiceClient;
use tonic::transport::Channel;

/// The server's config: BM25 only (the model is beside the point), its data in
/// `data_dir`, and `docs` the one folder `Index` may read.
fn server_config(data_dir: &Path, docs: &Path) -> String {
    format!(
        r#"
        [server]
        data_dir = "{data_dir}"
        [[source]]
        id = "bm25"
        kind = "tantivy"
        [[index]]
        id = "docs"
        sources = ["bm25"]
        [ingest]
        roots = ["{docs}"]
        "#,
        data_dir = data_dir.display(),
        docs = docs.display(),
    )
}

/// A `skyfuse serve` process on a loopback port; killed when dropped.
struct ServeProcess {
    child: Child,
    channel: Channel,
}

impl ServeProcess {
    async fn start(config_path: &Path, log_path: &Path) -> Self {
        let port = {
            let probe = StdTcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let log = std::fs::File::create(log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_skyfuse"))
            .arg("--config")
            .arg(config_path)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let endpoint = format!("http://127.0.0.1:{port}");
        // Readiness, not timing: wait until the port answers (a minute at most, on a busy box).
        let started = Instant::now();
        let channel = loop {
            if let Ok(channel) = Channel::from_shared(endpoint.clone())
                .unwrap()
                .connect()
                .await
            {
                break channel;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "serve did not start: {}",
                std::fs::read_to_string(log_path).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        Self { child, channel }
    }

    async fn index(&self, url: &Path) -> proto::IndexProgress {
        let mut stream = IngestionServiceClient::new(self.channel.clone())
            .index(proto::IndexRequest {
                url: url.display().to_string(),
                index: "docs".to_owned(),
                ..Default::default()
            })
            .await
            .expect("the index call is accepted")
            .into_inner();
        let mut last = None;
        while let Some(event) = stream.message().await.expect("the stream does not break") {
            last = Some(event);
        }
        let last = last.expect("a final event");
        assert!(last.done, "the last event says the run is done");
        last
    }

    async fn search(&self, query: &str) -> Result<proto::SearchResponse, tonic::Status> {
        RetrievalServiceClient::new(self.channel.clone())
            .search(proto::SearchRequest {
                query: query.to_owned(),
                top_k: 5,
                include_text: true,
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Peak resident memory of the server process so far, in KiB (VmHWM).
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-page PDF whose page draws the Form XObject `/X0`, whose own resources name
/// itself as `/X0` and whose content is `/X0 Do`: pdf-extract recurses until the stack
/// overflows, which aborts any process it runs in.
fn self_referencing_pdf() -> Vec<u8> {
    let mut document = Document::with_version("1.5");
    let pages_id = document.new_object_id();
    let form_id = document.new_object_id();
    let form_resources = Dictionary::from_iter([(
        "XObject",
        Object::Dictionary(Dictionary::from_iter([("X0", Object::Reference(form_id))])),
    )]);
    let form = Stream::new(
        Dictionary::from_iter([
            ("Type", Object::Name(b"XObject".to_vec())),
            ("Subtype", Object::Name(b"Form".to_vec())),
            ("BBox", media_box()),
            ("Resources", Object::Dictionary(form_resources.clone())),
        ]),
        b"/X0 Do".to_vec(),
    );
    document.objects.insert(form_id, Object::Stream(form));
    let content_id = document.add_object(Stream::new(Dictionary::new(), b"/X0 Do".to_vec()));
    one_page(&mut document, pages_id, content_id, form_resources);
    let mut bytes = Vec::new();
    document.save_to(&mut bytes).unwrap();
    bytes
}

/// A PDF whose page content is a FlateDecode stream of `inflated_bytes` zeros: a few MB
/// on disk, gigabytes once inflated (lopdf inflates with no limit).
fn inflate_bomb_pdf(inflated_bytes: u64) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..inflated_bytes / zeros.len() as u64 {
        encoder.write_all(&zeros).unwrap();
    }
    let compressed = encoder.finish().unwrap();
    let mut document = Document::with_version("1.5");
    let pages_id = document.new_object_id();
    let mut stream = Stream::new(
        Dictionary::from_iter([("Filter", Object::Name(b"FlateDecode".to_vec()))]),
        compressed,
    );
    stream.allows_compression = false;
    let content_id = document.add_object(stream);
    one_page(&mut document, pages_id, content_id, Dictionary::new());
    let mut bytes = Vec::new();
    document.save_to(&mut bytes).unwrap();
    bytes
}

fn one_page(
    document: &mut Document,
    pages_id: (u32, u16),
    content_id: (u32, u16),
    resources: Dictionary,
) {
    let page_id = document.add_object(Dictionary::from_iter([
        ("Type", Object::Name(b"Page".to_vec())),
        ("Parent", Object::Reference(pages_id)),
        ("Contents", Object::Reference(content_id)),
        ("Resources", Object::Dictionary(resources)),
        ("MediaBox", media_box()),
    ]));
    document.objects.insert(
        pages_id,
        Object::Dictionary(Dictionary::from_iter([
            ("Type", Object::Name(b"Pages".to_vec())),
            ("Kids", Object::Array(vec![Object::Reference(page_id)])),
            ("Count", Object::Integer(1)),
        ])),
    );
    let catalog_id = document.add_object(Dictionary::from_iter([
        ("Type", Object::Name(b"Catalog".to_vec())),
        ("Pages", Object::Reference(pages_id)),
    ]));
    document.trailer.set("Root", catalog_id);
}

fn reasons_by_key(
    progress: &proto::IndexProgress,
    kind: proto::IssueKind,
) -> Vec<(String, String)> {
    progress
        .failures
        .iter()
        .filter(|issue| issue.kind == kind as i32)
        .map(|issue| {
            let name = issue.key.rsplit('/').next().unwrap_or_default().to_owned();
            (name, issue.reason.clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_pdfs_and_deep_html_fail_alone_and_the_server_stays_up() {
    let folder = tempfile::tempdir().unwrap();
    let docs = folder.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("runbook.md"),
        "# Runbook\n\nRestart the ingest worker nightly.",
    )
    .unwrap();
    std::fs::write(docs.join("notes.txt"), "The quarterly ledger balances.").unwrap();
    std::fs::write(
        docs.join("page.html"),
        "<html><head><title>Page</title></head><body><p>Harbour schedules</p></body></html>",
    )
    .unwrap();
    let self_referencing = self_referencing_pdf();
    std::fs::write(docs.join("self-reference.pdf"), &self_referencing).unwrap();
    let bomb = inflate_bomb_pdf(4 << 30);
    std::fs::write(docs.join("inflate-bomb.pdf"), &bomb).unwrap();
    std::fs::write(docs.join("deep.html"), "<div>a".repeat(200_000)).unwrap();
    // 5 MB without whitespace; punctuation keeps it searchable word by word.
    std::fs::write(docs.join("no-spaces.txt"), "zebracorn,".repeat(500_000)).unwrap();
    eprintln!(
        "self-reference.pdf: {} bytes, inflate-bomb.pdf: {} bytes",
        self_referencing.len(),
        bomb.len()
    );

    let config_path = folder.path().join("skyfuse.toml");
    let data_dir = folder.path().join("data");
    std::fs::write(&config_path, server_config(&data_dir, &docs)).unwrap();
    let mut server = ServeProcess::start(&config_path, &folder.path().join("serve.log")).await;

    let first = server.index(&docs).await;
    let failed = reasons_by_key(&first, proto::IssueKind::Failed);
    eprintln!("first run: {first:?}");
    assert!(
        server.is_running(),
        "the server survived the crafted documents"
    );
    assert_eq!(
        first.indexed, 4,
        "the good documents are indexed: {first:?}"
    );
    assert_eq!(first.failed, 3, "{failed:?}");
    let failed_names: Vec<&str> = failed.iter().map(|(name, _)| name.as_str()).collect();
    for name in ["self-reference.pdf", "inflate-bomb.pdf", "deep.html"] {
        assert!(failed_names.contains(&name), "{name} failed: {failed:?}");
    }
    for (name, reason) in &failed {
        assert!(!reason.is_empty(), "{name} has a reason");
    }
    let deep_reason = &failed
        .iter()
        .find(|(name, _)| name == "deep.html")
        .unwrap()
        .1;
    assert_eq!(deep_reason, "html nests deeper than 512 elements");
    eprintln!(
        "peak RSS of the server after the first run: {} KiB",
        server.peak_rss_kib()
    );

    // The server still answers, and the whitespace-free document is citable: its chunks
    // are bounded, so the hit (with its text) fits the response.
    let found = server.search("zebracorn").await.expect("search answers");
    let hit = found
        .hits
        .iter()
        .find(|hit| hit.object_key.ends_with("no-spaces.txt"))
        .expect("the whitespace-free document is found");
    assert!(hit.text.len() <= 8 * 1024, "{} bytes", hit.text.len());
    assert!(hit.text.contains("zebracorn"), "{}", &hit.text[..40]);
    assert!(!server.search("Harbour").await.unwrap().hits.is_empty());

    // The next run does not touch them: not read, so no worker sees them again.
    let second = server.index(&docs).await;
    eprintln!("second run: {second:?}");
    assert_eq!(second.known_bad, 3, "{second:?}");
    assert_eq!((second.failed, second.fetched, second.indexed), (0, 0, 0));
    assert_eq!(second.unchanged, 4);
    let known_bad = reasons_by_key(&second, proto::IssueKind::KnownBad);
    assert_eq!(known_bad.len(), 3, "{known_bad:?}");
    assert!(server.is_running());
    eprintln!(
        "peak RSS of the server after both runs: {} KiB",
        server.peak_rss_kib()
    );
}

fn media_box() -> Object {
    Object::Array([0, 0, 612, 792].into_iter().map(Object::Integer).collect())
}
