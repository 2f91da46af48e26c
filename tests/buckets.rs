//! The bucket conformance suite: one scenario run against every storage backend.
//!
//! Backends: moto (S3, and the OCI path: S3-compatible endpoint, path-style, OCI labels),
//! Azurite (Azure Blob), fake-gcs-server (GCS, objects seeded through its JSON API, since
//! it cannot take `object_store` writes), and `object_store`'s InMemory behind a `gs://` URL
//! for GCS listing across many keys (fake-gcs-server never paginates).
//!
//! `./scripts/test.sh` starts the emulators and sets `SKYFUSE_TEST_*_ENDPOINT`; it also sets
//! `SKYFUSE_REQUIRE_EMULATORS=1`, so there (and under `CI=true`) a missing variable fails the
//! test. A plain `cargo test` without them prints why each emulator test is skipped.
//! Clients get explicit endpoints and credentials: nothing here leaves 127.0.0.1.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use skyfuse::config::Secret;
use skyfuse::document::{EmbeddedChunk, Hit};
use skyfuse::error::Result;
use skyfuse::ingest::{
    BucketCredentials, BucketOptions, IndexJob, IndexProgress, IndexReport, run_index,
};
use skyfuse::stores::{SearchBackend, SourceInfo, StoreKind, StoreQuery};

const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published development key, not a secret.
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

// ---------------------------------------------------------------------------------------------
// Emulator discovery

/// The emulator's endpoint, or `None` (with a message) when a developer runs plain
/// `cargo test`; under the test script or CI a missing endpoint is a failure.
fn emulator(variable: &str) -> Option<(String, String)> {
    let bucket = std::env::var("SKYFUSE_TEST_BUCKET").unwrap_or_else(|_| "skyfuse-test".into());
    if let Ok(endpoint) = std::env::var(variable)
        && !endpoint.is_empty()
    {
        return Some((endpoint, bucket));
    }
    let required = std::env::var("SKYFUSE_REQUIRE_EMULATORS").is_ok_and(|value| value == "1")
        || std::env::var("CI").is_ok_and(|value| value == "true");
    assert!(
        !required,
        "{variable} is not set: run ./scripts/test.sh, which starts the storage emulators"
    );
    eprintln!(
        "SKIPPED: {variable} is not set; ./scripts/test.sh starts the storage emulators and runs this test"
    );
    None
}

/// A prefix no other test or earlier run uses, so one bucket serves every test.
fn unique_prefix(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{nanos}")
}

// ---------------------------------------------------------------------------------------------
// Writing into the emulators (the test's side, not the indexer's)

#[async_trait]
trait Seeder: Send + Sync {
    async fn put(&self, key: &str, bytes: Vec<u8>);
    async fn delete(&self, key: &str);
}

struct ObjectStoreSeeder(Arc<dyn ObjectStore>);

/// The key exactly as written: `ObjectPath::from` would percent-encode `é` into `%C3%A9`
/// and the bucket would hold a different key than the test means.
fn raw_path(key: &str) -> ObjectPath {
    ObjectPath::parse(key).unwrap_or_else(|error| panic!("{key:?} is not a valid path: {error}"))
}

#[async_trait]
impl Seeder for ObjectStoreSeeder {
    async fn put(&self, key: &str, bytes: Vec<u8>) {
        self.0
            .put(&raw_path(key), bytes.into())
            .await
            .unwrap_or_else(|error| panic!("seeding {key}: {error}"));
    }

    async fn delete(&self, key: &str) {
        self.0.delete(&raw_path(key)).await.unwrap();
    }
}

/// fake-gcs-server takes writes only through the GCS JSON API.
struct GcsJsonSeeder {
    endpoint: String,
    bucket: String,
    client: reqwest::Client,
}

#[async_trait]
impl Seeder for GcsJsonSeeder {
    async fn put(&self, key: &str, bytes: Vec<u8>) {
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=media&name={}",
            self.endpoint,
            self.bucket,
            url_encode(key)
        );
        let response = self.client.post(url).body(bytes).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "seeding {key}: {response:?}"
        );
    }

    async fn delete(&self, key: &str) {
        let url = format!(
            "{}/storage/v1/b/{}/o/{}",
            self.endpoint,
            self.bucket,
            url_encode(key)
        );
        let response = self.client.delete(url).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "deleting {key}: {response:?}"
        );
    }
}

fn url_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

// ---------------------------------------------------------------------------------------------
// A store that keeps what a crash would keep: only committed writes survive `crash()`.

#[derive(Default)]
struct StoreState {
    live: BTreeMap<String, EmbeddedChunk>,
    committed: BTreeMap<String, EmbeddedChunk>,
    upserted_chunk_ids: Vec<String>,
    hang: Option<UpsertHang>,
}

/// Where a run is crashed: after `upserts_left` more upserts, the next one never returns.
struct UpsertHang {
    upserts_left: usize,
    reached: tokio::sync::oneshot::Sender<()>,
}

struct RecordingStore {
    info: SourceInfo,
    state: Mutex<StoreState>,
}

impl RecordingStore {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            info: SourceInfo {
                id: "recording".into(),
                backend: "memory".into(),
                kind: StoreKind::Lexical,
                space: None,
                dims: None,
                cloud: "local".into(),
                region: "local".into(),
            },
            state: Mutex::default(),
        })
    }

    /// What a process killed now would find on restart.
    fn crash(&self) {
        let mut state = self.state.lock().unwrap();
        state.live = state.committed.clone();
    }

    fn committed(&self) -> Vec<EmbeddedChunk> {
        self.state
            .lock()
            .unwrap()
            .committed
            .values()
            .cloned()
            .collect()
    }

    fn take_upserted(&self) -> Vec<String> {
        std::mem::take(&mut self.state.lock().unwrap().upserted_chunk_ids)
    }

    /// After `upserts_left` more upserts the next one hangs, and the answer resolves: the
    /// run is then parked in that upsert, every earlier commit and manifest save done, and
    /// can be dropped there. A crash point set by a count, whatever the machine's load.
    fn hang_after_upserts(&self, upserts_left: usize) -> tokio::sync::oneshot::Receiver<()> {
        let (reached, hung) = tokio::sync::oneshot::channel();
        self.state.lock().unwrap().hang = Some(UpsertHang {
            upserts_left,
            reached,
        });
        hung
    }

    /// Counts this upsert against the hang; true when this is the one that hangs.
    fn upsert_hangs(&self) -> bool {
        let mut state = self.state.lock().unwrap();
        let Some(hang) = state.hang.as_mut() else {
            return false;
        };
        if hang.upserts_left > 0 {
            hang.upserts_left -= 1;
            return false;
        }
        if let Some(hang) = state.hang.take() {
            let _ = hang.reached.send(());
        }
        true
    }
}

