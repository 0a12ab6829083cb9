#![no_main]
//! Fuzzes the `labelSelector` parameter; the body is `reports_core::fuzzing::label_selector`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| reports_core::fuzzing::label_selector(data));
