//! The test Redis: `SKYFUSE_TEST_REDIS_URL` (scripts/test.sh starts `redis-server`),
//! and key prefixes no other test uses. Included with `#[path]` by the test crates
//! that need a real Redis.

#![allow(dead_code)] // each test crate uses its own part

/// The Redis the test script started, or None (and why) when the test may skip:
/// without it the Redis tests skip, unless `CI` or `SKYFUSE_REQUIRE_TOOLS` is set.
pub fn redis_url() -> Option<String> {
    if let Ok(url) = std::env::var("SKYFUSE_TEST_REDIS_URL")
        && !url.is_empty()
    {
        return Some(url);
    }
    let required = ["CI", "SKYFUSE_REQUIRE_TOOLS"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|value| !value.is_empty() && value != "0"));
    assert!(
        !required,
        "a real redis-server is required here (CI or SKYFUSE_REQUIRE_TOOLS is set) but \
         SKYFUSE_TEST_REDIS_URL is not: scripts/test.sh starts one"
    );
    eprintln!("SKIPPED: SKYFUSE_TEST_REDIS_URL is not set (run scripts/test.sh)");
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
