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
//! - [`result_metrics`]: Policy Reporter's result gauges, kept from the change log;
//! - [`limits`]: requests in flight, timeouts and connections, so one client cannot hurt others;
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
pub mod limits;
pub mod metrics;
pub mod query;
mod render;
mod resource;
mod response;
pub mod result_metrics;
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
    /// The bounds the SQLite file is kept to (an SQLite store only).
    pub sqlite: reports_store::sqlite::SqliteLimits,
    /// Body size, requests in flight, timeouts and connections (see [`limits`]).
    pub limits: limits::ServingLimits,
    /// What the change log keeps: its age and its length (see [`compaction_loop`]).
    pub change_log: reports_store::Retention,
    /// Bytes of recent changes kept in memory for watchers (see [`watch`]).
    pub watch_window_bytes: usize,
    /// Appends the instant of every commit to this file (benchmarks measure watch lag from it).
    pub commit_trace: Option<std::path::PathBuf>,
    /// The cluster this server serves, if any: delegated authentication and authorization,
    /// APIServices, admission. None for a standalone server.
    pub cluster: Option<cluster::ClusterConfig>,
    /// Policy Reporter's result gauges on `/metrics` (see [`result_metrics`]).
    pub result_metrics: result_metrics::Settings,
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
        // First: settings that cannot work are refused before anything is opened.
        let result_metrics = result_metrics::ResultMetrics::new(&config.result_metrics)?;
        let catalogue = Catalogue::embedded().context("embedded CRDs")?;
        let mut postgres = config.postgres.clone();
        if let (Some(cluster), None) = (&config.cluster, &postgres.cluster_id) {
            if reports_store::is_postgres_url(&config.storage) {
                postgres.cluster_id = Some(cluster::cluster_uid(cluster).await?);
            }
        }
        let settings = reports_store::StoreSettings { postgres, sqlite: config.sqlite };
        let store = reports_store::open(&config.storage, &settings)
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
        result_metrics::start(result_metrics, store.clone(), &metrics, shutting_down.clone());
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
            &config.limits,
            shutting_down.clone(),
            metrics,
            in_cluster,
        );
        let router = app::router(state.clone());
        tokio::spawn(compaction_loop(store.clone(), config.change_log, shutting_down.clone()));
        state.set_ready();
        let task = tokio::spawn(serve::serve(
            listener,
            Arc::clone(&tls),
            router,
            config.limits.clone(),
            shutting_down.clone(),
        ));
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

/// How often old changes are trimmed: every minute, or four times per retention period when
/// that is shorter, so a short retention is kept to closely (and can be tested in seconds).
fn compaction_interval(retention_seconds: u64) -> std::time::Duration {
    std::time::Duration::from_secs((retention_seconds / 4).clamp(1, 60))
}

/// How often the log's length is looked at: a flood adds thousands of changes a second, each
/// delete's with the body it removed.
const LENGTH_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Trims the change log: of old changes every [`compaction_interval`], and as soon as it is
/// longer than `keep.max_entries` by a tenth (so a flood is trimmed in steps of that tenth, not
/// a change at a time). One pass at a time, never blocking requests.
async fn compaction_loop(
    store: reports_store::DynStore,
    keep: reports_store::Retention,
    mut shutting_down: tokio::sync::watch::Receiver<bool>,
) {
    let by_age = compaction_interval(keep.max_age_seconds);
    let mut tick = tokio::time::interval(LENGTH_CHECK_INTERVAL);
    let mut last_pass: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let due = last_pass.is_none_or(|t| t.elapsed() >= by_age) || log_too_long(&store, keep).await;
                if !due {
                    continue;
                }
                last_pass = Some(tokio::time::Instant::now());
                match store.compact_all(keep).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(dropped = n, "compacted the change log"),
                    Err(e) => tracing::warn!(error = %e, "change-log compaction failed"),
                }
            }
            _ = shutting_down.changed() => return,
        }
    }
}

/// True when the log spans more RVs than `keep` allows, by more than a tenth.
async fn log_too_long(store: &reports_store::DynStore, keep: reports_store::Retention) -> bool {
    let (Ok(newest), Ok(compacted)) = (store.current_rv().await, store.compacted_rv().await) else {
        return false;
    };
    newest.saturating_sub(compacted) > keep.max_entries.saturating_add(keep.max_entries / 10)
}

