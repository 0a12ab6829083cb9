//! Command-line flags. Names follow k8s.io/apiserver where the meaning is the same, and every flag
//! of upstream kyverno/reports-server is accepted so existing manifests keep working; the ones not
//! implemented yet are reported at start-up instead of being ignored silently.

mod cluster;
mod compat;
pub mod query;
pub mod uninstall;

use std::{ffi::OsString, net::IpAddr, path::PathBuf};

use clap::{parser::ValueSource, CommandFactory as _, FromArgMatches as _, Parser};
pub use cluster::ClusterFlags;
pub use compat::{go_bool, go_duration, normalise_args, Inert, NO_EFFECT_HEADING, UPSTREAM_CHART_ARGS};

/// reports-server: a Kubernetes aggregated API server that stores policy reports in a relational
/// database instead of etcd.
#[derive(Debug, Clone, Parser)]
#[command(name = "reports-server", version, disable_version_flag = true, about, long_about = None, args_override_self = true)]
pub struct Args {
    /// HTTPS port to serve on (0 picks a free port and logs it).
    #[arg(long, default_value_t = 4443, help_heading = "Serving")]
    pub secure_port: u16,

    /// Address to listen on. Anything but loopback needs a cluster to authenticate and authorize
    /// callers (--kubeconfig, or a pod's service account), or
    /// --dangerously-serve-without-authentication.
    #[arg(long, default_value = "127.0.0.1", help_heading = "Serving")]
    pub bind_address: IpAddr,

    /// PEM serving certificate (a self-signed one is generated when absent).
    #[arg(long, requires = "tls_private_key_file", help_heading = "Serving")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of --tls-cert-file.
    #[arg(long, requires = "tls_cert_file", help_heading = "Serving")]
    pub tls_private_key_file: Option<PathBuf>,

    /// Serve with no authentication or authorization, also on non-loopback addresses and in a pod:
    /// anyone who can reach the port can read and change every report. For isolated test
    /// environments only.
    #[arg(long, help_heading = "Serving")]
    pub dangerously_serve_without_authentication: bool,

    /// Largest accepted request body, in bytes (kube-apiserver's limit is 3 MiB).
    #[arg(long, default_value_t = 3 * 1024 * 1024, help_heading = "Serving")]
    pub max_request_body_bytes: usize,

    /// Reads served at once; one more gets 429 with Retry-After (watches are counted apart; 0: no
    /// limit).
    #[arg(long, default_value_t = 400, help_heading = "Serving")]
    pub max_requests_inflight: usize,

    /// Writes served at once; one more gets 429 with Retry-After (0: no limit).
    #[arg(long, default_value_t = 200, help_heading = "Serving")]
    pub max_mutating_requests_inflight: usize,

    /// Longest time to answer a request other than a watch (504 beyond it), such as 60s or 2m.
    #[arg(long, default_value = "60s", value_parser = positive_duration, help_heading = "Serving")]
    pub request_timeout: std::time::Duration,

    /// Connections open at once; further clients wait until one closes (default: the open-file
    /// limit less a reserve for the database and files).
    #[arg(long, help_heading = "Serving")]
    pub max_connections: Option<usize>,

    /// Longest time for an HTTP/1 request's headers to arrive.
    #[arg(long, default_value = "32s", value_parser = positive_duration, help_heading = "Serving")]
    pub read_header_timeout: std::time::Duration,

    /// How long a connection with no request in progress stays open (open watches count as in
    /// progress).
    #[arg(long, default_value = "90s", value_parser = positive_duration, help_heading = "Serving")]
    pub idle_connection_timeout: std::time::Duration,

    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Serving")]
    pub http2_max_streams_per_connection: u32,

    /// Where reports are kept: sqlite://PATH (a file, created on first start), sqlite::memory:,
    /// or PostgreSQL as postgres://USER@HOST:PORT/DB or a libpq key=value string. Without it,
    /// upstream's DB_HOST, DB_PORT, DB_USER, DB_PASSWORD and DB_DATABASE select PostgreSQL, and
    /// with none of those reports go to sqlite://reports-server.db.
    #[arg(long, env = "REPORTS_STORAGE", help_heading = "Storage")]
    pub storage: Option<String>,

