//! One update or delete: lock the object row (`FOR UPDATE`), check its RV, then one statement
//! that takes the counter, rewrites or deletes the object, logs the change with the body it
//! replaced, and notifies. The lock order is always row, then counter, so these writes
//! cannot deadlock with creates.

use std::sync::OnceLock;

use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::{
    body::SplitBody,
    findings::write::{insert, with_findings, FindingArrays, SetRow, ARRAYS, ONE_KEY},
    labels,
    target::Target,
    writes::TxWork,
};
use crate::{
    error::{StoreError, StoreResult},
    model::StoredObject,
    snapshot::with_rv,
};

/// Locks an object row for an update or delete and returns what the write needs.
pub(super) const LOCK_SQL: &str = "SELECT rv, body, uid FROM report_objects
    WHERE cluster_id = $1 AND resource = $2 AND namespace = $3 AND name = $4 FOR UPDATE";

/// One update or delete of one object, checked against its locked row.
pub(super) struct RowWrite {
    /// Resource plural.
    pub resource: String,
    /// Namespace ("" for cluster-scoped kinds).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The RV the stored object must have.
    pub expected_rv: u64,
    /// What to do with the row.
    pub change: RowChange,
}

/// What a [`RowWrite`] does to its row.
pub(super) enum RowChange {
    /// Replace the object.
    Update {
        /// The new body, split around its RV.
        body: SplitBody,
        /// `metadata.uid`.
        uid: String,
        /// Labels after the write (JSON object text).
        labels: String,
        /// Label hashes after the write.
        hashes: Vec<i32>,
        /// The findings after the write (none when the kind is not indexed).
        findings: SetRow,
    },
    /// Delete the object.
    Delete,
}

/// The statements of an update and a delete. Both take `$1` cluster, `$2..$4` key, `$5` the RV
/// being replaced; an update then `$6` uid, `$7` labels after the write, `$8`/`$9` the body
/// halves, `$10` labels before the write, `$11` the notification channel, `$12` the label hashes
/// after the write; a delete `$6` its labels and `$7` the channel. The change row keeps the body
/// the write replaces (`prev_body`, see `crate::snapshot`), copied inside the database: a
/// delete sends no body at all.
fn statement(change: &RowChange) -> &'static str {
    match change {
        RowChange::Update { .. } => {
            "WITH c AS (UPDATE report_counters SET rv = rv + 1 WHERE cluster_id = $1 RETURNING rv),
old AS (SELECT body FROM report_objects WHERE cluster_id = $1 AND resource = $2 AND namespace = $3 AND name = $4 AND rv = $5),
o AS (
    UPDATE report_objects SET uid = $6, rv = c.rv, label_hashes = $12, body = $8 || c.rv::text || $9
    FROM c WHERE cluster_id = $1 AND resource = $2 AND namespace = $3 AND name = $4 RETURNING report_objects.rv),
ch AS (
    INSERT INTO report_changes (cluster_id, rv, resource, namespace, name, uid, type, labels, prev_labels, prev_body)
    SELECT $1, o.rv, $2, $3, $4, $6, 'MODIFIED', $7::text::jsonb, $10::text::jsonb, old.body FROM o, old),
n AS (SELECT pg_notify($11, o.rv::text) AS sent FROM o)
SELECT o.rv FROM o, n"
        }
        RowChange::Delete => {
            "WITH c AS (UPDATE report_counters SET rv = rv + 1 WHERE cluster_id = $1 RETURNING rv),
d AS (DELETE FROM report_objects WHERE cluster_id = $1 AND resource = $2 AND namespace = $3 AND name = $4 AND rv = $5
      RETURNING uid, body),
ch AS (
    INSERT INTO report_changes (cluster_id, rv, resource, namespace, name, uid, type, labels, prev_labels, prev_body)
    SELECT $1, c.rv, $2, $3, $4, d.uid, 'DELETED', $6::text::jsonb, $6::text::jsonb, d.body FROM c, d),
n AS (SELECT pg_notify($7, c.rv::text) AS sent FROM c)
SELECT c.rv FROM c, n"
        }
    }
}

