//! Black-box tests: the real server on 127.0.0.1:0 with the real model, real
//! tantivy and dense stores on disk, called through the generated tonic clients.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic::transport::Channel;

use skyfuse::api::proto;
use skyfuse::api::proto::admin_service_client::AdminServiceClient;
use skyfuse::api::proto::generation_service_client::GenerationServiceClient;
use skyfuse::api::proto::ingestion_service_client::IngestionServiceClient;
use skyfuse::api::proto::retrieval_service_client::RetrievalServiceClient;
use skyfuse::api::{Listeners, serve};
use skyfuse::config::Config;
use skyfuse::service::Service;

#[path = "grpc_api/documents.rs"]
mod documents;
#[path = "grpc_api/grpcurl.rs"]
mod grpcurl;
#[path = "common/llama.rs"]
mod llama;
#[path = "grpc_api/residency_examples.rs"]
mod residency_examples;
#[path = "grpc_api/tenants.rs"]
mod tenants;

fn model_dir() -> PathBuf {
    let dir = std::env::var_os("SKYFUSE_MODEL_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2"),
        PathBuf::from,
    );
    assert!(
        dir.join("model.safetensors").is_file(),
        "model missing at {}: run scripts/fetch-model.sh",
        dir.display()
    );
    dir
}

struct TestServer {
    /// Where the gRPC listener is, for clients other than `channel` (grpcurl).
    address: std::net::SocketAddr,
    channel: Channel,
    /// The OpenAI-compatible facade's base URL.
    facade: String,
    service: Arc<Service>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    async fn start(data_dir: &Path, extra_config: &str) -> Self {
        Self::start_with_env(data_dir, extra_config, &Default::default()).await
    }

