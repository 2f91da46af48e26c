//! Pipeline tests on tempdir folders, with an in-memory store and a deterministic embedder.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::producer::{ObjectResult, process_object};
use super::*;
use crate::document::{Chunk, EmbeddedChunk, Hit};
use crate::embed::{EmbeddingSpace, Purpose};
use crate::ingest::manifest::temporary_path_for;
use crate::stores::{SourceInfo, StoreQuery};
use object_store::ObjectMeta;
use object_store::path::Path as ObjectPath;

const DIMS: usize = 8;
/// Text the fake embedder refuses as invalid input.
const REFUSED_BY_EMBEDDER: &str = "REFUSED-BY-EMBEDDER";

/// Deterministic unit vectors derived from the text, counting its calls.
struct FakeEmbedder {
    space: EmbeddingSpace,
    calls: AtomicUsize,
}

impl FakeEmbedder {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            space: EmbeddingSpace {
                id: "fake".to_owned(),
                model: "fake-model".to_owned(),
                dims: DIMS,
            },
            calls: AtomicUsize::new(0),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn fake_vector(text: &str) -> Vec<f32> {
    let digest = Sha256::digest(text.as_bytes());
    let raw: Vec<f32> = digest[..DIMS]
        .iter()
        .map(|&byte| f32::from(byte) + 1.0)
        .collect();
    let norm = raw.iter().map(|value| value * value).sum::<f32>().sqrt();
    raw.into_iter().map(|value| value / norm).collect()
}

#[async_trait]
impl Embedder for FakeEmbedder {
    fn space(&self) -> &EmbeddingSpace {
        &self.space
    }

    async fn embed(&self, texts: &[String], purpose: Purpose) -> Result<Vec<Vec<f32>>> {
        assert_eq!(purpose, Purpose::Document);
        self.calls.fetch_add(1, Ordering::SeqCst);
        // Like a provider refusing an input too long for its model.
        if texts.iter().any(|text| text.contains(REFUSED_BY_EMBEDDER)) {
            return Err(Error::invalid("input is too long for the model"));
        }
        Ok(texts.iter().map(|text| fake_vector(text)).collect())
    }
}

#[derive(Default)]
struct StoreState {
    live: BTreeMap<String, EmbeddedChunk>,
    committed: BTreeMap<String, EmbeddedChunk>,
    upsert_calls: usize,
    upserted_chunks: usize,
    deleted_keys: Vec<String>,
    commits: usize,
    /// Fail the upsert call with this 1-based number, once.
    fail_upsert_call: Option<usize>,
    /// Hold the next commit until the test lets it go.
    commit_gate: Option<CommitGate>,
}

/// A commit that tells the test it started, then waits for the test's word.
struct CommitGate {
    started: tokio::sync::oneshot::Sender<()>,
    proceed: tokio::sync::oneshot::Receiver<()>,
}

/// Records every write; `commit` snapshots what a restart would still see.
struct MemoryStore {
    info: SourceInfo,
    state: Mutex<StoreState>,
    /// The bucket folder the pipeline prefixes keys with; stripped so tests read short keys.
    key_prefix: Mutex<String>,
}

impl MemoryStore {
    fn new(id: &str, kind: StoreKind) -> Arc<Self> {
        let is_dense = kind == StoreKind::Dense;
        Arc::new(Self {
            info: SourceInfo {
                id: id.to_owned(),
                backend: "memory".to_owned(),
                kind,
                space: is_dense.then(|| "fake".to_owned()),
                dims: is_dense.then_some(DIMS),
                cloud: "local".to_owned(),
                region: "here".to_owned(),
            },
            state: Mutex::new(StoreState::default()),
            key_prefix: Mutex::new(String::new()),
        })
    }

    fn short_key(&self, key: &str) -> String {
        let prefix = self.key_prefix.lock().unwrap();
        key.strip_prefix(prefix.as_str()).unwrap_or(key).to_owned()
    }

    fn dense() -> Arc<Self> {
        Self::new("memory-dense", StoreKind::Dense)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, StoreState> {
        self.state.lock().unwrap()
    }

    fn committed_object_keys(&self) -> BTreeSet<String> {
        let state = self.state();
        let chunks = state.committed.values();
        chunks
            .map(|embedded| embedded.chunk.object_key.clone())
            .collect()
    }

    fn committed_chunks_of(&self, object_key: &str) -> Vec<Chunk> {
        let state = self.state();
        let chunks = state.committed.values();
        chunks
            .filter(|embedded| embedded.chunk.object_key == object_key)
            .map(|embedded| embedded.chunk.clone())
            .collect()
    }

    fn upserted_chunks(&self) -> usize {
        self.state().upserted_chunks
    }

    fn commits(&self) -> usize {
        self.state().commits
    }
}

#[async_trait]
impl SearchBackend for MemoryStore {
    fn describe(&self) -> &SourceInfo {
        &self.info
    }

    async fn search(&self, _query: &StoreQuery) -> Result<Vec<Hit>> {
        Ok(Vec::new())
    }

    async fn upsert(&self, chunks: &[EmbeddedChunk]) -> Result<()> {
        let mut state = self.state();
        state.upsert_calls += 1;
        if state.fail_upsert_call == Some(state.upsert_calls) {
            state.fail_upsert_call = None;
            return Err(Error::unavailable("fake store is down"));
        }
        for embedded in chunks {
            if self.info.kind == StoreKind::Dense {
                assert_eq!(embedded.vector.len(), DIMS, "dense stores get vectors");
            }
            let mut embedded = embedded.clone();
            embedded.chunk.object_key = self.short_key(&embedded.chunk.object_key);
            embedded.chunk.doc_id = self.short_key(&embedded.chunk.doc_id);
            embedded.chunk.chunk_id = self.short_key(&embedded.chunk.chunk_id);
            state.live.insert(embedded.chunk.chunk_id.clone(), embedded);
        }
        state.upserted_chunks += chunks.len();
        Ok(())
    }

