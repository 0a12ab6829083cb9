#![no_main]
//! Fuzzes request paths and methods (request info for authorization and metrics); the body is `reports_core::fuzzing::request_path`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| reports_core::fuzzing::request_path(data));