/// [`statement`], with findings indexing on, also replacing the object's findings: an update
/// overwrites the report's set, or deletes it when the new version has no findings (count
/// `$32`), so the two CTEs never touch the same row; a delete deletes it. The update's arrays are
/// `$13..$31`.
fn statement_with_findings(change: &RowChange, on: bool) -> &'static str {
    static UPDATE: OnceLock<String> = OnceLock::new();
    static DELETE: OnceLock<String> = OnceLock::new();
    const KEY: &str = "cluster_id = $1 AND namespace = $3 AND name = $4 AND resource = $2";
    match (change, on) {
        (_, false) => statement(change),
        (RowChange::Update { .. }, true) => UPDATE.get_or_init(|| {
            let count = 13 + ARRAYS;
            let delete =
                format!("fd AS (DELETE FROM report_finding_sets WHERE {KEY} AND ${count}::int4 = 0)");
            with_findings(statement(change), &[delete, insert(13, ONE_KEY, true)])
        }),
        (RowChange::Delete, true) => DELETE.get_or_init(|| {
            with_findings(
                statement(change),
                &[format!("fd AS (DELETE FROM report_finding_sets WHERE {KEY})")],
            )
        }),
    }
}

#[async_trait::async_trait]
impl TxWork for RowWrite {
    type Output = StoredObject;

    async fn run(
        &self,
        tx: &Transaction<'_>,
        target: &Target,
    ) -> Result<StoreResult<StoredObject>, tokio_postgres::Error> {
        let lock = tx.prepare_cached(LOCK_SQL).await?;
        let row =
            tx.query_opt(&lock, &[&target.cluster, &self.resource, &self.namespace, &self.name]).await?;
        let Some(row) = row else { return Ok(Err(StoreError::NotFound)) };
        let current_rv = row.get::<_, i64>(0);
        if current_rv as u64 != self.expected_rv {
            return Ok(Err(StoreError::Conflict));
        }
        let old_body: &str = row.get(1);
        let prev_labels = labels::body_labels_json(old_body);
        let on = target.findings.indexes(&self.resource);
        let stmt = tx.prepare_cached(statement_with_findings(&self.change, on)).await?;
        let channel: &str = &target.channel;
        let (body, uid, labels, hashes) = match &self.change {
            RowChange::Update { body, uid, labels, hashes, .. } => (body, uid, labels, hashes),
            RowChange::Delete => {
                let params: [&(dyn ToSql + Sync); 7] = [
                    &target.cluster,
                    &self.resource,
                    &self.namespace,
                    &self.name,
                    &current_rv,
                    &prev_labels,
                    &channel,
                ];
                let rv: i64 = tx.query_one(&stmt, &params).await?.get(0);
                // A delete's final state is the stored object at the deletion's RV.
                let uid: String = row.get(2);
                return Ok(with_rv(old_body, rv as u64).map(|body| StoredObject {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    uid,
                    rv: rv as u64,
                    body,
                }));
            }
        };
        let mut findings = FindingArrays::default();
        let mut count = 0i32;
        if let RowChange::Update { findings: rows, .. } = &self.change {
            findings.push(1, rows);
            count = i32::try_from(rows.count()).unwrap_or(i32::MAX);
        }
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &target.cluster,
            &self.resource,
            &self.namespace,
            &self.name,
            &current_rv,
            uid,
            labels,
            &body.prefix,
            &body.suffix,
            &prev_labels,
            &channel,
            hashes,
        ];
        if on {
            params.extend(findings.params());
            params.push(&count);
        }
        let rv: i64 = tx.query_one(&stmt, &params).await?.get(0);
        Ok(Ok(body.stored(self.namespace.clone(), self.name.clone(), uid.clone(), rv as u64)))
    }
}
