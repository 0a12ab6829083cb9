#![no_main]
//! Fuzzes `Accept` and `Content-Type` headers; the body is `reports_core::fuzzing::accept_header`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| reports_core::fuzzing::accept_header(data));
