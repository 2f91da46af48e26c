//! Every backend against one conformance suite, and the remote ones against bad
//! input: unreachable, wrong credentials, missing collection, another dimension,
//! timeouts and throttling. Qdrant and OpenSearch run in-process (see `support/`);
//! set `QDRANT_URL` (and `QDRANT_API_KEY`) or `OPENSEARCH_URL` to run the suite
//! against real ones too (`docker compose up qdrant opensearch`).

mod conformance;
#[path = "support/opensearch_fake.rs"]
mod opensearch_fake;
#[path = "support/qdrant_fake.rs"]
mod qdrant_fake;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use conformance::Harness;
use opensearch_fake::{FakeAuth, FakeOpenSearch, Fault};
use qdrant_fake::FakeQdrant;
use skyfuse::config::{Config, Metric, RefreshPolicy, Secret};
use skyfuse::error::{ErrorKind, Result};
use skyfuse::stores::dense::{DenseOptions, DenseStore};
use skyfuse::stores::local_bm25::LocalBm25Store;
use skyfuse::stores::opensearch::{OpenSearchCredentials, OpenSearchIndex};
use skyfuse::stores::qdrant::QdrantStore;
use skyfuse::stores::remote::RemoteSettings;
use skyfuse::stores::{SearchBackend, SourceInfo, StoreKind};

fn info(id: &str, backend: &str, kind: StoreKind, dims: Option<usize>) -> SourceInfo {
    SourceInfo {
        id: id.to_string(),
        backend: backend.to_string(),
        kind,
        space: dims.map(|_| "test-space".to_string()),
        dims,
        cloud: "aws".into(),
        region: "us-east-1".into(),
    }
}

fn remote_settings(
    id: &str,
    backend: &str,
    kind: StoreKind,
    url: &str,
    name: &str,
    dims: Option<usize>,
) -> RemoteSettings {
    RemoteSettings {
        info: info(id, backend, kind, dims),
        url: url.to_string(),
        name: name.to_string(),
        dims,
        metric: Metric::Cosine,
        create_missing: true,
        upsert_batch: 2,
        score_threshold: None,
        write_timeout: Duration::from_secs(5),
        // The conformance suite filters on `metadata.team`.
        metadata_fields: vec!["team".into()],
    }
}

struct TantivyHarness(tempfile::TempDir);

#[async_trait]
impl Harness for TantivyHarness {
    async fn open(&self, name: &str, _dims: usize) -> Result<Arc<dyn SearchBackend>> {
        let info = info(name, "tantivy", StoreKind::Lexical, None);
        Ok(Arc::new(LocalBm25Store::open(
            info,
            &self.0.path().join(name),
        )?))
    }

    fn has_dimensions(&self) -> bool {
        false
    }
}

struct DenseHarness(tempfile::TempDir);

#[async_trait]
impl Harness for DenseHarness {
    async fn open(&self, name: &str, dims: usize) -> Result<Arc<dyn SearchBackend>> {
        let info = info(name, "dense", StoreKind::Dense, Some(dims));
        Ok(Arc::new(DenseStore::open(
            info,
            dims,
            &self.0.path().join(name),
        )?))
    }
}

/// The dense store with its HNSW index from the first row: the same suite must
/// pass whether a store searches exactly or through the index.
struct DenseAnnHarness(tempfile::TempDir);

#[async_trait]
impl Harness for DenseAnnHarness {
    async fn open(&self, name: &str, dims: usize) -> Result<Arc<dyn SearchBackend>> {
        let info = info(name, "dense", StoreKind::Dense, Some(dims));
        let options = DenseOptions {
            ann_min_rows: 1,
            ..DenseOptions::default()
        };
        Ok(Arc::new(DenseStore::open_with_options(
            info,
            dims,
            &self.0.path().join(name),
            options,
        )?))
    }
}

struct QdrantHarness {
    url: String,
    api_key: Option<String>,
    fake: Option<FakeQdrant>,
}

impl QdrantHarness {
    async fn in_process(api_key: Option<&str>) -> Self {
        let fake = FakeQdrant::new(api_key);
        let address = fake.serve(SocketAddr::from(([127, 0, 0, 1], 0))).await;
        Self {
            url: format!("http://{address}"),
            api_key: api_key.map(str::to_string),
            fake: Some(fake),
        }
    }

