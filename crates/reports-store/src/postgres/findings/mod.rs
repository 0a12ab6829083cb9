//! Findings on PostgreSQL: the results inside reports as rows of `report_findings`.
//!
//! # The table
//!
//! One row per finding (one result about one resource, see `reports_core::findings`), keyed by
//! `(cluster_id, namespace, name, resource, ordinal)`: the report's findings are one contiguous
//! key range, and the primary key's order is the list order, so a page of findings is a walk of
//! the primary key from the last key served. Text columns hold "" rather than NULL and compare
//! bytewise (`COLLATE "C"`), as the key of `report_objects` does. `properties` is the result's
//! string properties as `jsonb`; the properties that read as numbers are kept once more as
//! numbers, the score in a `float8` column of its own (it is what is asked most, and a column
//! can be indexed), the rest in `numbers` (`jsonb`, NULL when there are none, which is most
//! rows). Numbers are read by the same Rust function the in-memory filter uses, so the database
//! never has to decide what is a number.
//!
//! # Indexes
//!
//! Every index costs every report write one entry per finding, and a Trivy report has dozens,
//! so there are three besides the primary key: the score (partial: rows without one are left
//! out), severity and result, and the subject's name. Filters on other columns are evaluated
//! on the rows the primary key or one of these yields.
//!
//! # Writes
//!
//! The report writes' own statements carry the findings (see [`write`]): a create inserts them,
//! an update overwrites the ordinals both versions have and deletes the rest, a delete deletes
//! them, all in the statement that writes the report, so they commit together or not at all.
//! With indexing off the statements are the plain ones. [`backfill`] indexes reports written
//! before.
//!
//! # Queries
//!
//! A query is one SQL statement (see `crate::findings::sql`): each condition becomes a
//! boolean expression with its values bound as parameters, the caller's visibility and the
//! request's namespace are conditions on the key, and the rows come in key order, a bounded
//! statement at a time, from one REPEATABLE READ snapshot whose RV is read first ([`query`]).
//! Counts group by the grouping fields and the result in SQL and are folded into groups here.

pub(super) mod backfill;
pub(super) mod query;
pub(super) mod schema;
pub(super) mod write;
