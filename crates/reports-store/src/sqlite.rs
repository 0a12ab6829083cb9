//! The embedded store: one SQLite file (bundled SQLite, no system library).
//!
//! SQLite allows one writer at a time, so the store keeps exactly one writer connection behind a
//! mutex and runs every write transaction on it: that lock is what puts RV assignment in commit
//! order. Writes queue for it, and the task holding it runs all queued writes in one transaction,
//! each in its own savepoint (group commit): under load many writes share one commit, and each
//! is answered only after that commit. Readers use their own connections; in WAL mode they read a
//! consistent snapshot beside the writer without blocking it, which is what lets a list stream
//! from an open read transaction (snapshot RV and rows from the same snapshot) with bounded
//! memory.
//!
//! Durability: WAL with `synchronous=NORMAL` makes a commit durable against a crash of the process
//! (`kill -9`) as soon as the transaction returns; only an operating-system crash or power loss can
//! drop the last commits. All SQLite calls are blocking and run on tokio's blocking pool.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use reports_core::selector::{Field, FieldOp, FieldSelector, LabelSelector, Operator};
use rusqlite::{params, types::Value as SqlValue, Connection, OptionalExtension, Transaction};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    commits::CommitSignal, labels_json, parse_labels, Change, ChangeType, ListChunk, ListQuery, ListStream,
    Store, StoreError, StoreResult, StoredObject,
};

/// Schema migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    rv INTEGER NOT NULL
);
INSERT INTO counter (id, rv) VALUES (1, 0);
CREATE TABLE objects (
    resource  TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    uid       TEXT NOT NULL,
    rv        INTEGER NOT NULL,
    labels    TEXT NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (resource, namespace, name)
) WITHOUT ROWID;
CREATE TABLE changes (
    rv          INTEGER PRIMARY KEY,
    resource    TEXT NOT NULL,
    namespace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    uid         TEXT NOT NULL,
    type        TEXT NOT NULL CHECK (type IN ('ADDED', 'MODIFIED', 'DELETED')),
    labels      TEXT NOT NULL,
    prev_labels TEXT,
    body        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX changes_by_resource ON changes (resource, rv);
INSERT INTO meta (key, value) VALUES ('compacted_rv', '0');
"#,
    // An empty database must not report resourceVersion "0": clients that list and then watch from
    // the list's RV would send "0", which means "any version, with the current state first" rather
    // than "changes after this point" (etcd's revisions likewise start at 1).
    "UPDATE counter SET rv = 1 WHERE rv = 0;",
];

/// Rows per list chunk, and the byte budget that closes a chunk early (large reports).
const CHUNK_ROWS: usize = 256;
const CHUNK_BYTES: usize = 1 << 20;
/// Reader connections kept idle for reuse.
const MAX_IDLE_READERS: usize = 8;

/// Changes kept in memory after commit (about 1,000, the feed's working set).
const RECENT_CHANGES: usize = 1024;

/// A window over the newest committed changes. Every change enters it in RV order under the
/// writer lock, and RVs are consecutive in this store (each write takes exactly one RV and
/// appends exactly one change, and a rolled-back write takes none), so the window holds
/// *every* change from its first RV on: a read after an RV inside it needs no database.
#[derive(Default)]
struct RecentChanges {
    window: Mutex<std::collections::VecDeque<Change>>,
}

impl RecentChanges {
    fn record(&self, changes: Vec<Change>) {
        let Ok(mut window) = self.window.lock() else { return };
        for change in changes {
            // A gap (a write before this process, or a failed read) restarts the window.
            if window.back().is_some_and(|last| last.rv + 1 != change.rv) {
                window.clear();
            }
            window.push_back(change);
        }
        while window.len() > RECENT_CHANGES {
            window.pop_front();
        }
    }

    /// Drops what compaction removed from the log, so the window never serves it.
    fn forget_through(&self, rv: u64) {
        if let Ok(mut window) = self.window.lock() {
            while window.front().is_some_and(|c| c.rv <= rv) {
                window.pop_front();
            }
        }
    }

    /// Changes after `after` (of `resource`, or all), if the window reaches back that far.
    fn since(&self, resource: Option<&str>, after: u64, limit: usize) -> Option<Vec<Change>> {
        let window = self.window.lock().ok()?;
        let first = window.front()?.rv;
        let next = after.saturating_add(1);
        if next < first {
            return None;
        }
        Some(
            window
                .iter()
                .skip(usize::try_from(next - first).unwrap_or(usize::MAX))
                .filter(|c| resource.is_none_or(|r| c.resource == r))
                .take(limit)
                .cloned()
                .collect(),
        )
    }
}

