#![no_main]
//! libFuzzer target: see `skyfuse::fuzzing::bedrock_event_stream`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| skyfuse::fuzzing::bedrock_event_stream(data));
