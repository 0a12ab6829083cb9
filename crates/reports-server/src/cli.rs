//! Command-line flags. Names follow k8s.io/apiserver where the meaning is the same, and every flag
//! of upstream kyverno/reports-server is accepted so existing manifests keep working; the ones not
//! implemented yet are reported at start-up instead of being ignored silently.

use std::{net::IpAddr, path::PathBuf};

use clap::Parser;

/// reports-server: a Kubernetes aggregated API server that stores policy reports in a relational
/// database instead of etcd.
#[derive(Debug, Clone, Parser)]
#[command(name = "reports-server", version, about, long_about = None)]
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
    /// Upstream compatibility: the Service that fronts this server (for APIService objects).
    #[arg(long, help_heading = "Upstream compatibility")]
    pub servicename: Option<String>,
    /// Upstream compatibility: namespace of --servicename.
    #[arg(long, help_heading = "Upstream compatibility")]
    pub servicens: Option<String>,
    /// Upstream compatibility: a name recorded with this server's cluster in the database.
    #[arg(long, help_heading = "Upstream compatibility")]
    pub clustername: Option<String>,
    /// Upstream compatibility: serve wgpolicyk8s.io reports.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", help_heading = "Upstream compatibility")]
    pub storereports: Option<bool>,
    /// Upstream compatibility: serve reports.kyverno.io ephemeral reports.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", help_heading = "Upstream compatibility")]
    pub storeephemeralreports: Option<bool>,
    /// Upstream compatibility: serve openreports.io reports.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", help_heading = "Upstream compatibility")]
    pub storeopenreports: Option<bool>,
    /// Upstream compatibility: skip migrating reports still stored in etcd.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", help_heading = "Upstream compatibility")]
    pub skipmigration: Option<bool>,
    /// Upstream compatibility: kubeconfig for talking to kube-apiserver.
    #[arg(long, help_heading = "Upstream compatibility")]
    pub kubeconfig: Option<PathBuf>,
    /// Upstream compatibility: upstream's embedded etcd. Not supported: use --storage sqlite://PATH.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", help_heading = "Upstream compatibility")]
    pub etcd: Option<bool>,
}

impl Args {
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

    /// Upstream flags that were given but have no effect yet, each with the reason.
    pub fn unimplemented_flags(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut note = |given: bool, flag: &str, why: &str| {
            if given {
                out.push(format!("--{flag} is accepted but not implemented yet: {why}"));
            }
        };
        let cluster = "APIService registration in a cluster is not built yet";
        note(self.servicename.is_some(), "servicename", cluster);
        note(self.servicens.is_some(), "servicens", cluster);
        note(self.kubeconfig.is_some(), "kubeconfig", cluster);
        note(self.skipmigration.is_some(), "skipmigration", "there is no etcd migration yet");
        let kinds = "all six report kinds are always served";
        note(self.storereports == Some(false), "storereports=false", kinds);
        note(self.storeephemeralreports == Some(false), "storeephemeralreports=false", kinds);
        note(self.storeopenreports == Some(false), "storeopenreports=false", kinds);
        out
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::Args;

    #[test]
    fn upstream_db_environment_selects_postgres_with_quoted_values() {
        let args = Args::parse_from(["reports-server"]);
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
        let args = Args::parse_from(["reports-server", "--storage", "sqlite::memory:"]);
        assert_eq!(args.storage_url_from(env), "sqlite::memory:");
        let args = Args::parse_from(["reports-server"]);
        assert_eq!(args.storage_url_from(|_| None), "sqlite://reports-server.db");
    }
}