/// The SQLite-backed [`Store`].
pub struct SqliteStore {
    /// The only connection that writes. Holding its lock for a whole transaction serializes
    /// writers, so RVs are assigned in commit order.
    writer: Arc<Mutex<Connection>>,
    /// Writes waiting for the writer. Whoever takes the writer lock runs every waiting write in
    /// one transaction (group commit), so under load many writes share one commit's WAL frames
    /// and one wake-up of the watch feed instead of paying for them one by one.
    pending: Arc<Mutex<Vec<Job>>>,
    /// Writes that shared their transaction with at least one other (tests and diagnostics).
    grouped_writes: Arc<std::sync::atomic::AtomicU64>,
    /// Idle read connections, reused so a request does not pay for opening the file.
    readers: Arc<Mutex<Vec<Connection>>>,
    /// Database file, to open more readers.
    path: PathBuf,
    /// Newest committed RV; watchers wait on it instead of polling the file.
    committed: Arc<CommitSignal>,
    /// The newest changes, in RV order, so the watch feed reads what was just committed from
    /// memory instead of the file. Filled under the writer lock, so it never has a hole.
    recent: Arc<RecentChanges>,
    /// Dropped with the store, which tells the checkpoint thread to stop.
    _checkpointer: std::sync::mpsc::SyncSender<()>,
    /// Keeps the directory of a `sqlite::memory:` store alive until the store is dropped.
    _temporary_dir: Option<tempfile::TempDir>,
}

/// A write's result, its type erased so writes of all kinds can wait in one queue.
type AnyOutput = Box<dyn std::any::Any + Send>;
/// The work of a write, run inside a shared transaction.
type WriteWork = Box<dyn FnOnce(&WriteTx<'_>) -> StoreResult<AnyOutput> + Send>;

/// A write waiting for the writer connection: the work, and where its answer goes once the
/// transaction it ran in has committed (or failed).
struct Job {
    run: WriteWork,
    reply: oneshot::Sender<StoreResult<AnyOutput>>,
}

/// How often the checkpoint thread copies the WAL back into the database file.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Starts the thread that checkpoints the WAL off the write path.
///
/// SQLite's automatic checkpoint runs inside the commit that crosses the threshold, so every
/// thousandth write or so would wait for the copy and its fsyncs (tens of milliseconds at a few
/// MB/s of reports). A passive checkpoint on its own connection never blocks the writer or readers.
fn start_checkpointer(path: &Path) -> StoreResult<std::sync::mpsc::SyncSender<()>> {
    let conn = open_connection(path)?;
    let (stop, stopped) = std::sync::mpsc::sync_channel::<()>(0);
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            // Disconnected (the store was dropped) ends the loop; SQLite checkpoints the rest
            // when the last connection closes.
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(CHECKPOINT_INTERVAL)
            {
                if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(%error, "SQLite WAL checkpoint failed; retrying");
                }
            }
        })
        .map_err(|e| backend(format!("starting the checkpoint thread: {e}")))?;
    Ok(stop)
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn sqlite_error(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

fn open_connection(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path).map_err(sqlite_error)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(sqlite_error)?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
        .map_err(sqlite_error)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);")
        .map_err(sqlite_error)?;
    let tx =
        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sqlite_error)?;
    let version: usize = tx
        .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get::<_, String>(0))
        .optional()
        .map_err(sqlite_error)?
        .map(|v| v.parse().unwrap_or(usize::MAX))
        .unwrap_or(0);
    if version > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "database schema version {version} is newer than this binary understands ({})",
            MIGRATIONS.len()
        )));
    }
    for migration in &MIGRATIONS[version..] {
        tx.execute_batch(migration).map_err(sqlite_error)?;
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![MIGRATIONS.len().to_string()],
    )
    .map_err(sqlite_error)?;
    tx.commit().map_err(sqlite_error)
}

fn now_seconds() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn set_resource_version(object: &mut Value, rv: u64) -> StoreResult<()> {
    let meta = object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| StoreError::Backend("object has no metadata".into()))?;
    meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    Ok(())
}

fn meta_text<'a>(object: &'a Value, key: &str) -> &'a str {
    object.get("metadata").and_then(|m| m.get(key)).and_then(Value::as_str).unwrap_or_default()
}