    async fn connect(&self, name: &str, dims: usize, create: bool) -> Result<QdrantStore> {
        let mut settings = remote_settings(
            name,
            "qdrant",
            StoreKind::Dense,
            &self.url,
            name,
            Some(dims),
        );
        settings.create_missing = create;
        QdrantStore::connect(settings, self.api_key.clone().map(Secret::new)).await
    }
}

#[async_trait]
impl Harness for QdrantHarness {
    async fn open(&self, name: &str, dims: usize) -> Result<Arc<dyn SearchBackend>> {
        Ok(Arc::new(self.connect(name, dims, true).await?))
    }

    fn supports_object_key_prefix(&self) -> bool {
        false
    }

    fn stall_searches(&self, delay: Duration) -> bool {
        let Some(fake) = &self.fake else {
            return false;
        };
        *fake.state.search_delay.lock().unwrap() = delay;
        true
    }
}

struct OpenSearchHarness {
    url: String,
    kind: StoreKind,
    fake: Option<Arc<FakeOpenSearch>>,
    credentials: fn() -> OpenSearchCredentials,
}

#[async_trait]
impl Harness for OpenSearchHarness {
    async fn open(&self, name: &str, dims: usize) -> Result<Arc<dyn SearchBackend>> {
        let dense = self.kind == StoreKind::Dense;
        let settings = remote_settings(
            name,
            "opensearch",
            self.kind,
            &self.url,
            name,
            dense.then_some(dims),
        );
        let info = settings.info.clone();
        let index = OpenSearchIndex::connect(
            settings,
            (self.credentials)(),
            RefreshPolicy::OnCommit,
            dense,
        )
        .await?;
        Ok(Arc::new(index.source(info, true)))
    }

    fn stall_searches(&self, delay: Duration) -> bool {
        let Some(fake) = &self.fake else {
            return false;
        };
        if !delay.is_zero() {
            fake.fail_next(Fault {
                path_part: "_search".into(),
                status: 200,
                retry_after: None,
                delay,
            });
        }
        true
    }

    fn has_dimensions(&self) -> bool {
        self.kind == StoreKind::Dense
    }
}

#[tokio::test]
async fn tantivy_passes_the_conformance_suite() {
    let harness = TantivyHarness(tempfile::tempdir().unwrap());
    conformance::run(&harness, "tantivy").await;
}

#[tokio::test]
async fn local_dense_passes_the_conformance_suite() {
    let harness = DenseHarness(tempfile::tempdir().unwrap());
    conformance::run(&harness, "dense").await;
}

#[tokio::test]
async fn local_dense_with_its_hnsw_index_passes_the_conformance_suite() {
    let harness = DenseAnnHarness(tempfile::tempdir().unwrap());
    conformance::run(&harness, "dense-hnsw").await;
}

#[tokio::test]
async fn qdrant_passes_the_conformance_suite() {
    let harness = QdrantHarness::in_process(Some("test-key")).await;
    conformance::run(&harness, "qdrant").await;
}

#[tokio::test]
async fn opensearch_dense_passes_the_conformance_suite() {
    let fake = FakeOpenSearch::start(FakeAuth::None).await;
    let harness = OpenSearchHarness {
        url: fake.url(),
        kind: StoreKind::Dense,
        fake: Some(fake),
        credentials: || OpenSearchCredentials::None,
    };
    conformance::run(&harness, "os-dense").await;
}

#[tokio::test]
async fn opensearch_lexical_with_basic_auth_passes_the_conformance_suite() {
    let fake = FakeOpenSearch::start(FakeAuth::Basic {
        username: "admin".into(),
        password: "s3cret".into(),
    })
    .await;
    let harness = OpenSearchHarness {
        url: fake.url(),
        kind: StoreKind::Lexical,
        fake: Some(fake),
        credentials: || OpenSearchCredentials::Basic {
            username: "admin".into(),
            password: Secret::new("s3cret"),
        },
    };
    conformance::run(&harness, "os-lexical").await;
}

fn sigv4_credentials(service: &'static str) -> OpenSearchCredentials {
    OpenSearchCredentials::SigV4(skyfuse::cloud::sigv4::SigV4Signer {
        credentials: skyfuse::cloud::sigv4::AwsCredentials {
            access_key_id: Secret::new("AKIDEXAMPLE"),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: None,
        }
        .into(),
        region: "us-east-1".into(),
        service: service.into(),
    })
}