    /// Which reports' results are indexed as findings for the query API (docs/query.md):
    /// `reports` (PolicyReport, ClusterPolicyReport, Report, ClusterReport), `all` (also the
    /// ephemeral kinds) or `off`. Every replica of a database must agree; a start with another
    /// choice rebuilds the findings of the kinds that changed.
    #[arg(long, value_enum, default_value_t = FindingsChoice::Reports, help_heading = "Storage")]
    pub index_findings: FindingsChoice,

    /// The cluster whose reports this server keeps, as a UUID (in a cluster: the kube-system
    /// namespace UID). Without it, the only cluster recorded in the database is used, or a new
    /// one is recorded. One PostgreSQL database can hold many clusters.
    #[arg(long, env = "REPORTS_CLUSTER_ID", help_heading = "Storage")]
    pub cluster_id: Option<String>,

    /// Most pooled PostgreSQL connections (one more is kept for change notifications).
    #[arg(long, default_value_t = 16, help_heading = "Storage")]
    pub postgres_pool_size: usize,

    /// Timeout for opening a PostgreSQL connection, in seconds.
    #[arg(long, default_value_t = 5, help_heading = "Storage")]
    pub postgres_connect_timeout_seconds: u64,

    /// How long a request waits for a free PostgreSQL connection before it fails with 503.
    #[arg(long, default_value_t = 5, help_heading = "Storage")]
    pub postgres_acquire_timeout_seconds: u64,

    /// PostgreSQL statement_timeout, in seconds (a list streams in one statement).
    #[arg(long, default_value_t = 60, help_heading = "Storage")]
    pub postgres_statement_timeout_seconds: u64,

    /// How long start-up waits for an unreachable PostgreSQL before giving up, in seconds.
    #[arg(long, default_value_t = 60, help_heading = "Storage")]
    pub postgres_startup_timeout_seconds: u64,

    /// How long the change log keeps entries, in seconds. Watches and continue tokens older than
    /// that get 410 Gone and relist.
    #[arg(long, default_value_t = 900, help_heading = "Storage")]
    pub change_log_retention_seconds: u64,

    /// Most changes the change log keeps, whatever their age. It bounds the disk under a flood
    /// (a mass delete logs every deleted body): watches and continue tokens that fall further
    /// behind get 410 Gone and relist, as beyond kube-apiserver's watch cache.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Storage")]
    pub change_log_max_entries: u64,

