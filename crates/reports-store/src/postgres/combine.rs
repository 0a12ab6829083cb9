//! Write combining, as creates and updates share it: writes queue for one task per store that
//! takes everything waiting (up to a batch's maximum) and writes it with one commit. Nothing
//! waits on purpose: a lone write goes out at once, and batches form only while the previous one
//! is committing, which is exactly when waiting was unavoidable anyway.
//!
//! Every write takes the cluster's counter row and holds it until its commit is flushed (that is
//! what keeps RVs in commit order), so concurrent writes commit one at a time and PostgreSQL
//! cannot group their commits; combining does it here instead.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use crate::{
    counter::CombinedWrites,
    error::{StoreError, StoreResult},
};

/// Writes waiting for a combining task before callers wait for room.
const QUEUE: usize = 1024;

/// One write waiting in a combiner's queue, with where its answer goes.
pub(super) struct Pending<W, A> {
    /// The write.
    pub write: W,
    reply: oneshot::Sender<StoreResult<A>>,
}

impl<W, A> Pending<W, A> {
    /// Answers the write (its caller may have gone; then nobody hears it).
    pub fn answer(self, result: StoreResult<A>) {
        let _ = self.reply.send(result);
    }
}

/// Answers every write of `batch` with `error`.
pub(super) fn fail_all<W, A>(batch: Vec<Pending<W, A>>, error: &StoreError) {
    for pending in batch {
        pending.answer(Err(error.clone()));
    }
}

/// How a combining task writes a batch.
pub(super) trait Combine: Send + Sync + 'static {
    /// One write.
    type Write: Send + 'static;
    /// What a write is answered with.
    type Answer: Send + 'static;
    /// Most writes in one batch.
    const MAX_BATCH: usize;

    /// Writes `batch` and answers every write in it; `combined` counts the writes that shared a
    /// commit with others.
    fn write(
        &self,
        batch: Vec<Pending<Self::Write, Self::Answer>>,
        combined: &CombinedWrites,
    ) -> impl Future<Output = ()> + Send;
}

/// The queue in front of one combining task. Dropping it (with the store) ends the task once
/// the queue is empty.
pub(super) struct Combiner<C: Combine> {
    sender: mpsc::Sender<Pending<C::Write, C::Answer>>,
    #[cfg(feature = "testing")]
    combined: CombinedWrites,
}

impl<C: Combine> Combiner<C> {
    /// Starts the combining task of `writer`.
    pub fn start(writer: C) -> Self {
        let (sender, mut queue) = mpsc::channel(QUEUE);
        let combined = CombinedWrites::default();
        let counted = combined.clone();
        tokio::spawn(async move {
            while let Some(batch) = next_batch(&mut queue, C::MAX_BATCH).await {
                writer.write(batch, &counted).await;
            }
        });
        Self {
            sender,
            #[cfg(feature = "testing")]
            combined,
        }
    }

    /// Queues one write (waiting for room when the queue is full) and waits for its answer.
    pub async fn submit(&self, write: C::Write) -> StoreResult<C::Answer> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Pending { write, reply })
            .await
            .map_err(|_| StoreError::unavailable("the store is shutting down"))?;
        answer.await.map_err(|_| StoreError::backend("the write combiner stopped"))?
    }

    /// How many writes so far shared a commit with others.
    #[cfg(feature = "testing")]
    pub fn combined(&self) -> u64 {
        self.combined.get()
    }
}

/// Waits for one queued item, then takes whatever else is already waiting, up to `max` in all
/// (nothing waits on purpose). None when the queue is closed and empty.
async fn next_batch<T>(queue: &mut mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let mut batch = vec![queue.recv().await?];
    while batch.len() < max {
        match queue.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    Some(batch)
}
