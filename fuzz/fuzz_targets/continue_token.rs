#![no_main]
//! Fuzzes `continue` tokens; the body is `reports_core::fuzzing::continue_token`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| reports_core::fuzzing::continue_token(data));