    /// Bytes of write-ahead log the SQLite file may hold before it is copied into the database
    /// and started over, which pauses writes for a moment: a larger log pauses a flood less
    /// often and takes that much more disk.
    #[arg(long, default_value_t = reports_store::sqlite::SqliteLimits::default().wal_bytes,
          value_parser = clap::value_parser!(u64).range(1 << 20..), help_heading = "Storage")]
    pub sqlite_wal_bytes: u64,

    /// Bytes of recent changes kept in memory for watches. A watcher that falls further behind
    /// (a slow client) reads the change log from the database instead, so this trades memory for
    /// database reads, never correctness.
    #[arg(long, default_value_t = crate::watch::DEFAULT_WINDOW_BYTES, help_heading = "Storage")]
    pub watch_window_bytes: usize,

    /// Appends a line `RV MICROSECONDS` (the newest RV of a commit and its wall-clock time) to
    /// this file at every commit this process makes. For benchmarks: the watch benchmark
    /// measures delivery lag from these instants.
    #[arg(long, value_name = "FILE", help_heading = "Storage")]
    pub commit_trace: Option<std::path::PathBuf>,

    /// Policy Reporter's result gauges on /metrics (policy_report_result,
    /// cluster_policy_report_result): detailed (one series per result, Policy Reporter's default),
    /// simple (counts by namespace, policy, status, severity, category, source), custom (counts by
    /// the labels of --result-metrics-labels) or off.
    #[arg(long, value_enum, default_value_t = crate::result_metrics::Mode::Detailed, help_heading = "Metrics")]
    pub result_metrics: crate::result_metrics::Mode,

    /// The labels of --result-metrics custom, comma-separated, as Policy Reporter's
    /// metrics.customLabels: namespace, report, policy, rule, kind, name, status, severity,
    /// category, source, message, label:KEY (a report label) and property:KEY (a result property).
    #[arg(long, value_delimiter = ',', value_name = "LABELS", help_heading = "Metrics")]
    pub result_metrics_labels: Vec<String>,

    /// Most series the result gauges hold; results that would need more are not counted, and
    /// reports_server_result_metrics_dropped_results says how many.
    #[arg(long, default_value_t = crate::result_metrics::DEFAULT_MAX_SERIES, help_heading = "Metrics")]
    pub result_metrics_max_series: usize,

    /// Log format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"], help_heading = "Logging")]
    pub log_format: String,

    /// Logging format as k8s.io/component-base names it (same as --log-format).
    #[arg(long, value_parser = ["text", "json"], help_heading = "Logging")]
    pub logging_format: Option<String>,

    /// PostgreSQL TLS: disable, prefer, require, verify-ca or verify-full (libpq's sslmode).
    #[arg(long, help_heading = "Upstream compatibility")]
    pub dbsslmode: Option<String>,
    /// PostgreSQL TLS: PEM root certificate(s) of the server's certificate.
    #[arg(long, help_heading = "Upstream compatibility")]
    pub dbsslrootcert: Option<PathBuf>,
    /// PostgreSQL TLS: PEM private key of --dbsslcert.
    #[arg(long, help_heading = "Upstream compatibility")]
    pub dbsslkey: Option<PathBuf>,
    /// PostgreSQL TLS: PEM client certificate.
    #[arg(long, help_heading = "Upstream compatibility")]
    pub dbsslcert: Option<PathBuf>,
    /// A name recorded with this server's cluster in the database.
    #[arg(long, help_heading = "Upstream compatibility")]
    pub clustername: Option<String>,
    /// Serve wgpolicyk8s.io reports (true; false is accepted but all six kinds are always served).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool, help_heading = "Upstream compatibility")]
    pub storereports: Option<bool>,
    /// Serve reports.kyverno.io ephemeral reports (as --storereports).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool, help_heading = "Upstream compatibility")]
    pub storeephemeralreports: Option<bool>,
    /// Serve openreports.io reports (as --storereports).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool, help_heading = "Upstream compatibility")]
    pub storeopenreports: Option<bool>,
    /// Skip copying reports stored as CRD objects into the store at start. By default, in a
    /// cluster with --servicename, the kinds whose APIService is not yet switched are copied
    /// before the APIServices are registered.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool, help_heading = "Upstream compatibility")]
    pub skipmigration: Option<bool>,
    /// Upstream's embedded etcd. Not supported (refused when true): use --storage sqlite://PATH.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool, help_heading = "Upstream compatibility")]
    pub etcd: Option<bool>,
    /// klog: log to standard error (true is what this server always does).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool, help_heading = "Upstream compatibility")]
    pub logtostderr: Option<bool>,
    /// Directory holding apiserver.crt and apiserver.key, used when --tls-cert-file is absent and
    /// both exist. Unlike k8s.io/apiserver, a generated certificate is kept in memory, never
    /// written there (so a read-only file system is fine).
    #[arg(long, help_heading = "Upstream compatibility")]
    pub cert_dir: Option<PathBuf>,
    /// Print the version and exit.
    #[arg(long, short = 'V', num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub version: Option<bool>,

    /// How the server joins a cluster.
    #[command(flatten)]
    pub cluster: ClusterFlags,

    /// Flags of upstream and of k8s.io/apiserver that parse but change nothing yet.
    #[command(flatten)]
    pub inert: Inert,

    /// The flags given that change nothing (filled in by [`Args::try_from_args`]).
    #[arg(skip)]
    pub given_without_effect: Vec<String>,

    /// The cluster flags given, which change nothing on a standalone server.
    #[arg(skip)]
    pub given_cluster_flags: Vec<String>,
}