#[tokio::test]
async fn opensearch_with_sigv4_for_amazon_opensearch_service_passes_the_conformance_suite() {
    let fake = FakeOpenSearch::start(FakeAuth::SigV4 {
        access_key: "AKIDEXAMPLE".into(),
        secret_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        region: "us-east-1".into(),
        service: "es".into(),
    })
    .await;
    let harness = OpenSearchHarness {
        url: fake.url(),
        kind: StoreKind::Dense,
        fake: Some(fake),
        credentials: || sigv4_credentials("es"),
    };
    conformance::run(&harness, "os-sigv4").await;
}

#[tokio::test]
async fn a_wrong_sigv4_key_or_service_is_refused_as_an_auth_error() {
    let fake = FakeOpenSearch::start(FakeAuth::SigV4 {
        access_key: "AKIDEXAMPLE".into(),
        secret_key: "another secret".into(),
        region: "us-east-1".into(),
        service: "aoss".into(),
    })
    .await;
    let settings = remote_settings(
        "os",
        "opensearch",
        StoreKind::Dense,
        &fake.url(),
        "docs",
        Some(4),
    );
    let info = settings.info.clone();
    let index = OpenSearchIndex::connect(
        settings,
        sigv4_credentials("aoss"),
        RefreshPolicy::OnCommit,
        true,
    )
    .await
    .unwrap();
    let error = index.source(info, true).count().await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Auth, "{}", error.message);
    assert!(error.message.contains("signature"), "{}", error.message);
}

#[tokio::test]
async fn qdrant_creates_payload_indexes_and_sends_the_deadline_as_its_timeout() {
    let harness = QdrantHarness::in_process(None).await;
    let store = harness.connect("made", 4, true).await.unwrap();
    let fake = harness.fake.as_ref().unwrap();
    assert_eq!(sorted_field_indexes(fake, "made"), FILTERED_FIELDS);
    store.upsert(&conformance::sample()).await.unwrap();
    let query = skyfuse::stores::StoreQuery {
        text: String::new(),
        vector: Some(Arc::new(vec![1.0, 0.0, 0.0, 0.0])),
        top_k: 3,
        deadline: Instant::now() + Duration::from_millis(2_500),
        filter: Default::default(),
    };
    store.search(&query).await.unwrap();
    assert_eq!(*fake.state.last_search_timeout.lock().unwrap(), Some(3));
}

/// The payload fields a Qdrant collection must index for filtered search.
const FILTERED_FIELDS: [&str; 10] = [
    "cloud",
    "content_type",
    "doc_id",
    "last_modified",
    "metadata.team",
    "namespace",
    "object_key",
    "region",
    "size_bytes",
    "source",
];

fn sorted_field_indexes(fake: &FakeQdrant, collection: &str) -> Vec<String> {
    let mut indexes = fake.field_indexes(collection);
    indexes.sort();
    indexes
}

#[tokio::test]
async fn qdrant_indexes_a_collection_made_elsewhere_and_two_replicas_may_create_one_at_once() {
    let harness = QdrantHarness::in_process(None).await;
    let fake = harness.fake.as_ref().unwrap();
    // Made by someone else, without the payload indexes filtered searches need.
    fake.create("theirs", 4, qdrant_client::qdrant::Distance::Cosine);
    harness.connect("theirs", 4, false).await.unwrap();
    assert_eq!(sorted_field_indexes(fake, "theirs"), FILTERED_FIELDS);
    // Two replicas starting together with create_missing: both start.
    let (first, second) = tokio::join!(
        harness.connect("shared", 4, true),
        harness.connect("shared", 4, true)
    );
    first.unwrap();
    second.unwrap();
    assert_eq!(fake.field_indexes("shared").len(), FILTERED_FIELDS.len());
}

