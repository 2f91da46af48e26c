//! The test Redis servers scripts/test.sh starts: one node (`SKYFUSE_TEST_REDIS_URL`),
//! a three-primary cluster (`SKYFUSE_TEST_REDIS_CLUSTER_URL`) and a Sentinel-watched
//! primary with one replica (`SKYFUSE_TEST_REDIS_SENTINEL_URL`), and key prefixes no
//! other test uses. Included with `#[path]` by the test crates that need a real Redis.

#![allow(dead_code)] // each test crate uses its own part

/// The Redis the test script started, or None (and why) when the test may skip:
/// without it the Redis tests skip, unless `CI` or `SKYFUSE_REQUIRE_TOOLS` is set.
pub fn redis_url() -> Option<String> {
    server_url("SKYFUSE_TEST_REDIS_URL", "a real redis-server")
}

/// The test script's Redis Cluster (`redis+cluster://`), as [`redis_url`].
pub fn redis_cluster_url() -> Option<String> {
    server_url("SKYFUSE_TEST_REDIS_CLUSTER_URL", "a real Redis Cluster")
}

/// The test script's Redis Sentinel (`redis+sentinel://…/skyfuse-test`), as [`redis_url`].
pub fn redis_sentinel_url() -> Option<String> {
    server_url("SKYFUSE_TEST_REDIS_SENTINEL_URL", "a real Redis Sentinel")
}

fn server_url(variable: &str, what: &str) -> Option<String> {
    if let Ok(url) = std::env::var(variable)
        && !url.is_empty()
    {
        return Some(url);
    }
    let required = ["CI", "SKYFUSE_REQUIRE_TOOLS"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|value| !value.is_empty() && value != "0"));
    assert!(
        !required,
        "{what} is required here (CI or SKYFUSE_REQUIRE_TOOLS is set) but {variable} is not: \
         scripts/test.sh starts one"
    );
    eprintln!("SKIPPED: {variable} is not set (run scripts/test.sh)");
    None
}

/// A key prefix no other test (or earlier run) uses.
pub fn fresh_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("skyfuse-test-{test}-{}-{nanos}", std::process::id())
}

/// A manifest entry for an object whose etag is `etag`, with one chunk.
pub fn manifest_entry(etag: &str) -> skyfuse::ingest::manifest::ManifestEntry {
    skyfuse::ingest::manifest::ManifestEntry {
        etag: Some(etag.to_owned()),
        version: None,
        size: 3,
        sha256: "ab".repeat(32),
        settings: "s1".to_owned(),
        chunk_ids: vec![format!("{etag}#0")],
        failure: None,
    }
}