#[async_trait]
impl SearchBackend for RecordingStore {
    fn describe(&self) -> &SourceInfo {
        &self.info
    }

    async fn search(&self, _query: &StoreQuery) -> Result<Vec<Hit>> {
        Ok(Vec::new())
    }

    async fn upsert(&self, chunks: &[EmbeddedChunk]) -> Result<()> {
        if self.upsert_hangs() {
            std::future::pending::<()>().await;
        }
        let mut state = self.state.lock().unwrap();
        for chunk in chunks {
            state.upserted_chunk_ids.push(chunk.chunk.chunk_id.clone());
            state
                .live
                .insert(chunk.chunk.chunk_id.clone(), chunk.clone());
        }
        Ok(())
    }

    async fn delete_objects(&self, object_keys: &[String]) -> Result<()> {
        let doomed: BTreeSet<&String> = object_keys.iter().collect();
        self.state
            .lock()
            .unwrap()
            .live
            .retain(|_, chunk| !doomed.contains(&chunk.chunk.object_key));
        Ok(())
    }

    async fn commit(&self) -> Result<()> {
        let mut state = self.state.lock().unwrap();
        state.committed = state.live.clone();
        Ok(())
    }

    async fn count(&self) -> Result<u64> {
        Ok(self.state.lock().unwrap().live.len() as u64)
    }
}

// ---------------------------------------------------------------------------------------------
// The backends

struct Backend {
    name: &'static str,
    /// `scheme://bucket`, without the test's prefix.
    bucket_url: String,
    options: BucketOptions,
    seeder: Arc<dyn Seeder>,
    /// Set for InMemory: the indexer reads this store instead of opening the URL.
    object_store: Option<Arc<dyn ObjectStore>>,
    /// More objects than the backend returns in one listing page.
    objects_past_one_page: usize,
    expected_cloud: &'static str,
    expected_region: &'static str,
}

fn secret(value: &str) -> Option<Secret> {
    Some(Secret::new(value))
}

