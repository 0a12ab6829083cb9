//! The integration suite: one test binary, a live HTTPS server per test, real clients.

/// Declares a test twice, as `NAME::sqlite` and `NAME::postgres`: the same body against a live
/// server on the embedded store and on a fresh PostgreSQL database, so both stores are held to
/// exactly the same behaviour.
macro_rules! on_both_stores {
    ($(#[doc = $doc:expr])* async fn $name:ident($t:ident) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($t: crate::harness::TestServer) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(crate::harness::TestServer::start().await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run(crate::harness::TestServer::start_postgres().await).await
            }
        }
    };
}

mod cluster;
mod controllers;
mod crud;
mod discovery;
mod errors;
mod findings;
mod hardening;
mod harness;
mod kubectl;
mod limits;
mod lists;
mod metrics;
mod negotiation;
mod packaging;
mod postgres;
mod process;
mod result_metrics;
mod samples;
mod snapshots;
mod tls;
mod validation;
mod watch;
