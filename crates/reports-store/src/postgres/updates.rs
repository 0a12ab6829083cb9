//! Updates, combined (see [`super::combine`]). One at a time, updates were capped at one fsync
//! each: about 550/s on the benchmark machine, while a Kyverno background scan rewrites every
//! report of a cluster. The combining task takes everything waiting (up to [`MAX_BATCH`]) and
//! writes it in one transaction: one statement locks the rows whose RV still matches (in key
//! order, as deletecollection does, so batches cannot deadlock each other or single writes), one
//! statement takes a block of RVs and rewrites, logs and notifies them all, one commit.
//!
//! Every answer is the one the update would have had alone. A lone update goes out by itself. In
//! a batch, an update whose row is missing or at another RV is not in the set; it is then written
//! alone after the batch commits, which gives it its exact answer (NotFound or Conflict, or
//! success if the row changed back). A second update of the same object in one batch waits for
//! the first in the same way, so it sees the first one's RV, as it would have in sequence.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, OnceLock},
};

use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::{
    blocks::{block_rv, take_block},
    body::SplitBody,
    combine::{fail_all, Combine, Pending},
    findings::write::{insert, with_findings, FindingArrays, SetRow, ARRAYS},
    labels,
    row_write::{RowChange, RowWrite},
    target::Target,
    writes::{write_transaction, TxWork},
};
use crate::{counter::CombinedWrites, error::StoreResult, model::StoredObject};

/// Most updates written by one transaction.
const MAX_BATCH: usize = 128;

/// Locks the rows of a batch whose RV still matches. `$1` cluster, `$2..$5` resource, namespace,
/// name and expected RV per update.
const LOCK_SET_SQL: &str = "SELECT o.resource, o.namespace, o.name, o.body FROM report_objects o
    JOIN unnest($2::text[], $3::text[], $4::text[], $5::bigint[]) AS k(resource, namespace, name, rv)
      ON o.resource = k.resource AND o.namespace = k.namespace AND o.name = k.name AND o.rv = k.rv
    WHERE o.cluster_id = $1
    ORDER BY o.resource, o.namespace, o.name FOR UPDATE OF o";

/// Rewrites the locked rows: one counter increment for all, the objects rewritten, the bodies
/// they replace kept in their new change rows (see `crate::snapshot`), one MODIFIED change each, one notification. `$1` cluster, `$2`
/// count, `$3..$12` arrays (resource, namespace, name, old RV, uid, labels, labels before, body
/// prefix, body suffix, label hashes as array literals), `$13` notification channel. Returns the
/// RV before the block.
const UPDATE_SET_SQL: &str = "WITH c AS (UPDATE report_counters SET rv = rv + $2 WHERE cluster_id = $1 RETURNING rv - $2 AS base),
u AS (
    SELECT * FROM unnest($3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[])
    WITH ORDINALITY AS u(resource, namespace, name, old_rv, uid, labels, prev_labels, prefix, suffix, hashes, i)),
old AS (
    SELECT o.resource, o.namespace, o.name, o.body FROM report_objects o, u
    WHERE o.cluster_id = $1 AND o.resource = u.resource AND o.namespace = u.namespace AND o.name = u.name
      AND o.rv = u.old_rv),
o AS (
    UPDATE report_objects o SET uid = u.uid, rv = c.base + u.i, label_hashes = u.hashes::integer[],
           body = u.prefix || (c.base + u.i)::text || u.suffix
    FROM u, c
    WHERE o.cluster_id = $1 AND o.resource = u.resource AND o.namespace = u.namespace AND o.name = u.name),
ch AS (
    INSERT INTO report_changes (cluster_id, rv, resource, namespace, name, uid, type, labels, prev_labels, prev_body)
    SELECT $1, c.base + u.i, u.resource, u.namespace, u.name, u.uid, 'MODIFIED', u.labels::jsonb, u.prev_labels::jsonb,
           old.body
    FROM u JOIN old USING (resource, namespace, name), c),
n AS (SELECT pg_notify($13, (c.base + $2)::text) AS sent FROM c)
SELECT c.base FROM c, n";

/// [`UPDATE_SET_SQL`], with findings indexing on, also replacing each object's findings (arrays
/// `$14..$32`, the new counts per update `$33`), as a lone update does
/// (see `row_write::statement_with_findings`).
fn update_set_sql(on: bool) -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    if !on {
        return UPDATE_SET_SQL;
    }
    SQL.get_or_init(|| {
        let delete = format!(
            "fd AS (DELETE FROM report_finding_sets d USING u
    WHERE d.cluster_id = $1 AND d.namespace = u.namespace AND d.name = u.name AND d.resource = u.resource
      AND (${}::int4[])[u.i::int4] = 0)",
            14 + ARRAYS
        );
        with_findings(UPDATE_SET_SQL, &[delete, insert(14, "u AS k", true)])
    })
}

/// The combining task's writer of updates (each a [`RowWrite`] with [`RowChange::Update`]).
pub(super) struct Updates(pub Target);

impl Combine for Updates {
    type Write = Arc<RowWrite>;
    type Answer = StoredObject;
    const MAX_BATCH: usize = MAX_BATCH;

