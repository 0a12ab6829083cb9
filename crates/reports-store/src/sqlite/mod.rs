//! The embedded store: one SQLite file (bundled SQLite, no system library).
//!
//! SQLite allows one writer at a time, so the store keeps exactly one writer connection and runs
//! every write transaction on it, with group commit (`group_commit`): that is what puts RV
//! assignment in commit order. Readers use their own connections; in WAL mode they read a
//! consistent snapshot beside the writer without blocking it, which is what lets a list stream
//! from an open read transaction (snapshot RV and rows from the same snapshot) with bounded
//! memory.
//!
//! Durability: WAL with `synchronous=NORMAL` makes a commit durable against a crash of the process
//! (`kill -9`) as soon as the transaction returns; only an operating-system crash or power loss can
//! drop the last commits. All SQLite calls are blocking and run on tokio's blocking pool.

use std::{path::Path, sync::Arc};

use rusqlite::{params, OptionalExtension};
use serde_json::Value;

use self::{
    errors::sqlite_error, group_commit::GroupCommit, list::stored_from_row, readers::Readers,
    recent::RecentChanges,
};
use crate::{
    commits::CommitSignal,
    error::{StoreError, StoreResult},
    findings::FindingsIndex,
    model::{Change, FindingStream, ListQuery, ListStream, Retention, StoredObject},
    snapshot::Restampable,
    store::Store,
};
use reports_core::findings::query::{CountQuery, FindingCount, FindingQuery};

mod body;
mod changes;
mod checkpoint;

pub use checkpoint::SqliteLimits;
mod errors;
mod findings;
mod group_commit;
mod list;
mod readers;
mod recent;
mod schema;
mod selectors;
mod writes;

/// KiB of page cache for the one writer connection (SQLite's default is 2,000).
const WRITER_CACHE_KIB: u32 = 16 * 1024;

/// The SQLite-backed [`Store`].
pub struct SqliteStore {
    /// The writer connection and the writes waiting for it.
    writes: GroupCommit,
    /// Idle read connections, reused so a request does not pay for opening the file.
    readers: Readers,
    /// Newest committed RV; watchers wait on it instead of polling the file.
    committed: Arc<CommitSignal>,
    /// Which report kinds get findings rows.
    findings: Arc<FindingsIndex>,
    /// The newest changes, in RV order, so the watch feed reads what was just committed from
    /// memory instead of the file.
    recent: Arc<RecentChanges>,
    /// Keeps the WAL and the free pages bounded; dropped with the store, which stops it after a
    /// last truncation and vacuum (declared before `writes`' last user goes away).
    _checkpointer: checkpoint::Checkpointer,
    /// Keeps the directory of a `sqlite::memory:` store alive until the store is dropped.
    _temporary_dir: Option<tempfile::TempDir>,
}

impl SqliteStore {
    /// Opens (creating and migrating when needed) the database file at `path`.
    pub fn open(path: &Path) -> StoreResult<Self> {
        Self::open_with(path, None, SqliteLimits::default(), FindingsIndex::default())
    }

    /// [`open`](Self::open) with other limits for the WAL and free pages (tests use small ones).
    pub fn open_with_limits(path: &Path, limits: SqliteLimits) -> StoreResult<Self> {
        Self::open_with(path, None, limits, FindingsIndex::default())
    }

    /// [`open`](Self::open) with other limits and another set of indexed report kinds (a set
    /// that differs from the one the file was indexed with rebuilds the kinds that differ).
    pub fn open_with_options(
        path: &Path,
        limits: SqliteLimits,
        findings: FindingsIndex,
    ) -> StoreResult<Self> {
        Self::open_with(path, None, limits, findings)
    }

