//! Findings on SQLite: the results inside reports as rows of `findings`, the embedded twin of
//! PostgreSQL's `report_finding_sets` (see that module for the design; what differs is here).
//!
//! # The table
//!
//! One row per finding (PostgreSQL keeps a row per report with the findings as arrays, which
//! SQLite has no type for; here a row costs a few B-tree inserts in the one writer's
//! transaction, not the WAL record, row header and index entries per row it costs there), keyed by `(namespace, name, resource, ordinal)`, a report's findings one
//! key range in list order. A rowid table (rows of a few hundred bytes are too wide for
//! `WITHOUT ROWID`) whose primary key index serves the key order. `properties` and `numbers` are
//! JSON object text; the score has its own `REAL` column. Indexes: the score (partial),
//! severity and result, and the subject's name.
//!
//! # Writes
//!
//! Every report write runs on the one writer connection inside its group-commit savepoint, so
//! the findings statements simply follow the report's in the same transaction ([`write`]): a
//! create inserts, an update deletes the report's range and inserts again, a delete deletes the
//! range. A refused or failed write rolls back to its savepoint with its findings. With
//! indexing off none of these statements run. [`write::backfill`] indexes reports written
//! before, at open, before the store serves.
//!
//! # Queries
//!
//! The same SQL translation as PostgreSQL (`crate::findings::sql`) with SQLite's seams:
//! properties are looked up with `json_each` (a JSON path would read dots and quotes in a key as
//! syntax), sets are JSON arrays. A list is one statement in a read transaction that first reads
//! the counter, so rows and RV share one snapshot ([`query`]).

pub(super) mod query;
pub(super) mod write;
