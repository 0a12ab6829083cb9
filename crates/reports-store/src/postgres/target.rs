//! What every write and read of a store needs: the pool, the cluster its rows belong to, the
//! NOTIFY channel of that cluster and the signal its commits are announced on; and how work runs
//! on a pooled connection.

use std::{future::Future, sync::Arc};

use deadpool_postgres::Pool;
use uuid::Uuid;

use super::errors::pool_error;
use crate::{
    commits::CommitSignal,
    error::{StoreError, StoreResult},
    findings::FindingsIndex,
};

/// The database and cluster a store works on.
#[derive(Clone)]
pub(super) struct Target {
    /// Pooled connections for requests; each operation takes one for its duration.
    pub pool: Pool,
    /// The cluster every row read or written belongs to.
    pub cluster: Uuid,
    /// The NOTIFY channel of this cluster (`reports_<uuid hex>`).
    pub channel: Arc<str>,
    /// Newest committed RV known here (own commits and notifications); wakes the watch feed.
    pub committed: Arc<CommitSignal>,
    /// Which report kinds get findings rows. Only those kinds have any (a kind that leaves the
    /// set loses its rows at start-up), so a statement writes or deletes findings only when it
    /// writes one of them, and those of the others (admission reports above all) leave the
    /// findings table alone.
    pub findings: Arc<FindingsIndex>,
}

impl Target {
    /// Runs `work` with a pooled connection in its own task, so a request that is abandoned
    /// halfway never returns a connection to the pool in the middle of a transaction.
    pub async fn run<T, F, Fut>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: Future<Output = StoreResult<T>> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let client = pool.get().await.map_err(pool_error)?;
            work(client).await
        })
        .await
        .map_err(|e| StoreError::backend_caused("a store task failed", e))?
    }
}
