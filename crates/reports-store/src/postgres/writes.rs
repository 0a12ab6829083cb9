//! The write transaction every update and delete runs in: begin, do the work, commit, retried
//! whole when it lost a deadlock or serialization race, and the commit announced before the
//! write is answered.

use std::sync::Arc;

use deadpool_postgres::Transaction;

use super::{errors::db_error, retry::Retry, target::Target};
use crate::{error::StoreResult, model::StoredObject};

/// Work done inside one write transaction.
#[async_trait::async_trait]
pub(super) trait TxWork: Send + Sync + 'static {
    /// What the work answers once committed.
    type Output: Written + Send + 'static;

    /// Does the work in `tx`. The outer error is the database's (retried when it lost a race);
    /// the inner one is the write's own answer (NotFound, Conflict), which rolls back.
    async fn run(
        &self,
        tx: &Transaction<'_>,
        target: &Target,
    ) -> Result<StoreResult<Self::Output>, tokio_postgres::Error>;
}

/// What a committed write tells the commit signal.
pub(super) trait Written {
    /// The newest RV the write took, if it took any.
    fn newest_rv(&self) -> Option<u64>;
}

impl Written for StoredObject {
    fn newest_rv(&self) -> Option<u64> {
        Some(self.rv)
    }
}

impl Written for Vec<Option<StoredObject>> {
    fn newest_rv(&self) -> Option<u64> {
        self.iter().flatten().map(|object| object.rv).max()
    }
}

/// Runs `work` in one transaction on a pooled connection, retrying it whole on deadlock or
/// serialization failure, and announces its newest RV once committed.
pub(super) async fn write_transaction<W: TxWork>(target: &Target, work: Arc<W>) -> StoreResult<W::Output> {
    let scope = target.clone();
    let output = target
        .run(move |mut client| async move {
            let mut retry = Retry::default();
            loop {
                if let Some(done) = retry.settle(attempt(&mut client, work.as_ref(), &scope).await) {
                    break done;
                }
            }
            .map_err(db_error)?
        })
        .await?;
    if let Some(rv) = output.newest_rv() {
        target.committed.committed(rv);
    }
    Ok(output)
}

/// One attempt: begin, run `work`, and commit, or roll back when the work refused or failed.
async fn attempt<W: TxWork>(
    client: &mut deadpool_postgres::Object,
    work: &W,
    target: &Target,
) -> Result<StoreResult<W::Output>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    match work.run(&tx, target).await {
        Ok(Ok(out)) => {
            tx.commit().await?;
            Ok(Ok(out))
        }
        Ok(Err(refused)) => {
            tx.rollback().await?;
            Ok(Err(refused))
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}
