//! Command-line flags. Names follow k8s.io/apiserver where the meaning is the same, and every flag
//! of upstream kyverno/reports-server is accepted so existing manifests keep working; the ones not
//! implemented yet are reported at start-up instead of being ignored silently.

mod cluster;
mod compat;

use std::{ffi::OsString, net::IpAddr, path::PathBuf};

use clap::{parser::ValueSource, CommandFactory as _, FromArgMatches as _, Parser};
pub use cluster::ClusterFlags;
pub use compat::{go_bool, go_duration, normalise_args, Inert, NO_EFFECT_HEADING};

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
             served, --store*=false only leaves a group's APIService unregistered; cluster flags need a cluster: \
             --kubeconfig, or a pod's service account; audit, profiling and klog settings are not built; log \
             verbosity is set with RUST_LOG)",
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
        let warnings = args.unimplemented_flags(true);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        for flag in ["--clusterrolename", "--cert-dir"] {
            assert!(warnings[0].contains(flag), "{flag} named in {warnings:?}");
        }
        for honoured in [
            "--dbsslmode",
            "--secure-port",
            "--storereports",
            "--clustername",
            "--dbsslrootcert",
            "--servicename",
            "--servicens",
            "--authorization-always-allow-paths",
        ] {
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
        assert_eq!(args.cluster.requestheader_allowed_names, ["front-proxy-client", "aggregator"]);
        assert_eq!(args.cluster.authorization_webhook_cache_unauthorized_ttl, Some(Duration::from_secs(90)));
        let warning = &args.unimplemented_flags(true)[0];
        for flag in ["--audit-log-path", "--v", "--log-dir", "--profiling"] {
            assert!(warning.contains(flag), "{flag}: {warning}");
        }
        for honoured in [
            "--logtostderr",
            "--logging-format",
            "--etcd",
            "--skipmigration",
            "--bind-address",
            "--kubeconfig",
            "--requestheader-client-ca-file",
        ] {
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
        assert!(args.unimplemented_flags(true).is_empty());
        assert_eq!(Args::try_from_args(["r", "--version"]).unwrap().version, Some(true));
        assert_eq!(Args::try_from_args(["r", "--version=false"]).unwrap().version, Some(false));
    }

    #[test]
    fn cert_dir_supplies_the_serving_certificate_when_both_files_exist() {
        let dir = tempfile::tempdir().unwrap();
        let flag = format!("--cert-dir={}", dir.path().display());
        let args = Args::try_from_args(["r", flag.as_str()]).unwrap();
        assert!(args.tls_cert_file.is_none() && args.unimplemented_flags(true)[0].contains("--cert-dir"));
        std::fs::write(dir.path().join("apiserver.crt"), "").unwrap();
        std::fs::write(dir.path().join("apiserver.key"), "").unwrap();
        let args = Args::try_from_args(["r", flag.as_str()]).unwrap();
        assert_eq!(args.tls_cert_file, Some(dir.path().join("apiserver.crt")));
        assert_eq!(args.tls_private_key_file, Some(dir.path().join("apiserver.key")));
        assert!(args.unimplemented_flags(true).is_empty());
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

    #[test]
    fn a_cluster_is_joined_with_a_kubeconfig_or_in_a_pod() {
        let pem = crate::tls::CertificatePem::self_signed().unwrap();
        let nowhere = |_: &str| None;
        let in_pod = |name: &str| match name {
            "KUBERNETES_SERVICE_HOST" => Some("10.0.0.1".to_string()),
            "POD_NAMESPACE" => Some("reports".to_string()),
            "POD_NAME" => Some("reports-server-0".to_string()),
            _ => None,
        };
        let plain = Args::try_from_args(["r"]).unwrap();
        assert!(plain.cluster_config(nowhere, &pem).is_none(), "standalone outside a pod");
        assert!(plain.cluster_config(in_pod, &pem).is_some(), "a pod's service account");
        let opted_out = Args::try_from_args(["r", "--dangerously-serve-without-authentication"]).unwrap();
        assert!(opted_out.cluster_config(in_pod, &pem).is_none());
        let given =
            Args::try_from_args(["r", "--authorization-kubeconfig=/k", "--authentication-kubeconfig=/a"])
                .unwrap();
        let config = given.cluster_config(nowhere, &pem).unwrap();
        assert_eq!(config.kubeconfig, Some(std::path::PathBuf::from("/a")));
        assert!(config.apiservices.is_none(), "no --servicename: nothing registered");

        let upstream = Args::try_from_args(
            std::iter::once("reports-server").chain(UPSTREAM_ARGS).chain(["--storeephemeralreports=false"]),
        )
        .unwrap();
        let registration = upstream.cluster_config(in_pod, &pem).unwrap().apiservices.unwrap();
        assert_eq!(
            (registration.service_name.as_str(), registration.service_namespace.as_str()),
            ("reports-server", "reports-server")
        );
        assert_eq!(
            registration.group_versions,
            vec![
                ("wgpolicyk8s.io".to_string(), "v1alpha2".to_string()),
                ("openreports.io".into(), "v1alpha1".into())
            ]
        );
        assert_eq!(registration.identity, "reports-server-0");
        assert_eq!(
            registration.ca_bundle.as_deref(),
            Some(pem.cert_pem.as_str()),
            "a self-signed certificate is its own CA"
        );
        assert!(upstream.unimplemented_flags(false)[0].contains("--clusterrolename"));
        assert!(!upstream.unimplemented_flags(false)[0].contains("--storeephemeralreports"));
    }

    #[test]
    fn the_ca_next_to_the_serving_certificate_is_the_apiservices_ca_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        std::fs::write(dir.path().join("ca.crt"), ca).unwrap();
        let cert = dir.path().join("tls.crt").display().to_string();
        let key = dir.path().join("tls.key").display().to_string();
        let args = Args::try_from_args([
            "r",
            "--tls-cert-file",
            &cert,
            "--tls-private-key-file",
            &key,
            "--servicename=s",
            "--kubeconfig=/k",
        ])
        .unwrap();
        let pem = crate::tls::CertificatePem::self_signed().unwrap();
        let registration = args.cluster_config(|_| None, &pem).unwrap().apiservices.unwrap();
        assert_eq!(registration.ca_bundle.as_deref(), Some(ca));
    }
}