fn next_rv(tx: &Transaction<'_>) -> StoreResult<u64> {
    tx.prepare_cached("UPDATE counter SET rv = rv + 1 WHERE id = 1 RETURNING rv")
        .map_err(sqlite_error)?
        .query_row([], |r| r.get::<_, i64>(0))
        .map(|rv| rv as u64)
        .map_err(sqlite_error)
}

struct ChangeRecord<'a> {
    resource: &'a str,
    object: &'a StoredObject,
    change_type: ChangeType,
    labels: &'a str,
    prev_labels: Option<&'a str>,
}

/// A write transaction plus the changes it appended, handed to the recent-changes window after
/// commit (so the watch feed need not read back what was just written).
struct WriteTx<'c> {
    tx: Transaction<'c>,
    appended: std::cell::RefCell<Vec<Change>>,
}

impl<'c> std::ops::Deref for WriteTx<'c> {
    type Target = Transaction<'c>;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

fn append_change(tx: &WriteTx<'_>, change: ChangeRecord<'_>) -> StoreResult<()> {
    tx.prepare_cached("INSERT INTO changes (rv, resource, namespace, name, uid, type, labels, prev_labels, body, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)")
        .map_err(sqlite_error)?
        .execute(params![
            change.object.rv as i64,
            change.resource,
            change.object.namespace,
            change.object.name,
            change.object.uid,
            change.change_type.as_str(),
            change.labels,
            change.prev_labels,
            change.object.body,
            now_seconds(),
        ],
    )
    .map_err(sqlite_error)?;
    tx.appended.borrow_mut().push(Change {
        rv: change.object.rv,
        resource: change.resource.to_string(),
        change_type: change.change_type,
        object: change.object.clone(),
        labels: parse_labels(change.labels),
        prev_labels: change.prev_labels.map(parse_labels),
    });
    Ok(())
}

/// The RV and labels of a stored object. The body is left alone: a 6 KB body lives in overflow
/// pages, and only a delete needs it ([`current_body`]).
fn current_version(
    tx: &Transaction<'_>,
    resource: &str,
    namespace: &str,
    name: &str,
) -> StoreResult<Option<(u64, String)>> {
    tx.prepare_cached("SELECT rv, labels FROM objects WHERE resource = ?1 AND namespace = ?2 AND name = ?3")
        .map_err(sqlite_error)?
        .query_row(params![resource, namespace, name], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
        .optional()
        .map_err(sqlite_error)
}

/// The RV, labels and body of a stored object.
fn current_body(
    tx: &Transaction<'_>,
    resource: &str,
    namespace: &str,
    name: &str,
) -> StoreResult<Option<(u64, String, String)>> {
    tx.prepare_cached(
        "SELECT rv, labels, body FROM objects WHERE resource = ?1 AND namespace = ?2 AND name = ?3",
    )
    .map_err(sqlite_error)?
    .query_row(params![resource, namespace, name], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?)))
    .optional()
    .map_err(sqlite_error)
}

/// Deletes one object inside `tx` after checking its RV; returns its final state.
fn delete_in(
    tx: &WriteTx<'_>,
    resource: &str,
    namespace: &str,
    name: &str,
    expected_rv: u64,
) -> StoreResult<StoredObject> {
    let (rv, labels, body) = current_body(tx, resource, namespace, name)?.ok_or(StoreError::NotFound)?;
    if rv != expected_rv {
        return Err(StoreError::Conflict);
    }
    let mut object: Value = serde_json::from_str(&body).map_err(backend)?;
    let new_rv = next_rv(tx)?;
    set_resource_version(&mut object, new_rv)?;
    let final_state = StoredObject {
        namespace: namespace.to_string(),
        name: name.to_string(),
        uid: meta_text(&object, "uid").to_string(),
        rv: new_rv,
        body: serde_json::to_string(&object).map_err(backend)?,
    };
    tx.prepare_cached("DELETE FROM objects WHERE resource = ?1 AND namespace = ?2 AND name = ?3")
        .map_err(sqlite_error)?
        .execute(params![resource, namespace, name])
        .map_err(sqlite_error)?;
    append_change(
        tx,
        ChangeRecord {
            resource,
            object: &final_state,
            change_type: ChangeType::Deleted,
            labels: &labels,
            prev_labels: Some(&labels),
        },
    )?;
    Ok(final_state)
}

/// The JSON path of a label key inside the labels column (keys are validated label keys, which
/// cannot contain quotes).
fn label_path(key: &str) -> String {
    format!("$.\"{key}\"")
}

