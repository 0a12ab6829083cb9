//! Command-line flags. Names follow k8s.io/apiserver where the meaning is the same, and every flag
//! of upstream kyverno/reports-server is accepted so existing manifests keep working; the ones not
//! implemented yet are reported at start-up instead of being ignored silently.

use std::{ffi::OsString, net::IpAddr, path::PathBuf, time::Duration};

use clap::{parser::ValueSource, CommandFactory as _, FromArgMatches as _, Parser};

/// reports-server: a Kubernetes aggregated API server that stores policy reports in a relational
/// database instead of etcd.
#[derive(Debug, Clone, Parser)]
#[command(name = "reports-server", version, disable_version_flag = true, about, long_about = None)]
pub struct Args {
    /// HTTPS port to serve on (0 picks a free port and logs it).
    #[arg(long, default_value_t = 4443, help_heading = "Serving")]
    pub secure_port: u16,

    /// Address to listen on. Anything but loopback needs authentication, which is not built yet,
    /// so it also needs --dangerously-serve-without-authentication.
    #[arg(long, default_value = "127.0.0.1", help_heading = "Serving")]
    pub bind_address: IpAddr,

    /// PEM serving certificate (a self-signed one is generated when absent).
    #[arg(long, requires = "tls_private_key_file", help_heading = "Serving")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of --tls-cert-file.
    #[arg(long, requires = "tls_cert_file", help_heading = "Serving")]
    pub tls_private_key_file: Option<PathBuf>,

    /// Serve a non-loopback address with no authentication or authorization: anyone who can reach
    /// the port can read and change every report. For isolated test environments only.
    #[arg(long, help_heading = "Serving")]
    pub dangerously_serve_without_authentication: bool,

    /// Largest accepted request body, in bytes (kube-apiserver's limit is 3 MiB).
    #[arg(long, default_value_t = 3 * 1024 * 1024, help_heading = "Serving")]
    pub max_request_body_bytes: usize,

    /// Where reports are kept: sqlite://PATH (a file, created on first start), sqlite::memory:,
    /// or PostgreSQL as postgres://USER@HOST:PORT/DB or a libpq key=value string. Without it,
    /// upstream's DB_HOST, DB_PORT, DB_USER, DB_PASSWORD and DB_DATABASE select PostgreSQL, and
    /// with none of those reports go to sqlite://reports-server.db.
    #[arg(long, env = "REPORTS_STORAGE", help_heading = "Storage")]
    pub storage: Option<String>,

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
    /// Skip copying reports stored as CRD objects in etcd (true is what this server does; false
    /// is accepted but nothing is copied yet).
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

    /// Flags of upstream and of k8s.io/apiserver that parse but change nothing yet.
    #[command(flatten)]
    pub inert: Inert,

    /// The flags given that change nothing (filled in by [`Args::try_from_args`]).
    #[arg(skip)]
    pub given_without_effect: Vec<String>,
}

/// Heading (in `--help`) of the flags that parse but change nothing yet. Every flag under it that
/// is given on the command line is named in the start-up warning.
pub const NO_EFFECT_HEADING: &str = "Accepted for compatibility, no effect yet";

/// Flags that upstream kyverno/reports-server accepts (its own, and those it inherits from
/// k8s.io/apiserver's secure-serving, delegated authentication and authorization, audit, feature
/// and logging options) that this server parses so existing manifests start, but that change
/// nothing yet. Their values are checked as upstream checks them (booleans, Go durations,
/// numbers).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = NO_EFFECT_HEADING)]
pub struct Inert {
    // Upstream's own flags for APIService management and its Kubernetes client.
    /// Service named in the APIService objects (APIService management is not built yet).
    #[arg(long)]
    pub servicename: Option<String>,
    /// Namespace of --servicename.
    #[arg(long)]
    pub servicens: Option<String>,
    /// ClusterRole that owns the managed APIService objects.
    #[arg(long)]
    pub clusterrolename: Option<String>,
    /// Interval between APIService reconciliations (Go duration).
    #[arg(long, value_parser = go_duration)]
    pub apiservicereconcileinterval: Option<Duration>,
    /// kubeconfig for talking to kube-apiserver (in-cluster configuration otherwise).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Upstream's etcd endpoints (etcd is not supported).
    #[arg(long = "etcdEndpoints")]
    pub etcd_endpoints: Option<String>,
    /// Upstream's etcd TLS verification switch (etcd is not supported).
    #[arg(long = "etcdSkipTLS", num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub etcd_skip_tls: Option<bool>,

