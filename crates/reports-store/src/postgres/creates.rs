//! Write combining for creates.
//!
//! Every write takes the cluster's counter row and holds it until its commit is flushed (that is
//! what keeps RVs in commit order, see the store's notes), so concurrent writes commit one at a
//! time and PostgreSQL cannot group their commits. Creates are the bulk of report traffic
//! (admission floods, background scans), so they are combined here instead: requests queue for
//! one task that takes everything waiting (up to [`MAX_BATCH`]) and writes it with one statement
//! and one commit, giving the batch a block of consecutive RVs. Nothing waits on purpose: a lone
//! create goes out at once, and batches form only while the previous one is committing, which is
//! exactly when waiting was unavoidable anyway.
//!
//! A batch that hits an existing name (or names one object twice) fails as a whole on the unique
//! key, and its creates are then written one by one, so each gets its own answer
//! (AlreadyExists or success) as if it had been sent alone.

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::{
    combine::{next_batch, Queue},
    db_error, is_retryable, pool_error, SplitBody, CREATE_SQL, WRITE_ATTEMPTS,
};
use crate::{commits::CommitSignal, StoreError, StoreResult};

/// Most creates written by one statement.
const MAX_BATCH: usize = 128;

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

/// One create waiting to be written.
pub(super) struct PendingCreate {
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
    /// Where the assigned RV (or the failure) goes.
    pub reply: oneshot::Sender<StoreResult<u64>>,
}

/// The queue in front of the combining task.
pub(super) type CreateQueue = Queue<PendingCreate>;

/// What the combining task needs from the store.
pub(super) struct Combiner {
    /// Connections for the batches.
    pub pool: Pool,
    /// The cluster written to.
    pub cluster: Uuid,
    /// The NOTIFY channel.
    pub channel: Arc<str>,
    /// Where commits are published to this process's watch feed.
    pub committed: Arc<CommitSignal>,
    /// Counts creates written in a batch of more than one.
    pub combined: Arc<std::sync::atomic::AtomicU64>,
}

impl CreateQueue {
    /// Starts the combining task.
    pub fn start_creates(combiner: Combiner) -> Self {
        Queue::start(combiner.combined.clone(), |receiver| combiner.run(receiver))
    }

    /// Queues one create and waits for its RV.
    pub async fn create(
        &self,
        pending: PendingCreate,
        answer: oneshot::Receiver<StoreResult<u64>>,
    ) -> StoreResult<u64> {
        self.push(pending).await?;
        answer.await.map_err(|_| StoreError::Backend("the create combiner stopped".into()))?
    }
}

impl Combiner {
    async fn run(self, mut queue: mpsc::Receiver<PendingCreate>) {
        while let Some(batch) = next_batch(&mut queue, MAX_BATCH).await {
            self.write(batch).await;
        }
    }

    /// Writes a batch and answers every create in it.
    async fn write(&self, batch: Vec<PendingCreate>) {
        let client = match self.pool.get().await {
            Ok(client) => client,
            Err(e) => {
                let error = pool_error(e);
                for pending in batch {
                    let _ = pending.reply.send(Err(error.clone()));
                }
                return;
            }
        };
        if batch.len() > 1 {
            match self.write_together(&client, &batch).await {
                Ok(base) => {
                    self.committed.committed(base + batch.len() as u64);
                    self.combined.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    for (i, pending) in batch.into_iter().enumerate() {
                        let _ = pending.reply.send(Ok(base + i as u64 + 1));
                    }
                    return;
                }
                // Some name is taken: let each create find out on its own.
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
                Err(e) => {
                    let error = db_error(e);
                    for pending in batch {
                        let _ = pending.reply.send(Err(error.clone()));
                    }
                    return;
                }
            }
        }
        for pending in batch {
            let result = self.write_one(&client, &pending).await;
            if let Ok(rv) = result {
                self.committed.committed(rv);
            }
            let _ = pending.reply.send(result);
        }
    }

    async fn write_together(
        &self,
        client: &deadpool_postgres::Object,
        batch: &[PendingCreate],
    ) -> Result<u64, tokio_postgres::Error> {
        let column = |f: fn(&PendingCreate) -> &str| -> Vec<&str> { batch.iter().map(f).collect() };
        let (resources, namespaces, names) =
            (column(|p| &p.resource), column(|p| &p.namespace), column(|p| &p.name));
        let (uids, labels) = (column(|p| &p.uid), column(|p| &p.labels));
        let label_hashes = column(|p| &p.label_hashes);
        let (prefixes, suffixes) = (column(|p| &p.body.prefix), column(|p| &p.body.suffix));
        let count = batch.len() as i64;
        let stmt = client.prepare_cached(BATCH_SQL).await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = client
                .query_one(
                    &stmt,
                    &[
                        &self.cluster,
                        &resources,
                        &namespaces,
                        &names,
                        &uids,
                        &labels,
                        &prefixes,
                        &suffixes,
                        &count,
                        &self.channel.as_ref(),
                        &label_hashes,
                    ],
                )
                .await;
            match result {
                Ok(row) => return Ok(row.get::<_, i64>(0) as u64),
                Err(e) if is_retryable(&e) && attempt < WRITE_ATTEMPTS => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn write_one(
        &self,
        client: &deadpool_postgres::Object,
        pending: &PendingCreate,
    ) -> StoreResult<u64> {
        let stmt = client.prepare_cached(CREATE_SQL).await.map_err(db_error)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = client
                .query_one(
                    &stmt,
                    &[
                        &self.cluster,
                        &pending.resource,
                        &pending.namespace,
                        &pending.name,
                        &pending.uid,
                        &pending.labels,
                        &pending.body.prefix,
                        &pending.body.suffix,
                        &self.channel.as_ref(),
                        &pending.label_hashes,
                    ],
                )
                .await;
            match result {
                Ok(row) => return Ok(row.get::<_, i64>(0) as u64),
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    return Err(StoreError::AlreadyExists)
                }
                Err(e) if is_retryable(&e) && attempt < WRITE_ATTEMPTS => continue,
                Err(e) => return Err(db_error(e)),
            }
        }
    }
}