    async fn write(&self, batch: Vec<Pending<Arc<RowWrite>, StoredObject>>, combined: &CombinedWrites) {
        let target = &self.0;
        // The first update of each object goes in the set; a repeat waits for it.
        let mut keys = HashSet::new();
        let (set, mut alone): (Vec<_>, Vec<_>) = batch.into_iter().partition(|p| {
            keys.insert((p.write.resource.clone(), p.write.namespace.clone(), p.write.name.clone()))
        });
        if set.len() == 1 {
            alone.splice(0..0, set);
        } else {
            let writes = set.iter().map(|p| p.write.clone()).collect();
            match write_transaction(target, Arc::new(UpdateSet { writes })).await {
                Ok(results) => {
                    let written = results.iter().flatten().count() as u64;
                    if written > 1 {
                        combined.add(written);
                    }
                    for (pending, result) in set.into_iter().zip(results) {
                        match result {
                            Some(object) => pending.answer(Ok(object)),
                            // Missing or moved on: it gets its own answer below.
                            None => alone.push(pending),
                        }
                    }
                }
                Err(error) => fail_all(set, &error),
            }
        }
        for pending in alone {
            let result = write_transaction(target, pending.write.clone()).await;
            pending.answer(result);
        }
    }
}

/// Several updates checked against their expected RVs as a set: every update whose row still has
/// the expected RV is written, in two statements; the others are `None`, in the order given.
struct UpdateSet {
    /// The updates, one per object.
    writes: Vec<Arc<RowWrite>>,
}

/// An update of a set whose row is locked at the expected RV.
struct Found<'a> {
    /// Its place in the set.
    index: usize,
    write: &'a RowWrite,
    body: &'a SplitBody,
    uid: &'a str,
    /// Labels after the write (JSON object text).
    labels: &'a str,
    hashes: &'a [i32],
    /// Findings after the write.
    findings: &'a SetRow,
    /// Labels before the write, from the locked row's body.
    prev_labels: String,
}

#[async_trait::async_trait]
impl TxWork for UpdateSet {
    type Output = Vec<Option<StoredObject>>;

    async fn run(
        &self,
        tx: &Transaction<'_>,
        target: &Target,
    ) -> Result<StoreResult<Self::Output>, tokio_postgres::Error> {
        let key = |f: fn(&RowWrite) -> &str| -> Vec<&str> { self.writes.iter().map(|w| f(w)).collect() };
        let (resources, namespaces, names) = (key(|w| &w.resource), key(|w| &w.namespace), key(|w| &w.name));
        let expected: Vec<i64> = self.writes.iter().map(|w| w.expected_rv as i64).collect();
        let lock = tx.prepare_cached(LOCK_SET_SQL).await?;
        let rows = tx.query(&lock, &[&target.cluster, &resources, &namespaces, &names, &expected]).await?;
        let mut locked: HashMap<(&str, &str, &str), String> = rows
            .iter()
            .map(|row| ((row.get(0), row.get(1), row.get(2)), labels::body_labels_json(row.get(3))))
            .collect();
        // The updates whose row is locked, with what their rows and change rows need.
        let mut found: Vec<Found<'_>> = Vec::with_capacity(locked.len());
        for (index, write) in self.writes.iter().enumerate() {
            let RowChange::Update { body, uid, labels, hashes, findings } = &write.change else { continue };
            let key = (write.resource.as_str(), write.namespace.as_str(), write.name.as_str());
            if let Some(prev_labels) = locked.remove(&key) {
                found.push(Found { index, write, body, uid, labels, hashes, findings, prev_labels });
            }
        }
        let mut out: Vec<Option<StoredObject>> = (0..self.writes.len()).map(|_| None).collect();
        if found.is_empty() {
            return Ok(Ok(out));
        }
        let column = |f: for<'b> fn(&'b Found<'b>) -> &'b str| -> Vec<&str> { found.iter().map(f).collect() };
        let (resources, namespaces, names) =
            (column(|f| &f.write.resource), column(|f| &f.write.namespace), column(|f| &f.write.name));
        let (uids, new_labels, prev_labels) =
            (column(|f| f.uid), column(|f| f.labels), column(|f| &f.prev_labels));
        let (prefixes, suffixes) = (column(|f| &f.body.prefix), column(|f| &f.body.suffix));
        let old_rvs: Vec<i64> = found.iter().map(|f| f.write.expected_rv as i64).collect();
        let hashes: Vec<String> = found.iter().map(|f| labels::hashes_literal(f.hashes)).collect();
        let count = found.len() as i64;
        let mut findings = FindingArrays::default();
        for (i, f) in found.iter().enumerate() {
            findings.push(i + 1, f.findings);
        }
        let finding_counts: Vec<i32> =
            found.iter().map(|f| i32::try_from(f.findings.count()).unwrap_or(i32::MAX)).collect();
        let channel: &str = &target.channel;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &target.cluster,
            &count,
            &resources,
            &namespaces,
            &names,
            &old_rvs,
            &uids,
            &new_labels,
            &prev_labels,
            &prefixes,
            &suffixes,
            &hashes,
            &channel,
        ];
        let on = found.iter().any(|f| target.findings.indexes(&f.write.resource));
        if on {
            params.extend(findings.params());
            params.push(&finding_counts);
        }
        let base = take_block(tx, update_set_sql(on), &params).await?;
        for (i, f) in found.iter().enumerate() {
            let (namespace, name) = (f.write.namespace.clone(), f.write.name.clone());
            out[f.index] = Some(f.body.stored(namespace, name, f.uid.to_string(), block_rv(base, i)));
        }
        Ok(Ok(out))
    }
}