    /// A store in a private temporary file, removed when the store is dropped (`sqlite::memory:`;
    /// a real file keeps WAL semantics, so readers never block the writer).
    pub fn open_temporary() -> StoreResult<Self> {
        let dir = tempfile::tempdir()
            .map_err(|e| StoreError::backend_caused("creating a temporary directory", e))?;
        let path = dir.path().join("reports.db");
        Self::open_with(&path, Some(dir), SqliteLimits::default(), FindingsIndex::default())
    }

    /// [`open_temporary`](Self::open_temporary) indexing the findings of `findings`' kinds.
    pub fn open_temporary_with(findings: FindingsIndex) -> StoreResult<Self> {
        let dir = tempfile::tempdir()
            .map_err(|e| StoreError::backend_caused("creating a temporary directory", e))?;
        let path = dir.path().join("reports.db");
        Self::open_with(&path, Some(dir), SqliteLimits::default(), findings)
    }

    fn open_with(
        path: &Path,
        temporary_dir: Option<tempfile::TempDir>,
        limits: SqliteLimits,
        findings: FindingsIndex,
    ) -> StoreResult<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::backend_caused(format!("creating {}", parent.display()), e))?;
        }
        let mut writer = schema::open_connection(path)?;
        schema::migrate(&mut writer)?;
        findings::write::backfill(&mut writer, &findings)?;
        // Checkpoints are the checkpoint thread's job, never a committing writer's. The writer's
        // page cache holds a group commit's pages: at SQLite's default 2 MB a batch of deletes
        // spilled dirty pages to the WAL mid-transaction and read back pages it had just had
        // (a 200k flood: 5,728 deletes/s at 2 MB, 7,250/s at 16 MiB, 7,447/s at 32 MiB). Every
        // write of a group commit runs in a savepoint, which copies each page it first changes
        // to a statement journal: a temporary file by default, written with a system call per
        // page (a tenth of a flood's deletecollection), kept in memory instead.
        writer
            .execute_batch(&format!(
                "PRAGMA wal_autocheckpoint = 0; PRAGMA cache_size = -{WRITER_CACHE_KIB}; \
                 PRAGMA temp_store = MEMORY;"
            ))
            .map_err(sqlite_error)?;
        let rv: i64 = writer.query_row("SELECT rv FROM counter", [], |r| r.get(0)).map_err(sqlite_error)?;
        let committed = Arc::new(CommitSignal::new(rv as u64));
        let recent = Arc::new(RecentChanges::default());
        let writes = GroupCommit::new(writer, committed.clone(), recent.clone());
        let checkpointer = checkpoint::start_checkpointer(path, writes.clone(), limits)?;
        Ok(Self {
            writes,
            readers: Readers::new(path),
            findings: Arc::new(findings),
            committed,
            recent,
            _checkpointer: checkpointer,
            _temporary_dir: temporary_dir,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.readers.path()
    }

    /// How many writes shared their transaction with at least one other since the store opened.
    #[cfg(feature = "testing")]
    pub fn grouped_writes(&self) -> u64 {
        self.writes.grouped()
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn get(&self, resource: &str, namespace: &str, name: &str) -> StoreResult<Option<StoredObject>> {
        let key = (resource.to_string(), namespace.to_string(), name.to_string());
        self.readers
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT namespace, name, uid, rv, body FROM objects WHERE resource = ?1 AND namespace = ?2 AND name = ?3",
                )
                .and_then(|mut s| s.query_row(params![key.0, key.1, key.2], stored_from_row).optional())
                .map_err(sqlite_error)
            })
            .await
    }

    async fn create(&self, resource: &str, object: Value) -> StoreResult<StoredObject> {
        let (resource, index) = (resource.to_string(), self.findings.clone());
        self.writes.write(move |tx| writes::create(tx, &index, &resource, object)).await
    }

    async fn update(&self, resource: &str, object: Value, expected_rv: u64) -> StoreResult<StoredObject> {
        let (resource, index) = (resource.to_string(), self.findings.clone());
        self.writes.write(move |tx| writes::update(tx, &index, &resource, object, expected_rv)).await
    }

    async fn delete(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        expected_rv: u64,
    ) -> StoreResult<StoredObject> {
        let key = (resource.to_string(), namespace.to_string(), name.to_string());
        let index = self.findings.clone();
        self.writes.write(move |tx| writes::delete(tx, &index, &key.0, &key.1, &key.2, expected_rv)).await
    }

    async fn delete_batch(
        &self,
        resource: &str,
        read: Vec<StoredObject>,
    ) -> StoreResult<Vec<Option<StoredObject>>> {
        let (resource, index) = (resource.to_string(), self.findings.clone());
        // Each body's RV is found here, before the writer (see `Restampable`).
        let read = read.into_iter().map(Restampable::new).collect::<StoreResult<Vec<_>>>()?;
        self.writes.write(move |tx| writes::delete_read(tx, &index, &resource, read)).await
    }

    async fn list(&self, query: ListQuery) -> StoreResult<ListStream> {
        let (snapshot_rv, chunks) = self
            .readers
            .stream(move |conn, snapshot, chunks| list::stream_list(conn, &query, snapshot, chunks))
            .await?;
        Ok(ListStream { snapshot_rv, chunks })
    }

    async fn current_rv(&self) -> StoreResult<u64> {
        self.readers
            .read(|conn| {
                conn.prepare_cached("SELECT rv FROM counter")
                    .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
                    .map(|v| v as u64)
                    .map_err(sqlite_error)
            })
            .await
    }

    async fn compacted_rv(&self) -> StoreResult<u64> {
        self.readers
            .read(|conn| {
                conn.query_row("SELECT value FROM meta WHERE key = 'compacted_rv'", [], |r| {
                    r.get::<_, String>(0)
                })
                .map_err(sqlite_error)
                .map(|v| v.parse().unwrap_or(0))
            })
            .await
    }

    async fn count_by_resource(&self) -> StoreResult<Vec<(String, u64)>> {
        self.readers
            .read(|conn| {
                let mut statement = conn
                    .prepare_cached("SELECT resource, count(*) FROM objects GROUP BY resource")
                    .map_err(sqlite_error)?;
                let rows = statement
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
                    .map_err(sqlite_error)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(sqlite_error)
            })
            .await
    }

    async fn changed_since(&self, resource: &str, rv: u64) -> StoreResult<bool> {
        let resource = resource.to_string();
        self.readers.read(move |conn| changes::changed_since(conn, &resource, rv)).await
    }

    async fn changes_since(
        &self,
        resource: Option<&str>,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<Change>> {
        if let Some(changes) = self.recent.since(resource, after, limit) {
            return Ok(changes);
        }
        let resource = resource.map(str::to_string);
        self.readers.read(move |conn| changes::changes_since(conn, resource.as_deref(), after, limit)).await
    }

    async fn compact_log(&self, keep: Retention) -> StoreResult<u64> {
        let recent = self.recent.clone();
        self.writes.write(move |tx| changes::compact(tx, keep, &recent)).await
    }

    fn commits(&self) -> &CommitSignal {
        &self.committed
    }

    async fn findings(&self, query: FindingQuery) -> StoreResult<FindingStream> {
        let (snapshot_rv, chunks) = self
            .readers
            .stream(move |conn, snapshot, chunks| {
                findings::query::stream_findings(conn, &query, snapshot, chunks)
            })
            .await?;
        Ok(FindingStream { snapshot_rv, chunks })
    }

    async fn count_findings(&self, query: CountQuery) -> StoreResult<(u64, Vec<FindingCount>)> {
        self.readers.read(move |conn| findings::query::count_findings(conn, &query)).await
    }

    async fn namespaces_of(&self, resource: &str) -> StoreResult<Vec<String>> {
        let resource = resource.to_string();
        self.readers.read(move |conn| findings::query::namespaces_of(conn, &resource)).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.readers.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(sqlite_error)).await
    }
}
