//! The integration suite: one test binary, a live HTTPS server per test, real clients.

mod crud;
mod discovery;
mod errors;
mod harness;
mod kubectl;
mod lists;
mod negotiation;
mod process;
mod samples;
mod validation;
mod watch;
