//! reports-store: durable storage of report objects behind the [`Store`] trait.
//!
//! # resourceVersion
//!
//! Every write takes the next value of one counter, inside the same transaction that writes the
//! row and appends to the change log, and the writer is serialized, so RVs are unique, strictly
//! increasing and in commit order across every kind (ARCHITECTURE invariant 3). The counter is a
//! row in the database: it survives restarts and is shared by every process on the database. The
//! object's JSON is stored with its `metadata.resourceVersion` already set, so reads serve the
//! stored text without re-rendering (invariant 5).
//!
//! # Change log
//!
//! Each write also appends `(rv, resource, namespace, name, type, labels, previous labels, body)`
//! to the change log. Watches replay it (`rv > X`) and continue tokens are valid while it still
//! covers their snapshot RV. Compaction drops entries older than the retention window and records
//! the highest dropped RV as the *compacted RV*: any RV below it is "too old" (410).
//!
//! Both stores ([`sqlite`], the embedded default, and [`postgres`], for production and several
//! replicas) run the same [`conformance`] suite.

use std::sync::Arc;

use reports_core::selector::{FieldSelector, LabelSelector};
use serde_json::Value;
use tokio::sync::mpsc;

pub mod commits;
pub mod conformance;
pub mod postgres;
pub mod sqlite;

/// Failures of a store operation. The server maps each to a Kubernetes Status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("not found")]
    NotFound,
    /// An object with that key already exists (create).
    #[error("already exists")]
    AlreadyExists,
    /// The stored resourceVersion differs from the expected one.
    #[error("resourceVersion conflict")]
    Conflict,
    /// The database cannot be reached or refused to work; retrying later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a defect or corrupt data. The text is for logs only.
    #[error("store failure: {0}")]
    Backend(String),
}

/// Result of store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// One stored object, as served.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    /// Namespace ("" for cluster-scoped kinds).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.resourceVersion`.
    pub rv: u64,
    /// The object's JSON text, with `metadata.resourceVersion` already set to `rv`.
    pub body: String,
}

impl StoredObject {
    /// Parses the stored JSON (only write paths and transforms need this).
    pub fn parse(&self) -> StoreResult<Value> {
        serde_json::from_str(&self.body)
            .map_err(|e| StoreError::Backend(format!("stored JSON is corrupt: {e}")))
    }
}

/// Which objects a list (or deletecollection) returns.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Resource plural (the storage key of the kind).
    pub resource: String,
    /// Restrict to one namespace.
    pub namespace: Option<String>,
    /// Label selector, evaluated in the database.
    pub labels: LabelSelector,
    /// Field selector, evaluated in the database.
    pub fields: FieldSelector,
    /// Return only objects whose (namespace, name) is greater than this key.
    pub after: Option<(String, String)>,
    /// At most this many objects.
    pub limit: Option<u64>,
}

/// A piece of a streamed list.
#[derive(Debug)]
pub enum ListChunk {
    /// Objects in key order.
    Items(Vec<StoredObject>),
    /// The end; `more` is true when objects beyond `limit` exist.
    End {
        /// More objects match after the last one sent.
        more: bool,
    },
}

/// A list being read: the snapshot RV is known up front, objects arrive in bounded chunks.
pub struct ListStream {
    /// The counter value in the same snapshot as the rows.
    pub snapshot_rv: u64,
    /// Chunks, ending with [`ListChunk::End`] (or an error).
    pub chunks: mpsc::Receiver<StoreResult<ListChunk>>,
}

/// Type of a change-log entry, as watch events name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    /// The object was created.
    Added,
    /// The object was updated.
    Modified,
    /// The object was deleted; the body is its final state.
    Deleted,
}

impl ChangeType {
    /// The watch event type.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }

    /// Parses the stored text.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ADDED" => Some(ChangeType::Added),
            "MODIFIED" => Some(ChangeType::Modified),
            "DELETED" => Some(ChangeType::Deleted),
            _ => None,
        }
    }
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The write's RV.
    pub rv: u64,
    /// Resource plural.
    pub resource: String,
    /// What happened.
    pub change_type: ChangeType,
    /// The object at `rv` (its final state for deletes).
    pub object: StoredObject,
    /// Labels of the object at `rv`.
    pub labels: Vec<(String, String)>,
    /// Labels before the write (None for creates); lets a filtered watch see an object leave its
    /// selector.
    pub prev_labels: Option<Vec<(String, String)>>,
}

