//! Reading and compacting the change log.

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::errors::db_error;
use crate::{
    error::StoreResult,
    model::{now_seconds, Change, ChangeRow, Retention},
    store::COMPACTION_BATCH,
};

/// True if `resource` has a change above `rv`.
pub(super) async fn changed_since<C: GenericClient>(
    client: &C,
    cluster: Uuid,
    resource: &str,
    rv: u64,
) -> StoreResult<bool> {
    let stmt = client
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM report_changes WHERE cluster_id = $1 AND resource = $2 AND rv > $3)",
        )
        .await
        .map_err(db_error)?;
    Ok(client.query_one(&stmt, &[&cluster, &resource, &(rv as i64)]).await.map_err(db_error)?.get(0))
}

/// Up to `limit` changes above `after`, in RV order. A change row without a body shares it with
/// the object row at the same RV or, once that was replaced, with the next change of the key,
/// which kept it (`crate::snapshot`); a delete's final state is the body it replaced.
pub(super) async fn changes_since<C: GenericClient>(
    client: &C,
    cluster: Uuid,
    resource: Option<&str>,
    after: u64,
    limit: usize,
) -> StoreResult<Vec<Change>> {
    let stmt = client
        .prepare_cached(
            "SELECT ch.rv, ch.resource, ch.namespace, ch.name, ch.uid, ch.type, ch.prev_labels::text,
                    coalesce(ch.body, o.body, nx.prev_body), ch.labels::text,
                    CASE WHEN ch.type = 'DELETED' THEN ch.prev_body END
             FROM report_changes ch
             LEFT JOIN report_objects o ON ch.body IS NULL AND ch.type <> 'DELETED'
                  AND o.cluster_id = ch.cluster_id AND o.resource = ch.resource
                  AND o.namespace = ch.namespace AND o.name = ch.name AND o.rv = ch.rv
             LEFT JOIN LATERAL (
                  SELECT n.prev_body FROM report_changes n
                  WHERE ch.body IS NULL AND ch.type <> 'DELETED' AND o.rv IS NULL
                    AND n.cluster_id = ch.cluster_id AND n.resource = ch.resource
                    AND n.namespace = ch.namespace AND n.name = ch.name AND n.rv > ch.rv
                  ORDER BY n.rv LIMIT 1) nx ON true
             WHERE ch.cluster_id = $1 AND ch.rv > $2 AND ($3::text IS NULL OR ch.resource = $3)
             ORDER BY ch.rv LIMIT $4",
        )
        .await
        .map_err(db_error)?;
    let rows = client
        .query(&stmt, &[&cluster, &(after as i64), &resource, &(limit as i64)])
        .await
        .map_err(db_error)?;
    rows.iter()
        .map(|row| {
            ChangeRow {
                rv: row.get::<_, i64>(0) as u64,
                resource: row.get(1),
                key: (row.get(2), row.get(3), row.get(4)),
                change_type: row.get(5),
                body: row.get(7),
                prev_body: row.get(9),
                labels: row.get(8),
                prev_labels: row.get(6),
            }
            .into_change()
        })
        .collect()
}

/// One compaction pass's work: of the oldest `$3` changes (in RV order, read through the key),
/// those up to the newest that is older than `$2` (Unix seconds) or `$4` or more RVs behind the
/// counter are deleted; answers how many and that RV (none when nothing is due). `$1` cluster.
///
/// A pass reads at most a batch of the log, whatever its length and however stale its
/// statistics. A change is stamped with its write's start, so ages follow RVs (to within one
/// write's duration) and the changes too old lead the log: "the first batch, then the filter"
/// finds what "the filter, then the first batch" did, and everything up to the answer is dropped
/// either way. The rows go by their `ctid`s, found in that one read: deleting `rv <= upto`
/// was planned from statistics that a flood leaves behind at once (RVs past the histogram, most
/// of the table dead), as a scan of the whole log, and so was the filter first; a flood trimmed by
/// length runs a pass every second. Public so a test can read its plan.
pub const COMPACTION_SQL: &str = "WITH oldest AS (
    SELECT ctid, rv, created_at FROM report_changes WHERE cluster_id = $1 ORDER BY rv LIMIT $3),
upto AS (
    SELECT max(rv) AS rv FROM oldest
    WHERE created_at <= to_timestamp($2) OR rv <= (SELECT rv - $4 FROM report_counters WHERE cluster_id = $1)),
gone AS (
    DELETE FROM report_changes
    WHERE ctid = ANY (ARRAY(SELECT oldest.ctid FROM oldest, upto WHERE oldest.rv <= upto.rv))
    RETURNING rv)
SELECT count(*), max(rv) FROM gone";

/// Drops up to [`COMPACTION_BATCH`] of the oldest changes `keep` does not keep, one replica at
/// a time (the others skip the pass); returns how many were dropped.
pub(super) async fn compact(
    client: &mut deadpool_postgres::Object,
    cluster: Uuid,
    keep: Retention,
) -> StoreResult<u64> {
    let cutoff = now_seconds() - keep.max_age_seconds as f64;
    let max_entries = i64::try_from(keep.max_entries).unwrap_or(i64::MAX);
    let tx = client.transaction().await.map_err(db_error)?;
    let lock_key = format!("reports-server compaction {cluster}");
    let locked: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock(hashtext($1))", &[&lock_key])
        .await
        .map_err(db_error)?
        .get(0);
    if !locked {
        tx.rollback().await.map_err(db_error)?;
        return Ok(0);
    }
    let row = tx
        .query_one(COMPACTION_SQL, &[&cluster, &cutoff, &(COMPACTION_BATCH as i64), &max_entries])
        .await
        .map_err(db_error)?;
    let (dropped, upto): (i64, Option<i64>) = (row.get(0), row.get(1));
    let Some(upto) = upto else {
        tx.rollback().await.map_err(db_error)?;
        return Ok(0);
    };
    // Last, so the counter row (which every writer needs) is locked only briefly.
    tx.execute(
        "UPDATE report_counters SET compacted_rv = GREATEST(compacted_rv, $2) WHERE cluster_id = $1",
        &[&cluster, &upto],
    )
    .await
    .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    Ok(dropped as u64)
}
