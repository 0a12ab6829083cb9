#![no_main]
//! Fuzzes create and update bodies (JSON, YAML, duplicate keys) and delete options; the body is `reports_core::fuzzing::request_body`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| reports_core::fuzzing::request_body(data));
