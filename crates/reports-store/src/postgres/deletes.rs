//! Deleting a set of objects (deletecollection) in one transaction of three round trips whatever
//! the number of keys: lock the rows whose RV still matches (in key order, so sets cannot
//! deadlock each other), then one statement that takes a block of RVs, logs every final state,
//! deletes the rows and notifies.

use std::{collections::HashMap, sync::OnceLock};

use deadpool_postgres::Transaction;

use super::{
    blocks::{block_rv, take_block},
    body::FinalState,
    findings::write::with_findings,
    target::Target,
    writes::TxWork,
};
use crate::{error::StoreResult, model::StoredObject};

/// Locks the rows of a set whose RV still matches. `$1` cluster, `$2` resource, `$3..$5`
/// namespace, name and expected RV per key.
const LOCK_SET_SQL: &str = "SELECT o.namespace, o.name, o.rv, o.body FROM report_objects o
    JOIN unnest($3::text[], $4::text[], $5::bigint[]) AS k(namespace, name, rv)
      ON o.namespace = k.namespace AND o.name = k.name AND o.rv = k.rv
    WHERE o.cluster_id = $1 AND o.resource = $2
    ORDER BY o.namespace, o.name FOR UPDATE OF o";

/// Deletes the locked rows. `$1` cluster, `$2` resource, `$3` count, `$4..$10` arrays
/// (namespace, name, old RV, uid, labels, body prefix, body suffix), `$11` notification channel.
/// Returns the RV before the block.
const DELETE_SET_SQL: &str = "WITH c AS (UPDATE report_counters SET rv = rv + $3 WHERE cluster_id = $1 RETURNING rv - $3 AS base),
d AS (SELECT * FROM unnest($4::text[], $5::text[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::text[])
      WITH ORDINALITY AS d(namespace, name, old_rv, uid, labels, prefix, suffix, i)),
keep AS (
    UPDATE report_changes ch SET body = o.body FROM report_objects o, d
    WHERE ch.cluster_id = $1 AND ch.rv = d.old_rv AND ch.body IS NULL
      AND o.cluster_id = $1 AND o.resource = $2 AND o.namespace = d.namespace AND o.name = d.name),
del AS (
    DELETE FROM report_objects o USING d
    WHERE o.cluster_id = $1 AND o.resource = $2 AND o.namespace = d.namespace AND o.name = d.name),
ch AS (
    INSERT INTO report_changes (cluster_id, rv, resource, namespace, name, uid, type, labels, prev_labels, body)
    SELECT $1, c.base + d.i, $2, d.namespace, d.name, d.uid, 'DELETED', d.labels::jsonb, d.labels::jsonb,
           d.prefix || (c.base + d.i)::text || d.suffix
    FROM c, d),
n AS (SELECT pg_notify($11, (c.base + $3)::text) AS sent FROM c)
SELECT c.base FROM c, n";

/// [`DELETE_SET_SQL`], with findings indexing on, also deleting the objects' findings.
fn delete_set_sql(on: bool) -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    if !on {
        return DELETE_SET_SQL;
    }
    SQL.get_or_init(|| {
        let delete =
            "fd AS (DELETE FROM report_findings f USING unnest($4::text[], $5::text[]) AS k(namespace, name)
    WHERE f.cluster_id = $1 AND f.resource = $2 AND f.namespace = k.namespace AND f.name = k.name)";
        with_findings(DELETE_SET_SQL, &[delete.to_string()])
    })
}

/// Several deletes of one resource, checked against their expected RVs as a set. Keys that
/// moved or vanished are `None` in the answer, in the order given.
pub(super) struct DeleteSet {
    /// Resource plural.
    pub resource: String,
    /// Namespace, name and expected RV of each object.
    pub keys: Vec<(String, String, u64)>,
}

/// A row locked for deletion with what its DELETED change needs.
struct DoomedRow {
    namespace: String,
    name: String,
    old_rv: i64,
    state: FinalState,
}

#[async_trait::async_trait]
impl TxWork for DeleteSet {
    type Output = Vec<Option<StoredObject>>;

    async fn run(
        &self,
        tx: &Transaction<'_>,
        target: &Target,
    ) -> Result<StoreResult<Self::Output>, tokio_postgres::Error> {
        let namespaces: Vec<&str> = self.keys.iter().map(|(ns, _, _)| ns.as_str()).collect();
        let names: Vec<&str> = self.keys.iter().map(|(_, name, _)| name.as_str()).collect();
        let rvs: Vec<i64> = self.keys.iter().map(|(_, _, rv)| *rv as i64).collect();
        let lock = tx.prepare_cached(LOCK_SET_SQL).await?;
        let rows = tx.query(&lock, &[&target.cluster, &self.resource, &namespaces, &names, &rvs]).await?;
        let mut found: Vec<DoomedRow> = Vec::with_capacity(rows.len());
        for row in &rows {
            // A key given twice joins twice; it is deleted once.
            if found
                .last()
                .is_some_and(|f| f.namespace == row.get::<_, &str>(0) && f.name == row.get::<_, &str>(1))
            {
                continue;
            }
            let state = match FinalState::of(row.get::<_, &str>(3)) {
                Ok(state) => state,
                Err(e) => return Ok(Err(e)),
            };
            found.push(DoomedRow { namespace: row.get(0), name: row.get(1), old_rv: row.get(2), state });
        }
        let mut objects: HashMap<(String, String), StoredObject> = HashMap::new();
        if !found.is_empty() {
            let column = |f: fn(&DoomedRow) -> &str| -> Vec<&str> { found.iter().map(f).collect() };
            let (ns, name) = (column(|f| &f.namespace), column(|f| &f.name));
            let (labels, uid) = (column(|f| &f.state.labels), column(|f| &f.state.uid));
            let (prefix, suffix) = (column(|f| &f.state.body.prefix), column(|f| &f.state.body.suffix));
            let old_rv: Vec<i64> = found.iter().map(|f| f.old_rv).collect();
            let count = found.len() as i64;
            let base = take_block(
                tx,
                delete_set_sql(target.findings.is_on()),
                &[
                    &target.cluster,
                    &self.resource,
                    &count,
                    &ns,
                    &name,
                    &old_rv,
                    &uid,
                    &labels,
                    &prefix,
                    &suffix,
                    &target.channel.as_ref(),
                ],
            )
            .await?;
            for (i, row) in found.into_iter().enumerate() {
                let (key, state) = ((row.namespace, row.name), row.state);
                let object = state.body.stored(key.0.clone(), key.1.clone(), state.uid, block_rv(base, i));
                objects.insert(key, object);
            }
        }
        Ok(Ok(self.keys.iter().map(|(ns, name, _)| objects.remove(&(ns.clone(), name.clone()))).collect()))
    }
}
