//! PostgreSQL settings beyond the connection URL: TLS (libpq's `sslmode`, as upstream's
//! `--dbsslmode`), pool size and timeouts, and which cluster this server serves.

use std::{path::PathBuf, time::Duration};

use crate::{error::SettingError, findings::FindingsIndex};

/// How to verify the server's certificate (libpq's `sslmode`, as upstream's `--dbsslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// No TLS (upstream's default).
    #[default]
    Disable,
    /// TLS when the server offers it, unverified.
    Prefer,
    /// TLS, unverified unless a root certificate is given (then as `VerifyCa`), as libpq does.
    Require,
    /// TLS with the chain verified against the root certificate; any host name.
    VerifyCa,
    /// TLS with the chain and the host name verified.
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = SettingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "" | "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(SettingError::UnknownSslMode(other.to_string())),
        })
    }
}

/// PostgreSQL settings that do not fit in a connection URL or come from upstream's flags.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// TLS mode; overrides the URL's `sslmode`.
    pub ssl_mode: Option<SslMode>,
    /// PEM root certificate(s) that sign the server's certificate.
    pub ssl_root_cert: Option<PathBuf>,
    /// PEM client certificate, for certificate authentication.
    pub ssl_cert: Option<PathBuf>,
    /// PEM private key of `ssl_cert`.
    pub ssl_key: Option<PathBuf>,
    /// Largest number of pooled connections (plus one for notifications).
    pub pool_size: usize,
    /// Connect timeout for new connections.
    pub connect_timeout: Duration,
    /// How long a request waits for a free pooled connection before it gets 503.
    pub acquire_timeout: Duration,
    /// Server-side limit on one statement (a list streams in one statement).
    pub statement_timeout: Duration,
    /// How long start-up keeps retrying while the database cannot be reached (a server often
    /// starts before its database does); zero fails at once.
    pub startup_timeout: Duration,
    /// The cluster whose reports this server serves (a UUID: the kube-system namespace UID in a
    /// cluster). None: the only cluster recorded in the database, or a new one.
    pub cluster_id: Option<String>,
    /// A name recorded with the cluster (upstream's `--clustername`).
    pub cluster_name: Option<String>,
    /// How often the notification listener re-reads the counter without a notification: the
    /// most a lost NOTIFY delays another replica's events. Not a flag; tests lengthen it to show
    /// that notifications alone deliver.
    pub safety_poll: Duration,
    /// Which report kinds' results are kept as findings rows (all replicas of a database must
    /// agree; a start with another set rebuilds the kinds that differ).
    pub findings: FindingsIndex,
}

impl Default for PgSettings {
    fn default() -> Self {
        Self {
            ssl_mode: None,
            ssl_root_cert: None,
            ssl_cert: None,
            ssl_key: None,
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(60),
            startup_timeout: Duration::from_secs(60),
            cluster_id: None,
            cluster_name: None,
            safety_poll: Duration::from_secs(5),
            findings: FindingsIndex::default(),
        }
    }
}

/// Reads the URL's `sslmode` where tokio-postgres does not know it (verify-ca, verify-full) and
/// returns the URL with a mode it understands.
pub(super) fn take_ssl_mode(url: &str) -> (String, Option<SslMode>) {
    for (text, mode) in
        [("sslmode=verify-full", SslMode::VerifyFull), ("sslmode=verify-ca", SslMode::VerifyCa)]
    {
        if url.contains(text) {
            return (url.replace(text, "sslmode=require"), Some(mode));
        }
    }
    (url.to_string(), None)
}