/// Appends the WHERE conditions of the selectors, with their parameters.
fn push_selectors(
    labels: &LabelSelector,
    fields: &FieldSelector,
    sql: &mut String,
    args: &mut Vec<SqlValue>,
) {
    for req in &labels.requirements {
        let path = SqlValue::Text(label_path(&req.key));
        let value = "json_extract(labels, ?)";
        match req.op {
            Operator::Exists => {
                sql.push_str(" AND json_type(labels, ?) IS NOT NULL");
                args.push(path);
            }
            Operator::DoesNotExist => {
                sql.push_str(" AND json_type(labels, ?) IS NULL");
                args.push(path);
            }
            Operator::Equals => {
                sql.push_str(&format!(" AND {value} = ?"));
                args.extend([path, SqlValue::Text(req.values[0].clone())]);
            }
            Operator::NotEquals => {
                sql.push_str(&format!(" AND {value} IS NOT ?"));
                args.extend([path, SqlValue::Text(req.values[0].clone())]);
            }
            Operator::In | Operator::NotIn => {
                let marks = vec!["?"; req.values.len()].join(", ");
                if req.op == Operator::In {
                    sql.push_str(&format!(" AND {value} IN ({marks})"));
                } else {
                    sql.push_str(&format!(" AND NOT coalesce({value} IN ({marks}), 0)"));
                }
                args.push(path);
                args.extend(req.values.iter().cloned().map(SqlValue::Text));
            }
            Operator::GreaterThan | Operator::LessThan => {
                // Matches only label values that parse as int64 (label values carry no sign).
                let cmp = if req.op == Operator::GreaterThan { ">" } else { "<" };
                sql.push_str(&format!(
                    " AND coalesce((SELECT v != '' AND v NOT GLOB '*[^0-9]*' \
                       AND (length(v) < 19 OR (length(v) = 19 AND v <= '9223372036854775807')) \
                       AND CAST(v AS INTEGER) {cmp} ? FROM (SELECT {value} AS v)), 0)"
                ));
                let bound: i64 = req.values[0].parse().unwrap_or(0);
                args.extend([SqlValue::Integer(bound), path]);
            }
        }
    }
    for req in &fields.requirements {
        let column = match req.field {
            Field::Name => "name",
            Field::Namespace => "namespace",
        };
        let op = match req.op {
            FieldOp::Equals => "=",
            FieldOp::NotEquals => "!=",
        };
        sql.push_str(&format!(" AND {column} {op} ?"));
        args.push(SqlValue::Text(req.value.clone()));
    }
}

impl SqliteStore {
    /// Opens (creating and migrating when needed) the database file at `path`.
    pub fn open(path: &Path) -> StoreResult<Self> {
        Self::open_with(path, None)
    }

    /// A store in a private temporary file, removed when the store is dropped (`sqlite::memory:`;
    /// a real file keeps WAL semantics, so readers never block the writer).
    pub fn open_temporary() -> StoreResult<Self> {
        let dir = tempfile::tempdir().map_err(backend)?;
        let path = dir.path().join("reports.db");
        Self::open_with(&path, Some(dir))
    }

