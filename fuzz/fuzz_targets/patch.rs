#![no_main]
//! Fuzzes JSON and merge patches applied to stored reports; the body is `reports_core::fuzzing::patch`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| reports_core::fuzzing::patch(data));
