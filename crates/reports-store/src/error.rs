//! What a store operation fails with: the outcomes callers act on (not found, taken, stale,
//! unavailable, misconfigured) as variants, and for the rest a description that keeps the error
//! that caused it.

use std::{error::Error, fmt, sync::Arc};

/// Failures of a store operation. The server maps each to a Kubernetes Status.
///
/// The text of every variant is complete (a failure's cause is part of it), so a log line that
/// prints only this error loses nothing; [`Error::source`] gives the cause itself.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreError {
    /// The object does not exist.
    NotFound,
    /// An object with that key already exists (create).
    AlreadyExists,
    /// The stored resourceVersion differs from the expected one.
    Conflict,
    /// A list asked for a past resourceVersion that the change log no longer covers.
    Expired,
    /// The database cannot be reached or refused to work; retrying later may succeed.
    Unavailable(Failure),
    /// Anything else: a defect or corrupt data. The text is for logs only.
    Backend(Failure),
    /// The store was configured with something it cannot use; retrying does not help.
    InvalidSetting(SettingError),
}

/// Result of store operations.
pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// A [`StoreError::Backend`] described by `context` alone.
    pub fn backend(context: impl Into<String>) -> Self {
        StoreError::Backend(Failure::new(context))
    }

    /// A [`StoreError::Backend`] caused by `cause`.
    pub fn backend_caused(context: impl Into<String>, cause: impl Error + Send + Sync + 'static) -> Self {
        StoreError::Backend(Failure::caused_by(context, cause))
    }

    /// A [`StoreError::Unavailable`] described by `context` alone.
    pub fn unavailable(context: impl Into<String>) -> Self {
        StoreError::Unavailable(Failure::new(context))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NotFound => f.write_str("not found"),
            StoreError::AlreadyExists => f.write_str("already exists"),
            StoreError::Conflict => f.write_str("resourceVersion conflict"),
            StoreError::Expired => f.write_str("resourceVersion too old for the change log"),
            StoreError::Unavailable(failure) => write!(f, "store unavailable: {failure}"),
            StoreError::Backend(failure) => write!(f, "store failure: {failure}"),
            StoreError::InvalidSetting(setting) => write!(f, "invalid storage setting: {setting}"),
        }
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            StoreError::Unavailable(failure) | StoreError::Backend(failure) => {
                failure.cause().map(|cause| cause as &(dyn Error + 'static))
            }
            _ => None,
        }
    }
}

impl From<SettingError> for StoreError {
    fn from(error: SettingError) -> Self {
        StoreError::InvalidSetting(error)
    }
}

/// What went wrong, in words for logs, with the error that caused it when there is one.
#[derive(Debug, Clone)]
pub struct Failure {
    context: String,
    /// Shared, so one failure can answer every write of a batch.
    cause: Option<Arc<dyn Error + Send + Sync>>,
}

impl Failure {
    /// A failure described by `context` alone.
    pub fn new(context: impl Into<String>) -> Self {
        Self { context: context.into(), cause: None }
    }

    /// A failure that `cause` led to; `context` says what was being done.
    pub fn caused_by(context: impl Into<String>, cause: impl Error + Send + Sync + 'static) -> Self {
        Self { context: context.into(), cause: Some(Arc::new(cause)) }
    }

    /// What was being done, or what went wrong when there is no cause.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The error that led to this failure.
    pub fn cause(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        self.cause.as_deref()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.cause, self.context.is_empty()) {
            (Some(cause), true) => write!(f, "{cause}"),
            (Some(cause), false) => write!(f, "{}: {cause}", self.context),
            (None, _) => f.write_str(&self.context),
        }
    }
}

/// Two failures are equal when they say the same thing (causes are compared by their text).
impl PartialEq for Failure {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

/// A setting or storage URL the store cannot use: reported at start-up, never retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    /// `--storage` names no store this build has.
    #[error("unsupported storage URL scheme in {0:?}: use sqlite://PATH, sqlite::memory: or postgres://...")]
    UnsupportedUrl(String),
    /// `--dbsslmode` (or the URL's `sslmode`) is not one of libpq's modes.
    #[error("unknown sslmode {0:?}: use disable, prefer, require, verify-ca or verify-full")]
    UnknownSslMode(String),
    /// The PostgreSQL connection string does not parse (the text never contains the password).
    #[error("invalid PostgreSQL connection string: {0}")]
    ConnectionString(String),
    /// `--cluster-id` is not a UUID.
    #[error("cluster id {id:?} is not a UUID: {reason}")]
    ClusterId {
        /// The value given.
        id: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The database records several clusters and none was chosen.
    #[error("the database holds {count} clusters{}: choose one with --cluster-id",
        name.as_ref().map(|n| format!(" named {n:?}")).unwrap_or_default())]
    AmbiguousCluster {
        /// How many clusters match.
        count: usize,
        /// The `--clustername` they share, if one was given.
        name: Option<String>,
    },
    /// The TLS files or mode do not make a usable TLS configuration.
    #[error("{0}")]
    Tls(String),
}