    fn open_with(path: &Path, temporary_dir: Option<tempfile::TempDir>) -> StoreResult<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| backend(format!("creating {}: {e}", parent.display())))?;
        }
        let mut writer = open_connection(path)?;
        migrate(&mut writer)?;
        // Checkpoints are the checkpoint thread's job, never a committing writer's.
        writer.execute_batch("PRAGMA wal_autocheckpoint = 0").map_err(sqlite_error)?;
        let checkpointer = start_checkpointer(path)?;
        let rv: i64 = writer.query_row("SELECT rv FROM counter", [], |r| r.get(0)).map_err(sqlite_error)?;
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            pending: Arc::new(Mutex::new(Vec::new())),
            grouped_writes: Default::default(),
            readers: Arc::new(Mutex::new(Vec::new())),
            path: path.to_path_buf(),
            committed: Arc::new(CommitSignal::new(rv as u64)),
            recent: Arc::new(RecentChanges::default()),
            _checkpointer: checkpointer,
            _temporary_dir: temporary_dir,
        })
    }

    /// Runs `work` in a write transaction and answers once that transaction has committed.
    /// The write joins the queue of waiting writes; the blocking task that gets the writer lock
    /// runs them all in one transaction, each inside its own savepoint, so one write's error
    /// undoes only that write.
    async fn write<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTx<'_>) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let run = Box::new(move |tx: &WriteTx<'_>| work(tx).map(|out| Box::new(out) as AnyOutput));
        self.pending.lock().map_err(|_| backend("write queue poisoned"))?.push(Job { run, reply });
        let (writer, pending, grouped) =
            (self.writer.clone(), self.pending.clone(), self.grouped_writes.clone());
        let (committed, recent) = (self.committed.clone(), self.recent.clone());
        // Not awaited: the answer comes from whichever task runs this write, and this task
        // may find another one already running writes and leave at once.
        drop(tokio::task::spawn_blocking(move || {
            let grouped_now = run_pending(&writer, &pending, &committed, &recent);
            grouped.fetch_add(grouped_now as u64, std::sync::atomic::Ordering::Relaxed);
        }));
        let out = answer.await.map_err(|_| backend("the write was abandoned"))??;
        out.downcast::<T>().map(|out| *out).map_err(|_| backend("write answered with the wrong type"))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records the instant of every commit this process makes in `file` (see [`CommitSignal`]).
    pub fn trace_commits_to(&self, file: std::fs::File) {
        self.committed.trace_to(file);
    }

    /// How many writes shared their transaction with at least one other since the store opened.
    pub fn grouped_writes(&self) -> u64 {
        self.grouped_writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn take_reader(readers: &Mutex<Vec<Connection>>, path: &Path) -> StoreResult<Connection> {
        let idle = readers.lock().map_err(|_| backend("reader pool poisoned"))?.pop();
        match idle {
            Some(conn) => Ok(conn),
            None => open_connection(path),
        }
    }

    fn return_reader(readers: &Mutex<Vec<Connection>>, conn: Connection) {
        if let Ok(mut idle) = readers.lock() {
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
    }

    /// Runs a read on a pooled reader connection.
    async fn read<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = Self::take_reader(&readers, &path)?;
            let out = work(&conn);
            Self::return_reader(&readers, conn);
            out
        })
        .await
        .map_err(backend)?
    }
}

fn stored_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredObject> {
    Ok(StoredObject {
        namespace: r.get(0)?,
        name: r.get(1)?,
        uid: r.get(2)?,
        rv: r.get::<_, i64>(3)? as u64,
        body: r.get(4)?,
    })
}

/// Streams one list inside a read transaction (runs on a blocking thread).
fn stream_list(
    conn: &mut Connection,
    query: &ListQuery,
    snapshot: oneshot::Sender<StoreResult<u64>>,
    chunks: &mpsc::Sender<StoreResult<ListChunk>>,
) -> StoreResult<()> {
    let tx = conn.transaction().map_err(sqlite_error)?;
    // The first read fixes the snapshot: the counter and the rows below come from the same one.
    let rv: i64 = match tx.query_row("SELECT rv FROM counter", [], |r| r.get(0)) {
        Ok(rv) => rv,
        Err(e) => {
            let _ = snapshot.send(Err(sqlite_error(e)));
            return Ok(());
        }
    };
    if snapshot.send(Ok(rv as u64)).is_err() {
        return Ok(());
    }
    let mut sql = String::from("SELECT namespace, name, uid, rv, body FROM objects WHERE resource = ?");
    let mut args: Vec<SqlValue> = vec![SqlValue::Text(query.resource.clone())];
    if let Some(ns) = &query.namespace {
        sql.push_str(" AND namespace = ?");
        args.push(SqlValue::Text(ns.clone()));
    }
    if let Some((ns, name)) = &query.after {
        sql.push_str(" AND (namespace, name) > (?, ?)");
        args.extend([SqlValue::Text(ns.clone()), SqlValue::Text(name.clone())]);
    }
    push_selectors(&query.labels, &query.fields, &mut sql, &mut args);
    sql.push_str(" ORDER BY namespace, name");
    if let Some(limit) = query.limit {
        sql.push_str(" LIMIT ?");
        args.push(SqlValue::Integer(limit.saturating_add(1).min(i64::MAX as u64) as i64));
    }
    let mut stmt = tx.prepare(&sql).map_err(sqlite_error)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args)).map_err(sqlite_error)?;
    let limit = query.limit.unwrap_or(u64::MAX);
    let mut sent: u64 = 0;
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut more = false;
    while let Some(row) = rows.next().map_err(sqlite_error)? {
        if sent == limit {
            more = true;
            break;
        }
        let object = stored_from_row(row).map_err(sqlite_error)?;
        batch_bytes += object.body.len();
        batch.push(object);
        sent += 1;
        if batch.len() >= CHUNK_ROWS || batch_bytes >= CHUNK_BYTES {
            if chunks.blocking_send(Ok(ListChunk::Items(std::mem::take(&mut batch)))).is_err() {
                return Ok(()); // the client went away
            }
            batch_bytes = 0;
        }
    }
    if !batch.is_empty() && chunks.blocking_send(Ok(ListChunk::Items(batch))).is_err() {
        return Ok(());
    }
    let _ = chunks.blocking_send(Ok(ListChunk::End { more }));
    Ok(())
}

