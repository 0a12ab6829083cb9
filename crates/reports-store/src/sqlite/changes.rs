//! Reading and compacting the change log in the file (the newest changes are also in memory,
//! see [`super::recent`]).

use rusqlite::{params, Connection};

use super::{errors::sqlite_error, group_commit::WriteTx, recent::RecentChanges};
use crate::{
    error::StoreResult,
    model::{now_seconds, Change, ChangeRow, Retention},
    store::COMPACTION_BATCH,
};

/// True if `resource` has a change above `rv`.
pub(super) fn changed_since(conn: &Connection, resource: &str, rv: u64) -> StoreResult<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM changes WHERE resource = ?1 AND rv > ?2)",
        params![resource, rv as i64],
        |r| r.get::<_, bool>(0),
    )
    .map_err(sqlite_error)
}

/// Up to `limit` changes above `after` from the file, in RV order. A change's body is the
/// object row while it is at that RV, else the next change of the key kept it; a delete's final
/// state is the body it replaced (see `crate::snapshot`).
pub(super) fn changes_since(
    conn: &Connection,
    resource: Option<&str>,
    after: u64,
    limit: usize,
) -> StoreResult<Vec<Change>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT c.rv, c.resource, c.namespace, c.name, c.uid, c.type, c.prev_labels,
                    coalesce(c.body,
                        (SELECT o.body FROM objects o WHERE c.type <> 'DELETED' AND o.resource = c.resource
                            AND o.namespace = c.namespace AND o.name = c.name AND o.rv = c.rv),
                        (SELECT n.prev_body FROM changes n WHERE c.type <> 'DELETED' AND n.resource = c.resource
                            AND n.namespace = c.namespace AND n.name = c.name AND n.rv > c.rv
                         ORDER BY n.rv LIMIT 1)),
                    c.labels, CASE WHEN c.type = 'DELETED' THEN c.prev_body END
             FROM changes c WHERE c.rv > ?1 AND (?2 IS NULL OR c.resource = ?2) ORDER BY c.rv LIMIT ?3",
        )
        .map_err(sqlite_error)?;
    let rows = stmt
        .query_map(params![after as i64, resource, limit as i64], |r| {
            Ok(ChangeRow {
                rv: r.get::<_, i64>(0)? as u64,
                resource: r.get(1)?,
                key: (r.get(2)?, r.get(3)?, r.get(4)?),
                change_type: r.get(5)?,
                body: super::body::unpack_opt(r.get_ref(7)?)?,
                prev_body: super::body::unpack_opt(r.get_ref(9)?)?,
                labels: r.get(8)?,
                prev_labels: r.get(6)?,
            })
        })
        .map_err(sqlite_error)?;
    rows.map(|row| row.map_err(sqlite_error)?.into_change()).collect()
}

/// Drops up to [`COMPACTION_BATCH`] of the oldest changes `keep` does not keep and moves the
/// compacted RV; runs as a write, so nothing enters the in-memory window meanwhile.
pub(super) fn compact(tx: &WriteTx<'_>, keep: Retention, recent: &RecentChanges) -> StoreResult<u64> {
    let cutoff = now_seconds() as i64 - keep.max_age_seconds as i64;
    // The log is in RV order and a change's age grows with its RV, so the changes too old are
    // the ones before the first young one: found by reading only them, not the whole log.
    let (too_old, oldest, newest): (Option<i64>, Option<i64>, i64) = tx
        .query_row(
            "SELECT (SELECT max(rv) FROM changes WHERE rv < coalesce(
                        (SELECT rv FROM changes WHERE created_at > ?1 ORDER BY rv LIMIT 1), ?2)),
                    (SELECT min(rv) FROM changes),
                    (SELECT rv FROM counter)",
            params![cutoff, i64::MAX],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(sqlite_error)?;
    let Some(oldest) = oldest else { return Ok(0) };
    let beyond_length = newest.saturating_sub(i64::try_from(keep.max_entries).unwrap_or(i64::MAX));
    let upto = too_old.unwrap_or(0).max(beyond_length).min(oldest + COMPACTION_BATCH as i64 - 1);
    if upto < oldest {
        return Ok(0);
    }
    let dropped = tx.execute("DELETE FROM changes WHERE rv <= ?1", params![upto]).map_err(sqlite_error)?;
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'compacted_rv' AND CAST(value AS INTEGER) < ?2",
        params![upto.to_string(), upto],
    )
    .map_err(sqlite_error)?;
    recent.forget_through(upto as u64);
    Ok(dropped as u64)
}
