#![no_main]
//! libFuzzer target: see `skyfuse::fuzzing::extract_pdf`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        // libFuzzer's hook aborts on every panic, even one caught inside; pdf_text
        // catches pdf-extract's panics and reports a broken PDF, which is the service's
        // behaviour, so only a panic that escapes `extract_pdf` may count as a crash
        // (libfuzzer-sys still aborts on those). The default hook prints each message.
        drop(std::panic::take_hook());
    },
    |data: &[u8]| skyfuse::fuzzing::extract_pdf(data)
);