/// Runs waiting writes, a transaction per round, for as long as writes keep arriving; returns
/// how many writes shared a transaction with another. Only one task runs writes at a time: a
/// task that finds the writer busy leaves at once, because the running one looks at the queue
/// again before it lets go of the writer, and lets go while holding the queue, so a write queued
/// before that look is run by it and one queued after finds the writer free.
fn run_pending(
    writer: &Mutex<Connection>,
    pending: &Mutex<Vec<Job>>,
    committed: &CommitSignal,
    recent: &RecentChanges,
) -> usize {
    let mut conn = match writer.try_lock() {
        Ok(conn) => conn,
        Err(std::sync::TryLockError::WouldBlock) => return 0,
        Err(std::sync::TryLockError::Poisoned(_)) => {
            let jobs = pending.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
            for job in jobs {
                let _ = job.reply.send(Err(backend("writer lock poisoned")));
            }
            return 0;
        }
    };
    let mut grouped = 0;
    loop {
        let Ok(mut waiting) = pending.lock() else { return grouped };
        if waiting.is_empty() {
            drop(conn);
            drop(waiting);
            return grouped;
        }
        let jobs = std::mem::take(&mut *waiting);
        drop(waiting);
        if jobs.len() > 1 {
            grouped += jobs.len();
        }
        run_batch(&mut conn, jobs, committed, recent);
    }
}