impl Args {
    /// Parses the process's command line (see [`try_from_args`](Self::try_from_args)); prints
    /// the error, help or version and exits when that is what it asks for. This replaces clap's
    /// `Parser::parse` for callers of `Args::parse()`.
    pub fn parse() -> Self {
        let args = Self::try_from_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
        if args.version == Some(true) {
            println!("reports-server {}", env!("CARGO_PKG_VERSION"));
            std::process::exit(0);
        }
        args
    }

    /// Parses a command line (program name first) the way upstream's manifests write it: empty
    /// values mean unset and `_` in names reads as `-` ([`normalise_args`]); records which
    /// given flags change nothing ([`unimplemented_flags`](Self::unimplemented_flags)).
    pub fn try_from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let mut command = Self::command();
        let matches = command.try_get_matches_from_mut(normalise_args(args))?;
        let mut parsed = Self::from_arg_matches(&matches)?;
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if matches.value_source(id) != Some(ValueSource::CommandLine) {
                continue;
            }
            let name = arg.get_long().map(|l| format!("--{l}")).unwrap_or_else(|| id.to_string());
            match arg.get_help_heading() {
                Some(NO_EFFECT_HEADING) => parsed.given_without_effect.push(name),
                Some(cluster::HEADING) => parsed.given_cluster_flags.push(name),
                _ => {}
            }
        }
        parsed.apply_compatibility();
        Ok(parsed)
    }

    /// Maps upstream's spellings onto this server's settings, and notes the given values that
    /// change nothing.
    fn apply_compatibility(&mut self) {
        if let Some(format) = &self.logging_format {
            self.log_format = format.clone();
        }
        if let Some(dir) = &self.cert_dir {
            let (cert, key) = (dir.join("apiserver.crt"), dir.join("apiserver.key"));
            if self.tls_cert_file.is_none() && cert.is_file() && key.is_file() {
                self.tls_cert_file = Some(cert);
                self.tls_private_key_file = Some(key);
            } else if self.tls_cert_file.is_none() {
                self.given_without_effect
                    .push("--cert-dir (no apiserver.crt and apiserver.key there)".into());
            }
        }
        let mut note = |given: bool, text: &str| {
            if given {
                self.given_without_effect.push(text.to_string());
            }
        };
        let registers = self.cluster.servicename.as_ref().is_some_and(|n| !n.is_empty());
        note(!registers && self.storereports == Some(false), "--storereports=false");
        note(!registers && self.storeephemeralreports == Some(false), "--storeephemeralreports=false");
        note(!registers && self.storeopenreports == Some(false), "--storeopenreports=false");
        note(self.logtostderr == Some(false), "--logtostderr=false");
    }

    /// The storage URL: `--storage`, else PostgreSQL from upstream's `DB_*` environment, else
    /// the embedded default.
    pub fn storage_url(&self) -> String {
        self.storage_url_from(|name| std::env::var(name).ok())
    }

    /// [`storage_url`](Self::storage_url) with the environment given (tests).
    pub fn storage_url_from(&self, env: impl Fn(&str) -> Option<String>) -> String {
        storage_url(self.storage.as_deref(), env)
    }

    /// The serving limits from the flags.
    pub fn serving_limits(&self) -> crate::limits::ServingLimits {
        crate::limits::ServingLimits {
            max_body_bytes: self.max_request_body_bytes,
            max_read_only: self.max_requests_inflight,
            max_mutating: self.max_mutating_requests_inflight,
            request_timeout: self.request_timeout,
            max_connections: self.max_connections.unwrap_or_else(crate::limits::default_max_connections),
            header_read_timeout: self.read_header_timeout,
            idle_timeout: self.idle_connection_timeout,
            http2_max_streams: self.http2_max_streams_per_connection,
        }
    }

    /// The result-metrics settings from the flags, checked ([`Settings::check`]).
    ///
    /// [`Settings::check`]: crate::result_metrics::Settings::check
    pub fn result_metrics_settings(
        &self,
    ) -> Result<crate::result_metrics::Settings, crate::result_metrics::SettingsError> {
        let settings = crate::result_metrics::Settings {
            mode: self.result_metrics,
            labels: self.result_metrics_labels.clone(),
            max_series: self.result_metrics_max_series,
        };
        settings.check()?;
        Ok(settings)
    }

    /// The SQLite file's bounds from the flags.
    pub fn sqlite_limits(&self) -> reports_store::sqlite::SqliteLimits {
        reports_store::sqlite::SqliteLimits { wal_bytes: self.sqlite_wal_bytes, ..Default::default() }
    }

    /// PostgreSQL settings from the flags.
    pub fn postgres_settings(&self) -> anyhow::Result<reports_store::postgres::PgSettings> {
        let secs = std::time::Duration::from_secs;
        Ok(reports_store::postgres::PgSettings {
            ssl_mode: self.dbsslmode.as_deref().map(str::parse).transpose()?,
            ssl_root_cert: self.dbsslrootcert.clone(),
            ssl_cert: self.dbsslcert.clone(),
            ssl_key: self.dbsslkey.clone(),
            pool_size: self.postgres_pool_size,
            connect_timeout: secs(self.postgres_connect_timeout_seconds),
            acquire_timeout: secs(self.postgres_acquire_timeout_seconds),
            statement_timeout: secs(self.postgres_statement_timeout_seconds),
            startup_timeout: secs(self.postgres_startup_timeout_seconds),
            cluster_id: self.cluster_id.clone(),
            cluster_name: self.clustername.clone().filter(|n| !n.is_empty()),
            findings: match self.index_findings {
                FindingsChoice::Reports => reports_store::FindingsIndex::default(),
                FindingsChoice::All => reports_store::FindingsIndex::with_ephemeral(),
                FindingsChoice::Off => reports_store::FindingsIndex::off(),
            },
            ..Default::default()
        })
    }

    /// One warning naming every given flag that changes nothing (none when there is none), so
    /// that an operator sees in one line what upstream's manifests ask for and this server does
    /// not do.
    /// With `standalone`, the cluster flags given are named too: without a cluster they do
    /// nothing.
    pub fn unimplemented_flags(&self, standalone: bool) -> Vec<String> {
        let mut named = self.given_without_effect.clone();
        if standalone {
            named.extend(self.given_cluster_flags.iter().map(|f| format!("{f} (no cluster)")));
        }
        if named.is_empty() {
            return Vec::new();
        }
        vec![format!(
            "these flags are accepted for compatibility but change nothing: {} (all six report kinds are always \
             served, a store flag set to false only leaves its group's APIService unregistered; cluster flags do nothing \
             on a server outside a cluster; audit, profiling and klog settings are not built; log verbosity is \
             set with RUST_LOG)",
            named.join(", ")
        )]
    }

    /// The cluster to join, if any: one is named by a kubeconfig flag, or found by running in a
    /// pod (unless --dangerously-serve-without-authentication says to run without one). `env`
    /// reads the environment (tests pass their own).
    pub fn cluster_config(
        &self,
        env: impl Fn(&str) -> Option<String>,
        serving_certificate: &crate::tls::CertificatePem,
    ) -> Option<crate::cluster::ClusterConfig> {
        let in_pod = env("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty());
        let kubeconfig = self.cluster.kubeconfig().cloned();
        if kubeconfig.is_none() && (!in_pod || self.dangerously_serve_without_authentication) {
            return None;
        }
        let flags = &self.cluster;
        let apiservices = flags.servicename.as_ref().filter(|n| !n.is_empty()).map(|service| {
            let namespace = flags
                .servicens
                .clone()
                .filter(|n| !n.is_empty())
                .or_else(|| env("POD_NAMESPACE"))
                .unwrap_or_else(|| "reports-server".to_string());
            let mut group_versions = Vec::new();
            for (enabled, group, version) in [
                (self.storereports, "wgpolicyk8s.io", "v1alpha2"),
                (self.storeephemeralreports, "reports.kyverno.io", "v1"),
                (self.storeopenreports, "openreports.io", "v1alpha1"),
            ] {
                if enabled != Some(false) {
                    group_versions.push((group.to_string(), version.to_string()));
                }
            }
            // The query API is this server's own group: nothing else serves it.
            group_versions.push(query_group_version());
            crate::cluster::ApiServiceRegistration {
                group_versions,
                service_name: service.clone(),
                service_namespace: namespace.clone(),
                service_port: 443,
                reconcile_interval: flags
                    .apiservicereconcileinterval
                    .unwrap_or(std::time::Duration::from_secs(60)),
                lease_namespace: namespace,
                identity: env("POD_NAME")
                    .or_else(|| env("HOSTNAME"))
                    .unwrap_or_else(|| format!("reports-server-{}", uuid::Uuid::new_v4())),
                ca_bundle: self
                    .ca_bundle_beside_certificate()
                    .or_else(|| crate::cluster::ca_bundle(serving_certificate)),
            }
        });
        Some(crate::cluster::ClusterConfig {
            kubeconfig,
            client_auth: flags.client_auth(),
            skip_lookup: flags.authentication_skip_lookup == Some(true),
            always_allow_paths: flags.authorization_always_allow_paths.clone(),
            token_cache_ttl: flags.authentication_token_webhook_cache_ttl,
            authorized_ttl: flags.authorization_webhook_cache_authorized_ttl,
            unauthorized_ttl: flags.authorization_webhook_cache_unauthorized_ttl,
            namespace_lifecycle: true,
            migrate: self.skipmigration != Some(true),
            apiservices,
        })
    }

    /// `ca.crt` next to `--tls-cert-file` (how cert-manager and the chart lay out a certificate
    /// Secret): the CA the aggregator should trust for the serving certificate.
    fn ca_bundle_beside_certificate(&self) -> Option<String> {
        let cert = self.tls_cert_file.as_ref()?;
        std::fs::read_to_string(cert.parent()?.join("ca.crt"))
            .ok()
            .filter(|pem| pem.contains("BEGIN CERTIFICATE"))
    }
}