    async fn delete_objects(&self, object_keys: &[String]) -> Result<()> {
        let object_keys: Vec<String> = object_keys.iter().map(|key| self.short_key(key)).collect();
        let mut state = self.state();
        state
            .live
            .retain(|_, embedded| !object_keys.contains(&embedded.chunk.object_key));
        state.deleted_keys.extend(object_keys);
        Ok(())
    }

    async fn commit(&self) -> Result<()> {
        let gate = self.state().commit_gate.take();
        if let Some(CommitGate { started, proceed }) = gate {
            let _ = started.send(());
            let _ = proceed.await;
        }
        let mut state = self.state();
        state.committed = state.live.clone();
        state.commits += 1;
        Ok(())
    }

    async fn count(&self) -> Result<u64> {
        Ok(self.state().live.len() as u64)
    }
}

/// A bucket folder, a manifest outside it, one dense store and the fake embedder.
struct Fixture {
    bucket: tempfile::TempDir,
    state_folder: tempfile::TempDir,
    store: Arc<MemoryStore>,
    embedder: Arc<FakeEmbedder>,
}

impl Fixture {
    fn new() -> Self {
        let fixture = Self {
            bucket: tempfile::tempdir().unwrap(),
            state_folder: tempfile::tempdir().unwrap(),
            store: MemoryStore::dense(),
            embedder: FakeEmbedder::new(),
        };
        fixture.strip_bucket_prefix(&fixture.store);
        fixture
    }

    /// The pipeline qualifies keys with the bucket folder; `store` reports them short.
    fn strip_bucket_prefix(&self, store: &MemoryStore) {
        let root = self.bucket.path().canonicalize().unwrap();
        *store.key_prefix.lock().unwrap() = format!("{}/", root.display());
    }

    fn manifest_path(&self) -> PathBuf {
        self.state_folder.path().join("manifest.json")
    }

    fn manifest(&self) -> Manifest {
        let source = format!(
            "file://{}",
            self.bucket.path().canonicalize().unwrap().display()
        );
        Manifest::load_or_new(&self.manifest_path(), &source).unwrap()
    }

