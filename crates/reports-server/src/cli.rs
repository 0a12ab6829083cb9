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

    /// Where reports are kept: sqlite://PATH (a file, created on first start) or sqlite::memory:.
    #[arg(
        long,
        env = "REPORTS_STORAGE",
        default_value = "sqlite://reports-server.db",
        help_heading = "Storage"
    )]
    pub storage: String,

    /// How long the change log keeps entries, in seconds. Watches and continue tokens older than
    /// that get 410 Gone and relist.
    #[arg(long, default_value_t = 900, help_heading = "Storage")]
    pub change_log_retention_seconds: u64,

    /// Log format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"], help_heading = "Logging")]
    pub log_format: String,

    /// Upstream compatibility: PostgreSQL SSL mode (PostgreSQL storage is not built yet).
    #[arg(long, help_heading = "Upstream compatibility")]
    pub dbsslmode: Option<String>,
    /// Upstream compatibility: PostgreSQL SSL root certificate.
    #[arg(long, help_heading = "Upstream compatibility")]
    pub dbsslrootcert: Option<String>,
    /// Upstream compatibility: PostgreSQL SSL client key.
    #[arg(long, help_heading = "Upstream compatibility")]
    pub dbsslkey: Option<String>,
    /// Upstream compatibility: PostgreSQL SSL client certificate.
    #[arg(long, help_heading = "Upstream compatibility")]
    pub dbsslcert: Option<String>,
    /// Upstream compatibility: the Service that fronts this server (for APIService objects).
    #[arg(long, help_heading = "Upstream compatibility")]
    pub servicename: Option<String>,
    /// Upstream compatibility: namespace of --servicename.
    #[arg(long, help_heading = "Upstream compatibility")]
    pub servicens: Option<String>,
    /// Upstream compatibility: cluster name recorded with every report.
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
    /// Upstream flags that were given but have no effect yet, each with the reason.
    pub fn unimplemented_flags(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut note = |given: bool, flag: &str, why: &str| {
            if given {
                out.push(format!("--{flag} is accepted but not implemented yet: {why}"));
            }
        };
        let postgres = "PostgreSQL storage is not built yet";
        note(self.dbsslmode.is_some(), "dbsslmode", postgres);
        note(self.dbsslrootcert.is_some(), "dbsslrootcert", postgres);
        note(self.dbsslkey.is_some(), "dbsslkey", postgres);
        note(self.dbsslcert.is_some(), "dbsslcert", postgres);
        let cluster = "APIService registration in a cluster is not built yet";
        note(self.servicename.is_some(), "servicename", cluster);
        note(self.servicens.is_some(), "servicens", cluster);
        note(self.kubeconfig.is_some(), "kubeconfig", cluster);
        note(self.clustername.is_some(), "clustername", "multi-cluster storage comes with PostgreSQL");
        note(self.skipmigration.is_some(), "skipmigration", "there is no etcd migration yet");
        let kinds = "all six report kinds are always served";
        note(self.storereports == Some(false), "storereports=false", kinds);
        note(self.storeephemeralreports == Some(false), "storeephemeralreports=false", kinds);
        note(self.storeopenreports == Some(false), "storeopenreports=false", kinds);
        out
    }
}
