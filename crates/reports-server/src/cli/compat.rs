//! Flags accepted for compatibility: those of upstream and of k8s.io/apiserver that change
//! nothing here, and pflag's ways of reading a command line (Go booleans and durations, empty
//! values, `_` in names).

use std::{ffi::OsString, path::PathBuf, time::Duration};

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
    // Upstream's own flags that change nothing here.
    /// ClusterRole that owns the managed APIService objects.
    #[arg(long)]
    pub clusterrolename: Option<String>,
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
    /// SO_REUSEPORT on the listener.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub permit_port_sharing: Option<bool>,
    /// SO_REUSEADDR on the listener.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub permit_address_sharing: Option<bool>,

    // k8s.io/apiserver delegated authentication (the rest is under Cluster).
    /// Start even when that ConfigMap cannot be read.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub authentication_tolerate_lookup_failure: Option<bool>,

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
/// The container arguments upstream's chart and `config/install.yaml` render, verbatim: a
/// manifest written for upstream passes exactly these, and this server must start with them.
pub const UPSTREAM_CHART_ARGS: [&str; 14] = [
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