    /// [`Self::start`] with `env` as what secret locations (`env:NAME`) resolve against.
    async fn start_with_env(
        data_dir: &Path,
        extra_config: &str,
        env: &std::collections::HashMap<String, String>,
    ) -> Self {
        let text = format!(
            r#"
            [server]
            listen = "127.0.0.1:0"
            data_dir = "{data_dir}"
            max_top_k = 100
            [[space]]
            id = "minilm"
            provider = "local"
            model = "{model}"
            dims = 384
            [[source]]
            id = "local-bm25"
            kind = "tantivy"
            [[source]]
            id = "local-dense"
            kind = "dense"
            space = "minilm"
            [[index]]
            id = "docs"
            sources = ["local-bm25", "local-dense"]
            chunk_max_words = 80
            chunk_overlap_words = 10
            metadata_fields = ["topic"]
            [ingest]
            roots = ["{temp}"]
            {extra_config}
            "#,
            temp = std::env::temp_dir().display(),
            data_dir = data_dir.display(),
            model = model_dir().display(),
        );
        let config = Config::parse(&text, Path::new("/")).unwrap();
        let service = Arc::new(Service::build(config, env).await.unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let openai = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let facade = format!("http://{}", openai.local_addr().unwrap());
        let listeners = Listeners {
            grpc: listener,
            openai: Some(openai),
            metrics: None,
        };
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = service.clone();
        let task = tokio::spawn(async move {
            serve(served, listeners, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let channel = Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            address,
            channel,
            facade,
            service,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Stops the server and waits until its stores are closed.
    async fn stop(mut self) {
        self.stop_serving().await;
    }

    async fn stop_serving(&mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }

    /// [`Self::stop`], then waits until nothing holds the service, so the next
    /// server may open the same data dir.
    async fn stop_releasing_data_dir(mut self) {
        self.stop_serving().await;
        // A detached task of a finished call (an index run's last bookkeeping) may
        // still hold the service for a moment after `serve` returns; the next server
        // on the same data dir needs its lock, so wait for the last holder to let go.
        for _ in 0..3_000 {
            if Arc::strong_count(&self.service) == 1 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the service is still held 30 s after serve returned");
    }

    fn search(&self) -> RetrievalServiceClient<Channel> {
        RetrievalServiceClient::new(self.channel.clone())
    }

    /// POSTs `body` as JSON to the facade's `path`: the status and the JSON answer.
    async fn post_json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.facade))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn index(&self, url: &Path) -> proto::IndexProgress {
        self.index_into(url, "").await
    }

    async fn index_into(&self, url: &Path, index: &str) -> proto::IndexProgress {
        let mut stream = IngestionServiceClient::new(self.channel.clone())
            .index(proto::IndexRequest {
                url: url.display().to_string(),
                index: index.to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut events = Vec::new();
        while let Some(event) = stream.message().await.unwrap() {
            events.push(event);
        }
        let last = events.pop().expect("at least the final progress event");
        assert!(last.done, "the last event says the run is done");
        assert!(events.iter().all(|event| !event.done));
        last
    }

    async fn search_for(&self, query: &str) -> proto::SearchResponse {
        self.search()
            .search(proto::SearchRequest {
                query: query.into(),
                top_k: 5,
                include_text: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn answer(&self, request: proto::AnswerRequest) -> Vec<proto::answer_event::Event> {
        let mut stream = GenerationServiceClient::new(self.channel.clone())
            .answer(request)
            .await
            .unwrap()
            .into_inner();
        let mut events = Vec::new();
        while let Some(event) = stream.message().await.unwrap() {
            events.push(event.event.unwrap());
        }
        events
    }
}

/// The streamed tokens of an answer, joined.
fn answer_text(events: &[proto::answer_event::Event]) -> String {
    events
        .iter()
        .filter_map(|event| match event {
            proto::answer_event::Event::Token(text) => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// A small corpus in every supported format, plus a file that must be refused.
fn write_corpus(dir: &Path) {
    std::fs::write(
        dir.join("archives.md"),
        "# Cold archives\n\nCold archives are replicated every night to a paired region in the same \
         jurisdiction, so a regional outage never loses backups.\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("billing.txt"),
        "Invoices are issued on the first business day of each month and are payable within thirty days.\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("kubernetes.html"),
        "<html><head><title>Cluster upgrades</title><script>var hidden = 'no';</script></head>\
         <body><p>Kubernetes clusters are upgraded one node pool at a time with surge capacity.</p></body></html>",
    )
    .unwrap();
    std::fs::write(
        dir.join("corpus.jsonl"),
        concat!(
            r#"{"_id": "d1", "title": "Photosynthesis", "text": "Plants convert sunlight, water and carbon dioxide into glucose and oxygen.", "metadata": {}}"#,
            "\n",
            r#"{"_id": "d2", "title": "Volcanoes", "text": "Magma rises through the crust and erupts as lava at the surface.", "metadata": {}}"#,
            "\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("image.png"),
        [0x89u8, 0x50, 0x4e, 0x47, 0, 0, 0, 0x0d, 0xff],
    )
    .unwrap();
}

#[tokio::test]
async fn index_then_search_fuses_both_sources_and_reindexing_is_incremental() {
    let data = TempDir::new().unwrap();
    let docs = TempDir::new().unwrap();
    write_corpus(docs.path());
    let server = TestServer::start(data.path(), "").await;

    let first = server.index(docs.path()).await;
    assert_eq!(first.listed, 5);
    assert_eq!(first.indexed, 4, "{first:?}");
    assert_eq!(
        first.failed + first.skipped,
        1,
        "the png is refused: {first:?}"
    );
    assert!(
        first
            .failures
            .iter()
            .any(|failure| failure.key.ends_with("image.png"))
    );
    assert!(first.chunks >= 5);

    let response = server
        .search_for("where are cold archives replicated?")
        .await;
    assert!(!response.degraded, "{:?}", response.sources);
    let top = &response.hits[0];
    assert!(top.object_key.ends_with("archives.md"), "{response:?}");
    assert_eq!(top.rank, 1);
    let sources: Vec<&str> = top
        .explain
        .iter()
        .map(|source| source.source.as_str())
        .collect();
    assert!(
        sources.contains(&"local-bm25") && sources.contains(&"local-dense"),
        "{sources:?}"
    );
    assert!(top.explain.iter().all(|source| source.rank >= 1));
    assert!(top.text.contains("paired region"));

    // Dense retrieval finds a paraphrase with no shared keyword.
    let response = server
        .search_for("how do green leaves make sugar from light")
        .await;
    assert!(
        response.hits[0].doc_id.ends_with("corpus.jsonl#d1"),
        "{response:?}"
    );

    // Unchanged folder: nothing re-written.
    let again = server.index(docs.path()).await;
    assert_eq!(again.indexed, 0, "{again:?}");
    assert_eq!(again.unchanged, 4);
    assert_eq!(again.chunks, 0);

    // A changed file is replaced, a removed one deleted.
    std::fs::write(
        docs.path().join("billing.txt"),
        "Refunds are processed within five working days of a returned order.\n",
    )
    .unwrap();
    std::fs::remove_file(docs.path().join("kubernetes.html")).unwrap();
    let third = server.index(docs.path()).await;
    assert_eq!((third.indexed, third.deleted), (1, 1), "{third:?}");
    let response = server
        .search_for("invoices payable within thirty days")
        .await;
    assert!(
        response
            .hits
            .iter()
            .all(|hit| !hit.text.contains("thirty days")),
        "old chunk of the changed file is gone"
    );
    let response = server.search_for("kubernetes node pool upgrades").await;
    assert!(
        response
            .hits
            .iter()
            .all(|hit| !hit.object_key.ends_with("kubernetes.html"))
    );

    // Each search says how much of it was skyfuse's own time.
    let raw = server
        .search()
        .search(proto::SearchRequest {
            query: "kubernetes node pool upgrades".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let overhead: f64 = raw
        .metadata()
        .get("x-skyfuse-overhead-ms")
        .expect("the overhead in the response metadata")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(overhead >= 0.0, "{overhead}");

    // What an operator scrapes after these three runs and five searches.
    let scrape = server.service.render_metrics();
    for line in [
        "skyfuse_index_objects_total{index=\"docs\",outcome=\"indexed\"} 5",
        "skyfuse_index_objects_total{index=\"docs\",outcome=\"deleted\"} 1",
        "skyfuse_index_objects_total{index=\"docs\",outcome=\"unchanged\"} 6",
        "skyfuse_requests_total{entrance=\"index\",outcome=\"ok\"} 3",
        "skyfuse_requests_total{entrance=\"search\",outcome=\"ok\"} 5",
        "skyfuse_source_searches_total{source=\"local-dense\",cloud=\"local\",region=\"local\",outcome=\"ok\"} 5",
        "skyfuse_cross_cloud_latency_seconds_count{source=\"local-bm25\",cloud=\"local\",region=\"local\"} 5",
        "skyfuse_source_breaker_open{source=\"local-bm25\",cloud=\"local\",region=\"local\"} 0",
    ] {
        assert!(scrape.contains(line), "{line} not in\n{scrape}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_corrupt_store_file_degrades_its_source_and_the_service_still_starts() {
    let data = TempDir::new().unwrap();
    let docs = TempDir::new().unwrap();
    write_corpus(docs.path());
    let server = TestServer::start(data.path(), "").await;
    server.index(docs.path()).await;
    server.stop().await;

    // The dense store's file is damaged while the server is down.
    let dense_file = data.path().join("local-dense").join("dense.bin");
    let garbage = b"not a dense store".to_vec();
    std::fs::write(&dense_file, &garbage).unwrap();

    let server = TestServer::start(data.path(), "").await;
    let response = server.search_for("volcano lava eruption").await;
    assert!(response.degraded, "{:?}", response.sources);
    assert!(
        response.hits[0].doc_id.ends_with("corpus.jsonl#d2"),
        "BM25 still answers"
    );
    let dense = response
        .sources
        .iter()
        .find(|outcome| outcome.source == "local-dense")
        .unwrap();
    assert_ne!(dense.status, proto::SourceStatus::Ok as i32, "{dense:?}");
    assert_eq!(
        server.service.health(),
        skyfuse::service::Health {
            retrieval: true,
            generation: true
        },
        "one source still answers"
    );
    let scrape = server.service.render_metrics();
    assert!(
        scrape.contains(
            "skyfuse_source_breaker_open{source=\"local-dense\",cloud=\"local\",region=\"local\"} 1"
        ),
        "{scrape}"
    );
    // Indexing a changed file into it fails, and leaves the damaged file for the operator.
    std::fs::write(
        docs.path().join("new.md"),
        "Glaciers carve fjords over millennia.",
    )
    .unwrap();
    let mut stream = IngestionServiceClient::new(server.channel.clone())
        .index(proto::IndexRequest {
            url: docs.path().display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut failed = false;
    loop {
        match stream.message().await {
            Ok(Some(progress)) => failed |= progress.done && progress.failed > 0,
            Ok(None) => break,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "a run into the unopened store does not succeed");
    assert_eq!(std::fs::read(&dense_file).unwrap(), garbage);
    server.stop().await;
}

#[tokio::test]
async fn stores_are_persisted_and_reopened_after_a_restart() {
    let data = TempDir::new().unwrap();
    let docs = TempDir::new().unwrap();
    write_corpus(docs.path());
    let server = TestServer::start(data.path(), "").await;
    server.index(docs.path()).await;
    let before = server.search_for("volcano lava eruption").await;
    server.stop_releasing_data_dir().await;

    let server = TestServer::start(data.path(), "").await;
    let after = server.search_for("volcano lava eruption").await;
    let ids = |response: &proto::SearchResponse| -> Vec<String> {
        response.hits.iter().map(|hit| hit.doc_id.clone()).collect()
    };
    assert_eq!(ids(&before), ids(&after));
    assert!(after.hits[0].doc_id.ends_with("corpus.jsonl#d2"));
    let sources = AdminServiceClient::new(server.channel.clone())
        .list_sources(proto::ListSourcesRequest {})
        .await
        .unwrap()
        .into_inner()
        .sources;
    assert!(
        sources.iter().all(|source| source.chunks.unwrap_or(0) >= 5),
        "{sources:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let data = TempDir::new().unwrap();
    let server = TestServer::start(data.path(), "").await;
    let mut client = server.search();

    let empty = client
        .search(proto::SearchRequest {
            query: "   ".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    assert!(empty.message().contains("query"), "{}", empty.message());

    let huge_top_k = client
        .search(proto::SearchRequest {
            query: "x".into(),
            top_k: 1_000_000_000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(huge_top_k.code(), tonic::Code::InvalidArgument);
    assert!(
        huge_top_k.message().contains("max_top_k"),
        "{}",
        huge_top_k.message()
    );

    let long_query = client
        .search(proto::SearchRequest {
            query: "word ".repeat(2000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(long_query.code(), tonic::Code::InvalidArgument);

    let unknown_source = client
        .search(proto::SearchRequest {
            query: "x".into(),
            sources: vec!["s3-nowhere".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown_source.code(), tonic::Code::NotFound);
    assert!(unknown_source.message().contains("s3-nowhere"));

    let unknown_model = GenerationServiceClient::new(server.channel.clone())
        .answer(proto::AnswerRequest {
            question: "why?".into(),
            model: "gpt-9".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown_model.code(), tonic::Code::NotFound);
    assert!(unknown_model.message().contains("gpt-9"));

    let unknown_index = IngestionServiceClient::new(server.channel.clone())
        .index(proto::IndexRequest {
            url: data.path().display().to_string(),
            index: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown_index.code(), tonic::Code::NotFound);

    // An empty index answers with no hits, not an error.
    let response = server.search_for("anything at all").await;
    assert!(response.hits.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let data = TempDir::new().unwrap();
    let server = TestServer::start(data.path(), "").await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    for service in [
        "",
        "skyfuse.v1.RetrievalService",
        "skyfuse.v1.GenerationService",
    ] {
        let response = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(server.channel.clone());
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<&str> = list
        .service
        .iter()
        .map(|service| service.name.as_str())
        .collect();
    for expected in [
        "skyfuse.v1.RetrievalService",
        "skyfuse.v1.GenerationService",
        "skyfuse.v1.IngestionService",
        "skyfuse.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }

    // The older protocol, which grpcurl before 1.9 and most Python clients speak.
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::ListServices(String::new())),
    };
    let response = AlphaClient::new(server.channel.clone())
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let Some(AlphaResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected v1alpha reflection answer: {response:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|service| service.name == "skyfuse.v1.RetrievalService"),
        "{list:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn without_a_provider_the_answer_is_extractive_and_cited() {
    let data = TempDir::new().unwrap();
    let docs = TempDir::new().unwrap();
    write_corpus(docs.path());
    let server = TestServer::start(data.path(), "").await;
    server.index(docs.path()).await;
    let events = server
        .answer(proto::AnswerRequest {
            question: "Where are cold archives replicated?".into(),
            ..Default::default()
        })
        .await;
    let text = answer_text(&events);
    assert!(
        text.contains("paired region") && text.contains("[1]"),
        "{text}"
    );
    let Some(proto::answer_event::Event::Done(done)) = events.last() else {
        panic!("the stream ends with done: {events:?}");
    };
    let route = done.route.as_ref().unwrap();
    assert!(route.extractive);
    assert_eq!(route.provider, "extractive");
    assert!(done.citations[0].object_key.ends_with("archives.md"));
    assert_eq!(done.cost.as_ref().unwrap().usd, 0.0);
    server.stop().await;
}

/// A one-shot HTTP server that answers every request with `response` and
/// hands back the request bodies it saw.
async fn fake_llm_server(
    response: String,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let (seen, requests) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read headers, then the body by content-length.
            let body = loop {
                let read = socket.read(&mut chunk).await.unwrap();
                if read == 0 {
                    break String::new();
                }
                buffer.extend_from_slice(&chunk[..read]);
                let text = String::from_utf8_lossy(&buffer).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length: usize = text[..end]
                        .lines()
                        .find_map(|line| {
                            line.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if buffer.len() >= end + 4 + length {
                        break text[end + 4..end + 4 + length].to_string();
                    }
                }
            };
            let head = String::from_utf8_lossy(&buffer)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let _ = seen.send(format!("{head}\n{body}"));
            socket.write_all(response.as_bytes()).await.unwrap();
            socket.shutdown().await.unwrap();
        }
    });
    (base_url, requests)
}

fn provider_config(base_url: &str) -> String {
    format!(
        r#"
        [answer]
        provider = "llama"
        [[provider]]
        id = "llama"
        kind = "openai_compat"
        base_url = "{base_url}"
        model = "qwen2.5-0.5b-instruct"
        input_per_1m_usd = 1.0
        output_per_1m_usd = 2.0
        "#
    )
}

const SSE_ANSWER: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"To a paired\"},\"finish_reason\":null}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" region [1].\"},\"finish_reason\":null}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1200,\"completion_tokens\":300,\"total_tokens\":1500}}\n\n\
data: [DONE]\n\n";

#[tokio::test]
async fn answers_stream_from_an_openai_compatible_server_with_usage_cost_and_route() {
    let (base_url, mut requests) = fake_llm_server(SSE_ANSWER.to_string()).await;
    let data = TempDir::new().unwrap();
    let docs = TempDir::new().unwrap();
    write_corpus(docs.path());
    let server = TestServer::start(data.path(), &provider_config(&base_url)).await;
    server.index(docs.path()).await;
    let events = server
        .answer(proto::AnswerRequest {
            question: "Where are cold archives replicated?".into(),
            ..Default::default()
        })
        .await;
    let tokens: Vec<&str> = events
        .iter()
        .filter_map(|event| match event {
            proto::answer_event::Event::Token(text) => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(tokens, vec!["To a paired", " region [1]."]);
    let Some(proto::answer_event::Event::Done(done)) = events.last() else {
        panic!("the stream ends with done: {events:?}");
    };
    let usage = done.usage.as_ref().unwrap();
    assert_eq!(
        (usage.input_tokens, usage.output_tokens, usage.estimated),
        (1_200, 300, false)
    );
    assert!(
        (done.cost.as_ref().unwrap().usd - 0.0018).abs() < 1e-12,
        "1200 x $1/M + 300 x $2/M"
    );
    let route = done.route.as_ref().unwrap();
    assert_eq!(
        (route.provider.as_str(), route.extractive),
        ("llama", false)
    );
    assert_eq!(route.deployment, "qwen2.5-0.5b-instruct");
    assert_eq!(route.failover_count, 0);
    assert_eq!(route.candidates.len(), 1, "the plan is in the answer");
    assert_eq!(
        route.candidates[0].deployment,
        "llama/qwen2.5-0.5b-instruct"
    );
    assert!(
        route.candidates[0].max_cost_usd.is_some(),
        "priced from the provider"
    );
    assert_eq!(route.attempts.len(), 1);
    assert_eq!(route.attempts[0].outcome, "ok");
    assert_eq!(done.finish_reason, "stop");
    assert!(done.citations[0].object_key.ends_with("archives.md"));

    // The caller rates the answer by its id; the score lands on the provider.
    assert_eq!(done.answer_id.len(), 32, "{done:?}");
    let mut generation = GenerationServiceClient::new(server.channel.clone());
    let rate = |answer_id: &str, score: f64| proto::FeedbackRequest {
        answer_id: answer_id.into(),
        score,
    };
    generation
        .feedback(rate(&done.answer_id, 0.9))
        .await
        .expect("feedback on its own answer");
    let unknown = generation.feedback(rate("nope", 0.5)).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    let out_of_range = generation
        .feedback(rate(&done.answer_id, 2.0))
        .await
        .unwrap_err();
    assert_eq!(out_of_range.code(), tonic::Code::InvalidArgument);
    let scrape = server.service.render_metrics();
    for line in [
        "skyfuse_model_quality_score_by_provider_sum{provider=\"llama\",deployment=\"llama/qwen2.5-0.5b-instruct\",model=\"qwen2.5-0.5b-instruct\",cloud=\"local\",region=\"local\"} 0.9",
        // "To a paired region [1]." cites the one passage it was sent.
        "skyfuse_answer_citations_total{provider=\"llama\",deployment=\"llama/qwen2.5-0.5b-instruct\",model=\"qwen2.5-0.5b-instruct\",valid=\"true\"} 1",
    ] {
        assert!(scrape.contains(line), "{line} not in\n{scrape}");
    }

    let request = requests.recv().await.unwrap();
    assert!(
        request.starts_with("POST /v1/chat/completions"),
        "{request}"
    );
    let body: serde_json::Value = serde_json::from_str(request.lines().nth(1).unwrap()).unwrap();
    assert_eq!(body["model"], "qwen2.5-0.5b-instruct");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    let prompt = body["messages"][1]["content"].as_str().unwrap();
    assert!(
        prompt.contains("[1] Cold archives") && prompt.contains("paired region"),
        "{prompt}"
    );
    server.stop().await;
}

/// The answer's done event, and its text.
fn done_and_text(events: &[proto::answer_event::Event]) -> (proto::AnswerDone, String) {
    let Some(proto::answer_event::Event::Done(done)) = events.last() else {
        panic!("the stream ends with done: {events:?}");
    };
    (done.clone(), answer_text(events))
}

#[tokio::test]
async fn a_cached_answer_is_replayed_marked_cached_at_no_cost_and_one_cut_short_is_not() {
    let with_cache = |base_url: &str| {
        provider_config(base_url).replacen(
            "[answer]\n",
            "[answer]\n        cache = { ttl_ms = 600000 }\n",
            1,
        )
    };
    let question = || proto::AnswerRequest {
        question: "Where are cold archives replicated?".into(),
        ..Default::default()
    };
    let docs = TempDir::new().unwrap();
    write_corpus(docs.path());

    let (base_url, mut requests) = fake_llm_server(SSE_ANSWER.to_string()).await;
    let data = TempDir::new().unwrap();
    let server = TestServer::start(data.path(), &with_cache(&base_url)).await;
    server.index(docs.path()).await;
    let (first, text) = done_and_text(&server.answer(question()).await);
    assert!(!first.cached);
    assert!(first.cost.as_ref().unwrap().usd > 0.0);
    requests.recv().await.expect("the model was asked");
    let (replayed, replayed_text) = done_and_text(&server.answer(question()).await);
    assert_eq!(replayed_text, text);
    assert!(replayed.cached, "{replayed:?}");
    assert_eq!(replayed.cost.as_ref().unwrap().usd, 0.0);
    assert_eq!(replayed.usage, first.usage);
    assert_eq!(replayed.citations, first.citations);
    assert_eq!(replayed.finish_reason, "stop");
    let route = replayed.route.as_ref().unwrap();
    assert_eq!(
        (route.provider.as_str(), route.extractive),
        ("llama", false)
    );
    assert!(route.attempts.is_empty(), "no deployment was called");
    assert!(requests.try_recv().is_err(), "the model was asked once");
    assert!(
        server
            .service
            .render_metrics()
            .contains(r#"skyfuse_cache_lookups_total{cache="answer",tier="process"} 1"#)
    );
    server.stop().await;

    // An answer stopped at its output limit is asked again each time.
    let cut = SSE_ANSWER.replace("\"finish_reason\":\"stop\"", "\"finish_reason\":\"length\"");
    let (base_url, mut requests) = fake_llm_server(cut).await;
    let data = TempDir::new().unwrap();
    let server = TestServer::start(data.path(), &with_cache(&base_url)).await;
    server.index(docs.path()).await;
    for _ in 0..2 {
        let (done, _) = done_and_text(&server.answer(question()).await);
        assert!(done.cut_short && !done.cached, "{done:?}");
        requests.recv().await.expect("the model was asked");
    }
    server.stop().await;
}

#[tokio::test]
async fn an_unavailable_llm_falls_back_to_a_labelled_extractive_answer_and_a_broken_stream_is_an_error()
 {
    let error_body =
        r#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#;
    let (down_url, _) = fake_llm_server(format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{error_body}",
        error_body.len()
    ))
    .await;
    let data = TempDir::new().unwrap();
    let docs = TempDir::new().unwrap();
    write_corpus(docs.path());
    let server = TestServer::start(data.path(), &provider_config(&down_url)).await;
    server.index(docs.path()).await;
    let events = server
        .answer(proto::AnswerRequest {
            question: "Where are cold archives replicated?".into(),
            ..Default::default()
        })
        .await;
    let Some(proto::answer_event::Event::Done(done)) = events.last() else {
        panic!("the stream ends with done: {events:?}");
    };
    let route = done.route.as_ref().unwrap();
    assert!(route.extractive);
    // The lone deployment is retried with backoff until its circuit opens.
    assert!(route.attempts.len() >= 2, "{:?}", route.attempts);
    assert!(
        route
            .attempts
            .iter()
            .all(|attempt| attempt.outcome == "error"
                && attempt.error_kind == "UNAVAILABLE"
                // The upstream's own text ("Loading model") stays in our logs.
                && attempt.message.starts_with("upstream unavailable: llama/qwen2.5-0.5b-instruct (request id: ")),
        "{:?}",
        route.attempts
    );
    server.stop().await;

    let (broken_url, _) = fake_llm_server(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n\
         data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Half an\"},\"finish_reason\":null}]}\n\n\
         data: {\"error\":{\"code\":500,\"message\":\"engine died\"}}\n\n"
            .to_string(),
    )
    .await;
    let data = TempDir::new().unwrap();
    let server = TestServer::start(data.path(), &provider_config(&broken_url)).await;
    server.index(docs.path()).await;
    let events = server
        .answer(proto::AnswerRequest {
            question: "Where are cold archives replicated?".into(),
            ..Default::default()
        })
        .await;
    assert!(matches!(&events[0], proto::answer_event::Event::Token(text) if text == "Half an"));
    let Some(proto::answer_event::Event::Error(error)) = events.last() else {
        panic!("a broken stream ends with an error event, not done: {events:?}");
    };
    // The upstream's text ("engine died") is withheld; the request id finds it in our logs.
    assert!(
        error
            .message
            .starts_with("upstream unavailable (request id: "),
        "{error:?}"
    );
    assert_eq!(
        error.code, "UNAVAILABLE",
        "a google.rpc.Code name, as the proto documents"
    );
    assert!(
        !events
            .iter()
            .any(|event| matches!(event, proto::answer_event::Event::Done(_)))
    );
    server.stop().await;
}

/// A real LLM (llama.cpp's server with Gemma 3 270M, tests/common/llama.rs) answers
/// from the passage retrieval found: the fact exists only in the indexed file, and
/// the deployment's `stop` ends the base model's answer at the next question.
#[tokio::test]
async fn a_real_llm_answers_from_the_retrieved_passage_and_stops_where_its_deployment_says() {
    let Some(llama) = llama::start().await else {
        return;
    };
    let config = format!(
        r#"
        [routing]
        default_model = "gemma"
        [[provider]]
        id = "llama"
        kind = "openai_compat"
        base_url = "{}"
        [[deployment]]
        provider = "llama"
        model = "gemma"
        input_per_1m_usd = 0.1
        output_per_1m_usd = 0.2
        stop = ["\nQuestion:", "\n\n"]
        "#,
        llama.url
    );
    let data = TempDir::new().unwrap();
    let docs = TempDir::new().unwrap();
    std::fs::write(
        docs.path().join("zorbia.md"),
        "# Zorbia\n\nThe capital of the island nation of Zorbia is Quillport, a harbour town on its northern coast.\n",
    )
    .unwrap();
    let server = TestServer::start(data.path(), &config).await;
    server.index(docs.path()).await;
    let events = server
        .answer(proto::AnswerRequest {
            question: "What is the capital of Zorbia?".into(),
            max_output_tokens: 48,
            ..Default::default()
        })
        .await;
    let answered = answer_text(&events);
    assert!(answered.contains("Quillport"), "{answered:?}");
    let Some(proto::answer_event::Event::Done(done)) = events.last() else {
        panic!("the stream ends with done: {events:?}");
    };
    assert_eq!(done.finish_reason, "stop", "{answered:?} {done:?}");
    assert!(!done.cut_short, "{done:?}");
    let route = done.route.as_ref().unwrap();
    assert_eq!(
        (route.provider.as_str(), route.extractive),
        ("llama", false)
    );
    let usage = done.usage.as_ref().unwrap();
    assert!(usage.output_tokens > 0 && !usage.estimated, "{usage:?}");
    assert!(done.cost.as_ref().unwrap().usd > 0.0, "{done:?}");
    assert!(done.citations[0].object_key.ends_with("zorbia.md"));
    server.stop().await;
}

/// Two exports that reuse record ids, as two systems numbering from 1 would.
fn write_two_files_sharing_record_ids(dir: &Path) {
    std::fs::write(
        dir.join("plants.jsonl"),
        concat!(
            r#"{"id": "1", "title": "Photosynthesis", "text": "Plants convert sunlight, water and carbon dioxide into glucose and oxygen."}"#,
            "\n",
            r#"{"id": "2", "title": "Roots", "text": "Roots anchor a plant and draw water and minerals from the soil."}"#,
            "\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("geology.json"),
        r#"[{"id": "1", "title": "Volcanoes", "text": "Magma rises through the crust and erupts as lava at the surface."},
            {"id": "2", "title": "Glaciers", "text": "Glaciers carve valleys as compacted snow slowly flows downhill."}]"#,
    )
    .unwrap();
}

#[tokio::test]
async fn two_json_files_sharing_record_ids_are_both_searchable() {
    let data = TempDir::new().unwrap();
    let docs = TempDir::new().unwrap();
    write_two_files_sharing_record_ids(docs.path());
    let server = TestServer::start(data.path(), "").await;
    let indexed = server.index(docs.path()).await;
    assert_eq!(indexed.indexed, 2, "{indexed:?}");
    assert!(indexed.failures.is_empty(), "{indexed:?}");

    for (query, file, title) in [
        (
            "sunlight glucose oxygen",
            "plants.jsonl#1",
            "Photosynthesis",
        ),
        ("magma erupts as lava", "geology.json#1", "Volcanoes"),
        (
            "roots anchor a plant in the soil",
            "plants.jsonl#2",
            "Roots",
        ),
        ("glaciers carve valleys", "geology.json#2", "Glaciers"),
    ] {
        let response = server.search_for(query).await;
        let top = &response.hits[0];
        assert!(top.doc_id.ends_with(file), "{query}: {response:?}");
        assert_eq!(top.title, title, "{query}");
    }
    // Re-syncing one file deletes its own documents only.
    std::fs::remove_file(docs.path().join("geology.json")).unwrap();
    let again = server.index(docs.path()).await;
    assert_eq!(again.deleted, 1, "{again:?}");
    let response = server.search_for("sunlight glucose oxygen").await;
    assert!(response.hits[0].doc_id.ends_with("plants.jsonl#1"));
    let response = server.search_for("magma erupts as lava").await;
    assert!(
        response
            .hits
            .iter()
            .all(|hit| !hit.doc_id.contains("geology.json")),
        "{response:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_global_record_id_reused_across_files_is_reported_and_the_first_kept() {
    let data = TempDir::new().unwrap();
    let docs = TempDir::new().unwrap();
    write_two_files_sharing_record_ids(docs.path());
    let global = r#"
        [[index]]
        id = "global"
        sources = ["local-bm25"]
        record_ids = "global"
    "#;
    let server = TestServer::start(data.path(), global).await;
    let indexed = server.index_into(docs.path(), "global").await;
    assert_eq!(indexed.indexed, 2, "{indexed:?}");
    let collisions: Vec<&proto::ObjectFailure> = indexed
        .failures
        .iter()
        .filter(|issue| issue.kind == proto::IssueKind::Record as i32)
        .collect();
    // Whichever file was written first keeps ids 1 and 2; the other is told, twice.
    assert_eq!(collisions.len(), 2, "{indexed:?}");
    let (second, first) = if collisions[0].key.ends_with("geology.json") {
        ("geology.json", "plants.jsonl")
    } else {
        ("plants.jsonl", "geology.json")
    };
    for collision in &collisions {
        assert!(collision.key.ends_with(second), "{collision:?}");
        assert!(
            collision.reason.contains("already used by") && collision.reason.contains(first),
            "{collision:?}"
        );
    }
    let response = server
        .search()
        .search(proto::SearchRequest {
            query: "photosynthesis volcanoes roots glaciers".into(),
            top_k: 10,
            sources: vec!["local-bm25".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<&str> = response
        .hits
        .iter()
        .map(|hit| hit.doc_id.as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["1", "2"], "{response:?}");
    assert!(
        response
            .hits
            .iter()
            .all(|hit| hit.object_key.ends_with(first))
    );
    server.stop().await;
}

const TRUNCATED_SPACE: &str = r#"
    [[space]]
    id = "minilm-128"
    provider = "local"
    model = "MODEL"
    dims = 128
    matryoshka = true
    [[source]]
    id = "dense-128"
    kind = "dense"
    space = "minilm-128"
    [[index]]
    id = "small"
    sources = ["dense-128"]
"#;

#[tokio::test]
async fn a_truncated_space_of_the_same_model_searches_and_names_a_missing_adapter() {
    let data = TempDir::new().unwrap();
    let docs = TempDir::new().unwrap();
    write_corpus(docs.path());
    let extra = TRUNCATED_SPACE.replace("MODEL", &model_dir().display().to_string());
    let server = TestServer::start(data.path(), &extra).await;
    server.index(docs.path()).await;
    let indexed = server.index_into(docs.path(), "small").await;
    assert!(indexed.chunks > 0, "{indexed:?}");

    let search = |adapter_from: &str| proto::SearchRequest {
        query: "Where are cold archives replicated?".into(),
        top_k: 3,
        sources: vec!["dense-128".into()],
        adapter_from: adapter_from.into(),
        ..Default::default()
    };
    let native = server
        .search()
        .search(search(""))
        .await
        .unwrap()
        .into_inner();
    assert!(!native.degraded, "{native:?}");
    assert!(
        native.hits[0].object_key.ends_with("archives.md"),
        "{native:?}"
    );

    let adapted = server
        .search()
        .search(search("minilm"))
        .await
        .unwrap()
        .into_inner();
    let outcome = &adapted.sources[0];
    assert_eq!(outcome.status, proto::SourceStatus::Skipped as i32);
    assert!(
        outcome
            .message
            .contains(r#"no adapter from "minilm" into space "minilm-128""#),
        "{outcome:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_smaller_dimension_of_a_model_that_is_not_matryoshka_is_refused_at_startup() {
    let data = TempDir::new().unwrap();
    let text = format!(
        r#"
        [server]
        data_dir = "{data}"
        {space}
        "#,
        data = data.path().display(),
        space = TRUNCATED_SPACE
            .replace("MODEL", &model_dir().display().to_string())
            .replace("matryoshka = true", ""),
    );
    let config = Config::parse(&text, Path::new("/")).unwrap();
    let Err(error) = Service::build(config, &Default::default()).await else {
        panic!("a 128-dimensional space over a 384-dimensional model must not start");
    };
    assert!(
        error.message.contains("minilm-128") && error.message.contains("set matryoshka = true"),
        "{error}"
    );
}

/// An OTLP/gRPC collector on loopback that keeps every span it is sent.
async fn otlp_collector() -> (
    String,
    Arc<std::sync::Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
) {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    type Spans = Arc<std::sync::Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>;
    struct Collector(Spans);
    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let spans = request
                .into_inner()
                .resource_spans
                .into_iter()
                .flat_map(|resource| resource.scope_spans)
                .flat_map(|scope| scope.spans);
            self.0.lock().unwrap().extend(spans);
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }
    let spans = Spans::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let collector = TraceServiceServer::new(Collector(spans.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(collector)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (url, spans)
}

/// An OpenAI-compatible upstream that answers with `status` (and SSE_ANSWER's events
/// on 200), keeping the `traceparent` of each request.
async fn traced_upstream(status: u16) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let traceparent = headers
                .get("traceparent")
                .map(|value| value.to_str().unwrap().to_owned())
                .unwrap_or_default();
            kept.lock().unwrap().push(traceparent);
            async move {
                let body = SSE_ANSWER.split_once("\r\n\r\n").unwrap().1;
                let status = axum::http::StatusCode::from_u16(status).unwrap();
                (status, [("content-type", "text/event-stream")], body)
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

fn attribute<'a>(
    span: &'a opentelemetry_proto::tonic::trace::v1::Span,
    key: &str,
) -> Option<&'a opentelemetry_proto::tonic::common::v1::any_value::Value> {
    span.attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(|attribute| attribute.value.as_ref()?.value.as_ref())
}

fn text_attribute(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match attribute(span, key) {
        Some(Value::StringValue(text)) => text.clone(),
        other => panic!("{key} of {}: {other:?}", span.name),
    }
}

fn int_attribute(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> i64 {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match attribute(span, key) {
        Some(Value::IntValue(number)) => *number,
        other => panic!("{key} of {}: {other:?}", span.name),
    }
}

#[tokio::test]
async fn an_answer_is_one_trace_under_the_callers_traceparent_with_a_span_per_source_space_and_attempt()
 {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
    let (collector, spans) = otlp_collector().await;
    let (down, _) = traced_upstream(503).await;
    let (up, traceparents) = traced_upstream(200).await;
    let data = TempDir::new().unwrap();
    let docs = TempDir::new().unwrap();
    write_corpus(docs.path());
    let config = format!(
        r#"
        [telemetry.traces]
        endpoint = "{collector}"
        protocol = "grpc"
        [routing]
        default_model = "qwen"
        [[provider]]
        id = "down"
        kind = "openai_compat"
        base_url = "{down}"
        [[provider]]
        id = "up"
        kind = "openai_compat"
        base_url = "{up}"
        [[deployment]]
        provider = "down"
        model = "qwen"
        [[deployment]]
        provider = "up"
        model = "qwen"
        "#
    );
    let server = TestServer::start(data.path(), &config).await;
    server.index(docs.path()).await;
    let service = server.service.clone();

    // The caller's own trace: skyfuse's spans join it.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(proto::AnswerRequest {
        question: "Where are cold archives replicated?".into(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-{caller_span}-01")
            .parse()
            .unwrap(),
    );
    let mut stream = GenerationServiceClient::new(server.channel.clone())
        .answer(request)
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(event) = stream.message().await.unwrap() {
        last = event.event;
    }
    let Some(proto::answer_event::Event::Done(done)) = last else {
        panic!("the answer ends with done: {last:?}");
    };
    assert_eq!(done.route.unwrap().failover_count, 1);
    // Every span has ended once the server has stopped; then export them.
    server.stop().await;
    tokio::task::spawn_blocking(move || service.traces().flush())
        .await
        .unwrap()
        .unwrap();

    let spans = spans.lock().unwrap().clone();
    let hex = |bytes: &[u8]| hex::encode(bytes);
    let answer: Vec<_> = spans
        .iter()
        .filter(|span| hex(&span.trace_id) == caller_trace)
        .collect();
    let root = answer
        .iter()
        .find(|span| span.name == "skyfuse.v1.GenerationService/Answer")
        .unwrap_or_else(|| panic!("no Answer span in {spans:#?}"));
    assert_eq!(root.kind, SpanKind::Server as i32);
    assert_eq!(
        hex(&root.parent_span_id),
        caller_span,
        "the caller's span is its parent"
    );
    let children = |name: &str| -> Vec<_> {
        answer
            .iter()
            .filter(|span| span.name == name && span.parent_span_id == root.span_id)
            .collect()
    };
    for source in ["local-bm25", "local-dense"] {
        let retrieval = children(&format!("retrieval {source}"));
        assert_eq!(
            retrieval.len(),
            1,
            "one retrieval span for {source}: {answer:#?}"
        );
        assert_eq!(
            text_attribute(retrieval[0], "gen_ai.operation.name"),
            "retrieval"
        );
        assert_eq!(
            text_attribute(retrieval[0], "gen_ai.data_source.id"),
            source
        );
        assert!(int_attribute(retrieval[0], "skyfuse.hits") > 0);
    }
    let embeddings: Vec<_> = answer
        .iter()
        .filter(|span| span.name.starts_with("embeddings "))
        .collect();
    assert_eq!(embeddings.len(), 1, "one query embedding for the one space");
    assert_eq!(embeddings[0].parent_span_id, root.span_id);
    assert_eq!(text_attribute(embeddings[0], "skyfuse.space"), "minilm");
    assert_eq!(
        int_attribute(embeddings[0], "gen_ai.embeddings.dimension.count"),
        384
    );

    // One chat span per attempt: the failed one and the one that answered.
    let chats = children("chat qwen");
    assert_eq!(chats.len(), 2, "{answer:#?}");
    let (failed, answered) = if text_attribute(chats[0], "skyfuse.provider") == "down" {
        (chats[0], chats[1])
    } else {
        (chats[1], chats[0])
    };
    assert_eq!(text_attribute(failed, "error.type"), "UNAVAILABLE");
    assert_eq!(
        failed.status.as_ref().unwrap().code,
        StatusCode::Error as i32
    );
    assert_eq!(answered.kind, SpanKind::Client as i32);
    assert_eq!(text_attribute(answered, "skyfuse.provider"), "up");
    assert_eq!(int_attribute(answered, "gen_ai.usage.input_tokens"), 1200);
    assert_eq!(int_attribute(answered, "gen_ai.usage.output_tokens"), 300);
    assert!(failed.start_time_unix_nano < answered.start_time_unix_nano);
    // The upstream that answered was told it is part of this trace, under its attempt.
    let sent = traceparents.lock().unwrap().clone();
    assert_eq!(
        sent,
        vec![format!("00-{caller_trace}-{}-01", hex(&answered.span_id))]
    );

    // The Index call before it is a trace of its own: the call, and one span for the
    // sync with its counts.
    let index_call = spans
        .iter()
        .find(|span| span.name == "skyfuse.v1.IngestionService/Index")
        .unwrap_or_else(|| panic!("no Index span in {spans:#?}"));
    assert_ne!(hex(&index_call.trace_id), caller_trace);
    let run: Vec<_> = spans
        .iter()
        .filter(|span| span.name.starts_with("index ") && span.parent_span_id == index_call.span_id)
        .collect();
    assert_eq!(run.len(), 1, "one index span under the call: {spans:#?}");
    assert_eq!(int_attribute(run[0], "skyfuse.objects.listed"), 5);
    assert_eq!(int_attribute(run[0], "skyfuse.objects.indexed"), 4);
    assert!(int_attribute(run[0], "skyfuse.chunks.written") > 0);
}

#[tokio::test]
async fn embeddings_over_http_are_the_vectors_of_the_space_sources_were_indexed_in() {
    let data = TempDir::new().unwrap();
    let server = TestServer::start(data.path(), "").await;
    let embed = |body: serde_json::Value| server.post_json("/v1/embeddings", body);
    let (status, floats) = embed(serde_json::json!({
        "model": "minilm",
        "input": ["Where are cold archives replicated?", "To a paired region."],
    }))
    .await;
    assert_eq!(status, 200, "{floats}");
    assert_eq!(floats["model"], "minilm");
    assert!(floats["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let vector = |response: &serde_json::Value, index: usize| -> Vec<f32> {
        assert_eq!(response["data"][index]["index"], index);
        response["data"][index]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|value| value.as_f64().unwrap() as f32)
            .collect()
    };
    let (first, second) = (vector(&floats, 0), vector(&floats, 1));
    assert_eq!((first.len(), second.len()), (384, 384));
    let norm = first.iter().map(|value| value * value).sum::<f32>().sqrt();
    assert!(
        (norm - 1.0).abs() < 1e-3,
        "cosine space vectors are unit length: {norm}"
    );
    assert_ne!(first, second);

    // One string, base64: the same vector, as OpenAI's clients ask for it by default.
    let (status, encoded) = embed(serde_json::json!({
        "model": "minilm",
        "input": "Where are cold archives replicated?",
        "encoding_format": "base64",
    }))
    .await;
    assert_eq!(status, 200, "{encoded}");
    let bytes = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        encoded["data"][0]["embedding"].as_str().unwrap(),
    )
    .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes(chunk.try_into().unwrap()))
        .collect();
    assert_eq!(decoded, first);

    // What cannot be served is refused, saying why.
    for (body, status, says) in [
        (
            serde_json::json!({"model": "ada-002", "input": "x"}),
            404,
            "available: minilm",
        ),
        (
            serde_json::json!({"model": "minilm", "input": [[101, 2054]]}),
            400,
            "array of strings",
        ),
        (
            serde_json::json!({"model": "minilm", "input": []}),
            400,
            "1 to 2048 texts",
        ),
        (
            serde_json::json!({"model": "minilm", "input": "x", "dimensions": 128}),
            400,
            "384 dimensions",
        ),
        (
            serde_json::json!({"model": "minilm", "input": "x", "encoding_format": "int8"}),
            400,
            "float or base64",
        ),
    ] {
        let (got, response) = embed(body.clone()).await;
        let message = response["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(got, status, "{body}: {response}");
        assert!(message.contains(says), "{body}: {message}");
    }
    server.stop().await;
}

const SSE_CUT_SHORT: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Every night to a paired region [1], as [7] says, and\"},\"finish_reason\":null}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n\
data: [DONE]\n\n";

#[tokio::test]
async fn a_conversation_is_answered_from_its_last_turn_and_the_answer_says_what_it_cites_and_that_it_was_cut()
 {
    let (base_url, mut requests) = fake_llm_server(SSE_CUT_SHORT.to_string()).await;
    let data = TempDir::new().unwrap();
    let docs = TempDir::new().unwrap();
    write_corpus(docs.path());
    let server = TestServer::start(data.path(), &provider_config(&base_url)).await;
    server.index(docs.path()).await;
    let turn = |role: &str, content: &str| proto::Turn {
        role: role.into(),
        content: content.into(),
    };
    let asked = std::time::Instant::now();
    let events = server
        .answer(proto::AnswerRequest {
            messages: vec![
                turn("system", "Answer in one sentence."),
                turn("user", "When are invoices issued?"),
                turn("assistant", "On the first business day of each month [1]."),
                turn(
                    "user",
                    "How often are cold archives replicated, and where to?",
                ),
            ],
            top_k: 1,
            ..Default::default()
        })
        .await;
    let Some(proto::answer_event::Event::Done(done)) = events.last() else {
        panic!("the stream ends with done: {events:?}");
    };
    // Retrieval followed the last turn, not the invoices of the first.
    assert!(
        done.citations[0].object_key.ends_with("archives.md"),
        "{done:?}"
    );
    assert_eq!(done.citations[0].chunk_ordinal, 0);
    assert_eq!(done.cited, vec![1]);
    assert_eq!(
        done.invalid_citations,
        vec![7],
        "[7] names no passage that was sent"
    );
    assert_eq!(done.finish_reason, "length");
    assert!(done.cut_short);
    // skyfuse's own share of the wait for the first token: part of the call's time.
    let waited_ms = asked.elapsed().as_secs_f64() * 1000.0;
    assert!(
        (0.0..=waited_ms).contains(&done.overhead_ms),
        "{} of {waited_ms} ms",
        done.overhead_ms
    );

    // The model saw the whole conversation, the passages beside its last turn.
    let request = requests.recv().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(request.lines().nth(1).unwrap()).unwrap();
    let messages = body["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|message| message["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert!(
        messages[0]["content"]
            .as_str()
            .unwrap()
            .ends_with("Answer in one sentence.")
    );
    let last = messages[3]["content"].as_str().unwrap();
    assert!(last.contains("[1] Cold archives"), "{last}");
    assert!(
        last.ends_with("Question: How often are cold archives replicated, and where to?"),
        "{last}"
    );

    // A conversation that does not end with the user is refused before any work.
    let refused = GenerationServiceClient::new(server.channel.clone())
        .answer(proto::AnswerRequest {
            messages: vec![turn("user", "hi"), turn("assistant", "hello")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("last turn must be the user's"),
        "{refused:?}"
    );
    server.stop().await;
}

/// The doc ids of a response, in order.
fn doc_ids(response: &proto::SearchResponse) -> Vec<String> {
    response.hits.iter().map(|hit| hit.doc_id.clone()).collect()
}

/// The corpus plus notes that share words, so lists are long enough to page.
fn write_notes(dir: &Path) {
    write_corpus(dir);
    for (index, topic) in [
        "tape", "disk", "glacier", "mirror", "snapshot", "offsite", "vault", "replica",
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(
            dir.join(format!("note-{index}.txt")),
            format!(
                "Backup note {index}: {topic} archives keep backups of the cold storage tier.\n"
            ),
        )
        .unwrap();
    }
}

#[tokio::test]
async fn search_controls_weight_fuse_filter_page_and_snip_over_grpc_and_http() {
    let data = TempDir::new().unwrap();
    let docs = TempDir::new().unwrap();
    write_notes(docs.path());
    let server = TestServer::start(data.path(), "").await;
    server.index(docs.path()).await;
    let query = "where are cold archives replicated?";
    let search = |request: proto::SearchRequest| {
        let mut client = server.search();
        async move {
            client
                .search(request)
                .await
                .map(|response| response.into_inner())
        }
    };
    let asked = |extra: proto::SearchRequest| proto::SearchRequest {
        query: query.into(),
        ..extra
    };

    // Weights: muting a source gives the other source's order.
    let only = |source: &str| {
        asked(proto::SearchRequest {
            top_k: 10,
            sources: vec![source.into()],
            ..Default::default()
        })
    };
    let weighted = |bm25: f64, dense: f64| {
        asked(proto::SearchRequest {
            top_k: 10,
            source_weights: [("local-bm25".into(), bm25), ("local-dense".into(), dense)].into(),
            ..Default::default()
        })
    };
    let bm25_only = doc_ids(&search(only("local-bm25")).await.unwrap());
    let dense_only = doc_ids(&search(only("local-dense")).await.unwrap());
    let lexical_first = doc_ids(&search(weighted(1.0, 0.0)).await.unwrap());
    let dense_first = doc_ids(&search(weighted(0.0, 1.0)).await.unwrap());
    assert_eq!(lexical_first[..bm25_only.len()], bm25_only[..]);
    assert_eq!(dense_first[..dense_only.len().min(10)], dense_only[..]);
    assert_ne!(lexical_first, dense_first, "the weights change the order");
    let status = search(weighted(-1.0, 1.0)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let mut unknown = weighted(1.0, 1.0);
    unknown.source_weights.insert("nowhere".into(), 1.0);
    let status = search(unknown).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("nowhere"), "{}", status.message());

    // rrf_k sets the score of a rank; min_score drops the fused hits below it.
    for rrf_k in [1.0, 1000.0] {
        let mut request = only("local-bm25");
        request.rrf_k = rrf_k;
        let response = search(request).await.unwrap();
        let top = response.hits[0].score;
        assert!((top - 1.0 / (rrf_k + 1.0)).abs() < 1e-9, "{rrf_k}: {top}");
    }
    let mut out_of_range = only("local-bm25");
    out_of_range.rrf_k = 5000.0;
    assert_eq!(
        search(out_of_range).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let mut above = only("local-bm25");
    above.min_score = Some(1.0 / 62.0 - 1e-9);
    let response = search(above).await.unwrap();
    assert_eq!(response.hits.len(), 2, "ranks 1 and 2 score 1/61 and 1/62");

    // Pages: disjoint, in order, together the whole list; a changed query is stale.
    let whole = doc_ids(
        &search(asked(proto::SearchRequest {
            top_k: 100,
            ..Default::default()
        }))
        .await
        .unwrap(),
    );
    assert!(whole.len() > 6, "{whole:?}");
    let page = |token: String| {
        asked(proto::SearchRequest {
            page_size: 3,
            page_token: token,
            ..Default::default()
        })
    };
    let mut pages: Vec<Vec<String>> = Vec::new();
    let mut tokens = Vec::new();
    let mut token = String::new();
    loop {
        let response = search(page(token.clone())).await.unwrap();
        assert!(response.hits.len() <= 3);
        let first_rank = 3 * pages.len() as u32 + 1;
        let ranks: Vec<u32> = response.hits.iter().map(|hit| hit.rank).collect();
        assert_eq!(ranks, (first_rank..).take(ranks.len()).collect::<Vec<_>>());
        pages.push(doc_ids(&response));
        if response.next_page_token.is_empty() {
            break;
        }
        token = response.next_page_token;
        tokens.push(token.clone());
    }
    assert_eq!(
        pages.concat(),
        whole,
        "pages cover the list in order: {pages:?}"
    );
    let mut other_query = page(tokens[0].clone());
    other_query.query = "kubernetes node pools".into();
    let status = search(other_query).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("page token is stale"),
        "{}",
        status.message()
    );
    let mut with_top_k = page(String::new());
    with_top_k.top_k = 5;
    assert_eq!(
        search(with_top_k).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );

    // Snippets: a passage of the chunk text, its offsets in chars, its marks on query terms.
    let full = search(asked(proto::SearchRequest {
        top_k: 5,
        include_text: true,
        ..Default::default()
    }))
    .await
    .unwrap();
    let snipped = search(asked(proto::SearchRequest {
        top_k: 5,
        include_text: true,
        snippets: true,
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!(doc_ids(&full), doc_ids(&snipped));
    let chars = |text: &str, start: u32, end: u32| -> String {
        text.chars()
            .skip(start as usize)
            .take((end - start) as usize)
            .collect()
    };
    for (whole_hit, hit) in full.hits.iter().zip(&snipped.hits) {
        assert!(hit.text.is_empty(), "a snippet replaces the text");
        let snippet = hit.snippet.as_ref().expect("a snippet per hit");
        assert_eq!(
            chars(&whole_hit.text, snippet.start, snippet.end),
            snippet.text
        );
        for range in &snippet.highlights {
            let marked = chars(&whole_hit.text, range.start, range.end).to_lowercase();
            assert!(
                ["cold", "archives", "replicated"]
                    .iter()
                    .any(|term| term.starts_with(&marked) || marked.starts_with(term)),
                "{marked:?} is a query term"
            );
        }
    }
    let top = snipped.hits[0].snippet.as_ref().unwrap();
    assert!(top.highlights.len() >= 2, "{top:?}");

    // POST /v1/search: the same request as JSON gives the same hits.
    let post = |body: serde_json::Value| server.post_json("/v1/search", body);
    let (status, json) = post(serde_json::json!({
        "query": query, "top_k": 5, "include_text": true, "snippets": true,
        "source_weights": {"local-dense": 1.5},
    }))
    .await;
    assert_eq!(status, 200, "{json}");
    let grpc = search(asked(proto::SearchRequest {
        top_k: 5,
        include_text: true,
        snippets: true,
        source_weights: [("local-dense".into(), 1.5)].into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    let hits = json["hits"].as_array().unwrap();
    assert_eq!(hits.len(), grpc.hits.len());
    for (json_hit, hit) in hits.iter().zip(&grpc.hits) {
        assert_eq!(json_hit["doc_id"], hit.doc_id.as_str());
        assert_eq!(json_hit["chunk_id"], hit.chunk_id.as_str());
        assert_eq!(json_hit["rank"], hit.rank);
        assert!((json_hit["score"].as_f64().unwrap() - hit.score).abs() < 1e-12);
        let snippet = hit.snippet.as_ref().unwrap();
        assert_eq!(json_hit["snippet"]["text"], snippet.text.as_str());
        assert_eq!(json_hit["snippet"]["start"], snippet.start);
    }
    assert_eq!(json["fusion"], "FUSION_METHOD_RRF");
    assert_eq!(json["sources"][0]["status"], "SOURCE_STATUS_OK");
    for (body, status, says) in [
        (
            serde_json::json!({"query": query, "source_weights": {"nowhere": 1.0}}),
            400,
            "nowhere",
        ),
        (
            serde_json::json!({"query": query, "topk": 3}),
            400,
            "unknown field",
        ),
        (
            serde_json::json!({"query": ""}),
            400,
            "query must not be empty",
        ),
    ] {
        let (got, response) = post(body.clone()).await;
        assert_eq!(got, status, "{body}: {response}");
        let message = response["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{body}: {message}");
        assert_eq!(response["error"]["type"], "invalid_request_error");
    }

    // The served OpenAPI document is the checked-in one, and its search example works.
    let served: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/v1/openapi.json", server.facade))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let checked_in: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(served, checked_in);
    let operation = &served["paths"]["/v1/search"]["post"];
    let example = operation["requestBody"]["content"]["application/json"]["example"].clone();
    let (status, json) = post(example).await;
    assert_eq!(status, 200, "{json}");
    assert!(!json["hits"].as_array().unwrap().is_empty());
    let required = &served["components"]["schemas"]["SearchResponse"]["required"];
    for field in required.as_array().unwrap() {
        assert!(
            json.get(field.as_str().unwrap()).is_some(),
            "{field} in {json}"
        );
    }

    // A new document ahead of the second page makes its token stale.
    std::fs::write(
        docs.path().join("first.md"),
        "Cold archives are replicated: where cold archives are replicated, cold archives replicated.\n",
    )
    .unwrap();
    server.index(docs.path()).await;
    let status = search(page(tokens[0].clone())).await.unwrap_err();
    assert!(status.message().contains("stale"), "{}", status.message());
    server.stop().await;
}

#[tokio::test]
async fn an_answer_prices_the_context_it_moves_between_clouds() {
    let docs = TempDir::new().unwrap();
    write_corpus(docs.path());
    // The local folder's passages are priced as data in GCP (skyfuse runs there), and
    // the model runs in AWS: GCP -> AWS is the seed's $0.12 per GB.
    let (upstream, _calls) = traced_upstream(200).await;
    let config = format!(
        r#"
        [routing]
        default_model = "qwen"
        [[provider]]
        id = "us"
        kind = "openai_compat"
        base_url = "{upstream}"
        cloud = "aws"
        region = "us-east-1"
        [[deployment]]
        provider = "us"
        model = "qwen"
        [egress]
        home_cloud = "gcp"
        "#
    );
    let data = TempDir::new().unwrap();
    let server = TestServer::start(data.path(), &config).await;
    server.index(docs.path()).await;
    let events = server
        .answer(proto::AnswerRequest {
            question: "Where are cold archives replicated?".into(),
            ..Default::default()
        })
        .await;
    let Some(proto::answer_event::Event::Done(done)) = events.last() else {
        panic!("the stream ends with done: {events:?}");
    };
    assert!(!done.citations.is_empty());
    let cost = done.cost.as_ref().unwrap();
    assert_eq!(
        cost.egress.len(),
        1,
        "one crossing, home to model: {cost:?}"
    );
    let leg = &cost.egress[0];
    assert_eq!(
        (leg.from_cloud.as_str(), leg.to_cloud.as_str()),
        ("gcp", "aws")
    );
    let cited_bytes: usize = done
        .citations
        .iter()
        .map(|citation| citation.title.len() + citation.text.len())
        .sum();
    assert!(
        leg.bytes as usize > cited_bytes,
        "the prompt carries the passages and the question: {} <= {cited_bytes}",
        leg.bytes
    );
    let expected_usd = leg.bytes as f64 / (1u64 << 30) as f64 * 0.12;
    assert!((leg.usd - expected_usd).abs() < 1e-15, "{leg:?}");
    assert!((cost.egress_usd - leg.usd).abs() < 1e-15);
    assert!((cost.total_usd - (cost.usd + cost.egress_usd)).abs() < 1e-15);
    server.stop().await;
}

#[tokio::test]
async fn placement_recommends_a_cloud_from_the_catalog_and_this_config() {
    let (upstream, _calls) = traced_upstream(200).await;
    let config = format!(
        r#"
        [[provider]]
        id = "claude-eu"
        kind = "openai_compat"
        base_url = "{upstream}"
        cloud = "aws"
        region = "eu-west-1"
        [[deployment]]
        provider = "claude-eu"
        model = "claude-3-5-sonnet"
        "#
    );
    let data = TempDir::new().unwrap();
    let server = TestServer::start(data.path(), &config).await;
    let clouds = AdminServiceClient::new(server.channel.clone())
        .placement(proto::PlacementRequest {
            model: "claude".into(),
            data_cloud: "aws".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .clouds;
    let fitting: Vec<&str> = clouds
        .iter()
        .filter(|cloud| cloud.fits)
        .map(|cloud| cloud.cloud.as_str())
        .collect();
    assert_eq!(fitting, ["aws", "gcp"], "{clouds:?}");
    assert_eq!(
        clouds[0].deployments,
        ["claude-eu/claude-3-5-sonnet (eu-west-1)"]
    );
    let azure = clouds.iter().find(|cloud| cloud.cloud == "azure").unwrap();
    assert_eq!(azure.reasons_against[0], "does not offer claude models");
    server.stop().await;
}

/// Two deployments of one model, the first in the US and the second in the EU, and a
/// rule that keeps data of the local folder (`local/local`) on EU endpoints.
fn residency_config(us: &str, eu: Option<&str>, on_conflict: &str) -> String {
    let eu_deployment = eu.map_or(String::new(), |eu| {
        format!(
            r#"
        [[provider]]
        id = "eu"
        kind = "openai_compat"
        base_url = "{eu}"
        cloud = "azure"
        region = "westeurope"
        [[deployment]]
        provider = "eu"
        model = "qwen"
        "#
        )
    });
    format!(
        r#"
        [routing]
        default_model = "qwen"
        [[provider]]
        id = "us"
        kind = "openai_compat"
        base_url = "{us}"
        cloud = "aws"
        region = "us-east-1"
        [[deployment]]
        provider = "us"
        model = "qwen"
        {eu_deployment}
        [[residency]]
        id = "eu"
        data = {{ clouds = ["local"], regions = ["local"] }}
        inference_regions = ["eu-*", "westeurope"]
        reason = "GDPR - data stays in EU"
        [residency_policy]
        on_conflict = "{on_conflict}"
        "#
    )
}

#[tokio::test]
async fn residency_keeps_the_prompt_where_its_passages_may_go_and_says_what_it_withheld() {
    let docs = TempDir::new().unwrap();
    write_corpus(docs.path());
    let question = || proto::AnswerRequest {
        question: "Where are cold archives replicated?".into(),
        ..Default::default()
    };

    // An EU deployment exists: the prompt goes there, though the US one comes first.
    let (us, us_calls) = traced_upstream(200).await;
    let (eu, eu_calls) = traced_upstream(200).await;
    let data = TempDir::new().unwrap();
    let server =
        TestServer::start(data.path(), &residency_config(&us, Some(&eu), "withhold")).await;
    server.index(docs.path()).await;
    let events = server.answer(question()).await;
    let Some(proto::answer_event::Event::Done(done)) = events.last() else {
        panic!("the stream ends with done: {events:?}");
    };
    assert_eq!(done.residency_regions, vec!["westeurope"]);
    assert!(done.withheld.is_empty());
    assert!(!done.citations.is_empty());
    assert_eq!(done.route.as_ref().unwrap().provider, "eu");
    assert_eq!(
        (
            us_calls.lock().unwrap().len(),
            eu_calls.lock().unwrap().len()
        ),
        (0, 1)
    );
    server.stop().await;

    // Only a US deployment: no passage may go there, so each is withheld and listed.
    let (us, us_calls) = traced_upstream(200).await;
    let data = TempDir::new().unwrap();
    let server = TestServer::start(data.path(), &residency_config(&us, None, "withhold")).await;
    server.index(docs.path()).await;
    let events = server.answer(question()).await;
    let Some(proto::answer_event::Event::Done(done)) = events.last() else {
        panic!("the stream ends with done: {events:?}");
    };
    assert!(
        done.citations.is_empty(),
        "nothing reached the prompt: {done:?}"
    );
    assert!(!done.withheld.is_empty());
    for passage in &done.withheld {
        assert_eq!(
            (passage.cloud.as_str(), passage.region.as_str()),
            ("local", "local")
        );
        assert!(
            passage
                .reason
                .contains("residency \"eu\" (GDPR - data stays in EU)")
                && passage.reason.contains("us-east-1"),
            "{}",
            passage.reason
        );
    }
    assert_eq!(
        us_calls.lock().unwrap().len(),
        1,
        "answered without the passages"
    );
    server.stop().await;

    // The same with on_conflict = "fail": refused before any model is called.
    let (us, us_calls) = traced_upstream(200).await;
    let data = TempDir::new().unwrap();
    let server = TestServer::start(data.path(), &residency_config(&us, None, "fail")).await;
    server.index(docs.path()).await;
    let refused = GenerationServiceClient::new(server.channel.clone())
        .answer(question())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("GDPR"), "{}", refused.message());
    // The facade's chat completion with retrieval: 403, naming the rule.
    let (status, body) = server
        .post_json(
            "/v1/chat/completions",
            serde_json::json!({
                "messages": [{"role": "user", "content": "Where are cold archives replicated?"}],
                "retrieval": {},
            }),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("GDPR")),
        "{body}"
    );
    assert!(us_calls.lock().unwrap().is_empty());
    server.stop().await;
}

/// The corpus plus JSONL records tagged with a `topic`, at the top level or in `metadata`.
fn write_tagged_corpus(dir: &Path) {
    write_corpus(dir);
    std::fs::write(
        dir.join("tagged.jsonl"),
        concat!(
            r#"{"id": "t1", "title": "Backup tapes", "text": "Cold archives of the backups are written to tape every week.", "topic": "storage"}"#,
            "\n",
            r#"{"id": "t2", "title": "Backup invoices", "text": "Invoices for cold archives and backups are issued every month.", "metadata": {"topic": "billing"}}"#,
            "\n"
        ),
    )
    .unwrap();
}

fn condition(field: &str, test: proto::field_condition::Test) -> proto::Filter {
    proto::Filter {
        kind: Some(proto::filter::Kind::Condition(proto::FieldCondition {
            field: field.into(),
            test: Some(test),
        })),
    }
}

#[tokio::test]
async fn a_filtered_search_and_answer_see_only_the_matching_chunks() {
    use proto::field_condition::Test;
    let data = TempDir::new().unwrap();
    let docs = TempDir::new().unwrap();
    write_tagged_corpus(docs.path());
    let server = TestServer::start(data.path(), "").await;
    server.index(docs.path()).await;
    let query = "cold archives backups invoices";
    let search = |filter: Option<proto::Filter>| {
        let mut client = server.search();
        async move {
            client
                .search(proto::SearchRequest {
                    query: query.into(),
                    top_k: 20,
                    filter,
                    ..Default::default()
                })
                .await
                .map(|response| response.into_inner())
        }
    };
    let sorted_ids = |response: &proto::SearchResponse| {
        let mut ids = doc_ids(response);
        ids.sort();
        ids
    };
    let unfiltered = search(None).await.unwrap();
    let tagged_key = unfiltered
        .hits
        .iter()
        .find(|hit| hit.object_key.ends_with("tagged.jsonl"))
        .map(|hit| hit.object_key.clone())
        .expect("the tagged records are found unfiltered");
    assert!(
        unfiltered
            .hits
            .iter()
            .any(|hit| hit.object_key.ends_with("archives.md")),
        "{:?}",
        doc_ids(&unfiltered)
    );

    // A record field named in metadata_fields: only that record, found by both sources.
    let storage = search(Some(condition(
        "metadata.topic",
        Test::Eq("storage".into()),
    )))
    .await
    .unwrap();
    assert_eq!(doc_ids(&storage).len(), 1, "{:?}", doc_ids(&storage));
    assert!(doc_ids(&storage)[0].ends_with("tagged.jsonl#t1"));
    assert_eq!(
        storage.hits[0].explain.len(),
        2,
        "both sources filtered alike"
    );
    assert!(!storage.degraded);

    // Object key prefix, and its negation.
    let tagged = search(Some(condition(
        "object_key",
        Test::Prefix(tagged_key.clone()),
    )))
    .await
    .unwrap();
    let ids = sorted_ids(&tagged);
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(
        ids[0].ends_with("#t1") && ids[1].ends_with("#t2"),
        "{ids:?}"
    );
    let not_tagged = search(Some(proto::Filter {
        kind: Some(proto::filter::Kind::Not(Box::new(condition(
            "object_key",
            Test::Prefix(tagged_key.clone()),
        )))),
    }))
    .await
    .unwrap();
    assert!(!not_tagged.hits.is_empty());
    assert!(
        not_tagged
            .hits
            .iter()
            .all(|hit| hit.object_key != tagged_key),
        "{:?}",
        doc_ids(&not_tagged)
    );

    // Object metadata: the content type a local file's name gives, its size and mtime.
    let markdown = search(Some(condition(
        "content_type",
        Test::Eq("text/markdown".into()),
    )))
    .await
    .unwrap();
    assert!(!markdown.hits.is_empty());
    assert!(
        markdown
            .hits
            .iter()
            .all(|hit| hit.object_key.ends_with("archives.md"))
    );
    let range = |field: &str, bounds: proto::Range| condition(field, Test::Range(bounds));
    let since_2000 = search(Some(range(
        "last_modified",
        proto::Range {
            gte: "2000-01-01".into(),
            ..Default::default()
        },
    )))
    .await
    .unwrap();
    assert_eq!(sorted_ids(&since_2000), sorted_ids(&unfiltered));
    let before_2000 = search(Some(range(
        "last_modified",
        proto::Range {
            lt: "2000-01-01T00:00:00Z".into(),
            ..Default::default()
        },
    )))
    .await
    .unwrap();
    assert!(before_2000.hits.is_empty() && !before_2000.degraded);
    let empty_files = search(Some(range(
        "size_bytes",
        proto::Range {
            lte: "0".into(),
            ..Default::default()
        },
    )))
    .await
    .unwrap();
    assert!(empty_files.hits.is_empty());

    // `source` is decided per store: the other one answers ok with nothing.
    let lexical = search(Some(condition("source", Test::Eq("local-bm25".into()))))
        .await
        .unwrap();
    assert!(!lexical.hits.is_empty() && !lexical.degraded);
    assert!(lexical.hits.iter().all(|hit| {
        hit.explain
            .iter()
            .all(|contribution| contribution.source == "local-bm25")
    }));

    // Bad filters are INVALID_ARGUMENT naming what is wrong.
    for (filter, says) in [
        (condition("colour", Test::Eq("red".into())), "\"colour\""),
        (
            condition("metadata.owner", Test::Eq("x".into())),
            "unknown metadata field \"owner\"",
        ),
        (
            range("cloud", proto::Range::default()),
            "range applies to size_bytes and last_modified",
        ),
        (
            range(
                "size_bytes",
                proto::Range {
                    gte: "big".into(),
                    ..Default::default()
                },
            ),
            "must be an integer",
        ),
        (proto::Filter { kind: None }, "sets none of"),
    ] {
        let status = search(Some(filter)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(says), "{}", status.message());
    }

    // POST /v1/search: the same filter as JSON gives the same hits.
    let (status, json) = server
        .post_json(
            "/v1/search",
            serde_json::json!({
                "query": query,
                "top_k": 20,
                "filter": { "or": { "filters": [
                    { "condition": { "field": "metadata.topic", "eq": "storage" } },
                    { "condition": { "field": "size_bytes", "range": { "lte": 0 } } },
                ] } },
            }),
        )
        .await;
    assert_eq!(status, 200);
    let http_ids: Vec<&str> = json["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hit| hit["doc_id"].as_str().unwrap())
        .collect();
    assert_eq!(http_ids, doc_ids(&storage));
    let (status, _) = server
        .post_json(
            "/v1/search",
            serde_json::json!({
                "query": query,
                "filter": { "condition": { "field": "cloud", "eq": "aws", "prefix": "a" } },
            }),
        )
        .await;
    assert_eq!(status, 400);

    // An answer cites only passages that match its filter.
    let events = server
        .answer(proto::AnswerRequest {
            question: "When are invoices for cold archives issued?".into(),
            filter: Some(condition(
                "metadata.topic",
                Test::In(proto::StringList {
                    values: vec!["billing".into()],
                }),
            )),
            ..Default::default()
        })
        .await;
    let Some(proto::answer_event::Event::Done(done)) = events.last() else {
        panic!("the stream ends with done: {events:?}");
    };
    assert!(!done.citations.is_empty());
    assert!(
        done.citations
            .iter()
            .all(|citation| citation.doc_id.ends_with("tagged.jsonl#t2")),
        "{:?}",
        done.citations
    );
    server.stop().await;
}

/// Classes from `[[classification]]` over gRPC and the facade's `/v1/search`: hits say
/// their classes, a search can ask for one class, and a bad region glob is the
/// caller's error. The local folder is always within a region-restricted search's
/// reach (the data is on the server itself).
#[tokio::test]
async fn search_filters_by_class_and_region_over_grpc_and_http() {
    let data = TempDir::new().unwrap();
    let docs = TempDir::new().unwrap();
    write_corpus(docs.path());
    let config = r#"
        [residency_policy]
        cross_region_allowed = ["public"]
        [[classification]]
        classes = ["public"]
        keys = ["*/archives.md"]
    "#;
    let server = TestServer::start(data.path(), config).await;
    server.index(docs.path()).await;
    let asked = |classifications: Vec<String>, regions: Vec<String>| proto::SearchRequest {
        query: "cold archives replicated invoices".into(),
        top_k: 10,
        classifications,
        regions,
        ..Default::default()
    };
    let all = server
        .search()
        .search(asked(vec![], vec!["eu-*".into()]))
        .await
        .unwrap()
        .into_inner();
    assert!(
        all.hits.len() > 1,
        "local data is within an EU-only search's reach"
    );
    let archives = all
        .hits
        .iter()
        .find(|hit| hit.object_key.ends_with("archives.md"))
        .unwrap();
    assert_eq!(archives.classes, ["public"]);
    let public = server
        .search()
        .search(asked(vec!["public".into()], vec![]))
        .await
        .unwrap()
        .into_inner();
    assert!(!public.hits.is_empty());
    assert!(
        public
            .hits
            .iter()
            .all(|hit| hit.object_key.ends_with("archives.md") && hit.classes == ["public"]),
        "{:?}",
        public.hits
    );
    let bad = server
        .search()
        .search(asked(vec![], vec!["eu-[".into()]))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");

    let (status, body) = server
        .post_json(
            "/v1/search",
            serde_json::json!({"query": "cold archives replicated invoices", "top_k": 10,
                               "classifications": ["public"], "regions": ["eu-*"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let hits = body["hits"].as_array().unwrap();
    assert!(!hits.is_empty(), "{body}");
    for hit in hits {
        assert_eq!(hit["classes"], serde_json::json!(["public"]), "{hit}");
    }
    let (status, body) = server
        .post_json(
            "/v1/search",
            serde_json::json!({"query": "archives", "regions": ["eu-["]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    server.stop().await;
}

/// A deployment that may use a region outside the EU (declared multi-region) may not
/// see EU data, though its home region may: every passage is withheld.
#[tokio::test]
async fn a_multi_region_deployment_counts_as_every_region_it_may_use() {
    let docs = TempDir::new().unwrap();
    write_corpus(docs.path());
    let (upstream, calls) = traced_upstream(200).await;
    let config = format!(
        r#"
        [routing]
        default_model = "qwen"
        [[provider]]
        id = "global"
        kind = "openai_compat"
        base_url = "{upstream}"
        cloud = "azure"
        region = "westeurope"
        [[deployment]]
        provider = "global"
        model = "qwen"
        regions = ["westeurope", "eastus"]
        [[residency]]
        id = "eu"
        data = {{ clouds = ["local"], regions = ["local"] }}
        inference_regions = ["eu-*", "westeurope"]
        reason = "GDPR - data stays in EU"
        "#
    );
    let data = TempDir::new().unwrap();
    let server = TestServer::start(data.path(), &config).await;
    server.index(docs.path()).await;
    let events = server
        .answer(proto::AnswerRequest {
            question: "Where are cold archives replicated?".into(),
            ..Default::default()
        })
        .await;
    let Some(proto::answer_event::Event::Done(done)) = events.last() else {
        panic!("the stream ends with done: {events:?}");
    };
    assert!(done.citations.is_empty(), "{done:?}");
    assert!(!done.withheld.is_empty());
    for passage in &done.withheld {
        assert!(passage.reason.contains("eastus"), "{}", passage.reason);
    }
    assert_eq!(
        calls.lock().unwrap().len(),
        1,
        "answered without the passages"
    );
    server.stop().await;
}

#[tokio::test]
async fn chat_completions_with_retrieval_answer_from_the_index_and_can_be_rated() {
    let docs = TempDir::new().unwrap();
    write_corpus(docs.path());
    let (upstream, calls) = traced_upstream(200).await;
    let config = format!(
        r#"
        [routing]
        default_model = "qwen"
        [[provider]]
        id = "local-llm"
        kind = "openai_compat"
        base_url = "{upstream}"
        [[deployment]]
        provider = "local-llm"
        model = "qwen"
        "#
    );
    let data = TempDir::new().unwrap();
    let server = TestServer::start(data.path(), &config).await;
    server.index(docs.path()).await;
    let question = "Where are cold archives replicated?";
    let (status, body) = server
        .post_json(
            "/v1/chat/completions",
            serde_json::json!({
                "messages": [{"role": "user", "content": question}],
                "retrieval": {"top_k": 3, "filter": {"condition": {"field": "content_type", "eq": "text/markdown"}}},
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "To a paired region [1]."
    );
    let citations = body["skyfuse"]["citations"].as_array().unwrap();
    assert_eq!(
        citations.len(),
        1,
        "the filter leaves only the markdown file: {body}"
    );
    assert!(
        citations[0]["object_key"]
            .as_str()
            .unwrap()
            .ends_with("archives.md")
    );
    assert_eq!(body["skyfuse"]["provider"], "local-llm");
    assert_eq!(calls.lock().unwrap().len(), 1);
    // Its id is the answer's, which /v1/feedback rates.
    assert_eq!(body["id"], body["skyfuse"]["answer_id"]);
    let rated = reqwest::Client::new()
        .post(format!("{}/v1/feedback", server.facade))
        .json(&serde_json::json!({"id": body["id"], "score": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(rated.status().as_u16(), 204);

    // Streamed: the tokens as chunks, then the finish with the citations, the usage
    // chunk asked for, and [DONE].
    let streamed = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.facade))
        .json(&serde_json::json!({
            "messages": [{"role": "user", "content": question}],
            "stream": true, "stream_options": {"include_usage": true},
            "retrieval": {"top_k": 3},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status().as_u16(), 200);
    let text = streamed.text().await.unwrap();
    let data: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<serde_json::Value> = data[..data.len() - 1]
        .iter()
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "To a paired region [1].");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop", "{text}");
    assert_eq!(finish["model"], "qwen");
    assert!(
        finish["skyfuse"]["citations"][0]["object_key"]
            .as_str()
            .unwrap()
            .ends_with("archives.md"),
        "{text}"
    );
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], serde_json::json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(calls.lock().unwrap().len(), 2);

    for (request, says) in [
        (
            serde_json::json!({"messages": [{"role": "user", "content": question}],
                "stop": "\n", "retrieval": {}}),
            "takes no `stop`",
        ),
        (
            serde_json::json!({"messages": [{"role": "user", "content": question}],
                "retrieval": {"topk": 3}}),
            "unknown field",
        ),
    ] {
        let (status, body) = server.post_json("/v1/chat/completions", request).await;
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
    }
    assert_eq!(
        calls.lock().unwrap().len(),
        2,
        "refused before any model call"
    );
    server.stop().await;
}
