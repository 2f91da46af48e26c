//! Shared state on a real Redis Cluster and through a real Redis Sentinel: what only
//! those topologies can get wrong. (Budgets, rate limits, quotas and cooldowns across
//! three replicas on the cluster are tests/shared_state.rs's `_on_a_cluster` tests.)
//!
//! - Cluster: ingestion leases and their manifests for buckets whose keys live on
//!   different primaries (each fenced save is one script over two keys of one slot),
//!   and the cooldown catch-up reading keys spread over every primary.
//! - Sentinel: a budget through the primary the sentinel names, and after
//!   `SENTINEL FAILOVER` the same store reaches the new primary by itself.
//!
//! The servers come from `SKYFUSE_TEST_REDIS_CLUSTER_URL` and
//! `SKYFUSE_TEST_REDIS_SENTINEL_URL` (scripts/test.sh starts them on 127.0.0.1);
//! without them the tests skip, unless `CI` or `SKYFUSE_REQUIRE_TOOLS` is set.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use redis::aio::MultiplexedConnection;
use skyfuse::breaker::{BreakerSettings, CircuitBreaker};
use skyfuse::config::SharedStateConfig;
use skyfuse::ingest::manifest::Manifest;
use skyfuse::state::{HeldLease, LeaseSubject, RedisStore, SharedManifest, utc_day};

#[path = "common/redis.rs"]
mod redis_support;
use redis_support::{fresh_prefix, manifest_entry, redis_cluster_url, redis_sentinel_url};

/// Generous bounds that only stop a broken test from running forever.
const PATIENCE: Duration = Duration::from_secs(90);

fn store(redis_url: &str, prefix: &str) -> Arc<RedisStore> {
    let config: SharedStateConfig = toml::from_str(&format!(
        "redis_url = \"env:SKYFUSE_REDIS_URL\"\nkey_prefix = \"{prefix}\"\ntimeout_ms = 2000\nlease_ttl_ms = 6000"
    ))
    .unwrap();
    let env = HashMap::from([("SKYFUSE_REDIS_URL".to_string(), redis_url.to_string())]);
    Arc::new(RedisStore::connect(&config, &env, Arc::default()).unwrap())
}

/// The `127.0.0.1:PORT` addresses of a `redis+cluster://` or `redis+sentinel://` URL.
fn ports_of(url: &str) -> Vec<u16> {
    let hosts = url.split_once("://").unwrap().1;
    let hosts = hosts.split('/').next().unwrap();
    hosts
        .split(',')
        .map(|host| host.rsplit_once(':').unwrap().1.parse().unwrap())
        .collect()
}