    // k8s.io/apiserver secure serving.
    /// TLS cipher suites (comma-separated Go names); rustls's safe defaults are used.
    #[arg(long, value_delimiter = ',')]
    pub tls_cipher_suites: Vec<String>,
    /// Minimum TLS version (VersionTLS12, VersionTLS13); TLS 1.2 and 1.3 are served.
    #[arg(long)]
    pub tls_min_version: Option<String>,
    /// SNI certificate and key pairs (CERT,KEY[:NAMES]); repeatable.
    #[arg(long)]
    pub tls_sni_cert_key: Vec<String>,
    /// HTTP/2 streams per connection.
    #[arg(long)]
    pub http2_max_streams_per_connection: Option<u32>,
    /// SO_REUSEPORT on the listener.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub permit_port_sharing: Option<bool>,
    /// SO_REUSEADDR on the listener.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub permit_address_sharing: Option<bool>,

    // k8s.io/apiserver delegated authentication.
    /// kubeconfig for TokenReview (delegated authentication is not built yet).
    #[arg(long)]
    pub authentication_kubeconfig: Option<PathBuf>,
    /// Do not read kube-system/extension-apiserver-authentication.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub authentication_skip_lookup: Option<bool>,
    /// Start even when that ConfigMap cannot be read.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub authentication_tolerate_lookup_failure: Option<bool>,
    /// How long TokenReview answers are cached (Go duration).
    #[arg(long, value_parser = go_duration)]
    pub authentication_token_webhook_cache_ttl: Option<Duration>,
    /// CA of client certificates.
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// CA of the front proxy's client certificate.
    #[arg(long)]
    pub requestheader_client_ca_file: Option<PathBuf>,
    /// Common names allowed for the front proxy's certificate.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_allowed_names: Vec<String>,
    /// Headers carrying the user name.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_username_headers: Vec<String>,
    /// Headers carrying the user's groups.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_group_headers: Vec<String>,
    /// Header prefixes carrying extra user attributes.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_extra_headers_prefix: Vec<String>,
    /// Headers carrying the user's UID.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_uid_headers: Vec<String>,

    // k8s.io/apiserver delegated authorization.
    /// kubeconfig for SubjectAccessReview (delegated authorization is not built yet).
    #[arg(long)]
    pub authorization_kubeconfig: Option<PathBuf>,
    /// Paths served without authorization (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub authorization_always_allow_paths: Vec<String>,
    /// How long allowed SubjectAccessReview answers are cached (Go duration).
    #[arg(long, value_parser = go_duration)]
    pub authorization_webhook_cache_authorized_ttl: Option<Duration>,
    /// How long denied SubjectAccessReview answers are cached (Go duration).
    #[arg(long, value_parser = go_duration)]
    pub authorization_webhook_cache_unauthorized_ttl: Option<Duration>,

