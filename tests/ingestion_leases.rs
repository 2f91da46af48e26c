//! Ingestion leases and shared manifests on a real Redis: one replica syncs an
//! (index, bucket) at a time, and when it dies mid-sync another one resumes from the
//! manifest in Redis once the lease expires, losing and duplicating nothing.
//!
//! Replicas are `skyfuse index` processes (each runs the whole service in process and
//! calls its `Index` RPC), so the holder can be killed with SIGKILL: no cleanup runs,
//! its lease is never released. They write into one OpenSearch (the in-process fake
//! on loopback), which holds one `_bulk` request unanswered to stop the holder
//! mid-sync at a point the test chooses, whatever the machine's load.
//!
//! Redis comes from `SKYFUSE_TEST_REDIS_URL` (scripts/test.sh starts `redis-server`);
//! without it the tests skip, unless `CI` or `SKYFUSE_REQUIRE_TOOLS` is set.

#[path = "stores/support/opensearch_fake.rs"]
mod opensearch_fake;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use opensearch_fake::{FakeAuth, FakeOpenSearch};
use skyfuse::config::SharedStateConfig;
use skyfuse::error::ErrorKind;
use skyfuse::ingest::manifest::Manifest;
use skyfuse::state::{HeldLease, LeaseSubject, RedisStore, SharedManifest};

#[path = "common/redis.rs"]
mod redis_support;
use redis_support::{fresh_prefix, manifest_entry, redis_url};

/// Waits for `condition`, failing after a generous bound (a hang guard, not a timing
/// assertion).
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn store(redis_url: &str, prefix: &str) -> Arc<RedisStore> {
    let config: SharedStateConfig = toml::from_str(&format!(
        "redis_url = \"env:SKYFUSE_REDIS_URL\"\nkey_prefix = \"{prefix}\"\ntimeout_ms = 2000\nlease_ttl_ms = 6000"
    ))
    .unwrap();
    let env = HashMap::from([("SKYFUSE_REDIS_URL".to_string(), redis_url.to_string())]);
    Arc::new(RedisStore::connect(&config, &env, Arc::default()).unwrap())
}

