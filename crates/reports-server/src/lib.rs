//! reports-server: a Kubernetes aggregated API server for policy reports.
//!
//! The binary (`main.rs`) parses flags and calls [`Server::start`]; tests and the benchmark call
//! it too, in-process, with a port of 0 and a temporary store. The pieces:
//! - `app`: the one `router(state)` that assembles every route, and the health endpoints;
//! - `state`: what every handler shares, built once;
//! - `discovery`: discovery and OpenAPI documents with their caching rules;
//! - `resource`: the single generic handler behind all six kinds;
//! - `render`: stored JSON to responses (splice, stream, transform);
//! - `response`: the error edge (`ApiError` to `metav1.Status`);
//! - [`watch`]: change streams from the change log;
//! - `serve`: the TLS accept loop with graceful shutdown;
//! - [`tls`], [`cli`], [`glibc`]: what the binary and the benchmark use.
//!
//! Only [`Server`], its configuration and what the binary and benchmark need are public; the
//! rest is this crate's business.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use reports_core::Catalogue;
use tokio::{net::TcpListener, task::JoinHandle};

mod app;
mod auth;
pub mod cli;
pub mod cluster;
mod discovery;
pub mod glibc;
pub mod metrics;
mod render;
mod resource;
mod response;
mod serve;
mod state;
pub mod tls;
pub mod watch;

/// How often `apiserver_storage_objects` is recounted.
const STORAGE_OBJECTS_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

/// Everything needed to start a server (the binary builds it from flags).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address and port to listen on (port 0 picks one).
    pub listen: SocketAddr,
    /// Serving certificate.
    pub certificate: tls::CertificatePem,
    /// Storage URL (`sqlite://PATH`, `sqlite::memory:`, `postgres://...`).
    pub storage: String,
    /// PostgreSQL settings beyond the URL (TLS files, pool, cluster identity).
    pub postgres: reports_store::postgres::PgSettings,
    /// Request body limit in bytes.
    pub max_body_bytes: usize,
    /// Change-log retention in seconds.
    pub change_log_retention_seconds: u64,
    /// Bytes of recent changes kept in memory for watchers (see [`watch`]).
    pub watch_window_bytes: usize,
    /// Appends the instant of every commit to this file (benchmarks measure watch lag from it).
    pub commit_trace: Option<std::path::PathBuf>,
    /// The cluster this server serves, if any: delegated authentication and authorization,
    /// APIServices, admission. None for a standalone server.
    pub cluster: Option<cluster::ClusterConfig>,
}

/// A running server.
pub struct Server {
    /// The address actually bound.
    pub local_addr: SocketAddr,
    /// Tells the accept loop and long-running responses to stop.
    shutdown: tokio::sync::watch::Sender<bool>,
    /// The accept loop; ends after shutdown once connections have drained.
    task: JoinHandle<()>,
    /// The store, for embedding programs and tests that need to look underneath the API.
    store: reports_store::DynStore,
    /// Cluster tasks that must finish their own shutdown (releasing the Lease) before the
    /// process exits, so another replica takes over at once.
    cluster_tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Opens the store, binds the listener and starts serving in the background.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Self> {
        let catalogue = Catalogue::embedded().context("embedded CRDs")?;
        let store = reports_store::open(&config.storage, &config.postgres)
            .await
            .with_context(|| format!("opening storage {}", redact_url(&config.storage)))?;
        if let Some(path) = &config.commit_trace {
            let trace = reports_store::commits::CommitTrace::create(path)
                .with_context(|| format!("opening the commit trace {}", path.display()))?;
            store.commits().observe(Arc::new(trace));
        }
        let tls = config.certificate.server_config(config.cluster.is_some())?;
        let listener =
            TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let (shutdown, shutting_down) = tokio::sync::watch::channel(false);
        let mut in_cluster = match &config.cluster {
            Some(cluster) => {
                cluster::start(cluster, &config.certificate, &store, &catalogue, shutting_down.clone())
                    .await?
            }
            None => Default::default(),
        };
        let changes =
            watch::ChangeFeed::start(store.clone(), shutting_down.clone(), config.watch_window_bytes)
                .await
                .context("reading the change log")?;
        let metrics = Arc::new(metrics::Metrics::new(&catalogue));
        metrics.add_source(changes.clone());
        let storage_objects = Arc::new(metrics::StorageObjects::default());
        metrics.add_source(storage_objects.clone());
        tokio::spawn(metrics::refresh_storage_objects(
            store.clone(),
            catalogue.clone(),
            storage_objects,
            STORAGE_OBJECTS_PERIOD,
            shutting_down.clone(),
        ));
        let cluster_tasks = std::mem::take(&mut in_cluster.tasks);
        let state = state::AppState::new(
            catalogue,
            store.clone(),
            changes,
            config.max_body_bytes,
            shutting_down.clone(),
            metrics,
            in_cluster,
        );
        let router = app::router(state.clone());
        tokio::spawn(compaction_loop(
            store.clone(),
            config.change_log_retention_seconds,
            shutting_down.clone(),
        ));
        state.set_ready();
        let task = tokio::spawn(serve::serve(listener, Arc::clone(&tls), router, shutting_down.clone()));
        Ok(Self { local_addr, shutdown, task, store, cluster_tasks })
    }

    /// The store behind the API.
    pub fn store(&self) -> &reports_store::DynStore {
        &self.store
    }

    /// Stops accepting, ends long-running responses and waits for connections to drain.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        for task in self.cluster_tasks {
            // Bounded: an unreachable cluster must not keep the process from exiting.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
        }
    }
}

/// Trims the change log every minute; one pass at a time, never blocking requests.
async fn compaction_loop(
    store: reports_store::DynStore,
    retention_seconds: u64,
    mut shutting_down: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match store.compact(retention_seconds).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(dropped = n, "compacted the change log"),
                    Err(e) => tracing::warn!(error = %e, "change-log compaction failed"),
                }
            }
            _ = shutting_down.changed() => return,
        }
    }
}

/// A storage URL fit for logs: any password is replaced, in a URL's user info, a URL query
/// parameter or a libpq key=value string (quoted or not).
pub fn redact_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(at) = rest.find("password=") {
        let value = &rest[at + "password=".len()..];
        let end = match value.strip_prefix('\'') {
            Some(quoted) => {
                let mut escaped = false;
                quoted
                    .char_indices()
                    .find(|&(_, c)| {
                        let closes = c == '\'' && !escaped;
                        escaped = c == '\\' && !escaped;
                        closes
                    })
                    .map(|(i, _)| i + 2)
                    .unwrap_or(value.len())
            }
            None => value.find([' ', '&']).unwrap_or(value.len()),
        };
        out.push_str(&rest[..at]);
        out.push_str("password=***");
        rest = &value[end..];
    }
    out.push_str(rest);
    match (out.find("://"), out.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &out[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &out[..scheme_end + 3], &out[at..]),
                None => out,
            }
        }
        _ => out,
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(redact_url("postgres://u:s3cret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(
            redact_url("postgres://h/db?user=u&password=s3cret&x=1"),
            "postgres://h/db?user=u&password=***&x=1"
        );
        assert_eq!(redact_url("host=h password='it\\'s secret' dbname=d"), "host=h password=*** dbname=d");
        assert_eq!(redact_url("host=h password=plain dbname=d"), "host=h password=*** dbname=d");
        assert_eq!(redact_url("sqlite://reports.db"), "sqlite://reports.db");
    }
}