/// Runs writes in one transaction, each in its own savepoint, and answers them after the commit,
/// so an acknowledged write is always durable; a failed commit fails every write of the batch.
fn run_batch(conn: &mut Connection, jobs: Vec<Job>, committed: &CommitSignal, recent: &RecentChanges) {
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => WriteTx { tx, appended: Default::default() },
        Err(e) => {
            let error = sqlite_error(e);
            for job in jobs {
                let _ = job.reply.send(Err(error.clone()));
            }
            return;
        }
    };
    let mut done = Vec::with_capacity(jobs.len());
    let mut jobs = jobs.into_iter();
    while let Some(job) = jobs.next() {
        match run_in_savepoint(&tx, job.run) {
            Ok(Ok(out)) => done.push((job.reply, out)),
            Ok(Err(e)) => {
                let _ = job.reply.send(Err(e));
            }
            Err(broken) => {
                // Dropping the transaction rolls everything back; nobody's write happened.
                drop(tx);
                let replies = done.into_iter().map(|(reply, _)| reply).chain(std::iter::once(job.reply));
                for reply in replies.chain(jobs.map(|job| job.reply)) {
                    let _ = reply.send(Err(broken.clone()));
                }
                return;
            }
        }
    }
    let finished = tx
        .prepare_cached("SELECT rv FROM counter")
        .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
        .map_err(sqlite_error)
        .and_then(|rv| {
            let WriteTx { tx, appended } = tx;
            tx.commit().map_err(sqlite_error)?;
            Ok((rv, appended.into_inner()))
        });
    match finished {
        Ok((rv, appended)) => {
            // Before the commit is announced, so whoever hears of it finds it here.
            recent.record(appended);
            // A batch of refused writes took no RV: nothing to announce. Still under the writer
            // lock, so announced RVs are in commit order.
            if rv as u64 > committed.newest() {
                committed.committed(rv as u64);
            }
            for (reply, out) in done {
                let _ = reply.send(Ok(out));
            }
        }
        Err(error) => {
            for (reply, _) in done {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// Runs one write of a batch inside a savepoint: on error, only its own statements and the
/// changes it appended are undone. The outer error means the transaction itself is broken (a
/// savepoint could not be set, released or rolled back), and the whole batch must be abandoned.
fn run_in_savepoint(tx: &WriteTx<'_>, run: WriteWork) -> StoreResult<StoreResult<AnyOutput>> {
    tx.execute_batch("SAVEPOINT write").map_err(sqlite_error)?;
    let appended_before = tx.appended.borrow().len();
    // A panicking write must not take the batch, or the writer, down with it.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(tx)))
        .unwrap_or_else(|_| Err(backend("the write panicked")));
    if outcome.is_ok() && tx.execute_batch("RELEASE write").is_ok() {
        return Ok(outcome);
    }
    tx.appended.borrow_mut().truncate(appended_before);
    tx.execute_batch("ROLLBACK TO write; RELEASE write").map_err(sqlite_error)?;
    Ok(match outcome {
        Ok(_) => Err(backend("releasing the write's savepoint failed")),
        Err(e) => Err(e),
    })
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn get(&self, resource: &str, namespace: &str, name: &str) -> StoreResult<Option<StoredObject>> {
        let key = (resource.to_string(), namespace.to_string(), name.to_string());
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT namespace, name, uid, rv, body FROM objects WHERE resource = ?1 AND namespace = ?2 AND name = ?3",
            )
            .and_then(|mut s| s.query_row(params![key.0, key.1, key.2], stored_from_row).optional())
            .map_err(sqlite_error)
        })
        .await
    }

    async fn create(&self, resource: &str, mut object: Value) -> StoreResult<StoredObject> {
        let resource = resource.to_string();
        self.write(move |tx| {
            let namespace = meta_text(&object, "namespace").to_string();
            let name = meta_text(&object, "name").to_string();
            if current_version(tx, &resource, &namespace, &name)?.is_some() {
                return Err(StoreError::AlreadyExists);
            }
            let rv = next_rv(tx)?;
            set_resource_version(&mut object, rv)?;
            let labels = labels_json(&object);
            let stored = StoredObject {
                uid: meta_text(&object, "uid").to_string(),
                body: serde_json::to_string(&object).map_err(backend)?,
                namespace,
                name,
                rv,
            };
            tx.prepare_cached("INSERT INTO objects (resource, namespace, name, uid, rv, labels, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
                .map_err(sqlite_error)?
                .execute(params![resource, stored.namespace, stored.name, stored.uid, rv as i64, labels, stored.body],
            )
            .map_err(sqlite_error)?;
            append_change(
                tx,
                ChangeRecord {
                    resource: &resource,
                    object: &stored,
                    change_type: ChangeType::Added,
                    labels: &labels,
                    prev_labels: None,
                },
            )?;
            Ok(stored)
        })
        .await
    }

    async fn update(&self, resource: &str, mut object: Value, expected_rv: u64) -> StoreResult<StoredObject> {
        let resource = resource.to_string();
        self.write(move |tx| {
            let namespace = meta_text(&object, "namespace").to_string();
            let name = meta_text(&object, "name").to_string();
            let (rv, prev_labels) =
                current_version(tx, &resource, &namespace, &name)?.ok_or(StoreError::NotFound)?;
            if rv != expected_rv {
                return Err(StoreError::Conflict);
            }
            let new_rv = next_rv(tx)?;
            set_resource_version(&mut object, new_rv)?;
            let labels = labels_json(&object);
            let stored = StoredObject {
                uid: meta_text(&object, "uid").to_string(),
                body: serde_json::to_string(&object).map_err(backend)?,
                namespace,
                name,
                rv: new_rv,
            };
            tx.prepare_cached(
                "UPDATE objects SET uid = ?4, rv = ?5, labels = ?6, body = ?7
                 WHERE resource = ?1 AND namespace = ?2 AND name = ?3",
            )
            .map_err(sqlite_error)?
            .execute(params![
                resource,
                stored.namespace,
                stored.name,
                stored.uid,
                new_rv as i64,
                labels,
                stored.body
            ])
            .map_err(sqlite_error)?;
            append_change(
                tx,
                ChangeRecord {
                    resource: &resource,
                    object: &stored,
                    change_type: ChangeType::Modified,
                    labels: &labels,
                    prev_labels: Some(&prev_labels),
                },
            )?;
            Ok(stored)
        })
        .await
    }

    async fn delete(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        expected_rv: u64,
    ) -> StoreResult<StoredObject> {
        let key = (resource.to_string(), namespace.to_string(), name.to_string());
        self.write(move |tx| delete_in(tx, &key.0, &key.1, &key.2, expected_rv)).await
    }

    async fn delete_batch(
        &self,
        resource: &str,
        keys: Vec<(String, String, u64)>,
    ) -> StoreResult<Vec<Option<StoredObject>>> {
        let resource = resource.to_string();
        self.write(move |tx| {
            keys.iter()
                .map(|(ns, name, rv)| match delete_in(tx, &resource, ns, name, *rv) {
                    Ok(object) => Ok(Some(object)),
                    Err(StoreError::NotFound | StoreError::Conflict) => Ok(None),
                    Err(e) => Err(e),
                })
                .collect()
        })
        .await
    }

    async fn list(&self, query: ListQuery) -> StoreResult<ListStream> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        let (snapshot_tx, snapshot_rx) = oneshot::channel();
        let (chunk_tx, chunk_rx) = mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            let mut conn = match Self::take_reader(&readers, &path) {
                Ok(conn) => conn,
                Err(e) => {
                    let _ = snapshot_tx.send(Err(e));
                    return;
                }
            };
            if let Err(e) = stream_list(&mut conn, &query, snapshot_tx, &chunk_tx) {
                let _ = chunk_tx.blocking_send(Err(e));
            }
            Self::return_reader(&readers, conn);
        });
        let snapshot_rv = snapshot_rx.await.map_err(|_| backend("list reader ended early"))??;
        Ok(ListStream { snapshot_rv, chunks: chunk_rx })
    }

    async fn current_rv(&self) -> StoreResult<u64> {
        self.read(|conn| {
            conn.prepare_cached("SELECT rv FROM counter")
                .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
                .map(|v| v as u64)
                .map_err(sqlite_error)
        })
        .await
    }

    async fn compacted_rv(&self) -> StoreResult<u64> {
        self.read(|conn| {
            conn.query_row("SELECT value FROM meta WHERE key = 'compacted_rv'", [], |r| r.get::<_, String>(0))
                .map_err(sqlite_error)
                .map(|v| v.parse().unwrap_or(0))
        })
        .await
    }

    async fn changed_since(&self, resource: &str, rv: u64) -> StoreResult<bool> {
        let resource = resource.to_string();
        self.read(move |conn| {
            conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM changes WHERE resource = ?1 AND rv > ?2)",
                params![resource, rv as i64],
                |r| r.get::<_, bool>(0),
            )
            .map_err(sqlite_error)
        })
        .await
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
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT rv, resource, namespace, name, uid, type, prev_labels, body, labels FROM changes
                     WHERE rv > ?1 AND (?2 IS NULL OR resource = ?2) ORDER BY rv LIMIT ?3",
                )
                .map_err(sqlite_error)?;
            let rows = stmt
                .query_map(params![after as i64, resource, limit as i64], |r| {
                    let rv = r.get::<_, i64>(0)? as u64;
                    let type_text: String = r.get(5)?;
                    let prev: Option<String> = r.get(6)?;
                    Ok((
                        type_text,
                        Change {
                            rv,
                            resource: r.get(1)?,
                            change_type: ChangeType::Added,
                            object: StoredObject {
                                namespace: r.get(2)?,
                                name: r.get(3)?,
                                uid: r.get(4)?,
                                rv,
                                body: r.get(7)?,
                            },
                            labels: parse_labels(&r.get::<_, String>(8)?),
                            prev_labels: prev.as_deref().map(parse_labels),
                        },
                    ))
                })
                .map_err(sqlite_error)?;
            rows.map(|row| {
                let (type_text, mut change) = row.map_err(sqlite_error)?;
                change.change_type = ChangeType::parse(&type_text)
                    .ok_or_else(|| backend(format!("unknown change type {type_text}")))?;
                Ok(change)
            })
            .collect()
        })
        .await
    }

    async fn compact(&self, max_age_seconds: u64) -> StoreResult<u64> {
        let cutoff = now_seconds() - max_age_seconds as i64;
        let recent = self.recent.clone();
        self.write(move |tx| {
            let newest_old: Option<i64> = tx
                .query_row("SELECT max(rv) FROM changes WHERE created_at <= ?1", params![cutoff], |r| {
                    r.get(0)
                })
                .map_err(sqlite_error)?;
            let Some(upto) = newest_old else { return Ok(0) };
            let dropped =
                tx.execute("DELETE FROM changes WHERE rv <= ?1", params![upto]).map_err(sqlite_error)?;
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'compacted_rv' AND CAST(value AS INTEGER) < ?2",
                params![upto.to_string(), upto],
            )
            .map_err(sqlite_error)?;
            // Under the writer lock: nothing is recorded into the window meanwhile.
            recent.forget_through(upto as u64);
            Ok(dropped as u64)
        })
        .await
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(sqlite_error)).await
    }
}
