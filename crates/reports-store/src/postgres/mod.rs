//! The production store: PostgreSQL, shared by any number of server replicas.
//!
//! # Tables
//!
//! - `report_objects`: the current state, one row per object, keyed by
//!   `(cluster_id, resource, namespace, name)`. The JSON is kept as `text` exactly as served
//!   (`jsonb` would reorder keys and cost a conversion on every read), compressed (pglz) and out
//!   of line; labels are there only as 4-byte hashes that label selectors are pushed down to, see
//!   [`labels`].
//! - `report_changes`: the change log, keyed by `(cluster_id, rv)`, and indexed by key. To keep a
//!   flood of creates from writing every report twice, a change row holds no copy of its own
//!   version (`body` is NULL but in rows written before `prev_body` existed); an update or delete
//!   keeps the body it replaced in its own change row (`prev_body`, copied inside the database).
//!   A log read finds a change's body in the object row or the key's next change, so it always
//!   yields the object as it was at that RV; lists at a past RV use the same rows
//!   (`crate::snapshot`).
//! - `report_counters`: one row per cluster with the newest RV and the compacted RV.
//! - `clusters`: `(id, name)`, the same shape as upstream's table of that name.
//!
//! Every row carries a cluster id, so one database can hold several clusters (as upstream does);
//! RVs are per cluster.
//!
//! # resourceVersion in commit order, across replicas
//!
//! Every write increments its cluster's counter row inside the writing transaction. The row lock
//! is held until commit, and PostgreSQL makes a transaction visible before it releases its locks,
//! so the transaction that takes RV N+1 can only start its increment after the one holding N is
//! visible. Hence RVs are unique, increase in commit order, and whoever sees N sees everything
//! below N: a watcher reading `rv > X` can never skip a late commit, on any replica. The lock is
//! held for one statement and the commit: an update first locks its object row (`FOR UPDATE`) and
//! checks the expected RV, and only then takes the counter in the statement that writes.
//!
//! The object's JSON carries its RV, which is known only inside that statement, so the body is
//! sent as two halves and joined around the counter value by PostgreSQL (`$prefix || rv ||
//! $suffix`): one round trip, no placeholder scanning on the server.
//!
//! # Waking watchers on every replica
//!
//! Each write also sends `NOTIFY` (delivered on commit) on a channel named after the cluster. Each
//! store keeps one dedicated listening connection and publishes the newest RV it hears of (and of
//! its own commits) to [`Store::subscribe`]; the watch feed then reads the log. A reconnecting
//! listener re-reads the counter after `LISTEN`, and a slow poll covers anything else, so a lost
//! notification delays an event but never loses it.
//!
//! # Failure
//!
//! Every operation runs in its own task, so a request that is abandoned halfway (a client hanging
//! up) never returns a connection to the pool in the middle of a transaction. Connection
//! failures, pool exhaustion and timeouts are [`StoreError::Unavailable`] (503 with Retry-After);
//! the pool replaces broken connections by itself, so the server recovers when the database is
//! back. No connection string or password is ever put in an error.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

pub use self::settings::{PgSettings, SslMode};
use self::{
    body::SplitBody,
    combine::Combiner,
    creates::{Creates, NewObject},
    deletes::DeleteSet,
    errors::pool_error,
    row_write::{RowChange, RowWrite},
    target::Target,
    updates::Updates,
    writes::write_transaction,
};
pub use self::{changes::COMPACTION_SQL, creates::CREATE_SQL};
use crate::{
    commits::CommitSignal,
    error::{StoreError, StoreResult},
    model::{labels_json, meta_text, Change, FindingStream, ListQuery, ListStream, Retention, StoredObject},
    snapshot::Restampable,
    store::Store,
};
use reports_core::findings::query::{CountQuery, FindingCount, FindingQuery};

mod blocks;
mod body;
mod changes;
mod combine;
mod connect;
mod creates;
mod deletes;
mod errors;
mod findings;
pub mod labels;
mod list;
mod listen;
mod reads;
mod retry;
mod row_write;
mod schema;
mod settings;
mod target;
mod tls;
mod updates;
mod upstream;
mod writes;

/// The PostgreSQL-backed [`Store`].
pub struct PgStore {
    /// The pool, the cluster, its NOTIFY channel and the commit signal.
    target: Target,
    /// Creates go through one combining task that writes whatever is waiting in one statement.
    creates: Combiner<Creates>,
    /// Updates go through one combining task that writes whatever is waiting in one transaction.
    updates: Combiner<Updates>,
    /// Dropped with the store, which ends the listener task.
    _stop_listener: watch::Sender<()>,
}

