//! Findings on PostgreSQL: the results inside reports as `report_finding_sets`, one row per
//! report.
//!
//! # The table
//!
//! A report's findings (one per result and resource it is about, see `reports_core::findings`)
//! are one row keyed like the report, `(cluster_id, namespace, name, resource)`, with a column per
//! field holding an array of one element per finding: element `i` of every array is finding
//! `i - 1` (its ordinal). The first version had a row per finding, and a 40-result Trivy report
//! cost 40 rows and 160 index entries beside its one object row: indexing halved the create rate
//! (see docs/BENCHMARKS.md, "Findings"). As one row, the findings are one more row and one
//! compressed TOAST value per report write, and the repeated texts of a report (its subject,
//! policy, source) compress against each other.
//!
//! Text elements are "" rather than NULL where absent, and compare bytewise (`COLLATE "C"`), as
//! the key of `report_objects` does. `properties` holds each finding's string properties as JSON
//! object text (cast to `jsonb` by the questions that read them); the ones that read as numbers are kept once more as numbers, the score in `score`
//! (it is what is asked most), the rest in `numbers` (NULL elements for findings without
//! any). Numbers are read by the same Rust function the in-memory filter uses, so the database
//! never has to decide what is a number. `max_score`, the largest score of the report, lets a
//! score condition skip reports (a partial index finds the reports that have one high enough).
//!
//! # Writes
//!
//! The report writes' own statements carry the findings (see [`write`]): a create inserts the
//! report's set, an update replaces it (or deletes it when no finding is left), a delete deletes
//! it, all in the statement that writes the report, so they commit together or not at all. With
//! indexing off the statements are the plain ones. [`backfill`] indexes reports written before.
//!
//! # Queries
//!
//! The query language becomes SQL over rows aliased `f` (see `crate::findings::sql`), the same
//! text as on SQLite; here `f` is the sets unnested, and only the arrays the question reads are
//! unnested (see [`query`]), so a question about scores never decompresses messages. A list
//! finds the keys of the next matching findings in key order (the sets' primary key walked from
//! the last key served, the unnest beside it), then reads those findings whole from their sets;
//! both statements run in one REPEATABLE READ snapshot whose RV is read first. Counts group by
//! the grouping fields and the result in SQL and are folded into groups here.

pub(super) mod backfill;
pub(super) mod query;
pub(super) mod schema;
pub(super) mod write;