#[tokio::test]
async fn qdrant_l2_scores_are_higher_is_better_like_every_store() {
    let harness = QdrantHarness::in_process(None).await;
    let connect = |threshold: Option<f32>| {
        let mut settings = remote_settings(
            "l2",
            "qdrant",
            StoreKind::Dense,
            &harness.url,
            "l2",
            Some(4),
        );
        settings.metric = Metric::L2;
        settings.score_threshold = threshold;
        QdrantStore::connect(settings, None)
    };
    let store = connect(None).await.unwrap();
    store.upsert(&conformance::sample()).await.unwrap();
    let query = skyfuse::stores::StoreQuery {
        text: String::new(),
        vector: Some(Arc::new(vec![0.0, 1.0, 0.0, 0.0])),
        top_k: 10,
        deadline: Instant::now() + Duration::from_secs(5),
        filter: Default::default(),
    };
    let hits = store.search(&query).await.unwrap();
    assert_eq!(hits[0].chunk_id, "north#0", "the nearest first");
    assert!((hits[0].score - 1.0).abs() < 1e-6, "distance 0 scores 1");
    assert!(
        hits.windows(2).all(|pair| pair[0].score >= pair[1].score),
        "best first, higher is better: {hits:?}"
    );
    // score_threshold in the same scores: 0.5 keeps distances up to 1.
    let within = connect(Some(0.5))
        .await
        .unwrap()
        .search(&query)
        .await
        .unwrap();
    assert!(!within.is_empty() && within.len() < hits.len());
    assert!(within.iter().all(|hit| hit.score >= 0.5), "{within:?}");
}

#[tokio::test]
async fn qdrant_bad_input_gives_clear_per_source_errors() {
    let harness = QdrantHarness::in_process(Some("right-key")).await;
    // A wrong key: the store is not refused at startup (it may be a rotation in
    // progress), but every call says why it failed.
    let wrong_key = QdrantHarness {
        url: harness.url.clone(),
        api_key: Some("wrong-key".into()),
        fake: None,
    };
    let store = wrong_key.connect("docs", 4, false).await.unwrap();
    let error = store.count().await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Auth, "{}", error.message);
    assert!(error.message.contains("api key"), "{}", error.message);

    let missing = harness.connect("nowhere", 4, false).await.unwrap();
    let error = missing.count().await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::NotFound, "{}", error.message);
    assert!(error.message.contains("\"nowhere\""), "{}", error.message);

    harness
        .fake
        .as_ref()
        .unwrap()
        .create("euclid", 4, qdrant_client::qdrant::Distance::Euclid);
    let error = match harness.connect("euclid", 4, false).await {
        Ok(_) => panic!("a euclid collection opened for a cosine space"),
        Err(error) => error,
    };
    assert!(
        error.message.contains("euclid") && error.message.contains("cosine"),
        "{}",
        error.message
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let unreachable = QdrantHarness {
        url: format!("http://{address}"),
        api_key: None,
        fake: None,
    };
    let store = unreachable.connect("docs", 4, false).await.unwrap();
    let error = store.count().await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Unavailable, "{}", error.message);
}

#[tokio::test]
async fn opensearch_retries_a_429_after_its_retry_after_and_a_missing_index_is_named() {
    let fake = FakeOpenSearch::start(FakeAuth::None).await;
    let settings = remote_settings(
        "os",
        "opensearch",
        StoreKind::Lexical,
        &fake.url(),
        "docs",
        None,
    );
    let info = settings.info.clone();
    let index = OpenSearchIndex::connect(
        settings,
        OpenSearchCredentials::None,
        RefreshPolicy::OnCommit,
        false,
    )
    .await
    .unwrap();
    let store = Arc::new(index.source(info, true));
    store.upsert(&conformance::sample()).await.unwrap();
    store.commit().await.unwrap();
    fake.fail_next(Fault {
        path_part: "_search".into(),
        status: 429,
        retry_after: Some(1),
        delay: Duration::ZERO,
    });
    let wrapped = skyfuse::stores::resilient::ResilientBackend::new(
        store.clone(),
        skyfuse::stores::resilient::ResilienceSettings::default(),
    );
    let query = skyfuse::stores::StoreQuery {
        text: "sunrise".into(),
        vector: None,
        top_k: 3,
        deadline: Instant::now() + Duration::from_secs(5),
        filter: Default::default(),
    };
    let started = Instant::now();
    let hits = wrapped.search(&query).await.unwrap();
    assert!(!hits.is_empty());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited the retry-after"
    );
    assert_eq!(
        skyfuse::stores::resilient::SourceMetrics::get(&wrapped.metrics().retries),
        1
    );

    let settings = remote_settings(
        "gone",
        "opensearch",
        StoreKind::Lexical,
        &fake.url(),
        "gone",
        None,
    );
    let info = settings.info.clone();
    let mut settings = settings;
    settings.create_missing = false;
    let index = OpenSearchIndex::connect(
        settings,
        OpenSearchCredentials::None,
        RefreshPolicy::OnCommit,
        false,
    )
    .await
    .unwrap();
    let error = index.source(info, true).search(&query).await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::NotFound, "{}", error.message);
    assert!(error.message.contains("\"gone\""), "{}", error.message);
}

