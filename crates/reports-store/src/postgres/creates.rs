//! Creates, combined (see [`super::combine`]). Creates are the bulk of report traffic (admission
//! floods, background scans): requests queue for one task that takes everything waiting (up to
//! [`MAX_BATCH`]) and writes it with one statement and one commit, giving the batch a block of
//! consecutive RVs.
//!
//! A batch that hits an existing name (or names one object twice) fails as a whole on the unique
//! key, and its creates are then written one by one, so each gets its own answer
//! (AlreadyExists or success) as if it had been sent alone.

use std::sync::{Arc, OnceLock};

use tokio_postgres::{error::SqlState, types::ToSql};

use super::{
    blocks::{block_rv, take_block},
    body::SplitBody,
    combine::{fail_all, Combine, Pending},
    errors::{db_error, pool_error},
    findings::write::{insert, with_findings, FindingArrays, SetRow, ONE_KEY},
    retry::Retry,
    target::Target,
};
use crate::{
    counter::CombinedWrites,
    error::{StoreError, StoreResult},
};

/// Most creates written by one statement.
const MAX_BATCH: usize = 128;

/// The statement of a lone create: counter, object row, change row, notification. Parameters:
/// `$1` cluster, `$2` resource, `$3` namespace, `$4` name, `$5` uid, `$6` labels (JSON text),
/// `$7`/`$8` the body before and after its RV, `$9` notification channel, `$10` label hashes (an
/// array literal). Returns the RV. Public so the benchmark's raw baseline issues this very text.
pub const CREATE_SQL: &str = "WITH c AS (
    UPDATE report_counters SET rv = rv + 1 WHERE cluster_id = $1 RETURNING rv),
o AS (
    INSERT INTO report_objects (cluster_id, resource, namespace, name, uid, rv, label_hashes, body)
    SELECT $1, $2, $3, $4, $5, c.rv, $10::text::integer[], $7 || c.rv::text || $8 FROM c RETURNING rv),
ch AS (
    INSERT INTO report_changes (cluster_id, rv, resource, namespace, name, uid, type, labels)
    SELECT $1, o.rv, $2, $3, $4, $5, 'ADDED', $6::text::jsonb FROM o),
n AS (SELECT pg_notify($9, o.rv::text) AS sent FROM o)
SELECT o.rv FROM o, n";

/// Writes a batch: one counter increment for all, then the object and change rows. Parameters:
/// `$1` cluster, `$2..$8` arrays (resource, namespace, name, uid, labels, body prefix, body
/// suffix), `$9` count, `$10` notification channel, `$11` label hashes (array literals, one text
/// per row: arrays of arrays do not unnest per row). Returns the RV before the block.
pub(super) const BATCH_SQL: &str = "WITH t AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $11::text[])
    WITH ORDINALITY AS t(resource, namespace, name, uid, labels, prefix, suffix, label_hashes, i)),
c AS (UPDATE report_counters SET rv = rv + $9 WHERE cluster_id = $1 RETURNING rv - $9 AS base),
o AS (
    INSERT INTO report_objects (cluster_id, resource, namespace, name, uid, rv, label_hashes, body)
    SELECT $1, t.resource, t.namespace, t.name, t.uid, c.base + t.i, t.label_hashes::integer[],
           t.prefix || (c.base + t.i)::text || t.suffix
    FROM t, c),
ch AS (
    INSERT INTO report_changes (cluster_id, rv, resource, namespace, name, uid, type, labels)
    SELECT $1, c.base + t.i, t.resource, t.namespace, t.name, t.uid, 'ADDED', t.labels::jsonb FROM t, c),
n AS (SELECT pg_notify($10, (c.base + $9)::text) AS sent FROM c)
SELECT c.base FROM c, n";

/// [`BATCH_SQL`], or with findings indexing on, [`BATCH_SQL`] that also inserts the findings
/// (arrays from `$12`, see [`super::findings::write`]).
pub(super) fn batch_sql(findings: bool) -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    match findings {
        false => BATCH_SQL,
        true => SQL.get_or_init(|| with_findings(BATCH_SQL, &[insert(12, "t AS k", false)])),
    }
}

/// [`CREATE_SQL`], or with findings indexing on, [`CREATE_SQL`] that also inserts the findings
/// (arrays from `$11`).
pub(super) fn create_sql(findings: bool) -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    match findings {
        false => CREATE_SQL,
        true => SQL.get_or_init(|| with_findings(CREATE_SQL, &[insert(11, ONE_KEY, false)])),
    }
}