    fn write(&self, relative_path: &str, contents: impl AsRef<[u8]>) {
        let path = self.bucket.path().join(relative_path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    fn remove(&self, relative_path: &str) {
        std::fs::remove_file(self.bucket.path().join(relative_path)).unwrap();
    }

    fn job(&self) -> IndexJob {
        let mut job = IndexJob::new(
            self.bucket.path().to_str().unwrap(),
            vec![self.store.clone() as Arc<dyn SearchBackend>],
            Some(self.embedder.clone() as Arc<dyn Embedder>),
            self.manifest_path(),
        );
        job.chunking = ChunkingConfig {
            max_words: 8,
            overlap_words: 2,
            ..ChunkingConfig::default()
        };
        job.embed_batch_size = 4;
        job.fetch_concurrency = 3;
        job
    }

    async fn run(&self) -> IndexReport {
        run_index(self.job(), |_| {})
            .await
            .expect("index run succeeds")
    }
}

fn words(count: usize, prefix: &str) -> String {
    (0..count)
        .map(|number| format!("{prefix}{number}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Two files reusing record ids, as two exports of one system would.
fn write_two_files_sharing_ids(fixture: &Fixture) {
    fixture.write(
        "a.jsonl",
        "{\"id\": \"1\", \"text\": \"alpha one\"}\n{\"id\": \"2\", \"text\": \"alpha two\"}\n",
    );
    fixture.write(
        "b.json",
        r#"[{"id": "1", "text": "beta one"}, {"id": "3", "text": "beta three"}]"#,
    );
}

#[tokio::test]
async fn record_ids_shared_by_two_files_stay_two_documents_by_default() {
    let fixture = Fixture::new();
    write_two_files_sharing_ids(&fixture);
    let report = fixture.run().await;
    assert_eq!(report.progress.indexed, 2);
    assert!(
        report.record_problems.is_empty(),
        "{:?}",
        report.record_problems
    );
    let doc_ids: BTreeSet<String> = fixture
        .store
        .state()
        .committed
        .values()
        .map(|embedded| embedded.chunk.doc_id.clone())
        .collect();
    let expected = ["a.jsonl#1", "a.jsonl#2", "b.json#1", "b.json#3"];
    assert_eq!(doc_ids, expected.map(str::to_owned).into());

    // Re-syncing one object deletes exactly its own chunks.
    fixture.remove("b.json");
    fixture.run().await;
    assert_eq!(fixture.store.committed_chunks_of("a.jsonl").len(), 2);
    assert!(fixture.store.committed_chunks_of("b.json").is_empty());
}

#[tokio::test]
async fn a_global_record_id_reused_by_another_object_is_reported_and_the_first_kept() {
    let fixture = Fixture::new();
    fixture.write("a.jsonl", "{\"id\": \"1\", \"text\": \"alpha one\"}\n");
    let mut job = fixture.job();
    job.record_ids = RecordIdScope::Global;
    run_index(job, |_| {}).await.unwrap();
    fixture.write(
        "b.json",
        r#"[{"id": "1", "text": "beta one"}, {"id": "3", "text": "beta three"}]"#,
    );
    let mut job = fixture.job();
    job.record_ids = RecordIdScope::Global;
    let report = run_index(job, |_| {}).await.unwrap();

    assert_eq!(report.progress.record_problems, 1);
    let problem = &report.record_problems[0];
    assert_eq!(problem.object_key, "b.json");
    assert!(
        problem.reason.contains("\"1\" is already used by a.jsonl"),
        "{problem:?}"
    );
    let first = &fixture.store.committed_chunks_of("a.jsonl");
    assert_eq!((first.len(), &*first[0].text), (1, "alpha one"));
    let second = fixture.store.committed_chunks_of("b.json");
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].doc_id, "3");
    // The manifest gives b.json only what it wrote, so its re-sync never touches "1".
    assert_eq!(fixture.manifest().objects["b.json"].chunk_ids, ["3#0"]);
    fixture.remove("b.json");
    let mut job = fixture.job();
    job.record_ids = RecordIdScope::Global;
    run_index(job, |_| {}).await.unwrap();
    assert_eq!(fixture.store.committed_chunks_of("a.jsonl").len(), 1);
}

#[tokio::test]
async fn beir_corpus_gives_one_document_per_line_with_its_id() {
    let fixture = Fixture::new();
    fixture.write(
        "scifact/corpus.jsonl",
        concat!(
            r#"{"_id": "4983", "title": "Microstructural development", "text": "Alterations of the architecture of cerebral white matter.", "metadata": {}}"#,
            "\n",
            r#"{"_id": "5836", "title": "Myelodysplasia", "text": "Induction of myelodysplasia by myeloid-derived suppressor cells.", "metadata": {}}"#,
            "\n",
        ),
    );
    let report = fixture.run().await;

    assert_eq!(report.progress.indexed, 1);
    assert_eq!(report.progress.listed, 1);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let chunks = fixture.store.committed_chunks_of("scifact/corpus.jsonl");
    let doc_ids: BTreeSet<_> = chunks.iter().map(|chunk| chunk.doc_id.as_str()).collect();
    assert_eq!(
        doc_ids,
        BTreeSet::from(["scifact/corpus.jsonl#4983", "scifact/corpus.jsonl#5836"])
    );
    let first = chunks
        .iter()
        .find(|chunk| chunk.chunk_id == "scifact/corpus.jsonl#4983#0")
        .unwrap();
    assert_eq!(&*first.title, "Microstructural development");
    assert!(first.text.starts_with("Alterations of the"));
    assert_eq!(report.progress.chunks_written, chunks.len() as u64);

    let state = fixture.store.state();
    for embedded in state.committed.values() {
        let norm: f32 = embedded
            .vector
            .iter()
            .map(|value| value * value)
            .sum::<f32>()
            .sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}

#[tokio::test]
async fn rerun_skips_unchanged_reindexes_modified_and_deletes_removed() {
    let fixture = Fixture::new();
    fixture.write("a.txt", words(5, "alpha"));
    fixture.write("docs/b.md", format!("# Bee\n\n{}", words(20, "old")));
    fixture.write("site/c.html", "<title>See</title><p>gamma delta</p>");
    let first = fixture.run().await;
    assert_eq!(first.progress.indexed, 3);
    assert_eq!(first.progress.listed, 3);
    let old_b_chunks = fixture.store.committed_chunks_of("docs/b.md");
    assert!(old_b_chunks.len() >= 3, "{old_b_chunks:?}");
    assert_eq!(fixture.manifest().objects.len(), 3);

    // Unchanged folder: nothing is read, embedded, written or committed.
    let upserts_before = fixture.store.upserted_chunks();
    let commits_before = fixture.store.commits();
    let embed_calls_before = fixture.embedder.calls();
    let second = fixture.run().await;
    assert_eq!(second.progress.unchanged, 3);
    assert_eq!(second.progress.fetched, 0);
    assert_eq!(second.progress.indexed, 0);
    assert_eq!(fixture.store.upserted_chunks(), upserts_before);
    assert_eq!(fixture.store.commits(), commits_before);
    assert_eq!(fixture.embedder.calls(), embed_calls_before);

    // Modified (now shorter) and removed.
    fixture.write("docs/b.md", "# Bee\n\nnew words only");
    fixture.remove("site/c.html");
    let third = fixture.run().await;
    assert_eq!(third.progress.indexed, 1);
    assert_eq!(third.progress.unchanged, 1);
    assert_eq!(third.progress.deleted, 1);
    let new_b_chunks = fixture.store.committed_chunks_of("docs/b.md");
    assert_eq!(new_b_chunks.len(), 1);
    assert!(new_b_chunks[0].text.contains("new words only"));
    assert_eq!(
        fixture.store.committed_object_keys(),
        BTreeSet::from(["a.txt".to_owned(), "docs/b.md".to_owned()])
    );
    let manifest = fixture.manifest();
    assert_eq!(
        manifest.objects.keys().cloned().collect::<Vec<_>>(),
        ["a.txt", "docs/b.md"]
    );
    let chunk_ids = &manifest.objects["docs/b.md"].chunk_ids;
    assert_eq!(chunk_ids.len(), 1);
    assert!(
        chunk_ids[0].ends_with("/docs/b.md#0"),
        "store chunk ids are qualified: {chunk_ids:?}"
    );
}

#[tokio::test]
async fn same_content_under_a_new_etag_writes_nothing() {
    let fixture = Fixture::new();
    fixture.write("a.txt", "same words");
    fixture.run().await;
    let upserts_before = fixture.store.upserted_chunks();
    let old_etag = fixture.manifest().objects["a.txt"].etag.clone();

    // Rewriting the file with another mtime changes its etag, but not its hash. The mtime
    // is set, not waited for: the clock's granularity decides nothing.
    fixture.write("a.txt", "same words");
    let rewritten_at = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(fixture.bucket.path().join("a.txt"))
        .and_then(|file| file.set_modified(rewritten_at))
        .unwrap();
    let report = fixture.run().await;
    assert_eq!(report.progress.unchanged, 1);
    assert_eq!(report.progress.fetched, 1, "a new etag means a read");
    assert_eq!(fixture.store.upserted_chunks(), upserts_before);
    let new_etag = fixture.manifest().objects["a.txt"].etag.clone();
    assert_ne!(
        new_etag, old_etag,
        "a re-read object's new etag is remembered"
    );
}

#[tokio::test]
async fn problem_files_are_counted_and_reported_while_the_rest_is_indexed() {
    let fixture = Fixture::new();
    fixture.write("good.txt", "plain good text");
    fixture.write("binary.txt", b"abc\0def");
    fixture.write("latin1.txt", b"caf\xe9 au lait");
    fixture.write("empty.md", "");
    fixture.write("big.txt", "x ".repeat(600));
    fixture.write("picture.png", b"\x89PNG");
    fixture.write(
        "mixed.jsonl",
        "{\"_id\": \"1\", \"text\": \"first\"}\n{not json\n{\"_id\": \"3\", \"text\": \"third\"}\n",
    );
    let mut job = fixture.job();
    job.max_object_bytes = 1000;
    let mut progress_calls = 0;
    let report = run_index(job, |_| progress_calls += 1).await.unwrap();

    let progress = &report.progress;
    assert_eq!(progress.listed, 7);
    assert_eq!(progress.indexed, 2);
    assert_eq!(progress.failed, 2);
    assert_eq!(progress.skipped, 3);
    assert_eq!(progress.record_problems, 1);
    assert_eq!(progress.processed(), 7);
    // The too-large file and the image are never read.
    assert_eq!(progress.fetched, 5);
    assert!(progress_calls >= 7);

    let failed: BTreeMap<_, _> = report
        .failures
        .iter()
        .map(|issue| (issue.object_key.as_str(), issue.reason.as_str()))
        .collect();
    assert!(failed["binary.txt"].contains("binary"), "{failed:?}");
    assert!(failed["latin1.txt"].contains("utf-8"), "{failed:?}");
    let skipped: BTreeMap<_, _> = report
        .skips
        .iter()
        .map(|issue| (issue.object_key.as_str(), issue.reason.as_str()))
        .collect();
    assert!(skipped["empty.md"].contains("empty"), "{skipped:?}");
    assert!(skipped["big.txt"].contains("too large"), "{skipped:?}");
    assert!(
        skipped["picture.png"].contains("unsupported"),
        "{skipped:?}"
    );
    assert_eq!(report.record_problems[0].object_key, "mixed.jsonl:2");

    assert_eq!(
        fixture.store.committed_object_keys(),
        BTreeSet::from(["good.txt".to_owned(), "mixed.jsonl".to_owned()])
    );
    assert_eq!(fixture.store.committed_chunks_of("mixed.jsonl").len(), 2);
    // The broken files are remembered as failed, with no chunks; skipped ones are not.
    let manifest = fixture.manifest();
    let (failed, indexed): (Vec<_>, Vec<_>) = manifest
        .objects
        .iter()
        .partition(|(_, entry)| entry.failure.is_some());
    assert_eq!(indexed.len(), 2);
    let failed: BTreeSet<&str> = failed.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(failed, BTreeSet::from(["binary.txt", "latin1.txt"]));
}

#[tokio::test]
async fn indexed_object_that_becomes_unusable_loses_its_old_chunks() {
    let fixture = Fixture::new();
    fixture.write("a.txt", "fine text");
    fixture.write("b.txt", "also fine");
    fixture.run().await;

    fixture.write("a.txt", b"now \0 binary");
    let report = fixture.run().await;
    assert_eq!(report.progress.failed, 1);
    assert_eq!(
        fixture.store.committed_object_keys(),
        BTreeSet::from(["b.txt".to_owned()])
    );
    let manifest = fixture.manifest();
    assert!(!manifest.has_chunks("a.txt"));
    assert!(
        manifest.objects["a.txt"]
            .failure
            .as_deref()
            .unwrap()
            .contains("binary")
    );
}

#[tokio::test]
async fn failing_store_leaves_the_manifest_without_unwritten_objects_and_a_rerun_converges() {
    let fixture = Fixture::new();
    for number in 0..5 {
        fixture.write(
            &format!("doc{number}.txt"),
            format!("document number {number}"),
        );
    }
    // One chunk per object, one object per batch, one commit per batch.
    let mut job = fixture.job();
    job.embed_batch_size = 1;
    job.commit_every_chunks = 1;
    job.fetch_concurrency = 1;
    fixture.store.state().fail_upsert_call = Some(3);
    let error = run_index(job, |_| {}).await.unwrap_err();
    assert!(error.message.contains("fake store is down"), "{error}");
    assert!(error.message.contains("memory-dense"), "{error}");

    let manifest = fixture.manifest();
    assert_eq!(manifest.objects.len(), 2, "{manifest:?}");
    let committed = fixture.store.committed_object_keys();
    for object_key in manifest.objects.keys() {
        assert!(
            committed.contains(object_key),
            "manifest lists only committed objects"
        );
    }

    let report = fixture.run().await;
    assert_eq!(report.progress.unchanged, 2);
    assert_eq!(report.progress.indexed, 3);
    assert_eq!(fixture.store.committed_object_keys().len(), 5);
    assert_eq!(
        fixture.store.state().committed.len(),
        5,
        "no duplicated chunks"
    );
    assert_eq!(fixture.manifest().objects.len(), 5);
}

/// A run dropped while its manifest save waits for a blocking thread must not have that
/// save land later: the crash is the drop, and the next run must find the manifest as the
/// drop left it. One blocking thread, held by the test, makes the order certain.
#[test]
fn a_run_dropped_during_its_manifest_save_writes_nothing_afterwards() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .build()
        .unwrap();
    runtime.block_on(async {
        let fixture = Fixture::new();
        fixture.write("a.txt", "first words");
        fixture.run().await;
        let manifest_before = std::fs::read_to_string(fixture.manifest_path()).unwrap();

        fixture.write("b.txt", "second words");
        let (started, commit_started) = tokio::sync::oneshot::channel();
        let (let_commit_proceed, proceed) = tokio::sync::oneshot::channel();
        fixture.store.state().commit_gate = Some(CommitGate { started, proceed });
        // Boxed, so that `drop` below really drops the run.
        let mut run = Box::pin(run_index(fixture.job(), |_| {}));
        tokio::select! {
            result = &mut run => panic!("the run was meant to stop at its commit: {result:?}"),
            started = commit_started => started.unwrap(),
        }

        // Take the only blocking thread, so that the save can only queue behind it.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (holding, thread_held) = tokio::sync::oneshot::channel();
        let occupant = tokio::task::spawn_blocking(move || {
            let _ = holding.send(());
            let _ = released.recv();
        });
        thread_held.await.unwrap();
        let_commit_proceed.send(()).unwrap();
        // The commit ends, then the run queues its manifest save and waits for it.
        assert!(futures::poll!(&mut run).is_pending());
        assert_eq!(fixture.store.commits(), 2, "the second run committed");

        drop(run); // the crash
        release.send(()).unwrap();
        occupant.await.unwrap();
        // The blocking queue runs in order: the save, if it runs, is done before this.
        tokio::task::spawn_blocking(|| ()).await.unwrap();

        assert_eq!(
            std::fs::read_to_string(fixture.manifest_path()).unwrap(),
            manifest_before,
            "nothing of the dropped run wrote the manifest after the drop"
        );
        assert!(!temporary_path_for(&fixture.manifest_path()).exists());
        let report = fixture.run().await;
        assert_eq!(
            (report.progress.unchanged, report.progress.indexed),
            (1, 1),
            "the next run redoes what the manifest did not record"
        );
    });
}

#[tokio::test]
async fn lost_manifest_reindexes_without_leftovers() {
    // As if killed after the stores committed but before the manifest was saved.
    let fixture = Fixture::new();
    fixture.write("a.txt", words(30, "long"));
    fixture.run().await;
    assert!(fixture.store.committed_chunks_of("a.txt").len() > 1);
    std::fs::remove_file(fixture.manifest_path()).unwrap();

    fixture.write("a.txt", "short now");
    let report = fixture.run().await;
    assert_eq!(report.progress.indexed, 1);
    let chunks = fixture.store.committed_chunks_of("a.txt");
    assert_eq!(
        chunks.len(),
        1,
        "old chunks were removed before the rewrite"
    );
    assert!(
        fixture
            .store
            .state()
            .deleted_keys
            .contains(&"a.txt".to_owned())
    );
}

#[tokio::test]
async fn single_file_file_url_and_relative_path_all_work() {
    let fixture = Fixture::new();
    fixture.write("one.md", "# One\n\nbody");
    fixture.write("two.txt", "second");

    let file_path = fixture.bucket.path().join("one.md");
    let mut job = fixture.job();
    job.url = file_path.to_str().unwrap().to_owned();
    job.manifest_path = fixture.state_folder.path().join("single.json");
    let report = run_index(job, |_| {}).await.unwrap();
    assert_eq!((report.progress.listed, report.progress.indexed), (1, 1));
    assert_eq!(
        &*fixture.store.committed_chunks_of("one.md")[0].title,
        "One"
    );

    let url = url::Url::from_directory_path(fixture.bucket.path()).unwrap();
    let mut job = fixture.job();
    job.url = url.to_string();
    job.manifest_path = fixture.state_folder.path().join("url.json");
    let report = run_index(job, |_| {}).await.unwrap();
    assert_eq!(report.progress.indexed, 2);

    let mut job = fixture.job();
    job.url = relative_path_to(fixture.bucket.path());
    assert!(!Path::new(&job.url).is_absolute());
    job.manifest_path = fixture.state_folder.path().join("relative.json");
    let report = run_index(job, |_| {}).await.unwrap();
    assert_eq!(report.progress.indexed, 2);
}

/// `target` spelled relative to the current directory, without changing it.
fn relative_path_to(target: &Path) -> String {
    let current = std::env::current_dir().unwrap().canonicalize().unwrap();
    let target = target.canonicalize().unwrap();
    let depth = current.components().count() - 1;
    let mut relative = PathBuf::new();
    for _ in 0..depth {
        relative.push("..");
    }
    relative.push(target.strip_prefix("/").unwrap());
    relative.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn manifest_inside_the_indexed_folder_is_not_indexed() {
    let fixture = Fixture::new();
    fixture.write("a.txt", "text");
    let mut job = fixture.job();
    job.manifest_path = fixture.bucket.path().join("state/manifest.json");
    run_index(job, |_| {}).await.unwrap();
    let mut job = fixture.job();
    job.manifest_path = fixture.bucket.path().join("state/manifest.json");
    let report = run_index(job, |_| {}).await.unwrap();
    assert_eq!(report.progress.listed, 1);
    assert_eq!(report.progress.unchanged, 1);
}

#[tokio::test]
async fn lexical_only_stores_need_no_embedder() {
    let fixture = Fixture::new();
    fixture.write("a.txt", "some words");
    let store = MemoryStore::new("memory-bm25", StoreKind::Lexical);
    fixture.strip_bucket_prefix(&store);
    let mut job = fixture.job();
    job.stores = vec![store.clone() as Arc<dyn SearchBackend>];
    job.embedder = None;
    let report = run_index(job, |_| {}).await.unwrap();
    assert_eq!(report.progress.indexed, 1);
    assert_eq!(store.committed_object_keys().len(), 1);
    assert_eq!(
        store
            .state()
            .committed
            .values()
            .next()
            .unwrap()
            .vector
            .len(),
        0
    );
}

#[tokio::test]
async fn adding_a_store_reindexes_into_both() {
    let fixture = Fixture::new();
    fixture.write("a.txt", "some words");
    fixture.run().await;
    let second_store = MemoryStore::new("memory-second", StoreKind::Dense);
    fixture.strip_bucket_prefix(&second_store);
    let mut job = fixture.job();
    job.stores.push(second_store.clone());
    let report = run_index(job, |_| {}).await.unwrap();
    assert_eq!(report.progress.indexed, 1);
    assert_eq!(second_store.committed_object_keys().len(), 1);
}

#[tokio::test]
async fn invalid_jobs_are_refused_before_any_work() {
    let fixture = Fixture::new();
    let mut job = fixture.job();
    job.embedder = None;
    let error = run_index(job, |_| {}).await.unwrap_err();
    assert!(error.message.contains("no embedder"), "{error}");

    let mut job = fixture.job();
    job.chunking.overlap_words = job.chunking.max_words;
    assert!(run_index(job, |_| {}).await.is_err());

    let mut job = fixture.job();
    job.embed_batch_size = 0;
    assert!(run_index(job, |_| {}).await.is_err());

    let mut job = fixture.job();
    job.url = fixture
        .bucket
        .path()
        .join("missing")
        .to_str()
        .unwrap()
        .to_owned();
    let error = run_index(job, |_| {}).await.unwrap_err();
    assert_eq!(error.kind, crate::error::ErrorKind::NotFound);

    // A scheme no cloud client handles is refused before any request is made.
    let mut job = fixture.job();
    job.url = "ftp://bucket/prefix".to_owned();
    let error = run_index(job, |_| {}).await.unwrap_err();
    assert!(error.message.contains("not a bucket URL"), "{error}");
    assert!(!fixture.manifest_path().exists());
}

#[tokio::test]
async fn manifest_of_another_folder_is_refused() {
    let fixture = Fixture::new();
    fixture.write("a.txt", "text");
    fixture.run().await;
    let other = tempfile::tempdir().unwrap();
    let mut job = fixture.job();
    job.url = other.path().to_str().unwrap().to_owned();
    let error = run_index(job, |_| {}).await.unwrap_err();
    assert!(error.message.contains("belongs to"), "{error}");
    assert_eq!(fixture.store.committed_object_keys().len(), 1);
}

#[tokio::test]
async fn object_gone_between_listing_and_reading_is_a_read_failure() {
    let context = Arc::new(ProducerContext {
        key_prefix: String::new(),
        store: Arc::new(object_store::memory::InMemory::new()),
        previous: Manifest::new("memory"),
        settings: "s".to_owned(),
        chunking: ChunkingConfig::default(),
        max_chunks_per_object: DEFAULT_MAX_CHUNKS_PER_OBJECT,
        max_object_bytes: DEFAULT_MAX_OBJECT_BYTES,
        extractor: Extractor::InProcess,
        location: BucketLocation::default(),
        record_ids: RecordIdScope::PerObject,
        metadata_fields: Vec::new(),
        namespace: None,
    });
    let meta = ObjectMeta {
        location: ObjectPath::from("gone.txt"),
        last_modified: Default::default(),
        size: 5,
        e_tag: Some("\"e\"".to_owned()),
        version: None,
    };
    let processed = process_object(context, meta).await;
    assert_eq!(processed.object_key, "gone.txt");
    assert_eq!(processed.bytes_read, None);
    let ObjectResult::Failed {
        reason,
        content_problem,
        record,
    } = processed.result
    else {
        panic!("expected a failure");
    };
    assert!(reason.contains("vanished"), "{reason}");
    assert!(
        !content_problem,
        "an unreadable object keeps its old chunks"
    );
    assert!(record.is_none(), "an unreadable object is retried");
}

#[test]
fn the_run_future_can_be_spawned() {
    fn assert_send<T: Send>(_: &T) {}
    let fixture = Fixture::new();
    let run = run_index(fixture.job(), |_| {});
    assert_send(&run);
}

#[tokio::test]
async fn progress_is_reported_per_object_and_ends_with_the_final_counts() {
    let fixture = Fixture::new();
    for number in 0..6 {
        fixture.write(&format!("d{number}.txt"), words(20, "w"));
    }
    let mut snapshots = Vec::new();
    let report = run_index(fixture.job(), |progress| snapshots.push(progress.clone()))
        .await
        .unwrap();
    assert!(snapshots.len() >= 6);
    assert_eq!(snapshots.last(), Some(&report.progress));
    assert!(
        snapshots
            .windows(2)
            .all(|pair| pair[0].chunks_written <= pair[1].chunks_written)
    );
    assert_eq!(report.progress.indexed, 6);
    assert!(report.progress.bytes_read > 0);
}

#[tokio::test]
async fn same_named_files_in_two_folders_stay_apart_in_the_stores() {
    let first = Fixture::new();
    let second = tempfile::tempdir().unwrap();
    first.write("README.md", "# First\n\nalpha words here");
    std::fs::write(
        second.path().join("README.md"),
        "# Second\n\nbeta words here",
    )
    .unwrap();
    let store = MemoryStore::dense();
    let stores = vec![store.clone() as Arc<dyn SearchBackend>];
    let embedder = Some(first.embedder.clone() as Arc<dyn Embedder>);
    for (folder, manifest) in [
        (first.bucket.path(), "one.json"),
        (second.path(), "two.json"),
    ] {
        let job = IndexJob::new(
            folder.display().to_string(),
            stores.clone(),
            embedder.clone(),
            first.state_folder.path().join(manifest),
        );
        run_index(job, |_| {}).await.unwrap();
    }
    let keys = store.committed_object_keys();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter()
            .all(|key| key.starts_with('/') && key.ends_with("/README.md"))
    );
    // Re-indexing the second folder after its file is gone deletes only its own chunks.
    // Its listing is now empty, which without `prune` keeps what was indexed (an unmounted
    // folder must not wipe the stores); with `prune` the chunks go.
    std::fs::remove_file(second.path().join("README.md")).unwrap();
    let second_job = || {
        IndexJob::new(
            second.path().display().to_string(),
            stores.clone(),
            embedder.clone(),
            first.state_folder.path().join("two.json"),
        )
    };
    let report = run_index(second_job(), |_| {}).await.unwrap();
    assert_eq!(report.progress.deleted, 0);
    assert_eq!(report.progress.kept_not_pruned, 1);
    assert_eq!(store.committed_object_keys().len(), 2);
    let mut job = second_job();
    job.prune = true;
    let report = run_index(job, |_| {}).await.unwrap();
    assert_eq!(report.progress.deleted, 1);
    let keys = store.committed_object_keys();
    assert_eq!(keys.len(), 1);
    assert!(
        keys.iter().next().unwrap().contains(
            &first
                .bucket
                .path()
                .canonicalize()
                .unwrap()
                .display()
                .to_string()
        )
    );
}

#[tokio::test]
async fn globs_select_objects_and_a_newly_excluded_object_loses_its_chunks() {
    let fixture = Fixture::new();
    fixture.write("guide/intro.md", "# Intro\n\nwelcome aboard");
    fixture.write("guide/drafts/wip.md", "# Wip\n\nnot ready");
    fixture.write("top.txt", "top level words");
    fixture.write("deep/nested/notes.txt", "nested words");
    let all = fixture.run().await;
    assert_eq!(all.progress.indexed, 4);

    let mut job = fixture.job();
    job.bucket.include = vec!["**/*.md".into(), "*.txt".into()];
    job.bucket.exclude = vec!["**/drafts/**".into()];
    let filtered = run_index(job, |_| {}).await.unwrap();
    assert_eq!(filtered.progress.listed, 2, "{:?}", filtered.progress);
    assert_eq!(filtered.progress.excluded, 2);
    assert_eq!(filtered.progress.deleted, 2);
    assert_eq!(
        fixture.store.committed_object_keys(),
        BTreeSet::from(["guide/intro.md".to_owned(), "top.txt".to_owned()])
    );

    let mut job = fixture.job();
    job.bucket.include = vec!["[".into()];
    let error = run_index(job, |_| {}).await.unwrap_err();
    assert!(error.message.contains("include glob"), "{error}");
}

#[tokio::test]
async fn every_chunk_carries_the_bucket_cloud_and_region_and_relabelling_rewrites_them() {
    let fixture = Fixture::new();
    fixture.write("a.txt", "words about residency");
    fixture.write("b.txt", "more words about residency");
    let report = fixture.run().await;
    assert_eq!(
        (
            report.location.cloud.as_str(),
            report.location.region.as_str()
        ),
        ("local", "local")
    );
    let labels = |fixture: &Fixture| -> BTreeSet<(String, String)> {
        let state = fixture.store.state();
        state
            .committed
            .values()
            .map(|embedded| (embedded.chunk.cloud.clone(), embedded.chunk.region.clone()))
            .collect()
    };
    assert_eq!(
        labels(&fixture),
        BTreeSet::from([("local".to_owned(), "local".to_owned())])
    );

    // Same content, new labels: the chunks must not keep claiming the old location.
    let mut job = fixture.job();
    job.bucket.cloud = Some("oci".into());
    job.bucket.region = Some("eu-frankfurt-1".into());
    let report = run_index(job, |_| {}).await.unwrap();
    assert_eq!(report.progress.indexed, 2, "{:?}", report.progress);
    assert_eq!(
        labels(&fixture),
        BTreeSet::from([("oci".to_owned(), "eu-frankfurt-1".to_owned())])
    );
    let manifest = fixture.manifest();
    assert_eq!(
        (manifest.cloud.as_deref(), manifest.region.as_deref()),
        (Some("oci"), Some("eu-frankfurt-1"))
    );
}

#[tokio::test]
async fn size_limit_gzip_and_pdf_with_broken_ones_reported_by_name() {
    let fixture = Fixture::new();
    fixture.write("big.txt", "word ".repeat(1000));
    fixture.write("small.txt", "tiny");
    fixture.write(
        "notes.md.gz",
        crate::ingest::gzip::tests::gzip(b"# Notes\n\ncompressed words"),
    );
    fixture.write(
        "report.pdf",
        crate::ingest::pdf::tests::pdf_bytes("Harbour tonnage rose"),
    );
    fixture.write(
        "cut.txt.gz",
        &crate::ingest::gzip::tests::gzip(&[b'a'; 3000])[..30],
    );
    fixture.write(
        "locked.pdf",
        crate::ingest::pdf::tests::encrypted_pdf_bytes("board minutes", "hunter2"),
    );
    let mut job = fixture.job();
    job.max_object_bytes = 2000;
    let report = run_index(job, |_| {}).await.unwrap();
    assert_eq!(report.progress.indexed, 3, "{report:#?}");
    assert_eq!(report.progress.fetched, 5, "the large object is not read");
    assert_eq!(report.skips.len(), 1);
    assert!(
        report.skips[0].reason.contains("too large"),
        "{:?}",
        report.skips
    );
    let mut failures: Vec<(&str, &str)> = report
        .failures
        .iter()
        .map(|issue| (issue.object_key.as_str(), issue.reason.as_str()))
        .collect();
    failures.sort();
    assert_eq!(
        failures,
        [
            ("cut.txt.gz", "truncated gzip: the stream ends early"),
            ("locked.pdf", "encrypted pdf: it needs a password")
        ]
    );
    let pdf = fixture.store.committed_chunks_of("report.pdf");
    assert!(pdf[0].text.contains("Harbour tonnage rose"), "{pdf:?}");
}

#[tokio::test]
async fn a_broken_object_is_remembered_and_not_read_again_until_it_changes() {
    let fixture = Fixture::new();
    fixture.write("good.txt", "alpha beta gamma");
    fixture.write("bad.json", "{\"text\": ");
    let first = fixture.run().await;
    assert_eq!((first.progress.indexed, first.progress.failed), (1, 1));
    assert!(
        first.failures[0].reason.starts_with("malformed json"),
        "{first:?}"
    );
    let entry = &fixture.manifest().objects["bad.json"];
    assert!(
        entry
            .failure
            .as_deref()
            .unwrap()
            .starts_with("malformed json")
    );
    assert!(entry.chunk_ids.is_empty());

    let second = fixture.run().await;
    assert_eq!(second.progress.known_bad, 1, "{second:?}");
    assert_eq!((second.progress.failed, second.progress.fetched), (0, 0));
    assert!(
        second.known_bad[0].reason.contains("malformed json"),
        "{second:?}"
    );

    fixture.write("bad.json", "{\"text\": \"fixed now\"}");
    let third = fixture.run().await;
    assert_eq!((third.progress.indexed, third.progress.known_bad), (1, 0));
    assert!(fixture.manifest().objects["bad.json"].failure.is_none());
}

#[tokio::test]
async fn an_indexed_object_that_breaks_loses_its_chunks_and_is_remembered() {
    let fixture = Fixture::new();
    fixture.write("doc.json", "{\"text\": \"first version\"}");
    fixture.run().await;
    assert_eq!(fixture.store.committed_object_keys().len(), 1);
    fixture.write("doc.json", "{\"text\": ");
    let report = fixture.run().await;
    assert_eq!(report.progress.failed, 1);
    assert!(fixture.store.committed_object_keys().is_empty());
    assert!(fixture.manifest().objects["doc.json"].failure.is_some());
    assert_eq!(fixture.run().await.progress.known_bad, 1);
}

#[tokio::test]
async fn an_object_the_embedder_refuses_fails_alone_and_the_run_goes_on() {
    let fixture = Fixture::new();
    for index in 0..6 {
        fixture.write(
            &format!("ok{index}.txt"),
            format!("ordinary text number {index}"),
        );
    }
    fixture.write(
        "refused.txt",
        format!("fine words. {REFUSED_BY_EMBEDDER} and more"),
    );
    let report = fixture.run().await;
    assert_eq!(
        (report.progress.indexed, report.progress.failed),
        (6, 1),
        "{report:?}"
    );
    assert_eq!(report.failures[0].object_key, "refused.txt");
    assert!(report.failures[0].reason.contains("too long"), "{report:?}");
    let committed = fixture.store.committed_object_keys();
    assert_eq!(committed.len(), 6);
    assert!(!committed.iter().any(|key| key.contains("refused")));
    assert!(fixture.manifest().objects["refused.txt"].failure.is_some());
    assert_eq!(fixture.run().await.progress.known_bad, 1);
}

#[tokio::test]
async fn an_object_with_too_many_chunks_fails_with_the_limit_named() {
    let fixture = Fixture::new();
    fixture.write("huge.txt", "word ".repeat(1_000));
    fixture.write("small.txt", "a few words");
    let mut job = fixture.job();
    job.max_chunks_per_object = 10;
    let report = run_index(job, |_| {}).await.unwrap();
    assert_eq!((report.progress.indexed, report.progress.failed), (1, 1));
    assert!(
        report.failures[0].reason.contains("more than 10 chunks"),
        "{report:?}"
    );
}

#[tokio::test]
async fn an_api_document_whose_write_fails_is_unlisted_and_a_retry_leaves_only_its_new_chunks() {
    use super::documents::{DocumentsManifest, NewDocument, key_prefix_of, upsert_documents};
    let fixture = Fixture::new();
    let mut job = fixture.job();
    job.manifest_path = fixture.state_folder.path().join("api-documents.json");
    let prefix = key_prefix_of("docs", None);
    let no_bucket_ids = std::collections::HashMap::new();
    let document = |text: String| NewDocument {
        id: "a".to_owned(),
        text,
        ..NewDocument::default()
    };
    let first = upsert_documents(
        &job,
        &prefix,
        vec![document(words(20, "old"))],
        &no_bucket_ids,
    )
    .await
    .unwrap();
    assert_eq!(first.chunks_written, 3);

    // The store fails while the shorter text is written: its old chunks are gone, so the
    // manifest must not claim the document any more.
    let next_call = fixture.store.state().upsert_calls + 1;
    fixture.store.state().fail_upsert_call = Some(next_call);
    let error = upsert_documents(
        &job,
        &prefix,
        vec![document(words(4, "new"))],
        &no_bucket_ids,
    )
    .await
    .unwrap_err();
    assert!(error.message.contains("fake store is down"), "{error}");
    let manifest = DocumentsManifest::load_or_new(&job.manifest_path).unwrap();
    assert!(manifest.documents.is_empty(), "{manifest:?}");

    let retried = upsert_documents(
        &job,
        &prefix,
        vec![document(words(4, "new"))],
        &no_bucket_ids,
    )
    .await
    .unwrap();
    assert_eq!((retried.written, retried.chunks_written), (1, 1));
    let chunks = fixture.store.committed_chunks_of("api/docs/a");
    assert_eq!(chunks.len(), 1, "{chunks:?}");
    assert_eq!(&*chunks[0].text, "new0 new1 new2 new3");
    let manifest = DocumentsManifest::load_or_new(&job.manifest_path).unwrap();
    assert_eq!(manifest.documents["a"].chunk_ids, vec!["api/docs/a#0"]);

    // A bucket sync beside it removes its own objects only.
    fixture.write("b.txt", "bucket words");
    fixture.write("c.txt", "more bucket words");
    fixture.run().await;
    fixture.remove("b.txt");
    assert_eq!(fixture.run().await.progress.deleted, 1);
    assert_eq!(fixture.store.committed_chunks_of("api/docs/a").len(), 1);
    assert!(fixture.store.committed_chunks_of("b.txt").is_empty());
}
