#![no_main]
//! Fuzzes query strings: list, watch, write and delete options, `resourceVersion`; the body is `reports_core::fuzzing::list_options`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| reports_core::fuzzing::list_options(data));