fn model_dir() -> PathBuf {
    std::env::var_os("SKYFUSE_MODEL_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2"),
        PathBuf::from,
    )
}

/// The service with a local BM25 source that answers, and remote sources that do not:
/// search still answers, with each failure named and `degraded` set.
#[tokio::test]
async fn search_answers_from_the_other_sources_when_remote_ones_fail() {
    let data = tempfile::tempdir().unwrap();
    {
        let bm25 = LocalBm25Store::open(
            info("local-bm25", "tantivy", StoreKind::Lexical, None),
            &data.path().join("local-bm25"),
        )
        .unwrap();
        bm25.upsert(&conformance::sample()).await.unwrap();
        bm25.commit().await.unwrap();
    }
    let qdrant = QdrantHarness::in_process(Some("right-key")).await;
    qdrant
        .fake
        .as_ref()
        .unwrap()
        .create("docs", 384, qdrant_client::qdrant::Distance::Cosine);
    let opensearch = FakeOpenSearch::start(FakeAuth::None).await;
    // An index with text fields, then a 429 for the search.
    {
        let settings = remote_settings(
            "os",
            "opensearch",
            StoreKind::Lexical,
            &opensearch.url(),
            "docs",
            None,
        );
        OpenSearchIndex::connect(
            settings,
            OpenSearchCredentials::None,
            RefreshPolicy::OnCommit,
            false,
        )
        .await
        .unwrap();
    }
    opensearch.fail_next(Fault {
        path_part: "_search".into(),
        status: 429,
        retry_after: Some(30),
        delay: Duration::ZERO,
    });
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable = closed.local_addr().unwrap();
    drop(closed);
    let text = format!(
        r#"
        [server]
        data_dir = "{data}"
        [[space]]
        id = "minilm"
        provider = "local"
        model = "{model}"
        dims = 384
        [[source]]
        id = "local-bm25"
        kind = "tantivy"
        [[source]]
        id = "qdrant-wrong-key"
        kind = "qdrant"
        space = "minilm"
        url = "{qdrant}"
        collection = "docs"
        api_key = "env:TEST_QDRANT_KEY"
        [[source]]
        id = "qdrant-missing"
        kind = "qdrant"
        space = "minilm"
        url = "{qdrant}"
        collection = "nowhere"
        api_key = "env:TEST_QDRANT_RIGHT_KEY"
        [[source]]
        id = "qdrant-down"
        kind = "qdrant"
        space = "minilm"
        url = "http://{unreachable}"
        collection = "docs"
        [[source]]
        id = "os-throttled"
        kind = "opensearch"
        role = "lexical"
        url = "{opensearch}"
        index = "docs"
        "#,
        data = data.path().display(),
        model = model_dir().display(),
        qdrant = qdrant.url,
        opensearch = opensearch.url(),
    );
    let config = Config::parse(&text, std::path::Path::new("/")).unwrap();
    config.validate().unwrap();
    let env = HashMap::from([
        ("TEST_QDRANT_KEY".to_string(), "wrong-key".to_string()),
        ("TEST_QDRANT_RIGHT_KEY".to_string(), "right-key".to_string()),
    ]);
    let service = skyfuse::service::Service::build(config, &env)
        .await
        .unwrap();
    let result = search_harbour(&service, &[], 5).await;
    assert!(result.degraded);
    assert_eq!(result.hits[0].hit.doc_id, "east");
    let outcome = |id: &str| {
        let outcome = result
            .outcomes
            .iter()
            .find(|outcome| outcome.source == id)
            .unwrap();
        (outcome.status, outcome.message.clone())
    };
    use skyfuse::retrieve::SourceStatus;
    assert_eq!(outcome("local-bm25").0, SourceStatus::Ok);
    for (id, expected) in [
        ("qdrant-wrong-key", "api key"),
        ("qdrant-missing", "\"nowhere\" does not exist"),
        ("qdrant-down", "unreachable"),
        ("os-throttled", "429"),
    ] {
        let (status, message) = outcome(id);
        assert_eq!(status, SourceStatus::Error, "{id}: {message}");
        assert!(message.contains(expected), "{id}: {message}");
    }
}