impl PgStore {
    /// Connects, migrates (under an advisory lock), adopts an upstream database if it finds one,
    /// and starts listening for other replicas' commits.
    pub async fn connect(url: &str, settings: &PgSettings) -> StoreResult<Self> {
        let (pool, config, tls) = connect::pool(url, settings)?;
        let cluster = {
            let mut client = connect::first_connection(&pool, settings.startup_timeout).await?;
            schema::setup(&mut client, settings).await?
        };
        let rv = reads::newest_rv(&pool.get().await.map_err(pool_error)?, cluster).await?;
        // Both forms when findings are on (creates of kinds not indexed use the plain one); when
        // off, the second pair is the first again, found in each connection's cache.
        let on = settings.findings.is_on();
        let statements = [
            creates::batch_sql(on),
            creates::create_sql(on),
            creates::batch_sql(false),
            creates::create_sql(false),
            row_write::LOCK_SQL,
        ];
        connect::fill_pool(&pool, &statements).await;
        let target = Target {
            pool,
            cluster,
            channel: format!("reports_{}", cluster.simple()).into(),
            committed: Arc::new(CommitSignal::new(rv)),
            findings: Arc::new(settings.findings.clone()),
        };
        let (stop, stopped) = watch::channel(());
        tokio::spawn(listen::listen(config, tls, target.clone(), settings.safety_poll, stopped));
        Ok(Self {
            creates: Combiner::start(Creates(target.clone())),
            updates: Combiner::start(Updates(target.clone())),
            target,
            _stop_listener: stop,
        })
    }

    /// The cluster this store serves.
    pub fn cluster_id(&self) -> Uuid {
        self.target.cluster
    }

    /// How many creates so far were written in one statement together with others.
    #[cfg(feature = "testing")]
    pub fn combined_creates(&self) -> u64 {
        self.creates.combined()
    }

    /// How many updates so far were written in one transaction together with others.
    #[cfg(feature = "testing")]
    pub fn combined_updates(&self) -> u64 {
        self.updates.combined()
    }