fn moto_options(endpoint: &str) -> BucketOptions {
    BucketOptions {
        endpoint: Some(endpoint.to_owned()),
        allow_http: true,
        region: Some("us-east-1".into()),
        credentials: BucketCredentials {
            access_key_id: secret("test"),
            secret_access_key: secret("test"),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn moto_store(endpoint: &str, bucket: &str) -> object_store::aws::AmazonS3 {
    AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_allow_http(true)
        .build()
        .unwrap()
}

fn moto_seeder(endpoint: &str, bucket: &str) -> Arc<dyn Seeder> {
    Arc::new(ObjectStoreSeeder(Arc::new(moto_store(endpoint, bucket))))
}

fn s3_backend() -> Option<Backend> {
    let (endpoint, bucket) = emulator("SKYFUSE_TEST_S3_ENDPOINT")?;
    Some(Backend {
        name: "s3",
        bucket_url: format!("s3://{bucket}"),
        options: BucketOptions {
            cloud: Some("aws".into()),
            ..moto_options(&endpoint)
        },
        seeder: moto_seeder(&endpoint, &bucket),
        object_store: None,
        // moto pages at 1,000 keys.
        objects_past_one_page: 1_050,
        expected_cloud: "aws",
        expected_region: "us-east-1",
    })
}

/// OCI Object Storage is reached through its S3 compatibility API, path-style, with
/// customer secret keys: the same client as S3, labelled with OCI's cloud and region.
fn oci_backend() -> Option<Backend> {
    let (endpoint, bucket) = emulator("SKYFUSE_TEST_S3_ENDPOINT")?;
    Some(Backend {
        name: "oci (s3-compatible)",
        bucket_url: format!("s3://{bucket}"),
        options: BucketOptions {
            cloud: Some("oci".into()),
            region: Some("eu-frankfurt-1".into()),
            ..moto_options(&endpoint)
        },
        seeder: moto_seeder(&endpoint, &bucket),
        object_store: None,
        objects_past_one_page: 1_050,
        expected_cloud: "oci",
        expected_region: "eu-frankfurt-1",
    })
}

fn azure_options(endpoint: &str, key: &str) -> BucketOptions {
    BucketOptions {
        // Path-style account URL, as Azurite serves it.
        endpoint: Some(format!("{endpoint}/{AZURITE_ACCOUNT}")),
        allow_http: true,
        region: Some("westeurope".into()),
        credentials: BucketCredentials {
            azure_account: Some(AZURITE_ACCOUNT.into()),
            azure_access_key: secret(key),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn azure_backend() -> Option<Backend> {
    let (endpoint, bucket) = emulator("SKYFUSE_TEST_AZURE_ENDPOINT")?;
    let store = MicrosoftAzureBuilder::new()
        .with_account(AZURITE_ACCOUNT)
        .with_access_key(AZURITE_KEY)
        .with_endpoint(format!("{endpoint}/{AZURITE_ACCOUNT}"))
        .with_allow_http(true)
        .with_container_name(&bucket)
        .build()
        .unwrap();
    Some(Backend {
        name: "azure",
        bucket_url: format!("az://{bucket}"),
        options: azure_options(&endpoint, AZURITE_KEY),
        seeder: Arc::new(ObjectStoreSeeder(Arc::new(store))),
        object_store: None,
        // Azurite pages at 5,000 keys.
        objects_past_one_page: 5_050,
        expected_cloud: "azure",
        expected_region: "westeurope",
    })
}

fn gcs_backend() -> Option<Backend> {
    let (endpoint, bucket) = emulator("SKYFUSE_TEST_GCS_ENDPOINT")?;
    Some(Backend {
        name: "gcs",
        bucket_url: format!("gs://{bucket}"),
        options: BucketOptions {
            endpoint: Some(endpoint.clone()),
            region: Some("europe-west1".into()),
            credentials: BucketCredentials {
                bearer_token: secret("fake"),
                ..Default::default()
            },
            ..Default::default()
        },
        seeder: Arc::new(GcsJsonSeeder {
            endpoint,
            bucket,
            client: reqwest::Client::new(),
        }),
        object_store: None,
        // fake-gcs-server returns every key in one page; paging runs on InMemory below.
        objects_past_one_page: 120,
        expected_cloud: "gcp",
        expected_region: "europe-west1",
    })
}

fn in_memory_gcs_backend() -> Backend {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    Backend {
        name: "in-memory (gs:// url)",
        bucket_url: "gs://in-memory".into(),
        options: BucketOptions::default(),
        seeder: Arc::new(ObjectStoreSeeder(Arc::clone(&store))),
        object_store: Some(store),
        objects_past_one_page: 1_050,
        expected_cloud: "gcp",
        expected_region: "unknown",
    }
}

// ---------------------------------------------------------------------------------------------
// The scenario

struct Scenario {
    backend: Backend,
    prefix: String,
    store: Arc<RecordingStore>,
    state: tempfile::TempDir,
}

impl Scenario {
    fn new(backend: Backend, name: &str) -> Self {
        Self {
            backend,
            prefix: unique_prefix(name),
            store: RecordingStore::new(),
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn key(&self, relative: &str) -> String {
        format!("{}/{relative}", self.prefix)
    }

    fn url(&self) -> String {
        format!("{}/{}", self.backend.bucket_url, self.prefix)
    }

    fn manifest_path(&self) -> PathBuf {
        self.state.path().join("manifest.json")
    }

    fn job(&self) -> IndexJob {
        let store: Arc<dyn SearchBackend> = self.store.clone();
        let mut job = IndexJob::new(self.url(), vec![store], None, self.manifest_path());
        job.bucket = self.backend.options.clone();
        job.bucket.exclude = vec!["drafts/**".into()];
        job.object_store = self.backend.object_store.clone();
        job.fetch_concurrency = 16;
        job
    }

    async fn put_all(&self, objects: Vec<(String, Vec<u8>)>) {
        futures::stream::iter(objects)
            .map(|(key, bytes)| {
                let seeder = Arc::clone(&self.backend.seeder);
                async move { seeder.put(&key, bytes).await }
            })
            .buffer_unordered(16)
            .collect::<Vec<()>>()
            .await;
    }

    async fn run(&self) -> IndexReport {
        run_index(self.job(), |_| {}).await.unwrap()
    }

    /// The short keys of the committed chunks, with how many chunks each has.
    fn committed_objects(&self) -> BTreeMap<String, usize> {
        let prefix = format!("{}/{}/", self.backend.bucket_url, self.prefix);
        let mut objects = BTreeMap::new();
        for chunk in self.store.committed() {
            let key = chunk
                .chunk
                .object_key
                .strip_prefix(&prefix)
                .unwrap_or_else(|| {
                    panic!("{} does not start with {prefix}", chunk.chunk.object_key)
                });
            *objects.entry(key.to_owned()).or_insert(0) += 1;
        }
        objects
    }
}

fn document(index: usize) -> (String, Vec<u8>) {
    (
        format!("docs/doc-{index:05}.txt"),
        format!("Document {index} explains subject number {index} in a few words.").into_bytes(),
    )
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn assert_counts(report: &IndexReport, expected: IndexProgress, what: &str) {
    let progress = &report.progress;
    let actual = IndexProgress {
        chunks_written: progress.chunks_written,
        bytes_read: 0,
        elapsed: Duration::ZERO,
        ..progress.clone()
    };
    assert_eq!(actual, expected, "{what}: {report:#?}");
}

/// List past one page, get, etag change, delete, incremental no-op re-run, resume after a
/// crash: the same assertions on every backend.
async fn conformance(backend: Backend) {
    let name = backend.name;
    let pages = backend.objects_past_one_page;
    let scenario = Scenario::new(backend, "conformance");
    let mut objects: Vec<(String, Vec<u8>)> = (0..pages).map(document).collect();
    objects.push((
        "guides/setup.md.gz".into(),
        gzip(b"# Setup\n\nInstall the agent, then restart it."),
    ));
    objects.push((
        "odd keys/caf\u{e9} r\u{e9}sum\u{e9} (1).txt".into(),
        b"Odd key, plain text.".to_vec(),
    ));
    let whole_gzip = gzip(document(7).1.repeat(50).as_slice());
    let cut_gzip = whole_gzip[..whole_gzip.len() / 2].to_vec();
    objects.push(("broken/truncated.txt.gz".into(), cut_gzip));
    objects.push(("images/logo.png".into(), vec![0x89, b'P', b'N', b'G']));
    objects.push(("drafts/unfinished.txt".into(), b"Not yet.".to_vec()));
    let objects: Vec<(String, Vec<u8>)> = objects
        .into_iter()
        .map(|(key, bytes)| (scenario.key(&key), bytes))
        .collect();
    scenario.put_all(objects).await;
    let indexable = pages + 2;

    // First run: every object listed (across pages), fetched and indexed once.
    let first = scenario.run().await;
    assert!(
        first.listing_errors.is_empty(),
        "{name}: {:?}",
        first.listing_errors
    );
    assert_counts(
        &first,
        IndexProgress {
            listed: (indexable + 2) as u64,
            excluded: 1,
            fetched: (indexable + 1) as u64,
            indexed: indexable as u64,
            skipped: 1,
            failed: 1,
            chunks_written: indexable as u64,
            ..Default::default()
        },
        name,
    );
    assert_eq!(first.failures.len(), 1, "{name}");
    assert!(
        first.failures[0]
            .object_key
            .ends_with("broken/truncated.txt.gz")
    );
    assert!(
        first.failures[0].reason.contains("truncated gzip"),
        "{name}: {:?}",
        first.failures
    );
    let committed = scenario.committed_objects();
    assert_eq!(committed.len(), indexable, "{name}");
    assert!(
        committed.contains_key("odd keys/caf\u{e9} r\u{e9}sum\u{e9} (1).txt"),
        "{name}: {:?}",
        committed
            .keys()
            .filter(|key| !key.starts_with("docs/"))
            .collect::<Vec<_>>()
    );
    assert!(committed.contains_key("guides/setup.md.gz"), "{name}");
    assert_eq!(
        (
            first.location.cloud.as_str(),
            first.location.region.as_str()
        ),
        (
            scenario.backend.expected_cloud,
            scenario.backend.expected_region
        ),
        "{name}: residency labels"
    );
    let expected_labels = (
        scenario.backend.expected_cloud.to_owned(),
        scenario.backend.expected_region.to_owned(),
    );
    assert!(
        scenario.store.committed().iter().all(|embedded| (
            embedded.chunk.cloud.clone(),
            embedded.chunk.region.clone()
        ) == expected_labels),
        "{name}: every chunk carries the bucket's cloud and region"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(scenario.manifest_path()).unwrap()).unwrap();
    assert_eq!(manifest["cloud"], scenario.backend.expected_cloud, "{name}");
    assert_eq!(
        manifest["region"], scenario.backend.expected_region,
        "{name}"
    );
    // Each object is remembered by key with its etag (unquoted, whatever the backend's
    // quoting) and size.
    let (key, bytes) = document(0);
    let entry = &manifest["objects"][scenario.key(&key)];
    let etag = entry["etag"].as_str().unwrap_or_default();
    assert!(!etag.is_empty() && !etag.contains('"'), "{name}: {entry}");
    assert_eq!(entry["size"], bytes.len(), "{name}: {entry}");
    scenario.store.take_upserted();

    // No change: nothing fetched (the object that failed is remembered as known-bad
    // until it changes), nothing written.
    let second = scenario.run().await;
    assert_eq!(second.progress.fetched, 0, "{name}: nothing is read again");
    assert_eq!(
        second.progress.known_bad, 1,
        "{name}: the failed object is known-bad"
    );
    assert_eq!(second.progress.unchanged, indexable as u64, "{name}");
    assert_eq!(second.progress.indexed, 0, "{name}");
    assert!(scenario.store.take_upserted().is_empty(), "{name}");

    // One object changed (new etag), one deleted.
    let seeder = &scenario.backend.seeder;
    seeder
        .put(
            &scenario.key("docs/doc-00001.txt"),
            b"Rewritten: the first subject is now about tides.".to_vec(),
        )
        .await;
    seeder.delete(&scenario.key("docs/doc-00002.txt")).await;
    let third = scenario.run().await;
    assert_eq!(
        (
            third.progress.fetched,
            third.progress.indexed,
            third.progress.deleted
        ),
        (1, 1, 1),
        "{name}: {:?}",
        third.progress
    );
    let committed = scenario.committed_objects();
    assert_eq!(committed.len(), indexable - 1, "{name}");
    assert!(!committed.contains_key("docs/doc-00002.txt"), "{name}");
    let rewritten = scenario
        .store
        .committed()
        .into_iter()
        .find(|chunk| chunk.chunk.object_key.ends_with("docs/doc-00001.txt"))
        .unwrap();
    assert!(rewritten.chunk.text.contains("tides"), "{name}");
    scenario.store.take_upserted();

    // Crash: 60 new objects, the run killed after some commits, then resumed. Each late
    // object is one chunk; a batch of 3 is one upsert, and a commit (then a manifest save)
    // follows every third upsert (9 chunks >= 7). Hanging the ninth upsert crashes the run
    // after two commits (18 objects) with 6 more written but not committed.
    const LATE_OBJECTS: usize = 60;
    const UPSERTS_BEFORE_CRASH: usize = 8;
    const COMMITTED_BEFORE_CRASH: usize = 18;
    let late: Vec<(String, Vec<u8>)> = (0..LATE_OBJECTS)
        .map(|index| {
            (
                scenario.key(&format!("late/{index:03}.txt")),
                format!("Late arrival {index} about harbour logistics.").into_bytes(),
            )
        })
        .collect();
    scenario.put_all(late).await;
    let mut job = scenario.job();
    job.commit_every_chunks = 7;
    job.embed_batch_size = 3;
    job.fetch_concurrency = 2;
    let hung = scenario.store.hang_after_upserts(UPSERTS_BEFORE_CRASH);
    let interrupted = run_index(job, |_| {});
    tokio::select! {
        result = interrupted => panic!("{name}: the run was meant to be interrupted: {result:?}"),
        reached = hung => reached.unwrap(),
    }
    scenario.store.crash();
    let survived_late = scenario
        .committed_objects()
        .keys()
        .filter(|key| key.starts_with("late/"))
        .count();
    assert!(
        (1..LATE_OBJECTS).contains(&survived_late),
        "{name}: the crash should fall between commits, {survived_late} late objects committed"
    );
    assert_eq!(
        survived_late, COMMITTED_BEFORE_CRASH,
        "{name}: two commits before the crash"
    );
    scenario.store.take_upserted();
    let resumed = scenario.run().await;
    assert_eq!(
        resumed.progress.indexed as usize,
        LATE_OBJECTS - survived_late,
        "{name}: the resumed run indexes exactly what the crash lost"
    );
    let upserted = scenario.store.take_upserted();
    let distinct: BTreeSet<&String> = upserted.iter().collect();
    assert_eq!(
        distinct.len(),
        upserted.len(),
        "{name}: a chunk was written twice"
    );
    let committed = scenario.committed_objects();
    assert_eq!(
        committed.len(),
        indexable - 1 + LATE_OBJECTS,
        "{name}: exact object count after resume"
    );
    assert!(
        committed.values().all(|&chunks| chunks == 1),
        "{name}: one chunk per object"
    );
    assert_eq!(
        scenario.store.committed().len(),
        indexable - 1 + LATE_OBJECTS,
        "{name}: exact chunk count after resume"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_s3_on_moto() {
    if let Some(backend) = s3_backend() {
        conformance(backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_oci_s3_compatible_path_on_moto() {
    if let Some(backend) = oci_backend() {
        conformance(backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_azure_on_azurite() {
    if let Some(backend) = azure_backend() {
        conformance(backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_gcs_on_fake_gcs_server() {
    if let Some(backend) = gcs_backend() {
        conformance(backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_gcs_url_on_in_memory_store() {
    conformance(in_memory_gcs_backend()).await;
}

// ---------------------------------------------------------------------------------------------
// Bad endpoints: throttling, wrong credentials, a missing bucket

/// Answers every request with 503 SlowDown, as S3 does when throttling; counts requests.
async fn throttling_server() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&requests);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut received = Vec::new();
                let mut buffer = [0u8; 4096];
                while !received.windows(4).any(|window| window == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => received.extend_from_slice(&buffer[..read]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let body = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                let response = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (format!("http://{address}"), requests)
}

#[tokio::test]
async fn throttled_listing_is_retried_then_reported_and_nothing_indexed_is_deleted() {
    // First run: a healthy bucket (in memory) behind the same s3:// URL.
    let healthy: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    for index in 0..3 {
        let (key, bytes) = document(index);
        healthy
            .put(&ObjectPath::from(format!("team/{key}")), bytes.into())
            .await
            .unwrap();
    }
    let store = RecordingStore::new();
    let state = tempfile::tempdir().unwrap();
    let manifest_path = state.path().join("manifest.json");
    let job = |object_store: Option<Arc<dyn ObjectStore>>, options: BucketOptions| {
        let backend: Arc<dyn SearchBackend> = store.clone();
        let mut job = IndexJob::new("s3://docs/team", vec![backend], None, &manifest_path);
        job.object_store = object_store;
        job.bucket = options;
        job
    };
    let first = run_index(job(Some(healthy), BucketOptions::default()), |_| {})
        .await
        .unwrap();
    assert_eq!(first.progress.indexed, 3);

    // Second run: the endpoint throttles every request.
    let (endpoint, requests) = throttling_server().await;
    let options = BucketOptions {
        max_retries: Some(2),
        initial_backoff: Some(Duration::from_millis(10)),
        retry_timeout: Some(Duration::from_secs(10)),
        ..moto_options(&endpoint)
    };
    let throttled = run_index(job(None, options), |_| {}).await.unwrap();
    assert_eq!(
        requests.load(Ordering::SeqCst),
        3,
        "one attempt and two retries"
    );
    assert_eq!(throttled.listing_errors.len(), 1, "{throttled:#?}");
    let reason = &throttled.listing_errors[0];
    assert!(
        reason.contains("503") && reason.contains("retries"),
        "{reason}"
    );
    assert_eq!(throttled.progress.deleted, 0);
    assert_eq!(
        store.committed().len(),
        3,
        "an unreadable bucket deletes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_is_a_clear_listing_error() {
    let Some((endpoint, _)) = emulator("SKYFUSE_TEST_S3_ENDPOINT") else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let store: Arc<dyn SearchBackend> = RecordingStore::new();
    let mut job = IndexJob::new(
        "s3://no-such-bucket-here/docs",
        vec![store],
        None,
        state.path().join("manifest.json"),
    );
    job.bucket = moto_options(&endpoint);
    let report = run_index(job, |_| {}).await.unwrap();
    assert_eq!(report.listing_errors.len(), 1, "{report:#?}");
    assert!(
        report.listing_errors[0].contains("NoSuchBucket"),
        "{:?}",
        report.listing_errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_azure_key_is_a_clear_listing_error() {
    let Some((endpoint, bucket)) = emulator("SKYFUSE_TEST_AZURE_ENDPOINT") else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let store: Arc<dyn SearchBackend> = RecordingStore::new();
    let mut job = IndexJob::new(
        format!("az://{bucket}/docs"),
        vec![store],
        None,
        state.path().join("manifest.json"),
    );
    // A well-formed key that is not the account's.
    let mut options = azure_options(
        &endpoint,
        "d3JvbmcgYnV0IHdlbGwtZm9ybWVkIGtleSB3cm9uZyBrZXk=",
    );
    options.max_retries = Some(0);
    job.bucket = options;
    let report = run_index(job, |_| {}).await.unwrap();
    assert_eq!(report.listing_errors.len(), 1, "{report:#?}");
    assert!(
        report.listing_errors[0].contains("403"),
        "{:?}",
        report.listing_errors
    );
}

// ---------------------------------------------------------------------------------------------
// The real crash: `skyfuse index` killed with SIGKILL mid-run, then run again

fn skyfuse_config(data_dir: &std::path::Path, endpoint: &str, bucket: &str) -> String {
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
commit_every_chunks = 100

[[bucket]]
url = "s3://{bucket}"
endpoint = "{endpoint}"
allow_http = true
region = "us-east-1"
access_key_id = "env:CRASH_TEST_KEY_ID"
secret_access_key = "env:CRASH_TEST_SECRET"
"#,
        data_dir = data_dir.display()
    )
}

fn skyfuse_index(config: &std::path::Path, url: &str) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_skyfuse"));
    command
        .arg("--config")
        .arg(config)
        .arg("index")
        .arg(url)
        .env("CRASH_TEST_KEY_ID", "test")
        .env("CRASH_TEST_SECRET", "test")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    command
}

fn manifest_objects(data_dir: &std::path::Path) -> usize {
    let folder = data_dir.join("manifests").join("docs");
    let Ok(entries) = std::fs::read_dir(&folder) else {
        return 0;
    };
    let mut count = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path
            .extension()
            .is_some_and(|extension| extension == "json")
        {
            let manifest: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            count += manifest["objects"]
                .as_object()
                .map_or(0, |objects| objects.len());
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_killed_with_sigkill_resumes_with_exact_chunk_counts() {
    let Some(backend) = s3_backend() else {
        return;
    };
    let (endpoint, bucket) = emulator("SKYFUSE_TEST_S3_ENDPOINT").unwrap();
    const OBJECTS: usize = 3_000;
    let scenario = Scenario::new(backend, "sigkill");
    scenario
        .put_all(
            (0..OBJECTS)
                .map(|index| {
                    let (key, bytes) = document(index);
                    (scenario.key(&key), bytes)
                })
                .collect(),
        )
        .await;
    let data_dir = tempfile::tempdir().unwrap();
    let config = data_dir.path().join("skyfuse.toml");
    std::fs::write(&config, skyfuse_config(data_dir.path(), &endpoint, &bucket)).unwrap();
    let url = scenario.url();

    let mut child = skyfuse_index(&config, &url).spawn().unwrap();
    let started = std::time::Instant::now();
    // Kill as soon as a first commit is on disk, well before the end.
    while manifest_objects(data_dir.path()) == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no commit within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = manifest_objects(data_dir.path());
    assert!(
        before > 0 && before < OBJECTS,
        "{before} objects committed when killed"
    );

    let output = skyfuse_index(&config, &url).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(manifest_objects(data_dir.path()), OBJECTS);

    let store = skyfuse::stores::local_bm25::LocalBm25Store::open(
        SourceInfo {
            id: "bm25".into(),
            backend: "tantivy".into(),
            kind: StoreKind::Lexical,
            space: None,
            dims: None,
            cloud: "local".into(),
            region: "local".into(),
        },
        &data_dir.path().join("bm25"),
    )
    .unwrap();
    // One chunk per object: any duplicate or loss shows in the count.
    assert_eq!(store.count().await.unwrap(), OBJECTS as u64);
}

/// A PUT sent byte for byte: HTTP clients (and the `url` crate) resolve `..` segments
/// before sending, and the point here is a bucket that really holds such a key.
async fn raw_put(endpoint: &str, path: &str, body: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = endpoint.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nhost: {address}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body).await.unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "PUT {path}: {response}"
    );
}

/// `object_store` cannot name keys with a `..` segment or an empty one (`a//b`), and one
/// such key fails its whole listing page. Each must come out as a failed object, with the
/// keys around it indexed, and the listing must still count as complete, so that a
/// deletion elsewhere in the bucket is propagated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_object_store_cannot_name_are_reported_and_the_sync_goes_on() {
    let Some(backend) = s3_backend() else {
        return;
    };
    let (endpoint, bucket) = emulator("SKYFUSE_TEST_S3_ENDPOINT").unwrap();
    let scenario = Scenario::new(backend, "odd-key");
    scenario
        .put_all(
            ["a.txt", "m.txt", "z.txt"]
                .iter()
                .map(|key| (scenario.key(key), format!("words of {key}").into_bytes()))
                .collect(),
        )
        .await;
    let first = scenario.run().await;
    assert_eq!(first.progress.indexed, 3, "{first:#?}");

    let prefix = &scenario.prefix;
    raw_put(
        &endpoint,
        &format!("/{bucket}/{prefix}/up/../escape.txt"),
        b"dots",
    )
    .await;
    raw_put(
        &endpoint,
        &format!("/{bucket}/{prefix}/odd//b.txt"),
        b"empty segment",
    )
    .await;
    scenario.backend.seeder.delete(&scenario.key("m.txt")).await;
    scenario
        .put_all(vec![(
            scenario.key("zz.txt"),
            b"after the odd keys".to_vec(),
        )])
        .await;
    let second = scenario.run().await;
    assert!(
        second.listing_errors.is_empty(),
        "{:?}",
        second.listing_errors
    );
    let mut failures: Vec<(String, String)> = second
        .failures
        .iter()
        .map(|issue| {
            (
                issue.object_key.replace(prefix.as_str(), "P"),
                issue.reason.clone(),
            )
        })
        .collect();
    failures.sort();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert_eq!(failures[0].0, "P/odd//b.txt");
    assert!(failures[0].1.contains("empty segment"), "{failures:?}");
    assert_eq!(failures[1].0, "P/up/../escape.txt");
    assert!(failures[1].1.contains(".."), "{failures:?}");
    assert_eq!(
        (
            second.progress.indexed,
            second.progress.deleted,
            second.progress.failed
        ),
        (1, 1, 2),
        "{:?}",
        second.progress
    );
    assert_eq!(
        scenario
            .committed_objects()
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        ["a.txt", "z.txt", "zz.txt"]
    );
}

// ---------------------------------------------------------------------------------------------
// Through the front doors: the Index RPC with a [[bucket]] entry, and the CLI with only the
// standard AWS variables

/// Starts the real gRPC server on 127.0.0.1:0 with `config`; `env` is what secret
/// locations resolve against.
async fn grpc_server(
    config: &str,
    env: std::collections::HashMap<String, String>,
) -> (tonic::transport::Channel, tokio::sync::oneshot::Sender<()>) {
    use skyfuse::api::{Listeners, serve};
    let config = skyfuse::config::Config::parse(config, std::path::Path::new("/")).unwrap();
    let service = Arc::new(
        skyfuse::service::Service::build(config, &env)
            .await
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let listeners = Listeners {
        grpc: listener,
        openai: None,
        metrics: None,
    };
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        serve(service, listeners, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (channel, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_rpc_streams_progress_and_reports_every_issue_by_kind() {
    use skyfuse::api::proto;
    use skyfuse::api::proto::ingestion_service_client::IngestionServiceClient;
    use skyfuse::api::proto::retrieval_service_client::RetrievalServiceClient;
    let Some(backend) = s3_backend() else {
        return;
    };
    let (endpoint, bucket) = emulator("SKYFUSE_TEST_S3_ENDPOINT").unwrap();
    let scenario = Scenario::new(backend, "rpc");
    let mut objects: Vec<(String, Vec<u8>)> = (0..40).map(document).collect();
    objects.push((
        "notes/harbour.md".into(),
        b"# Harbour\n\nThe harbour master logs tonnage.".to_vec(),
    ));
    objects.push((
        "notes/cut.txt.gz".into(),
        b"\x1f\x8b\x08\x00 not all there".to_vec(),
    ));
    objects.push(("notes/logo.png".into(), vec![0x89, b'P', b'N', b'G']));
    objects.push(("drafts/later.md".into(), b"# Later\n\nNot yet.".to_vec()));
    scenario
        .put_all(
            objects
                .into_iter()
                .map(|(key, bytes)| (scenario.key(&key), bytes))
                .collect(),
        )
        .await;
    let data_dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{data_dir}"

[[source]]
id = "bm25"
kind = "tantivy"

[[index]]
id = "docs"
sources = ["bm25"]

[[bucket]]
url = "s3://{bucket}"
endpoint = "{endpoint}"
allow_http = true
region = "eu-west-3"
access_key_id = "env:RPC_TEST_KEY_ID"
secret_access_key = "env:RPC_TEST_SECRET"
exclude = ["**/drafts/**"]
"#,
        data_dir = data_dir.path().display()
    );
    let env = std::collections::HashMap::from([
        ("RPC_TEST_KEY_ID".to_owned(), "test".to_owned()),
        ("RPC_TEST_SECRET".to_owned(), "test".to_owned()),
    ]);
    let (channel, _shutdown) = grpc_server(&config, env).await;

    let mut stream = IngestionServiceClient::new(channel.clone())
        .index(proto::IndexRequest {
            url: scenario.url(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        events.push(event);
    }
    let last = events.last().unwrap().clone();
    assert!(last.done, "{last:?}");
    assert_eq!(
        (
            last.listed,
            last.excluded,
            last.fetched,
            last.indexed,
            last.skipped,
            last.failed
        ),
        (43, 1, 42, 41, 1, 1),
        "{last:?}"
    );
    assert_eq!(last.chunks, 41);
    assert!(last.bytes > 0 && last.chunks_per_second > 0.0, "{last:?}");
    // Progress grows monotonically towards the final counts.
    assert!(
        events
            .windows(2)
            .all(|pair| pair[0].indexed <= pair[1].indexed)
    );
    let issues: BTreeMap<i32, Vec<&str>> =
        last.failures
            .iter()
            .fold(BTreeMap::new(), |mut issues, issue| {
                issues
                    .entry(issue.kind)
                    .or_default()
                    .push(issue.key.as_str());
                issues
            });
    assert_eq!(issues.len(), 2, "{:?}", last.failures);
    assert!(issues[&(proto::IssueKind::Failed as i32)][0].ends_with("notes/cut.txt.gz"));
    assert!(issues[&(proto::IssueKind::Skipped as i32)][0].ends_with("notes/logo.png"));

    let response = RetrievalServiceClient::new(channel)
        .search(proto::SearchRequest {
            query: "harbour tonnage".into(),
            top_k: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let top = &response.hits[0];
    assert!(top.object_key.ends_with("notes/harbour.md"), "{response:?}");
    // An endpoint and no `cloud` in the entry: someone's S3-compatible server, not AWS.
    assert_eq!(
        (top.cloud.as_str(), top.region.as_str()),
        ("s3-compatible", "eu-west-3")
    );
}

/// Puts `bytes` at `key` with S3 user metadata (`x-amz-meta-<name>: <value>`).
async fn put_with_user_metadata(
    store: &object_store::aws::AmazonS3,
    key: &str,
    bytes: &[u8],
    metadata: &[(&'static str, &str)],
) {
    let attributes = object_store::Attributes::from_iter(metadata.iter().map(|(name, value)| {
        (
            object_store::Attribute::Metadata((*name).into()),
            value.to_string(),
        )
    }));
    let options = object_store::PutOptions {
        attributes,
        ..Default::default()
    };
    store
        .put_opts(&raw_path(key), bytes.to_vec().into(), options)
        .await
        .unwrap_or_else(|error| panic!("seeding {key}: {error}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_user_metadata_is_kept_on_every_chunk_and_filters_a_search() {
    use skyfuse::api::proto;
    use skyfuse::api::proto::field_condition::Test;
    use skyfuse::api::proto::ingestion_service_client::IngestionServiceClient;
    use skyfuse::api::proto::retrieval_service_client::RetrievalServiceClient;
    let Some((endpoint, bucket)) = emulator("SKYFUSE_TEST_S3_ENDPOINT") else {
        return;
    };
    let store = moto_store(&endpoint, &bucket);
    let prefix = unique_prefix("user-metadata");
    let key = |relative: &str| format!("{prefix}/{relative}");
    // Names in any case: S3 sends them as lowercased headers. `owner` is not kept.
    put_with_user_metadata(
        &store,
        &key("harbour.md"),
        b"# Harbour\n\nThe harbour master logs tonnage at the quay.",
        &[("Team", "harbour"), ("owner", "someone@example.com")],
    )
    .await;
    put_with_user_metadata(
        &store,
        &key("billing.md"),
        b"# Tonnage dues\n\nThe harbour bills tonnage dues every month.",
        &[("team", "billing")],
    )
    .await;
    // Every record of the object gets its metadata, unless the record has the field itself.
    put_with_user_metadata(
        &store,
        &key("logs.jsonl"),
        concat!(
            r#"{"id": "r1", "text": "Harbour tonnage log for the quay, kept by the night shift."}"#,
            "\n",
            r#"{"id": "r2", "text": "Harbour tonnage log copied to the port authority.", "team": "port"}"#,
            "\n"
        )
        .as_bytes(),
        &[("team", "harbour")],
    )
    .await;
    let data_dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{data_dir}"

[[source]]
id = "bm25"
kind = "tantivy"

[[index]]
id = "docs"
sources = ["bm25"]
metadata_fields = ["team"]

[[bucket]]
url = "s3://{bucket}"
endpoint = "{endpoint}"
allow_http = true
region = "us-east-1"
access_key_id = "env:META_TEST_KEY_ID"
secret_access_key = "env:META_TEST_SECRET"
"#,
        data_dir = data_dir.path().display()
    );
    let env = std::collections::HashMap::from([
        ("META_TEST_KEY_ID".to_owned(), "test".to_owned()),
        ("META_TEST_SECRET".to_owned(), "test".to_owned()),
    ]);
    let (channel, _shutdown) = grpc_server(&config, env).await;
    let mut stream = IngestionServiceClient::new(channel.clone())
        .index(proto::IndexRequest {
            url: format!("s3://{bucket}/{prefix}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(event) = stream.message().await.unwrap() {
        last = Some(event);
    }
    let last = last.unwrap();
    assert_eq!((last.indexed, last.failed), (3, 0), "{last:?}");

    let search = |team: Option<&str>| {
        let mut client = RetrievalServiceClient::new(channel.clone());
        let filter = team.map(|team| proto::Filter {
            kind: Some(proto::filter::Kind::Condition(proto::FieldCondition {
                field: "metadata.team".into(),
                test: Some(Test::Eq(team.into())),
            })),
        });
        async move {
            client
                .search(proto::SearchRequest {
                    query: "harbour tonnage".into(),
                    top_k: 10,
                    filter,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let ids = |response: proto::SearchResponse| -> BTreeSet<String> {
        response
            .hits
            .into_iter()
            .map(|hit| hit.doc_id.rsplit('/').next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(search(None).await).len(), 4, "every document matches");
    assert_eq!(
        ids(search(Some("harbour")).await),
        BTreeSet::from(["harbour.md".to_owned(), "logs.jsonl#r1".to_owned()])
    );
    assert_eq!(
        ids(search(Some("billing")).await),
        BTreeSet::from(["billing.md".to_owned()])
    );
    assert_eq!(
        ids(search(Some("port")).await),
        BTreeSet::from(["logs.jsonl#r2".to_owned()])
    );
}

/// User metadata set through `store` reaches every chunk of its object when the index
/// names it, whatever case the name was written in, and nothing else does.
async fn user_metadata_reaches_every_chunk(backend: Backend, store: Arc<dyn ObjectStore>) {
    let name = backend.name;
    let scenario = Scenario::new(backend, "user-metadata-lib");
    let attributes = object_store::Attributes::from_iter([
        (
            object_store::Attribute::Metadata("Team".into()),
            "harbour".to_owned(),
        ),
        (
            object_store::Attribute::Metadata("owner".into()),
            "someone".to_owned(),
        ),
    ]);
    let key = scenario.key("logs.jsonl");
    let records = concat!(
        r#"{"id": "r1", "text": "First log line."}"#,
        "\n",
        r#"{"id": "r2", "text": "Second log line.", "team": "port"}"#,
        "\n"
    );
    store
        .put_opts(
            &raw_path(&key),
            records.as_bytes().to_vec().into(),
            object_store::PutOptions {
                attributes,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|error| panic!("{name}: seeding {key}: {error}"));
    let mut job = scenario.job();
    job.metadata_fields = vec!["team".into()];
    let report = run_index(job, |_| {}).await.unwrap();
    assert_eq!(report.progress.indexed, 1, "{name}: {report:?}");
    let mut teams: Vec<(String, BTreeMap<String, String>)> = scenario
        .store
        .committed()
        .into_iter()
        .map(|chunk| {
            let record = chunk.chunk.doc_id.rsplit('#').next().unwrap().to_owned();
            (record, chunk.chunk.metadata.fields)
        })
        .collect();
    teams.sort();
    let team = |value: &str| BTreeMap::from([("team".to_owned(), value.to_owned())]);
    assert_eq!(
        teams,
        [
            ("r1".to_owned(), team("harbour")),
            ("r2".to_owned(), team("port"))
        ],
        "{name}: the object's metadata, unless the record has its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_user_metadata_reaches_every_chunk_on_moto() {
    let Some(backend) = s3_backend() else {
        return;
    };
    let (endpoint, bucket) = emulator("SKYFUSE_TEST_S3_ENDPOINT").unwrap();
    user_metadata_reaches_every_chunk(backend, Arc::new(moto_store(&endpoint, &bucket))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_user_metadata_reaches_every_chunk_on_azurite() {
    let Some(backend) = azure_backend() else {
        return;
    };
    let (endpoint, bucket) = emulator("SKYFUSE_TEST_AZURE_ENDPOINT").unwrap();
    let store = MicrosoftAzureBuilder::new()
        .with_account(AZURITE_ACCOUNT)
        .with_access_key(AZURITE_KEY)
        .with_endpoint(format!("{endpoint}/{AZURITE_ACCOUNT}"))
        .with_allow_http(true)
        .with_container_name(&bucket)
        .build()
        .unwrap();
    user_metadata_reaches_every_chunk(backend, Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_indexes_an_s3_url_with_only_the_standard_aws_variables() {
    let Some(backend) = s3_backend() else {
        return;
    };
    let (endpoint, _) = emulator("SKYFUSE_TEST_S3_ENDPOINT").unwrap();
    let scenario = Scenario::new(backend, "cli");
    scenario
        .put_all(vec![
            (
                scenario.key("ops/runbook.md"),
                b"# Runbook\n\nRestart the ingest worker when the queue stalls.".to_vec(),
            ),
            (
                scenario.key("ops/pager.txt"),
                b"Page the storage team for disk alerts.".to_vec(),
            ),
        ])
        .await;
    // No --config, run from a folder of its own: the embedded default (BM25 + MiniLM)
    // keeps its data and finds its model in the skyfuse home.
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let model = std::env::var_os("SKYFUSE_MODEL_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2"),
        PathBuf::from,
    );
    std::fs::create_dir(home.path().join("models")).unwrap();
    std::os::unix::fs::symlink(&model, home.path().join("models/all-MiniLM-L6-v2")).unwrap();
    let skyfuse = |arguments: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_skyfuse"))
            .args(arguments)
            .current_dir(work.path())
            .env_remove("SKYFUSE_CONFIG")
            .env_remove("SKYFUSE_MODEL_DIR")
            .env("SKYFUSE_HOME", home.path())
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{arguments:?}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let first = skyfuse(&["index", &scenario.url()]);
    assert!(
        first.contains("2 listed") && first.contains("2 indexed"),
        "{first}"
    );
    let again = skyfuse(&["index", &scenario.url()]);
    assert!(
        again.contains("0 fetched") && again.contains("2 unchanged"),
        "{again}"
    );
    let hits = skyfuse(&["search", "ingest worker restart", "--explain"]);
    let first_hit = hits.lines().next().unwrap_or_default();
    assert!(first_hit.contains("ops/runbook.md"), "{hits}");
    // An endpoint from AWS_ENDPOINT_URL is someone's S3-compatible server, not AWS itself.
    assert!(
        hits.contains("stored in s3-compatible / us-east-1"),
        "{hits}"
    );
    assert!(home.path().join("indexes/local/manifests").is_dir());
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
}

// ---------------------------------------------------------------------------------------------
// An object deleted between the listing and the read

/// Lists like the store it wraps, but an object named in `vanishing` is deleted the moment
/// someone tries to read it: the race a live bucket has between list and get.
#[derive(Debug)]
struct VanishingStore {
    inner: InMemory,
    vanishing: Mutex<BTreeSet<String>>,
}

impl std::fmt::Display for VanishingStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "VanishingStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for VanishingStore {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: object_store::PutPayload,
        options: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.inner.put_opts(location, payload, options).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        options: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, options).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        let vanishes = self.vanishing.lock().unwrap().remove(location.as_ref());
        if vanishes {
            self.inner.delete(location).await?;
        }
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[tokio::test]
async fn object_deleted_between_list_and_get_fails_alone_and_keeps_its_chunks_until_gone() {
    let bucket = Arc::new(VanishingStore {
        inner: InMemory::new(),
        vanishing: Mutex::default(),
    });
    for index in 0..5 {
        let (key, bytes) = document(index);
        bucket
            .put(&raw_path(&format!("team/{key}")), bytes.into())
            .await
            .unwrap();
    }
    let store = RecordingStore::new();
    let state = tempfile::tempdir().unwrap();
    let run = || {
        let backend: Arc<dyn SearchBackend> = store.clone();
        let object_store: Arc<dyn ObjectStore> = bucket.clone();
        let mut job = IndexJob::new(
            "gs://reports/team",
            vec![backend],
            None,
            state.path().join("manifest.json"),
        );
        job.object_store = Some(object_store);
        run_index(job, |_| {})
    };
    let first = run().await.unwrap();
    assert_eq!(first.progress.indexed, 5);

    // doc 1 changes, then disappears while the run reads it; doc 3 changes normally.
    let changed = |index: usize| format!("Document {index}, second edition.").into_bytes();
    let doc_1 = raw_path(&format!("team/{}", document(1).0));
    let doc_3 = raw_path(&format!("team/{}", document(3).0));
    bucket.put(&doc_1, changed(1).into()).await.unwrap();
    bucket.put(&doc_3, changed(3).into()).await.unwrap();
    bucket.vanishing.lock().unwrap().insert(doc_1.to_string());
    let second = run().await.unwrap();
    assert_eq!(second.failures.len(), 1, "{second:#?}");
    assert_eq!(second.failures[0].object_key, doc_1.as_ref());
    assert!(
        second.failures[0]
            .reason
            .contains("vanished between listing and reading"),
        "{:?}",
        second.failures
    );
    assert_eq!((second.progress.indexed, second.progress.unchanged), (1, 3));
    let texts = |key: &str| -> Vec<std::sync::Arc<str>> {
        store
            .committed()
            .into_iter()
            .filter(|chunk| chunk.chunk.object_key.ends_with(key))
            .map(|chunk| chunk.chunk.text)
            .collect()
    };
    assert!(texts(&document(3).0)[0].contains("second edition"));
    // Unreadable is not gone: the last indexed version stays searchable.
    assert!(texts(&document(1).0)[0].contains("explains subject number 1"));

    // The next listing no longer has it: now its chunks go.
    let third = run().await.unwrap();
    assert_eq!(
        (third.progress.deleted, third.failures.len()),
        (1, 0),
        "{third:#?}"
    );
    assert!(texts(&document(1).0).is_empty());
    assert_eq!(store.committed().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_mode_picks_up_a_new_object_on_the_next_tick() {
    let Some(backend) = s3_backend() else {
        return;
    };
    let (endpoint, bucket) = emulator("SKYFUSE_TEST_S3_ENDPOINT").unwrap();
    let scenario = Scenario::new(backend, "watch");
    scenario
        .put_all(vec![(
            scenario.key("first.txt"),
            b"the first note".to_vec(),
        )])
        .await;
    let data_dir = tempfile::tempdir().unwrap();
    let config = data_dir.path().join("skyfuse.toml");
    std::fs::write(&config, skyfuse_config(data_dir.path(), &endpoint, &bucket)).unwrap();
    let mut command = skyfuse_index(&config, &scenario.url());
    command
        .arg("--watch")
        .arg("1")
        .stdout(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    // Summary lines, read on a thread: the child's stdout is a blocking pipe.
    let (lines, summaries) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("indexed ") && lines.send(line).is_err() {
                return;
            }
        }
    });
    let next_summary = || {
        summaries
            .recv_timeout(Duration::from_secs(60))
            .expect("a sync summary within 60 s")
    };
    let first = next_summary();
    assert!(first.contains("1 indexed"), "{first}");
    scenario
        .put_all(vec![(
            scenario.key("second.txt"),
            b"the second note".to_vec(),
        )])
        .await;
    // A tick may have started before the put: wait for the run that sees it.
    let mut seen = Vec::new();
    let picked_up = loop {
        let summary = next_summary();
        seen.push(summary.clone());
        if summary.contains("1 indexed") {
            break summary;
        }
        assert!(seen.len() < 5, "{seen:#?}");
    };
    assert!(picked_up.contains("1 unchanged"), "{picked_up}");
    child.kill().unwrap();
    child.wait().unwrap();
}
