//! Deleting a set of objects (deletecollection) in one transaction of three round trips whatever
//! the number of keys: lock the rows whose RV still matches (in key order, so sets cannot
//! deadlock each other), then one statement that takes a block of RVs, deletes the rows, logs
//! each with the body it had (moved inside the database, never sent back) and notifies. The
//! bodies of the final states are the ones the objects were listed with (an RV names one
//! version), so none is read back: reading them in the lock cost PostgreSQL a decompression and
//! the server a parse of each. Their RVs are found before the transaction (`Restampable`).

use std::{collections::HashMap, sync::OnceLock};

use deadpool_postgres::Transaction;

use super::{
    blocks::{block_rv, take_block},
    findings::write::with_findings,
    labels,
    target::Target,
    writes::TxWork,
};
use crate::{error::StoreResult, model::StoredObject, snapshot::Restampable};

/// Locks the rows of a set whose RV still matches. `$1` cluster, `$2` resource, `$3..$5`
/// namespace, name and expected RV per key.
const LOCK_SET_SQL: &str = "SELECT o.namespace, o.name, o.rv FROM report_objects o
    JOIN unnest($3::text[], $4::text[], $5::bigint[]) AS k(namespace, name, rv)
      ON o.namespace = k.namespace AND o.name = k.name AND o.rv = k.rv
    WHERE o.cluster_id = $1 AND o.resource = $2
    ORDER BY o.namespace, o.name FOR UPDATE OF o";

/// Deletes the locked rows. `$1` cluster, `$2` resource, `$3` count, `$4..$7` arrays (namespace,
/// name, old RV, labels), `$8` notification channel. `d` parses each object's labels once, for
/// both label columns of its change. Each DELETED change keeps the body it
/// replaced (`prev_body`, see `crate::snapshot`), moved inside the database from the deleted
/// row; its final state is that body with the deletion's RV. Returns the RV before the block.
const DELETE_SET_SQL: &str = "WITH c AS (UPDATE report_counters SET rv = rv + $3 WHERE cluster_id = $1 RETURNING rv - $3 AS base),
d AS (SELECT namespace, name, old_rv, labels::jsonb AS labels, i FROM unnest($4::text[], $5::text[], $6::bigint[], $7::text[])
      WITH ORDINALITY AS d(namespace, name, old_rv, labels, i)),
del AS (
    DELETE FROM report_objects o USING d
    WHERE o.cluster_id = $1 AND o.resource = $2 AND o.namespace = d.namespace AND o.name = d.name
      AND o.rv = d.old_rv
    RETURNING o.namespace, o.name, o.uid, o.body),
ch AS (
    INSERT INTO report_changes (cluster_id, rv, resource, namespace, name, uid, type, labels, prev_labels, prev_body)
    SELECT $1, c.base + d.i, $2, d.namespace, d.name, del.uid, 'DELETED', d.labels, d.labels, del.body
    FROM c, d JOIN del USING (namespace, name)),
n AS (SELECT pg_notify($8, (c.base + $3)::text) AS sent FROM c)
SELECT c.base FROM c, n";

/// [`DELETE_SET_SQL`], with findings indexing on, also deleting the objects' findings.
fn delete_set_sql(on: bool) -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    if !on {
        return DELETE_SET_SQL;
    }
    SQL.get_or_init(|| {
        let delete =
            "fd AS (DELETE FROM report_finding_sets f USING unnest($4::text[], $5::text[]) AS k(namespace, name)
    WHERE f.cluster_id = $1 AND f.resource = $2 AND f.namespace = k.namespace AND f.name = k.name)";
        with_findings(DELETE_SET_SQL, &[delete.to_string()])
    })
}

/// Several deletes of one resource, checked against the RVs they were read at as a set.
/// Objects that moved or vanished are `None` in the answer, in the order given.
pub(super) struct DeleteSet {
    /// Resource plural.
    pub resource: String,
    /// Each object as read.
    pub read: Vec<Restampable>,
}

/// Namespace, name and RV: one version of one object.
type Version<'a> = (&'a str, &'a str, u64);

/// The version `object` was read at.
fn version(object: &Restampable) -> Version<'_> {
    let read = object.read();
    (&read.namespace, &read.name, read.rv)
}

/// An object whose row is locked for deletion, with its labels for its DELETED change.
struct DoomedRow<'a> {
    object: &'a Restampable,
    labels: String,
}

#[async_trait::async_trait]
impl TxWork for DeleteSet {
    type Output = Vec<Option<StoredObject>>;

    async fn run(
        &self,
        tx: &Transaction<'_>,
        target: &Target,
    ) -> Result<StoreResult<Self::Output>, tokio_postgres::Error> {
        let read = || self.read.iter().map(Restampable::read);
        let namespaces: Vec<&str> = read().map(|o| o.namespace.as_str()).collect();
        let names: Vec<&str> = read().map(|o| o.name.as_str()).collect();
        let rvs: Vec<i64> = read().map(|o| o.rv as i64).collect();
        let lock = tx.prepare_cached(LOCK_SET_SQL).await?;
        let rows = tx.query(&lock, &[&target.cluster, &self.resource, &namespaces, &names, &rvs]).await?;
        // The objects read, by version (an object given twice is deleted once).
        let by_version: HashMap<Version, &Restampable> = self.read.iter().map(|o| (version(o), o)).collect();
        let mut found: Vec<DoomedRow> = Vec::with_capacity(rows.len());
        for row in &rows {
            let locked = (row.get::<_, &str>(0), row.get::<_, &str>(1), row.get::<_, i64>(2) as u64);
            if found.last().is_some_and(|f| version(f.object) == locked) {
                continue;
            }
            let Some(object) = by_version.get(&locked) else { continue };
            found.push(DoomedRow { object, labels: labels::body_labels_json(&object.read().body) });
        }
        let mut objects: HashMap<Version, StoredObject> = HashMap::new();
        if !found.is_empty() {
            let ns: Vec<&str> = found.iter().map(|f| f.object.read().namespace.as_str()).collect();
            let name: Vec<&str> = found.iter().map(|f| f.object.read().name.as_str()).collect();
            let labels: Vec<&str> = found.iter().map(|f| f.labels.as_str()).collect();
            let old_rv: Vec<i64> = found.iter().map(|f| f.object.read().rv as i64).collect();
            let count = found.len() as i64;
            let base = take_block(
                tx,
                delete_set_sql(target.findings.indexes(&self.resource)),
                &[
                    &target.cluster,
                    &self.resource,
                    &count,
                    &ns,
                    &name,
                    &old_rv,
                    &labels,
                    &target.channel.as_ref(),
                ],
            )
            .await?;
            for (i, row) in found.into_iter().enumerate() {
                // The final state is the stored object at the deletion's RV.
                objects.insert(version(row.object), row.object.at(block_rv(base, i)));
            }
        }
        Ok(Ok(self.read.iter().map(|o| objects.remove(&version(o))).collect()))
    }
}
