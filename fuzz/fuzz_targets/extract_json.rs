#![no_main]
//! libFuzzer target: see `skyfuse::fuzzing::extract_json`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| skyfuse::fuzzing::extract_json(data));
