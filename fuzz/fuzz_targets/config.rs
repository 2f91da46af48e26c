#![no_main]
//! libFuzzer target: see `skyfuse::fuzzing::config`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| skyfuse::fuzzing::config(data));