/// A storage URL fit for logs: any password is replaced, in a URL's user info, a URL query
/// parameter or a libpq key=value string (quoted or not, with or without spaces around `=`).
///
/// Both forms are parsed as libpq parses them, so whatever libpq would take as the password is
/// what is hidden; text that libpq could not parse is hidden from the point where parsing fails.
pub fn redact_url(url: &str) -> String {
    // libpq reads a string as a URI only when it starts with its scheme; any other `scheme://`
    // (sqlite://) can only hold a password in its user info.
    let uri = url.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    if uri {
        redact_uri(url)
    } else {
        redact_conninfo(url)
    }
}

/// The URI form: `scheme://[user[:password]@]host/db?key=value&...`.
fn redact_uri(url: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let (head, rest) = url.split_at(scheme_end);
    let mut out = head.to_string();
    // libpq takes the user info up to the first '@' before any '/'.
    let rest = match rest.find(['@', '/']) {
        Some(at) if rest.as_bytes()[at] == b'@' => {
            match rest[..at].split_once(':') {
                Some((user, _)) => out.push_str(&format!("{user}:***@")),
                None => out.push_str(&rest[..=at]),
            }
            &rest[at + 1..]
        }
        _ => rest,
    };
    let Some((path, query)) = rest.split_once('?') else {
        out.push_str(rest);
        return out;
    };
    out.push_str(path);
    out.push('?');
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            // libpq decodes the keyword before it looks at it.
            Some((key, _)) if reports_core::options::percent_decode(key, false) == b"password" => {
                format!("{key}=***")
            }
            _ => param.to_string(),
        })
        .collect();
    out.push_str(&params.join("&"));
    out
}

/// The keyword/value form: `key = value` pairs separated by whitespace, each value either
/// single-quoted or running to the next whitespace, a backslash escaping the next character.
fn redact_conninfo(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let skip_space = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        let start = skip_space(i);
        out.push_str(&text[i..start]);
        i = start;
        if i >= bytes.len() {
            return out;
        }
        let key_start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &text[key_start..i];
        i = skip_space(i);
        if bytes.get(i) != Some(&b'=') {
            // libpq refuses this string; hide everything from here on.
            out.push_str("***");
            return out;
        }
        i = skip_space(i + 1);
        out.push_str(&text[key_start..i]);
        let value_start = i;
        if bytes.get(i) == Some(&b'\'') {
            i += 1;
            while i < bytes.len() && bytes[i] != b'\'' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(bytes.len());
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = i.min(bytes.len());
        }
        if key == "password" {
            out.push_str("***");
        } else {
            // An escape may have stepped into a multi-byte character; never split one.
            while !text.is_char_boundary(i) {
                i += 1;
            }
            out.push_str(&text[value_start..i]);
        }
        while !text.is_char_boundary(i) {
            i += 1;
        }
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

    #[test]
    fn libpq_strings_are_parsed_not_pattern_matched() {
        for (text, redacted) in [
            ("host=h password = SECRET dbname=d", "host=h password = *** dbname=d"),
            ("host=h password =SECRET dbname=d", "host=h password =*** dbname=d"),
            ("host=h password= SECRET", "host=h password= ***"),
            ("host=h password\t=\tSECRET\tdbname=d", "host=h password\t=\t***\tdbname=d"),
            ("password = 'a b\\' SECRET' user=u", "password = *** user=u"),
            ("password=SEC\\ RET user=u", "password=*** user=u"),
            ("host=h passwordSECRET", "host=h ***"),
            ("host=h user='password=x' password=SECRET", "host=h user='password=x' password=***"),
        ] {
            let out = redact_url(text);
            assert_eq!(out, redacted, "{text:?}");
            assert!(!out.contains("SECRET") && !out.contains("RET"), "{text:?}");
        }
        assert_eq!(
            redact_url("postgresql://u:SECRET@h/db?pass%77ord=SECRET&sslmode=require"),
            "postgresql://u:***@h/db?pass%77ord=***&sslmode=require"
        );
        assert_eq!(redact_url("postgres://h/db?user=a@b"), "postgres://h/db?user=a@b");
        assert_eq!(
            redact_url("host=h options='-c x://y' password=SECRET"),
            "host=h options='-c x://y' password=***"
        );
    }
}