/// A Go-style duration that is more than zero (a zero timeout would refuse everything).
fn positive_duration(value: &str) -> Result<std::time::Duration, String> {
    match go_duration(value)? {
        std::time::Duration::ZERO => Err(format!("{value:?}: must be more than zero")),
        duration => Ok(duration),
    }
}

/// The storage URL: `storage` when given, else PostgreSQL from upstream's `DB_*` environment
/// (read with `env`), else the embedded default.
pub fn storage_url(storage: Option<&str>, env: impl Fn(&str) -> Option<String>) -> String {
    if let Some(url) = storage {
        return url.to_string();
    }
    let Some(host) = env("DB_HOST").filter(|h| !h.is_empty()) else {
        return "sqlite://reports-server.db".to_string();
    };
    // libpq key=value form: values quoted, so passwords need no URL encoding.
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut parts = vec![format!("host={}", quote(&host))];
    for (var, key) in
        [("DB_PORT", "port"), ("DB_USER", "user"), ("DB_PASSWORD", "password"), ("DB_DATABASE", "dbname")]
    {
        if let Some(value) = env(var).filter(|v| !v.is_empty()) {
            parts.push(format!("{key}={}", quote(&value)));
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests;

/// The values of `--index-findings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FindingsChoice {
    /// The lasting report kinds.
    Reports,
    /// The lasting and the ephemeral report kinds.
    All,
    /// None: no findings are written, and the query API finds nothing.
    Off,
}

/// The group version of the query API (`findings`, `findingcounts`), registered beside the
/// report groups and removed by `uninstall`.
pub(crate) fn query_group_version() -> (String, String) {
    use reports_core::findings::render::{GROUP, VERSION};
    (GROUP.to_string(), VERSION.to_string())
}