/// A plain connection to one node (no cluster routing, no sentinel).
async fn node(port: u16) -> MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The primary that holds `key`: the one node that has it (the others answer MOVED).
async fn holder_of(nodes: &mut [(u16, MultiplexedConnection)], key: &str) -> u16 {
    let mut holders = Vec::new();
    for (port, connection) in nodes.iter_mut() {
        let exists: redis::RedisResult<i64> =
            redis::cmd("EXISTS").arg(key).query_async(connection).await;
        if exists == Ok(1) {
            holders.push(*port);
        }
    }
    assert_eq!(holders.len(), 1, "{key} is on exactly one primary");
    holders[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_manifests_work_on_every_primary_of_a_cluster() {
    let Some(url) = redis_cluster_url() else {
        return;
    };
    let prefix = fresh_prefix("cluster-lease");
    // Two replicas: two stores, each with its own cluster connection.
    let (replica_a, replica_b) = (store(&url, &prefix), store(&url, &prefix));
    let mut nodes = Vec::new();
    for port in ports_of(&url) {
        nodes.push((port, node(port).await));
    }
    let ttl = Duration::from_millis(6000);

    // Buckets until one lease lives on each primary (the slots are spread evenly).
    let mut by_primary: BTreeMap<u16, (LeaseSubject, HeldLease)> = BTreeMap::new();
    for bucket in 0..64 {
        if by_primary.len() == nodes.len() {
            break;
        }
        let subject = LeaseSubject {
            index: "docs".into(),
            bucket: format!("s3://bucket-{bucket}"),
            slot: format!("docs:{bucket:016x}"),
        };
        let lease = HeldLease::acquire(&replica_a, subject.clone(), ttl)
            .await
            .unwrap();
        let primary = holder_of(&mut nodes, &subject.lease_key(&replica_a)).await;
        match by_primary.entry(primary) {
            Entry::Occupied(_) => lease.release().await,
            Entry::Vacant(vacant) => {
                vacant.insert((subject, lease));
            }
        }
    }
    assert_eq!(
        by_primary.len(),
        3,
        "a lease on each of the three primaries"
    );

    for (primary, (subject, lease)) in by_primary {
        let refused = HeldLease::acquire(&replica_b, subject.clone(), ttl).await;
        assert!(
            refused.is_err(),
            "one holder per bucket, on primary {primary}"
        );

        let mut manifest = Manifest::new(&subject.bucket);
        for key in ["a.txt", "b.txt"] {
            manifest.objects.insert(key.into(), manifest_entry(key));
        }
        SharedManifest::guarded_by(&lease)
            .save(&manifest)
            .await
            .unwrap();
        assert_eq!(
            holder_of(&mut nodes, &subject.manifest_key(&replica_a)).await,
            primary,
            "the manifest lives beside its lease"
        );
        lease.release().await;

        // Replica B takes the bucket over and resumes from what A saved.
        let taken_over = HeldLease::acquire(&replica_b, subject.clone(), ttl)
            .await
            .unwrap();
        let resumed = SharedManifest::guarded_by(&taken_over);
        assert_eq!(resumed.load(&subject.bucket).await.unwrap(), manifest);
        manifest.objects.remove("a.txt");
        resumed.save(&manifest).await.unwrap();
        assert_eq!(
            SharedManifest::guarded_by(&taken_over)
                .load(&subject.bucket)
                .await
                .unwrap(),
            manifest
        );
        taken_over.release().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_starting_on_a_cluster_catches_up_with_cooldowns_on_every_primary() {
    let Some(url) = redis_cluster_url() else {
        return;
    };
    let prefix = fresh_prefix("cluster-cooldown");
    let publisher = store(&url, &prefix);
    let deployments: Vec<String> = (0..12).map(|n| format!("provider-{n}/llama")).collect();
    let until = tokio::time::Instant::now() + Duration::from_secs(600);
    for deployment in &deployments {
        publisher.publish_cooldown(deployment, until);
    }
    // The cooldown keys have no hash tag: they spread over the primaries.
    let mut nodes = Vec::new();
    for port in ports_of(&url) {
        nodes.push((port, node(port).await));
    }
    let key = |deployment: &str| format!("{prefix}:cooldown:{deployment}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut primaries = Vec::new();
    for deployment in &deployments {
        loop {
            let mut found = None;
            for (port, connection) in nodes.iter_mut() {
                let exists: redis::RedisResult<i64> = redis::cmd("EXISTS")
                    .arg(key(deployment))
                    .query_async(connection)
                    .await;
                if exists == Ok(1) {
                    found = Some(*port);
                }
            }
            if let Some(port) = found {
                primaries.push(port);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "cooldowns written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    primaries.sort_unstable();
    primaries.dedup();
    assert!(
        primaries.len() > 1,
        "12 keys land on more than one primary: {primaries:?}"
    );

    // A replica that starts now heard none of it: it reads every key at startup.
    let late = store(&url, &prefix);
    let breakers: Vec<(String, Arc<CircuitBreaker>)> = deployments
        .iter()
        .map(|deployment| {
            (
                deployment.clone(),
                Arc::new(CircuitBreaker::new(BreakerSettings::default())),
            )
        })
        .collect();
    tokio::spawn(Arc::clone(&late).listen_for_cooldowns(breakers.clone()));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !breakers.iter().all(|(_, breaker)| breaker.is_open()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "every cooldown applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(late.is_up(), "the health probe pings every primary");
}

/// A server's replication role (`master` or `slave`), or None if it does not answer.
async fn role(port: u16) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut connection = client.get_multiplexed_async_connection().await.ok()?;
    let reply: Value = redis::cmd("ROLE").query_async(&mut connection).await.ok()?;
    match reply {
        Value::Array(parts) => match parts.first() {
            Some(Value::BulkString(role)) => Some(String::from_utf8_lossy(role).into_owned()),
            _ => None,
        },
        _ => None,
    }
}

/// The port of the primary the sentinel names.
async fn named_primary(sentinel: &mut MultiplexedConnection) -> u16 {
    let (_, port): (String, u16) = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg("skyfuse-test")
        .query_async(sentinel)
        .await
        .unwrap();
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_through_sentinel_follows_the_primary_across_a_failover() {
    let Some(url) = redis_sentinel_url() else {
        return;
    };
    let store = store(&url, &fresh_prefix("sentinel"));
    let mut sentinel = node(ports_of(&url)[0]).await;
    let before = named_primary(&mut sentinel).await;

    // $0.01 a day, three calls of $0.001 spent through the primary the sentinel names.
    let key = store.budget_key("team-a", utc_day());
    for _ in 0..3 {
        let verdict = store.reserve_budget(&key, 10_000, 1_000).await.unwrap();
        assert!(verdict.admitted);
        store.settle_budget(&key, 1_000, 1_000).await.unwrap();
    }
    let mut old_primary = node(before).await;
    let figures: (Option<i64>, Option<i64>) = redis::cmd("HMGET")
        .arg(&key)
        .arg("spent")
        .arg("reserved")
        .query_async(&mut old_primary)
        .await
        .unwrap();
    assert_eq!(
        figures,
        (Some(3_000), Some(0)),
        "written on the named primary"
    );
    // The replica has it before the failover (after an earlier run's failover it may
    // still be syncing with its new primary).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let acknowledged: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(100)
            .query_async(&mut old_primary)
            .await
            .unwrap();
        if acknowledged == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the replica syncs");
    }

    // The sentinel refuses while an earlier failover is still being wound up
    // (INPROG) or before it counts the replica as a candidate (NOGOODSLAVE).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let started: redis::RedisResult<String> = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg("skyfuse-test")
            .query_async(&mut sentinel)
            .await;
        match started {
            Ok(_) => break,
            Err(error) => assert!(
                tokio::time::Instant::now() < deadline,
                "the sentinel starts a failover: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Until the sentinel names another primary and the old one serves it as a replica.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let after = loop {
        let named = named_primary(&mut sentinel).await;
        if named != before
            && role(named).await.as_deref() == Some("master")
            && role(before).await.as_deref() == Some("slave")
        {
            break named;
        }
        assert!(tokio::time::Instant::now() < deadline, "the failover ends");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // The same store, untouched: its next calls reach the new primary.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let verdict = loop {
        match store.reserve_budget(&key, 10_000, 1_000).await {
            Ok(verdict) => break verdict,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the store reaches the new primary: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(verdict.admitted);
    assert_eq!(
        verdict.spent_micro_usd, 3_000,
        "the day's spending carried over"
    );
    let mut new_primary = node(after).await;
    let (spent, reserved): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
        .arg(&key)
        .arg("spent")
        .arg("reserved")
        .query_async(&mut new_primary)
        .await
        .unwrap();
    assert_eq!(spent, Some(3_000));
    assert!(
        reserved.is_some_and(|reserved| reserved >= 1_000),
        "the hold is on the new primary: {reserved:?}"
    );
    assert!(store.is_up());
}