/// Durable storage of report objects.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one object.
    async fn get(&self, resource: &str, namespace: &str, name: &str) -> StoreResult<Option<StoredObject>>;

    /// Inserts a new object (never an upsert): assigns the next RV, writes it into
    /// `metadata.resourceVersion`, appends an ADDED change. [`StoreError::AlreadyExists`] if the
    /// key is taken.
    async fn create(&self, resource: &str, object: Value) -> StoreResult<StoredObject>;

    /// Replaces an object whose stored RV is `expected_rv`; [`StoreError::Conflict`] otherwise,
    /// [`StoreError::NotFound`] if it is gone. Appends a MODIFIED change.
    async fn update(&self, resource: &str, object: Value, expected_rv: u64) -> StoreResult<StoredObject>;

    /// Deletes an object whose stored RV is `expected_rv`. The returned object is its final state,
    /// carrying the deletion's RV (as the DELETED change does).
    async fn delete(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        expected_rv: u64,
    ) -> StoreResult<StoredObject>;

    /// Deletes several objects in one transaction; an entry whose RV moved or that vanished is
    /// skipped (`None` in the result, same order as `keys`).
    async fn delete_batch(
        &self,
        resource: &str,
        keys: Vec<(String, String, u64)>,
    ) -> StoreResult<Vec<Option<StoredObject>>>;

    /// Streams the objects matching `query` with the snapshot RV.
    async fn list(&self, query: ListQuery) -> StoreResult<ListStream>;

    /// The newest committed RV.
    async fn current_rv(&self) -> StoreResult<u64>;

    /// The compacted RV: changes at or below it are gone from the log.
    async fn compacted_rv(&self) -> StoreResult<u64>;

    /// True if `resource` has any change with an RV above `rv` (exact-RV list checks).
    async fn changed_since(&self, resource: &str, rv: u64) -> StoreResult<bool>;

    /// Up to `limit` changes of `resource` (all resources when `None`) with RV above `after`, in
    /// RV order.
    async fn changes_since(
        &self,
        resource: Option<&str>,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<Change>>;

    /// Drops changes at least `max_age_seconds` old (0 drops everything committed so far); returns how many were dropped.
    async fn compact(&self, max_age_seconds: u64) -> StoreResult<u64>;

    /// A receiver of the newest committed RV, updated after every commit (wakes watchers).
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Checks that the database answers (readiness).
    async fn ping(&self) -> StoreResult<()>;
}

/// A shared handle to a store.
pub type DynStore = Arc<dyn Store>;

/// Labels of an object as a JSON object text, the form the stores keep for selector queries.
pub fn labels_json(object: &Value) -> String {
    object
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .filter(|l| l.is_object())
        .map(|l| l.to_string())
        .unwrap_or_else(|| "{}".to_string())
}

/// Parses a labels JSON text back into pairs.
pub fn parse_labels(text: &str) -> Vec<(String, String)> {
    serde_json::from_str::<serde_json::Map<String, Value>>(text)
        .map(|m| m.into_iter().filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string()))).collect())
        .unwrap_or_default()
}

/// True if `url` names a PostgreSQL database: a `postgres://` or `postgresql://` URL, or a libpq
/// key=value string (`host=... dbname=...`).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://")
        || url.starts_with("postgresql://")
        || (!url.contains("://") && (url.contains("host=") || url.contains("dbname=")))
}

/// Opens the store named by a `--storage` URL: `sqlite://PATH`, `sqlite::memory:`, or a
/// PostgreSQL URL or key=value string (see [`is_postgres_url`]) with `postgres` settings. With
/// `commit_trace`, the instant of every commit this process makes is appended to that file
/// (see [`commits::CommitSignal`]).
pub async fn open(
    url: &str,
    postgres: &postgres::PgSettings,
    commit_trace: Option<&std::path::Path>,
) -> StoreResult<DynStore> {
    let trace =
        commit_trace
            .map(|path| {
                std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| {
                    StoreError::Backend(format!("opening the commit trace {}: {e}", path.display()))
                })
            })
            .transpose()?;
    if is_postgres_url(url) {
        let store = postgres::PgStore::connect(url, postgres).await?;
        if let Some(file) = trace {
            store.trace_commits_to(file);
        }
        return Ok(Arc::new(store));
    }
    let url = url.to_string();
    tokio::task::spawn_blocking(move || open_sqlite(&url, trace))
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
}

fn open_sqlite(url: &str, trace: Option<std::fs::File>) -> StoreResult<DynStore> {
    let store = if url == "sqlite::memory:" {
        sqlite::SqliteStore::open_temporary()?
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        sqlite::SqliteStore::open(std::path::Path::new(path))?
    } else {
        return Err(StoreError::Backend(format!(
            "unsupported storage URL scheme in {:?}: use sqlite://PATH, sqlite::memory: or postgres://...",
            url.split(':').next().unwrap_or_default()
        )));
    };
    if let Some(file) = trace {
        store.trace_commits_to(file);
    }
    Ok(Arc::new(store))
}