    /// Connections currently open in the request pool (idle or in use).
    #[cfg(feature = "testing")]
    pub fn open_connections(&self) -> usize {
        self.target.pool.status().size
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn get(&self, resource: &str, namespace: &str, name: &str) -> StoreResult<Option<StoredObject>> {
        let (cluster, key) =
            (self.target.cluster, (resource.to_string(), namespace.to_string(), name.to_string()));
        self.target
            .run(move |client| async move { reads::object(&client, cluster, (&key.0, &key.1, &key.2)).await })
            .await
    }

    async fn create(&self, resource: &str, mut object: Value) -> StoreResult<StoredObject> {
        let namespace = meta_text(&object, "namespace").to_string();
        let name = meta_text(&object, "name").to_string();
        let uid = meta_text(&object, "uid").to_string();
        let findings = findings::write::SetRow::new(&self.target.findings.rows(resource, &object));
        let body = Arc::new(SplitBody::new(&mut object)?);
        let create = NewObject {
            resource: resource.to_string(),
            namespace: namespace.clone(),
            name: name.clone(),
            uid: uid.clone(),
            labels: labels_json(&object),
            label_hashes: labels::label_hashes_literal(&object),
            body: body.clone(),
            findings,
        };
        let rv = self.creates.submit(create).await?;
        Ok(body.stored(namespace, name, uid, rv))
    }

    async fn update(&self, resource: &str, mut object: Value, expected_rv: u64) -> StoreResult<StoredObject> {
        let update = RowWrite {
            resource: resource.to_string(),
            namespace: meta_text(&object, "namespace").to_string(),
            name: meta_text(&object, "name").to_string(),
            expected_rv,
            change: RowChange::Update {
                uid: meta_text(&object, "uid").to_string(),
                labels: labels_json(&object),
                hashes: labels::label_hashes(&object),
                findings: findings::write::SetRow::new(&self.target.findings.rows(resource, &object)),
                body: SplitBody::new(&mut object)?,
            },
        };
        self.updates.submit(Arc::new(update)).await
    }

    async fn delete(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        expected_rv: u64,
    ) -> StoreResult<StoredObject> {
        let delete = RowWrite {
            resource: resource.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            expected_rv,
            change: RowChange::Delete,
        };
        write_transaction(&self.target, Arc::new(delete)).await
    }

    async fn delete_batch(
        &self,
        resource: &str,
        read: Vec<StoredObject>,
    ) -> StoreResult<Vec<Option<StoredObject>>> {
        // Each body's RV is found here, before the transaction (see `Restampable`).
        let read = read.into_iter().map(Restampable::new).collect::<StoreResult<Vec<_>>>()?;
        write_transaction(&self.target, Arc::new(DeleteSet { resource: resource.to_string(), read })).await
    }

    async fn list(&self, query: ListQuery) -> StoreResult<ListStream> {
        let (snapshot_tx, snapshot_rx) = oneshot::channel();
        let (chunk_tx, chunk_rx) = mpsc::channel(2);
        let (pool, cluster) = (self.target.pool.clone(), self.target.cluster);
        tokio::spawn(async move {
            match pool.get().await {
                Ok(client) => list::stream_list(client, cluster, query, snapshot_tx, chunk_tx).await,
                Err(e) => {
                    let _ = snapshot_tx.send(Err(pool_error(e)));
                }
            }
        });
        let snapshot_rv = snapshot_rx.await.map_err(|_| StoreError::backend("list reader ended early"))??;
        Ok(ListStream { snapshot_rv, chunks: chunk_rx })
    }

    async fn current_rv(&self) -> StoreResult<u64> {
        let cluster = self.target.cluster;
        self.target.run(move |client| async move { reads::newest_rv(&client, cluster).await }).await
    }

    async fn compacted_rv(&self) -> StoreResult<u64> {
        let cluster = self.target.cluster;
        self.target.run(move |client| async move { reads::compacted_rv(&client, cluster).await }).await
    }

    async fn count_by_resource(&self) -> StoreResult<Vec<(String, u64)>> {
        let cluster = self.target.cluster;
        self.target.run(move |client| async move { reads::count_by_resource(&client, cluster).await }).await
    }

    async fn changed_since(&self, resource: &str, rv: u64) -> StoreResult<bool> {
        let (cluster, resource) = (self.target.cluster, resource.to_string());
        self.target
            .run(move |client| async move { changes::changed_since(&client, cluster, &resource, rv).await })
            .await
    }

    async fn changes_since(
        &self,
        resource: Option<&str>,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<Change>> {
        let (cluster, resource) = (self.target.cluster, resource.map(str::to_string));
        self.target
            .run(move |client| async move {
                changes::changes_since(&client, cluster, resource.as_deref(), after, limit).await
            })
            .await
    }

    async fn compact_log(&self, keep: Retention) -> StoreResult<u64> {
        let cluster = self.target.cluster;
        self.target
            .run(move |mut client| async move { changes::compact(&mut client, cluster, keep).await })
            .await
    }

    fn commits(&self) -> &CommitSignal {
        &self.target.committed
    }

    async fn findings(&self, query: FindingQuery) -> StoreResult<FindingStream> {
        let (snapshot_tx, snapshot_rx) = oneshot::channel();
        let (chunk_tx, chunk_rx) = mpsc::channel(2);
        let (pool, cluster) = (self.target.pool.clone(), self.target.cluster);
        tokio::spawn(async move {
            match pool.get().await {
                Ok(client) => {
                    findings::query::stream_findings(client, cluster, query, snapshot_tx, chunk_tx).await
                }
                Err(e) => {
                    let _ = snapshot_tx.send(Err(pool_error(e)));
                }
            }
        });
        let snapshot_rv =
            snapshot_rx.await.map_err(|_| StoreError::backend("findings reader ended early"))??;
        Ok(FindingStream { snapshot_rv, chunks: chunk_rx })
    }

    async fn count_findings(&self, query: CountQuery) -> StoreResult<(u64, Vec<FindingCount>)> {
        let cluster = self.target.cluster;
        self.target
            .run(move |client| async move { findings::query::count_findings(client, cluster, query).await })
            .await
    }

    async fn namespaces_of(&self, resource: &str) -> StoreResult<Vec<String>> {
        let (cluster, resource) = (self.target.cluster, resource.to_string());
        self.target
            .run(move |client| async move { findings::query::namespaces_of(&client, cluster, &resource).await })
            .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.target
            .run(|client| async move {
                client.simple_query("SELECT 1").await.map(|_| ()).map_err(errors::db_error)
            })
            .await
    }
}
