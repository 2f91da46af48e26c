//! A wall clock the test moves (for credentials that renew before they expire),
//! and an environment map from pairs: shared by the credential test crates.

#![allow(dead_code)] // each test crate uses its own part

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use skyfuse::cloud::aws_credentials::Clock;

pub fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// A clock the test moves; starts at the real time so answers look current.
pub fn test_clock() -> (Clock, Arc<Mutex<SystemTime>>) {
    let now = Arc::new(Mutex::new(SystemTime::now()));
    let read = now.clone();
    (Arc::new(move || *read.lock().unwrap()), now)
}

pub fn advance(clock: &Arc<Mutex<SystemTime>>, by: Duration) {
    *clock.lock().unwrap() += by;
}