#[tokio::test]
async fn a_collection_of_another_dimension_stops_startup_naming_both() {
    let data = tempfile::tempdir().unwrap();
    let qdrant = QdrantHarness::in_process(None).await;
    qdrant
        .fake
        .as_ref()
        .unwrap()
        .create("docs", 768, qdrant_client::qdrant::Distance::Cosine);
    let text = format!(
        r#"
        [server]
        data_dir = "{data}"
        [[space]]
        id = "minilm"
        provider = "local"
        model = "{model}"
        dims = 384
        [[source]]
        id = "aws-qdrant"
        kind = "qdrant"
        space = "minilm"
        url = "{qdrant}"
        collection = "docs"
        "#,
        data = data.path().display(),
        model = model_dir().display(),
        qdrant = qdrant.url,
    );
    let config = Config::parse(&text, std::path::Path::new("/")).unwrap();
    let error = match skyfuse::service::Service::build(config, &HashMap::new()).await {
        Ok(_) => panic!("a 768-dimensional collection served a 384-dimensional space"),
        Err(error) => error,
    };
    for expected in ["aws-qdrant", "768", "384", "\"minilm\"", "\"docs\""] {
        assert!(
            error.message.contains(expected),
            "{expected} in {}",
            error.message
        );
    }
}

#[tokio::test]
async fn live_qdrant_passes_the_conformance_suite() {
    let Ok(url) = std::env::var("QDRANT_URL") else {
        eprintln!(
            "skipped: QDRANT_URL is not set (docker compose up qdrant; QDRANT_URL=http://127.0.0.1:6334)"
        );
        return;
    };
    let harness = QdrantHarness {
        url,
        api_key: std::env::var("QDRANT_API_KEY").ok(),
        fake: None,
    };
    let prefix = format!("skyfuse-conformance-{}", std::process::id());
    conformance::run(&harness, &prefix).await;
}

#[tokio::test]
async fn live_opensearch_passes_the_conformance_suite() {
    let Ok(url) = std::env::var("OPENSEARCH_URL") else {
        eprintln!(
            "skipped: OPENSEARCH_URL is not set (docker compose up opensearch; OPENSEARCH_URL=http://127.0.0.1:9200)"
        );
        return;
    };
    let prefix = format!("skyfuse-conformance-{}", std::process::id());
    for kind in [StoreKind::Dense, StoreKind::Lexical] {
        let harness = OpenSearchHarness {
            url: url.clone(),
            kind,
            fake: None,
            credentials: || OpenSearchCredentials::None,
        };
        conformance::run(&harness, &format!("{prefix}-{kind:?}").to_lowercase()).await;
    }
}

/// `role = "both"`: one index, two sources (`<id>` dense and `<id>-bm25` lexical),
/// both searched and fused; the index is created from the space at startup.
#[tokio::test]
async fn an_opensearch_index_with_both_roles_serves_two_sources() {
    let data = tempfile::tempdir().unwrap();
    let opensearch = FakeOpenSearch::start(FakeAuth::None).await;
    let text = format!(
        r#"
        [server]
        data_dir = "{data}"
        [[space]]
        id = "minilm"
        provider = "local"
        model = "{model}"
        dims = 384
        [[source]]
        id = "os"
        kind = "opensearch"
        role = "both"
        space = "minilm"
        url = "{opensearch}"
        index = "docs"
        create_missing = true
        refresh = "wait_for"
        "#,
        data = data.path().display(),
        model = model_dir().display(),
        opensearch = opensearch.url(),
    );
    let config = Config::parse(&text, std::path::Path::new("/")).unwrap();
    config.validate().unwrap();
    let service = skyfuse::service::Service::build(config, &HashMap::new())
        .await
        .unwrap();
    let sources: Vec<(String, StoreKind)> = service
        .list_sources(&skyfuse::auth::Principal::operator())
        .await
        .unwrap()
        .into_iter()
        .map(|source| (source.info.id, source.info.kind))
        .collect();
    assert_eq!(
        sources,
        vec![
            ("os".to_string(), StoreKind::Dense),
            ("os-bm25".to_string(), StoreKind::Lexical)
        ]
    );
    // The same chunks with 384-dimensional vectors, written through an adapter.
    let chunks: Vec<_> = conformance::sample()
        .into_iter()
        .map(|mut chunk| {
            chunk.vector.resize(384, 0.0);
            chunk
        })
        .collect();
    let settings = remote_settings(
        "writer",
        "opensearch",
        StoreKind::Dense,
        &opensearch.url(),
        "docs",
        Some(384),
    );
    let info = settings.info.clone();
    let index = OpenSearchIndex::connect(
        settings,
        OpenSearchCredentials::None,
        RefreshPolicy::WaitFor,
        true,
    )
    .await
    .unwrap();
    index.source(info, true).upsert(&chunks).await.unwrap();
    let result = search_harbour(&service, &["os-bm25"], 10).await;
    assert!(!result.degraded, "{:?}", result.outcomes);
    assert_eq!(result.hits[0].hit.doc_id, "east");
    let fused = search_harbour(&service, &[], 10).await;
    assert!(!fused.degraded, "{:?}", fused.outcomes);
    assert_eq!(fused.outcomes.len(), 2);
}