    // k8s.io/apiserver audit (no audit log is written).
    /// Audit policy file.
    #[arg(long)]
    pub audit_policy_file: Option<PathBuf>,
    /// Audit log file.
    #[arg(long)]
    pub audit_log_path: Option<String>,
    /// Days to keep audit log files.
    #[arg(long)]
    pub audit_log_maxage: Option<i64>,
    /// Audit log files to keep.
    #[arg(long)]
    pub audit_log_maxbackup: Option<i64>,
    /// Audit log file size limit in MB.
    #[arg(long)]
    pub audit_log_maxsize: Option<i64>,
    /// Audit log format (legacy or json).
    #[arg(long)]
    pub audit_log_format: Option<String>,
    /// Gzip rotated audit log files.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub audit_log_compress: Option<bool>,
    /// Audit log API group/version.
    #[arg(long)]
    pub audit_log_version: Option<String>,
    /// Audit log backend mode (batch, blocking, blocking-strict).
    #[arg(long)]
    pub audit_log_mode: Option<String>,
    /// Audit log batch buffer size.
    #[arg(long)]
    pub audit_log_batch_buffer_size: Option<i64>,
    /// Audit log batch size.
    #[arg(long)]
    pub audit_log_batch_max_size: Option<i64>,
    /// Audit log batch wait (Go duration).
    #[arg(long, value_parser = go_duration)]
    pub audit_log_batch_max_wait: Option<Duration>,
    /// Audit log batch throttling.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub audit_log_batch_throttle_enable: Option<bool>,
    /// Audit log batches per second.
    #[arg(long)]
    pub audit_log_batch_throttle_qps: Option<f64>,
    /// Audit log batch burst.
    #[arg(long)]
    pub audit_log_batch_throttle_burst: Option<i64>,
    /// Audit log event truncation.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub audit_log_truncate_enabled: Option<bool>,
    /// Audit log truncated batch size.
    #[arg(long)]
    pub audit_log_truncate_max_batch_size: Option<i64>,
    /// Audit log truncated event size.
    #[arg(long)]
    pub audit_log_truncate_max_event_size: Option<i64>,
    /// Audit webhook kubeconfig.
    #[arg(long)]
    pub audit_webhook_config_file: Option<PathBuf>,
    /// Audit webhook first retry wait (Go duration).
    #[arg(long, value_parser = go_duration)]
    pub audit_webhook_initial_backoff: Option<Duration>,
    /// Audit webhook API group/version.
    #[arg(long)]
    pub audit_webhook_version: Option<String>,
    /// Audit webhook backend mode.
    #[arg(long)]
    pub audit_webhook_mode: Option<String>,
    /// Audit webhook batch buffer size.
    #[arg(long)]
    pub audit_webhook_batch_buffer_size: Option<i64>,
    /// Audit webhook batch size.
    #[arg(long)]
    pub audit_webhook_batch_max_size: Option<i64>,
    /// Audit webhook batch wait (Go duration).
    #[arg(long, value_parser = go_duration)]
    pub audit_webhook_batch_max_wait: Option<Duration>,
    /// Audit webhook batch throttling.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub audit_webhook_batch_throttle_enable: Option<bool>,
    /// Audit webhook batches per second.
    #[arg(long)]
    pub audit_webhook_batch_throttle_qps: Option<f64>,
    /// Audit webhook batch burst.
    #[arg(long)]
    pub audit_webhook_batch_throttle_burst: Option<i64>,
    /// Audit webhook event truncation.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub audit_webhook_truncate_enabled: Option<bool>,
    /// Audit webhook truncated batch size.
    #[arg(long)]
    pub audit_webhook_truncate_max_batch_size: Option<i64>,
    /// Audit webhook truncated event size.
    #[arg(long)]
    pub audit_webhook_truncate_max_event_size: Option<i64>,

    // k8s.io/apiserver features.
    /// Go profiling endpoints (there are none).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub profiling: Option<bool>,
    /// Go lock contention profiling.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub contention_profiling: Option<bool>,
    /// Unix socket for Go profiling.
    #[arg(long)]
    pub debug_socket_path: Option<PathBuf>,

    // k8s.io/component-base logging and klog (set RUST_LOG instead).
    /// klog verbosity (set RUST_LOG instead, e.g. RUST_LOG=debug).
    #[arg(short = 'v', long = "v")]
    pub verbosity: Option<i32>,
    /// klog per-file verbosity.
    #[arg(long)]
    pub vmodule: Option<String>,
    /// klog flush interval (Go duration); logs are written unbuffered.
    #[arg(long, value_parser = go_duration)]
    pub log_flush_frequency: Option<Duration>,
    /// component-base JSON info buffer size.
    #[arg(long)]
    pub log_json_info_buffer_size: Option<String>,
    /// component-base JSON split stream.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub log_json_split_stream: Option<bool>,
    /// component-base text info buffer size.
    #[arg(long)]
    pub log_text_info_buffer_size: Option<String>,
    /// component-base text split stream.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub log_text_split_stream: Option<bool>,
    /// klog log directory.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// klog log file.
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// klog log file size limit in MB.
    #[arg(long)]
    pub log_file_max_size: Option<u64>,
    /// klog: also log to standard error.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub alsologtostderr: Option<bool>,
    /// klog threshold for standard error.
    #[arg(long)]
    pub stderrthreshold: Option<String>,
    /// klog one output per severity.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub one_output: Option<bool>,
    /// klog header prefixes.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub skip_headers: Option<bool>,
    /// klog header in log files.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub skip_log_headers: Option<bool>,
    /// klog file directory in headers.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub add_dir_header: Option<bool>,
    /// klog stack trace location.
    #[arg(long)]
    pub log_backtrace_at: Option<String>,
}