async fn redis_connection(redis_url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_lease_has_one_holder_and_a_holder_that_lost_it_cannot_save_its_manifest() {
    let Some(redis_url) = redis_url() else {
        return;
    };
    let store = store(&redis_url, &fresh_prefix("lease"));
    let subject = LeaseSubject {
        index: "docs".into(),
        bucket: "s3://reports".into(),
        slot: "docs:0123456789abcdef".into(),
    };
    let ttl = Duration::from_millis(6000);
    let holder = HeldLease::acquire(&store, subject.clone(), ttl)
        .await
        .unwrap();

    // A second run is told who holds the bucket and until when, and gets nothing.
    let refusal = HeldLease::acquire(&store, subject.clone(), ttl)
        .await
        .err()
        .expect("a held lease is not taken twice");
    assert_eq!(refusal.kind, ErrorKind::Unavailable);
    let retry_after = refusal.retry_after.expect("the refusal says when to retry");
    assert!(
        retry_after > Duration::ZERO && retry_after <= ttl,
        "{retry_after:?}"
    );
    let (replica, run) = holder.holder().rsplit_once('/').unwrap();
    for part in [
        "s3://reports is being synced by replica",
        replica,
        run,
        "until",
    ] {
        assert!(refusal.message.contains(part), "{part}: {refusal}");
    }

    // The manifest round-trips through Redis, removals included.
    let mut manifest = Manifest::new("s3://reports");
    manifest.cloud = Some("aws".into());
    manifest.region = Some("eu-west-1".into());
    for key in ["a.txt", "b.txt", "c.txt"] {
        manifest.objects.insert(key.into(), manifest_entry(key));
    }
    let shared = SharedManifest::guarded_by(&holder);
    assert_eq!(
        shared.load("s3://reports").await.unwrap(),
        Manifest::new("s3://reports"),
        "no manifest yet: an empty one"
    );
    shared.save(&manifest).await.unwrap();
    manifest.objects.remove("b.txt");
    manifest
        .objects
        .insert("a.txt".into(), manifest_entry("a2"));
    shared.save(&manifest).await.unwrap();
    let reader = SharedManifest::guarded_by(&holder);
    assert_eq!(reader.load("s3://reports").await.unwrap(), manifest);
    let foreign = reader.load("s3://other").await.unwrap_err();
    assert!(
        foreign.message.contains("belongs to s3://reports"),
        "{foreign}"
    );

    // Another replica takes the bucket over (as after an expiry): the old holder's
    // saves are refused, its renewal notices, and its release leaves the new lease.
    let lease_key = subject.lease_key(&store);
    let mut redis = redis_connection(&redis_url).await;
    let _: () = redis::cmd("SET")
        .arg(&lease_key)
        .arg("other-host:1/run")
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut stale = manifest.clone();
    stale.objects.clear();
    let fenced = shared.save(&stale).await.unwrap_err();
    assert_eq!(fenced.kind, ErrorKind::Unavailable);
    assert!(fenced.message.contains("no longer holds"), "{fenced}");
    assert_eq!(
        reader.load("s3://reports").await.unwrap(),
        manifest,
        "the fenced save changed nothing"
    );
    tokio::time::timeout(Duration::from_secs(60), holder.lost())
        .await
        .expect("the renewal notices the takeover");
    assert!(holder.lost_error().message.contains("lease"));
    holder.release().await;
    let still: String = redis::cmd("GET")
        .arg(&lease_key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(still, "other-host:1/run");
}

// ---------------------------------------------------------------------------------------------
// Three replicas, the holder killed with SIGKILL mid-sync.

const FILES: usize = 12;
/// The `_bulk` that never answers: one chunk per file and one `_bulk` per chunk, so the
/// holder stops after writing six files (three commits of two).
const HANGING_BULK: usize = 7;

fn replica_config(data_dir: &Path, docs: &Path, opensearch: &str, prefix: &str) -> String {
    format!(
        r#"
[server]
data_dir = "{data}"

[ingest]
roots = ["{docs}"]

[[source]]
id = "search"
kind = "opensearch"
role = "lexical"
url = "{opensearch}"
index = "docs"
create_missing = true
# A held write must hold the run, not be retried past.
max_retries = 0
write_timeout_ms = 600000

[[index]]
id = "docs"
sources = ["search"]
embed_batch_size = 1
commit_every_chunks = 2

[shared_state]
redis_url = "env:SKYFUSE_REDIS_URL"
key_prefix = "{prefix}"
# Short enough for the test to wait out, long enough that a loaded machine's
# scheduling never makes a live holder miss its renewals.
timeout_ms = 500
lease_ttl_ms = 4000
"#,
        data = data_dir.display(),
        docs = docs.display(),
    )
}

/// One replica: its own data dir and config, the shared Redis and store.
struct Replica {
    config: std::path::PathBuf,
    data_dir: tempfile::TempDir,
}

impl Replica {
    fn new(docs: &Path, opensearch: &str, prefix: &str) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let config = data_dir.path().join("skyfuse.toml");
        std::fs::write(
            &config,
            replica_config(data_dir.path(), docs, opensearch, prefix),
        )
        .unwrap();
        Self { config, data_dir }
    }

    fn index(&self, docs: &Path, redis_url: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_skyfuse"));
        command
            .arg("--config")
            .arg(&self.config)
            .arg("index")
            .arg(docs)
            .env_remove("SKYFUSE_CONFIG")
            .env("SKYFUSE_REDIS_URL", redis_url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs until a run succeeds, retrying while another replica holds the lease.
    /// Returns how many objects the successful run indexed.
    fn index_until_done(&self, docs: &Path, redis_url: &str) -> u64 {
        let started = Instant::now();
        loop {
            let output = self.index(docs, redis_url).output().unwrap();
            if output.status.success() {
                return indexed_count(&output);
            }
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains("is being synced by replica"),
                "a run failed other than on the lease: {stderr}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the lease never came free: {stderr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A replica process, killed if the test fails before it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Running {
    type Target = std::process::Child;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// "indexed URL: 12 listed, 0 excluded, 6 fetched, 6 indexed, ..." -> 6.
fn indexed_count(output: &Output) -> u64 {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|line| line.starts_with("indexed "))
        .unwrap_or_else(|| panic!("no summary in {stdout}"));
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    // The first word is "indexed" too; the count comes before the second one.
    let position = 1 + words[1..]
        .iter()
        .position(|word| *word == "indexed")
        .unwrap_or_else(|| panic!("no indexed count in {line}"));
    words[position - 1].parse().unwrap()
}

/// The shared manifest's objects (every `manifest:` hash under `prefix`).
async fn shared_manifest_objects(redis_url: &str, prefix: &str) -> BTreeMap<String, String> {
    let mut redis = redis_connection(redis_url).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:manifest:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut objects = BTreeMap::new();
    for key in keys {
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        objects.extend(
            fields
                .into_iter()
                .filter_map(|(field, value)| Some((field.strip_prefix("object:")?.into(), value))),
        );
    }
    objects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_sync_is_resumed_by_another_with_nothing_lost_or_duplicated() {
    let Some(redis_url) = redis_url() else {
        return;
    };
    let prefix = fresh_prefix("kill9");
    let opensearch = FakeOpenSearch::start(FakeAuth::None).await;
    *opensearch.hang_bulk.lock().unwrap() = Some(HANGING_BULK);
    let docs = tempfile::tempdir().unwrap();
    let docs_path = docs.path().canonicalize().unwrap();
    // Chunk ids are the object's key under its root, qualified by the root.
    let (mut expected_ids, mut expected_keys) = (BTreeSet::new(), BTreeSet::new());
    for number in 0..FILES {
        let name = format!("note-{number:02}.txt");
        std::fs::write(
            docs_path.join(&name),
            format!("Note {number}: the harbour crane {number} was inspected."),
        )
        .unwrap();
        expected_ids.insert(format!("{}/{name}#0", docs_path.display()));
        expected_keys.insert(name);
    }
    let [first, second, third] =
        [(); 3].map(|()| Replica::new(&docs_path, &opensearch.url(), &prefix));

    // The first replica takes the lease and is held mid-sync by its seventh write.
    let mut holder = Running(first.index(&docs_path, &redis_url).spawn().unwrap());
    wait_for("the holder's held write", || {
        assert!(
            holder.try_wait().unwrap().is_none(),
            "the holder ended before its held write"
        );
        opensearch.bulks_hanging.load(Ordering::SeqCst) == 1
    })
    .await;
    let written_by_holder = opensearch.written_ids.lock().unwrap().clone();
    let committed_by_holder = shared_manifest_objects(&redis_url, &prefix).await;
    assert_eq!(written_by_holder.len(), HANGING_BULK - 1);
    assert_eq!(
        committed_by_holder.len(),
        written_by_holder.len(),
        "every write before the held one was committed and recorded in Redis"
    );

    // While it lives, another replica is refused, names it, and writes nothing.
    let bulks_before = opensearch.bulks_received.load(Ordering::SeqCst);
    let refused = second.index(&docs_path, &redis_url).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "two writers on one bucket");
    assert!(stderr.contains("is being synced by replica"), "{stderr}");
    assert!(
        stderr.contains(&format!(":{} (run ", holder.id())),
        "the refusal names the holder's process: {stderr}"
    );
    assert_eq!(
        opensearch.bulks_received.load(Ordering::SeqCst),
        bulks_before,
        "the refused replica wrote nothing"
    );

    // SIGKILL: no cleanup, the lease stays until it expires.
    holder.kill().unwrap();
    holder.wait().unwrap();

    // The two others race for the bucket; each retries until its own run succeeds.
    let resumers = [second, third].map(|replica| {
        let (docs_path, redis_url) = (docs_path.clone(), redis_url.clone());
        tokio::task::spawn_blocking(move || {
            let indexed = replica.index_until_done(&docs_path, &redis_url);
            (indexed, replica)
        })
    });
    let mut indexed = Vec::new();
    let mut replicas = vec![first];
    for resumer in resumers {
        let (count, replica) = resumer.await.unwrap();
        indexed.push(count);
        replicas.push(replica);
    }
    indexed.sort_unstable();
    assert_eq!(
        indexed,
        vec![0, (FILES - written_by_holder.len()) as u64],
        "one replica resumed exactly what the holder had not committed; the other found it all done"
    );

    // Nothing lost, nothing written twice, nothing extra.
    let written = opensearch.written_ids.lock().unwrap().clone();
    let distinct: BTreeSet<String> = written.iter().cloned().collect();
    assert_eq!(
        written.len(),
        distinct.len(),
        "a chunk was written twice: {written:?}"
    );
    assert_eq!(distinct, expected_ids);
    let stored: BTreeSet<String> = opensearch.document_ids("docs").into_iter().collect();
    assert_eq!(stored, expected_ids);
    let manifest = shared_manifest_objects(&redis_url, &prefix).await;
    assert_eq!(
        manifest.keys().cloned().collect::<BTreeSet<_>>(),
        expected_keys
    );
    // The manifest of remote stores lives in Redis only.
    for replica in &replicas {
        let manifests = replica.data_dir.path().join("manifests");
        let files = walk_files(&manifests);
        assert!(files.is_empty(), "manifest files beside Redis: {files:?}");
    }
}

fn walk_files(folder: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                walk_files(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_lease_is_taken_over_stops_writing_and_says_so() {
    let Some(redis_url) = redis_url() else {
        return;
    };
    let prefix = fresh_prefix("takeover");
    let opensearch = FakeOpenSearch::start(FakeAuth::None).await;
    // Held at its third write: two files written and committed.
    *opensearch.hang_bulk.lock().unwrap() = Some(3);
    let docs = tempfile::tempdir().unwrap();
    let docs_path = docs.path().canonicalize().unwrap();
    for number in 0..4 {
        std::fs::write(
            docs_path.join(format!("memo-{number}.txt")),
            format!("Memo {number} about the quay."),
        )
        .unwrap();
    }
    let replica = Replica::new(&docs_path, &opensearch.url(), &prefix);
    let mut holder = Running(replica.index(&docs_path, &redis_url).spawn().unwrap());
    let holder_pid = holder.id();
    wait_for("the holder's held write", || {
        assert!(
            holder.try_wait().unwrap().is_none(),
            "the holder ended before its held write"
        );
        opensearch.bulks_hanging.load(Ordering::SeqCst) == 1
    })
    .await;
    let manifest_before = shared_manifest_objects(&redis_url, &prefix).await;
    assert_eq!(manifest_before.len(), 2);

    // Another holder now owns the bucket (as after an expiry the holder missed).
    let mut redis = redis_connection(&redis_url).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:lease:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let holder_value: String = redis::cmd("GET")
        .arg(&keys[0])
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        holder_value.contains(&format!(":{holder_pid}/")),
        "{holder_value}"
    );
    let _: () = redis::cmd("SET")
        .arg(&keys[0])
        .arg("intruder:1/run")
        .query_async(&mut redis)
        .await
        .unwrap();

    // Its renewal finds out; the run stops with the reason, having written nothing more.
    wait_for("the holder to stop", || {
        holder.try_wait().unwrap().is_some()
    })
    .await;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut holder.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!holder.wait().unwrap().success());
    assert!(stderr.contains("ingestion lease"), "{stderr}");
    assert!(stderr.contains("was lost"), "{stderr}");
    assert_eq!(opensearch.written_ids.lock().unwrap().len(), 2);
    assert_eq!(
        shared_manifest_objects(&redis_url, &prefix).await,
        manifest_before
    );
    let still: String = redis::cmd("GET")
        .arg(&keys[0])
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        still, "intruder:1/run",
        "the stopped run left the new lease"
    );
}
