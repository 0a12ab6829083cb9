#![no_main]
//! Fuzzes the `fieldSelector` parameter; the body is `reports_core::fuzzing::field_selector`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| reports_core::fuzzing::field_selector(data));
