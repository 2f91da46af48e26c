#![no_main]
//! libFuzzer target: see `skyfuse::fuzzing::sse`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| skyfuse::fuzzing::sse(data));