/// A Go `strconv.ParseBool` boolean, as pflag accepts it.
pub fn go_bool(value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{value:?} is not a boolean (true or false)")),
    }
}

/// A Go `time.ParseDuration` duration (`10s`, `1m30s`, `1.5h`, `300ms`, `0`); negative ones are
/// refused, as none of these flags means anything with them.
pub fn go_duration(value: &str) -> Result<Duration, String> {
    let bad = || format!("{value:?} is not a duration such as 10s, 1m30s or 500ms");
    let mut rest = value.strip_prefix('+').unwrap_or(value);
    if rest.starts_with('-') {
        return Err(format!("{value:?}: a negative duration means nothing here"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        nanos += number * scale;
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

/// Rewrites a command line the way pflag reads it before clap sees it: an empty value
/// (`--dbsslrootcert=`, or `--dbsslrootcert ""`) means the flag is unset, and `_` in a flag name
/// is read as `-` (klog's `--log_dir` is `--log-dir`), as k8s.io/component-base normalises names.
pub fn normalise_args<I, T>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut args = args.into_iter().map(Into::into);
    let mut out: Vec<OsString> = args.next().into_iter().collect();
    let mut rest: Vec<OsString> = args.collect();
    rest.reverse();
    while let Some(arg) = rest.pop() {
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            out.push(arg);
            out.extend(rest.into_iter().rev());
            break;
        }
        let Some(flag) = text.strip_prefix("--").filter(|f| !f.is_empty()) else {
            if text.starts_with('-') && text.ends_with('=') && text.len() == 3 {
                continue; // `-v=`
            }
            out.push(arg);
            continue;
        };
        match flag.split_once('=') {
            Some((_, "")) => {}
            Some((name, value)) => out.push(format!("--{}={value}", normalise_name(name)).into()),
            None if rest.last().is_some_and(|next| next.is_empty()) => {
                rest.pop();
            }
            None => out.push(format!("--{}", normalise_name(flag)).into()),
        }
    }
    out
}

/// `_` read as `-`, except in upstream's camel-case etcd flags, which have none.
fn normalise_name(name: &str) -> String {
    name.replace('_', "-")
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
            if arg.get_help_heading() == Some(NO_EFFECT_HEADING)
                && matches.value_source(id) == Some(ValueSource::CommandLine)
            {
                let name = arg.get_long().map(|l| format!("--{l}")).unwrap_or_else(|| id.to_string());
                parsed.given_without_effect.push(name);
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
        note(self.storereports == Some(false), "--storereports=false");
        note(self.storeephemeralreports == Some(false), "--storeephemeralreports=false");
        note(self.storeopenreports == Some(false), "--storeopenreports=false");
        note(self.skipmigration == Some(false), "--skipmigration=false");
        note(self.logtostderr == Some(false), "--logtostderr=false");
    }

    /// The storage URL: `--storage`, else PostgreSQL from upstream's `DB_*` environment, else
    /// the embedded default.
    pub fn storage_url(&self) -> String {
        self.storage_url_from(|name| std::env::var(name).ok())
    }

    /// [`storage_url`](Self::storage_url) with the environment given (tests).
    pub fn storage_url_from(&self, env: impl Fn(&str) -> Option<String>) -> String {
        if let Some(url) = &self.storage {
            return url.clone();
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
        })
    }

    /// One warning naming every given flag that changes nothing (none when there is none), so
    /// that an operator sees in one line what upstream's manifests ask for and this server does
    /// not do yet.
    pub fn unimplemented_flags(&self) -> Vec<String> {
        if self.given_without_effect.is_empty() {
            return Vec::new();
        }
        vec![format!(
            "these flags are accepted for compatibility but change nothing yet: {} (all six report kinds are \
             always served; APIService management, delegated authentication and authorization, audit, profiling \
             and klog settings are not built; log verbosity is set with RUST_LOG)",
            self.given_without_effect.join(", ")
        )]
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{go_bool, go_duration, normalise_args, Args};

    #[test]
    fn upstream_db_environment_selects_postgres_with_quoted_values() {
        let args = Args::try_from_args(["reports-server"]).unwrap();
        let env = |name: &str| match name {
            "DB_HOST" => Some("db.example".to_string()),
            "DB_PORT" => Some("5433".to_string()),
            "DB_USER" => Some("reports".to_string()),
            "DB_PASSWORD" => Some("it's a \\secret".to_string()),
            "DB_DATABASE" => Some("reportsdb".to_string()),
            _ => None,
        };
        let url = args.storage_url_from(env);
        assert_eq!(
            url,
            "host='db.example' port='5433' user='reports' password='it\\'s a \\\\secret' dbname='reportsdb'"
        );
        let config: tokio_postgres::Config = url.parse().unwrap();
        assert_eq!(config.get_password(), Some("it's a \\secret".as_bytes()));
        assert_eq!(config.get_ports(), &[5433]);
    }

    #[test]
    fn storage_flag_wins_and_default_is_the_embedded_file() {
        let env = |name: &str| (name == "DB_HOST").then(|| "db".to_string());
        let args = Args::try_from_args(["reports-server", "--storage", "sqlite::memory:"]).unwrap();
        assert_eq!(args.storage_url_from(env), "sqlite::memory:");
        let args = Args::try_from_args(["reports-server"]).unwrap();
        assert_eq!(args.storage_url_from(|_| None), "sqlite://reports-server.db");
    }

    /// The container arguments upstream's chart and `config/install.yaml` render.
    pub const UPSTREAM_ARGS: [&str; 14] = [
        "--dbsslmode=disable",
        "--dbsslrootcert=",
        "--dbsslkey=",
        "--dbsslcert=",
        "--servicename=reports-server",
        "--servicens=reports-server",
        "--clusterrolename=reports-server",
        "--storereports=true",
        "--storeephemeralreports=true",
        "--storeopenreports=true",
        "--cert-dir=/tmp",
        "--secure-port=4443",
        "--authorization-always-allow-paths=/metrics",
        "--clustername=",
    ];

    #[test]
    fn upstream_manifest_arguments_parse_with_one_warning_naming_the_inert_ones() {
        let args = Args::try_from_args(std::iter::once("reports-server").chain(UPSTREAM_ARGS)).unwrap();
        assert_eq!(args.secure_port, 4443);
        assert_eq!(args.dbsslmode.as_deref(), Some("disable"));
        assert_eq!(
            (args.dbsslrootcert.as_ref(), args.dbsslcert.as_ref(), args.dbsslkey.as_ref()),
            (None, None, None)
        );
        assert_eq!(args.clustername, None, "an empty value means unset");
        assert_eq!(args.storereports, Some(true));
        let settings = args.postgres_settings().unwrap();
        assert!(settings.ssl_root_cert.is_none() && settings.cluster_name.is_none());
        let warnings = args.unimplemented_flags();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        for flag in [
            "--servicename",
            "--servicens",
            "--clusterrolename",
            "--authorization-always-allow-paths",
            "--cert-dir",
        ] {
            assert!(warnings[0].contains(flag), "{flag} named in {warnings:?}");
        }
        for honoured in ["--dbsslmode", "--secure-port", "--storereports", "--clustername", "--dbsslrootcert"]
        {
            assert!(!warnings[0].contains(honoured), "{honoured} is honoured: {warnings:?}");
        }
    }

    #[test]
    fn generic_apiserver_and_klog_flags_parse() {
        let line = [
            "reports-server",
            "--authentication-kubeconfig=/k",
            "--authorization-kubeconfig",
            "/k",
            "--kubeconfig=/k",
            "--requestheader-allowed-names=front-proxy-client,aggregator",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--requestheader-client-ca-file=/ca",
            "--client-ca-file=/ca",
            "--authentication-skip-lookup",
            "--authentication-tolerate-lookup-failure=false",
            "--authentication-token-webhook-cache-ttl=10s",
            "--authorization-webhook-cache-authorized-ttl=5m",
            "--authorization-webhook-cache-unauthorized-ttl=1m30s",
            "--apiservicereconcileinterval=10s",
            "--audit-log-path=-",
            "--audit-log-maxage=7",
            "--audit-log-batch-max-wait=500ms",
            "--audit-webhook-batch-throttle-qps=10.5",
            "--tls-cipher-suites=TLS_AES_128_GCM_SHA256,TLS_AES_256_GCM_SHA384",
            "--tls-min-version=VersionTLS12",
            "--tls-sni-cert-key=a.crt,a.key:a.example",
            "--profiling=false",
            "--skipmigration=true",
            "--etcd=false",
            "--etcdEndpoints=",
            "-v=2",
            "--vmodule=x=3",
            "--logtostderr",
            "--log_dir=/tmp",
            "--alsologtostderr=true",
            "--logging-format=json",
            "--bind-address=127.0.0.1",
        ];
        let args = Args::try_from_args(line).unwrap();
        assert_eq!(args.log_format, "json");
        assert_eq!(args.inert.verbosity, Some(2));
        assert_eq!(args.inert.requestheader_allowed_names, ["front-proxy-client", "aggregator"]);
        assert_eq!(args.inert.authorization_webhook_cache_unauthorized_ttl, Some(Duration::from_secs(90)));
        let warning = &args.unimplemented_flags()[0];
        for flag in [
            "--kubeconfig",
            "--requestheader-client-ca-file",
            "--audit-log-path",
            "--v",
            "--log-dir",
            "--profiling",
        ] {
            assert!(warning.contains(flag), "{flag}: {warning}");
        }
        for honoured in ["--logtostderr", "--logging-format", "--etcd", "--skipmigration", "--bind-address"] {
            assert!(!warning.contains(honoured), "{honoured}: {warning}");
        }
        // `--v 3` and `-v 3` work too; an unknown flag is still refused.
        assert_eq!(Args::try_from_args(["r", "--v", "3"]).unwrap().inert.verbosity, Some(3));
        assert!(Args::try_from_args(["r", "--no-such-flag"]).is_err());
        assert!(Args::try_from_args(["r", "--storereports=maybe"]).is_err());
        assert!(Args::try_from_args(["r", "--apiservicereconcileinterval=10"]).is_err());
    }

    #[test]
    fn no_warning_without_inert_flags_and_version_is_reported() {
        let args = Args::try_from_args(["r", "--storage", "sqlite::memory:", "--storereports"]).unwrap();
        assert!(args.unimplemented_flags().is_empty());
        assert_eq!(Args::try_from_args(["r", "--version"]).unwrap().version, Some(true));
        assert_eq!(Args::try_from_args(["r", "--version=false"]).unwrap().version, Some(false));
    }

    #[test]
    fn cert_dir_supplies_the_serving_certificate_when_both_files_exist() {
        let dir = tempfile::tempdir().unwrap();
        let flag = format!("--cert-dir={}", dir.path().display());
        let args = Args::try_from_args(["r", flag.as_str()]).unwrap();
        assert!(args.tls_cert_file.is_none() && args.unimplemented_flags()[0].contains("--cert-dir"));
        std::fs::write(dir.path().join("apiserver.crt"), "").unwrap();
        std::fs::write(dir.path().join("apiserver.key"), "").unwrap();
        let args = Args::try_from_args(["r", flag.as_str()]).unwrap();
        assert_eq!(args.tls_cert_file, Some(dir.path().join("apiserver.crt")));
        assert_eq!(args.tls_private_key_file, Some(dir.path().join("apiserver.key")));
        assert!(args.unimplemented_flags().is_empty());
    }

    #[test]
    fn go_values() {
        assert_eq!(go_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(go_duration("1h2m3.5s"), Ok(Duration::from_millis(3_723_500)));
        assert_eq!(go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(go_duration("7\u{b5}s"), Ok(Duration::from_micros(7)));
        for bad in ["", "10", "s", "1d", "-1s", "1.2.3s"] {
            assert!(go_duration(bad).is_err(), "{bad}");
        }
        assert_eq!((go_bool("T"), go_bool("0")), (Ok(true), Ok(false)));
        assert!(go_bool("yes").is_err());
        let out = normalise_args(["r", "--a=", "--b", "", "--c_d=1", "-v=", "--e", "x", "--", "--f="]);
        assert_eq!(out, ["r", "--c-d=1", "--e", "x", "--", "--f="]);
    }
}
