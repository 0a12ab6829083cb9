//! The database file: opening a connection with the store's pragmas, and the schema migrations.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::errors::sqlite_error;
use crate::error::{StoreError, StoreResult};

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
    // Findings: one row per result and resource of a report (see sqlite/findings).
    r#"
CREATE TABLE findings (
    namespace           TEXT NOT NULL,
    name                TEXT NOT NULL,
    resource            TEXT NOT NULL,
    ordinal             INTEGER NOT NULL,
    policy              TEXT NOT NULL,
    rule                TEXT NOT NULL,
    result              TEXT NOT NULL,
    severity            TEXT NOT NULL,
    category            TEXT NOT NULL,
    source              TEXT NOT NULL,
    scored              INTEGER NOT NULL,
    timestamp           INTEGER,
    score               REAL,
    message             TEXT NOT NULL,
    subject_api_version TEXT NOT NULL,
    subject_kind        TEXT NOT NULL,
    subject_namespace   TEXT NOT NULL,
    subject_name        TEXT NOT NULL,
    subject_uid         TEXT NOT NULL,
    properties          TEXT NOT NULL,
    numbers             TEXT,
    PRIMARY KEY (namespace, name, resource, ordinal)
);
CREATE INDEX findings_by_score ON findings (score) WHERE score IS NOT NULL;
CREATE INDEX findings_by_severity ON findings (severity, result);
CREATE INDEX findings_by_subject ON findings (subject_name);
"#,
    // Snapshot reads (see snapshot.rs): an update's or delete's change keeps the body it replaced
    // (`prev_body`); the body at a change's own RV is the object row's or the next change's, so
    // it is no longer copied (`body` stays for rows written before).
    r#"
CREATE TABLE changes_new (
    rv          INTEGER PRIMARY KEY,
    resource    TEXT NOT NULL,
    namespace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    uid         TEXT NOT NULL,
    type        TEXT NOT NULL CHECK (type IN ('ADDED', 'MODIFIED', 'DELETED')),
    labels      TEXT NOT NULL,
    prev_labels TEXT,
    body        TEXT,
    prev_body   TEXT,
    created_at  INTEGER NOT NULL
);
INSERT INTO changes_new (rv, resource, namespace, name, uid, type, labels, prev_labels, body, created_at)
    SELECT rv, resource, namespace, name, uid, type, labels, prev_labels, body, created_at FROM changes;
DROP TABLE changes;
ALTER TABLE changes_new RENAME TO changes;
CREATE INDEX changes_by_resource ON changes (resource, rv);
CREATE INDEX changes_by_key ON changes (resource, namespace, name, rv);
"#,
    // The objects table becomes a rowid table. In a WITHOUT ROWID table a row is an index entry,
    // and SQLite keeps at most about 1,000 bytes of one on its 4 KB page: a compressed 6 KB report
    // (1.6 KB with its labels) spilled the rest to an overflow page of its own, most of it empty,
    // about 4 KB of file per report. A table row stays whole on its page up to about 4 KB; the
    // key order lists walk is the primary key's index.
    r#"
CREATE TABLE objects_new (
    resource  TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    uid       TEXT NOT NULL,
    rv        INTEGER NOT NULL,
    labels    TEXT NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (resource, namespace, name)
);
INSERT INTO objects_new (resource, namespace, name, uid, rv, labels, body)
    SELECT resource, namespace, name, uid, rv, labels, body FROM objects;
DROP TABLE objects;
ALTER TABLE objects_new RENAME TO objects;
"#,
];

/// `PRAGMA auto_vacuum`'s value for INCREMENTAL.
const INCREMENTAL_AUTO_VACUUM: i64 = 2;

/// Opens a connection to the file at `path` in WAL mode with `synchronous=NORMAL`.
pub(super) fn open_connection(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path).map_err(sqlite_error)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(sqlite_error)?;
    // auto_vacuum first: on a new file it only takes effect before anything is written, and
    // switching to WAL writes the header (see `migrate` for older files).
    conn.execute_batch(
        "PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         PRAGMA foreign_keys = ON;",
    )
    .map_err(sqlite_error)?;
    Ok(conn)
}

/// Brings the schema up to this binary's version; refuses a newer one.
pub(super) fn migrate(conn: &mut Connection) -> StoreResult<()> {
    // Free pages are given back to the file system as they accumulate (see `checkpoint`). The
    // mode is fixed when the file is created (`open_connection` asks for it); a file made
    // before is rebuilt once.
    let has_tables: bool = conn
        .query_row("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table'", [], |r| r.get(0))
        .map_err(sqlite_error)?;
    let auto_vacuum: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).map_err(sqlite_error)?;
    if has_tables && auto_vacuum != INCREMENTAL_AUTO_VACUUM {
        tracing::info!("rebuilding the SQLite file once so that deleted space can be given back");
        conn.execute_batch("VACUUM").map_err(sqlite_error)?;
    }
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
        return Err(StoreError::backend(format!(
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