/// One create waiting to be written; it is answered with its RV.
pub(super) struct NewObject {
    /// Resource plural.
    pub resource: String,
    /// Namespace ("" for cluster-scoped kinds).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// Labels as a JSON object text.
    pub labels: String,
    /// The label hashes as an array literal (see [`super::labels`]).
    pub label_hashes: String,
    /// The body split around its RV.
    pub body: Arc<SplitBody>,
    /// Its findings (none when its kind is not indexed).
    pub findings: SetRow,
}

/// The combining task's writer of creates.
pub(super) struct Creates(pub Target);

impl Combine for Creates {
    type Write = NewObject;
    type Answer = u64;
    const MAX_BATCH: usize = MAX_BATCH;

    async fn write(&self, batch: Vec<Pending<NewObject, u64>>, combined: &CombinedWrites) {
        let target = &self.0;
        let client = match target.pool.get().await {
            Ok(client) => client,
            Err(e) => return fail_all(batch, &pool_error(e)),
        };
        if batch.len() > 1 {
            match write_together(target, &client, &batch).await {
                Ok(base) => {
                    target.committed.committed(base + batch.len() as u64);
                    combined.add(batch.len() as u64);
                    for (i, pending) in batch.into_iter().enumerate() {
                        pending.answer(Ok(block_rv(base, i)));
                    }
                    return;
                }
                // Some name is taken: let each create find out on its own.
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
                Err(e) => return fail_all(batch, &db_error(e)),
            }
        }
        for pending in batch {
            let result = write_one(target, &client, &pending.write).await;
            if let Ok(rv) = result {
                target.committed.committed(rv);
            }
            pending.answer(result);
        }
    }
}

/// Writes a batch with [`BATCH_SQL`]; returns the RV before its block.
async fn write_together(
    target: &Target,
    client: &deadpool_postgres::Object,
    batch: &[Pending<NewObject, u64>],
) -> Result<u64, tokio_postgres::Error> {
    let column = |f: fn(&NewObject) -> &str| -> Vec<&str> { batch.iter().map(|p| f(&p.write)).collect() };
    let (resources, namespaces, names) =
        (column(|p| &p.resource), column(|p| &p.namespace), column(|p| &p.name));
    let (uids, labels) = (column(|p| &p.uid), column(|p| &p.labels));
    let label_hashes = column(|p| &p.label_hashes);
    let (prefixes, suffixes) = (column(|p| &p.body.prefix), column(|p| &p.body.suffix));
    let count = batch.len() as i64;
    let channel: &str = &target.channel;
    let mut findings = FindingArrays::default();
    for (i, pending) in batch.iter().enumerate() {
        findings.push(i + 1, &pending.write.findings);
    }
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![
        &target.cluster,
        &resources,
        &namespaces,
        &names,
        &uids,
        &labels,
        &prefixes,
        &suffixes,
        &count,
        &channel,
        &label_hashes,
    ];
    let on = batch.iter().any(|p| target.findings.indexes(&p.write.resource));
    if on {
        params.extend(findings.params());
    }
    let mut retry = Retry::default();
    loop {
        if let Some(done) = retry.settle(take_block(client, batch_sql(on), &params).await) {
            return done;
        }
    }
}

/// Writes one create with [`CREATE_SQL`]; a taken name is AlreadyExists.
async fn write_one(
    target: &Target,
    client: &deadpool_postgres::Object,
    create: &NewObject,
) -> StoreResult<u64> {
    let channel: &str = &target.channel;
    let mut findings = FindingArrays::default();
    findings.push(1, &create.findings);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![
        &target.cluster,
        &create.resource,
        &create.namespace,
        &create.name,
        &create.uid,
        &create.labels,
        &create.body.prefix,
        &create.body.suffix,
        &channel,
        &create.label_hashes,
    ];
    let on = target.findings.indexes(&create.resource);
    if on {
        params.extend(findings.params());
    }
    let stmt = client.prepare_cached(create_sql(on)).await.map_err(db_error)?;
    let mut retry = Retry::default();
    loop {
        match retry.settle(client.query_one(&stmt, &params).await) {
            None => continue,
            Some(Ok(row)) => return Ok(row.get::<_, i64>(0) as u64),
            Some(Err(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                return Err(StoreError::AlreadyExists)
            }
            Some(Err(e)) => return Err(db_error(e)),
        }
    }
}