#[tokio::test]
async fn qdrant_drops_hits_below_the_score_threshold() {
    let harness = QdrantHarness::in_process(None).await;
    let mut settings = remote_settings(
        "thresholded",
        "qdrant",
        StoreKind::Dense,
        &harness.url,
        "thresholded",
        Some(4),
    );
    settings.score_threshold = Some(0.5);
    let store = QdrantStore::connect(settings, None).await.unwrap();
    store.upsert(&conformance::sample()).await.unwrap();
    let query = skyfuse::stores::StoreQuery {
        text: String::new(),
        vector: Some(Arc::new(vec![1.0, 0.0, 0.0, 0.0])),
        top_k: 10,
        deadline: Instant::now() + Duration::from_secs(5),
        filter: Default::default(),
    };
    let hits = store.search(&query).await.unwrap();
    let ids: Vec<&str> = hits.iter().map(|hit| hit.chunk_id.as_str()).collect();
    // cos = 1.0 and 0.707; the others are below 0.5.
    assert_eq!(ids, vec!["east#0", "between#0"]);
}

/// The top 3 for "sunrise harbour" over `sources` (all when empty), within `seconds`.
async fn search_harbour(
    service: &skyfuse::service::Service,
    sources: &[&str],
    seconds: u64,
) -> skyfuse::retrieve::SearchResult {
    service
        .search(
            &skyfuse::auth::Principal::operator(),
            skyfuse::service::SearchParams {
                query: "sunrise harbour".into(),
                top_k: Some(3),
                sources: sources.iter().map(|source| source.to_string()).collect(),
                fusion: None,
                deadline: Some(Instant::now() + Duration::from_secs(seconds)),
                adapter_from: None,
                controls: Default::default(),
                filter: None,
                ..Default::default()
            },
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn opensearch_maps_the_namespace_as_a_keyword_on_an_index_made_elsewhere() {
    let fake = FakeOpenSearch::start(FakeAuth::None).await;
    fake.create_knn_index("theirs", 4, "cosinesimil");
    let mut analysed = serde_json::json!({ "properties": {
        "embedding": { "type": "knn_vector", "dimension": 4,
                       "method": { "name": "hnsw", "engine": "lucene", "space_type": "cosinesimil" } },
    }});
    analysed["properties"]["namespace"] = serde_json::json!({ "type": "text" });
    fake.create_with_mapping("analysed", analysed);
    let harness = OpenSearchHarness {
        url: fake.url(),
        kind: StoreKind::Dense,
        fake: Some(Arc::clone(&fake)),
        credentials: || OpenSearchCredentials::None,
    };
    harness.open("theirs", 4).await.unwrap();
    assert_eq!(
        fake.mapping("theirs")["properties"]["namespace"]["type"],
        "keyword"
    );
    // Analysed text would let the tenant `acme` match `team-acme`: refused at start.
    let error = match harness.open("analysed", 4).await {
        Ok(_) => panic!("an index mapping the namespace as text was accepted"),
        Err(error) => error,
    };
    assert_eq!(error.kind, ErrorKind::Config, "{}", error.message);
    assert!(error.message.contains("namespace"), "{}", error.message);
}

#[tokio::test]
async fn opensearch_replicas_starting_together_with_create_missing_both_start() {
    let fake = FakeOpenSearch::start(FakeAuth::None).await;
    let harness = OpenSearchHarness {
        url: fake.url(),
        kind: StoreKind::Dense,
        fake: Some(fake),
        credentials: || OpenSearchCredentials::None,
    };
    let (first, second) = tokio::join!(harness.open("shared", 4), harness.open("shared", 4));
    let (first, second) = (first.unwrap(), second.unwrap());
    // Either replica's writes are searchable through the other: one index.
    first.upsert(&conformance::sample()).await.unwrap();
    first.commit().await.unwrap();
    assert_eq!(second.count().await.unwrap(), first.count().await.unwrap());
    assert!(second.count().await.unwrap() > 0);
}

#[tokio::test]
async fn opensearch_calls_within_a_trace_send_its_traceparent_outside_the_sigv4_signature() {
    use skyfuse::telemetry::trace::within;
    let fake = FakeOpenSearch::start(FakeAuth::SigV4 {
        access_key: "AKIDEXAMPLE".into(),
        secret_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        region: "us-east-1".into(),
        service: "es".into(),
    })
    .await;
    fake.create_knn_index("docs", 4, "cosinesimil");
    let settings = remote_settings(
        "os",
        "opensearch",
        StoreKind::Dense,
        &fake.url(),
        "docs",
        Some(4),
    );
    let info = settings.info.clone();
    let index = OpenSearchIndex::connect(
        settings,
        sigv4_credentials("es"),
        RefreshPolicy::OnCommit,
        true,
    )
    .await
    .unwrap();
    let (_tracing, call) = traced_call(TRACE_ID);
    let trace_id = TRACE_ID;
    let store = index.source(info, true);
    // Connecting asked outside the trace: only the traced call's requests count.
    fake.traceparents.lock().unwrap().clear();
    // The fake checks the signature: it still holds with traceparent added.
    within(Some(&call), store.count()).await.unwrap();
    let sent = fake.traceparents.lock().unwrap().clone();
    assert!(!sent.is_empty());
    for traceparent in &sent {
        let traceparent = traceparent.as_deref().unwrap_or_default();
        assert!(
            traceparent.starts_with(&format!("00-{trace_id}-")),
            "{traceparent:?}"
        );
    }
    fake.traceparents.lock().unwrap().clear();
    store.count().await.unwrap();
    assert!(
        fake.traceparents
            .lock()
            .unwrap()
            .iter()
            .all(Option::is_none)
    );
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A call traced at 100% under a caller's `traceparent` with `trace_id`. Spans go
/// nowhere (nothing listens on port 9); only what is sent on matters.
fn traced_call(
    trace_id: &str,
) -> (
    skyfuse::telemetry::trace::Tracing,
    skyfuse::telemetry::trace::CallTrace,
) {
    let tracing = skyfuse::telemetry::trace::Tracing::from_config(
        Some(&skyfuse::config::TracesConfig {
            endpoint: "http://127.0.0.1:9".into(),
            protocol: skyfuse::config::OtlpProtocol::HttpProtobuf,
            sample_ratio: 1.0,
            service_name: "skyfuse-test".into(),
            export_timeout_ms: 100,
            headers: Default::default(),
            ca_file: None,
        }),
        &Default::default(),
    )
    .unwrap();
    let mut incoming = http::HeaderMap::new();
    incoming.insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let call = tracing.http_call("POST", "/v1/search", &incoming).unwrap();
    (tracing, call)
}

#[tokio::test]
async fn qdrant_calls_within_a_trace_send_its_traceparent() {
    use skyfuse::telemetry::trace::within;
    let harness = QdrantHarness::in_process(Some("test-key")).await;
    let store = harness.connect("traced", 4, true).await.unwrap();
    let fake = harness.fake.as_ref().unwrap();
    let (_tracing, call) = traced_call(TRACE_ID);
    // Connecting asked outside the trace: only the traced calls' requests count.
    fake.state.traceparents.lock().unwrap().clear();
    let query = skyfuse::stores::StoreQuery {
        text: String::new(),
        vector: Some(Arc::new(vec![1.0, 0.0, 0.0, 0.0])),
        top_k: 3,
        deadline: Instant::now() + Duration::from_secs(5),
        filter: Default::default(),
    };
    within(Some(&call), async {
        store.count().await.unwrap();
        store.search(&query).await.unwrap();
    })
    .await;
    let sent = fake.state.traceparents.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "{sent:?}");
    for traceparent in &sent {
        let traceparent = traceparent.as_deref().unwrap_or_default();
        assert!(
            traceparent.starts_with(&format!("00-{TRACE_ID}-")),
            "{traceparent:?}"
        );
    }
    // The api key still went with them (the fake refuses calls without it).
    fake.state.traceparents.lock().unwrap().clear();
    store.count().await.unwrap();
    let untraced = fake.state.traceparents.lock().unwrap().clone();
    assert_eq!(untraced, vec![None]);
}
