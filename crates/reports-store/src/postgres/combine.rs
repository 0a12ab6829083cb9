//! What the create and update combiners share: a bounded queue in front of one writing task,
//! and how that task takes its next batch.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use tokio::sync::mpsc;

use crate::{StoreError, StoreResult};

/// Writes waiting for a combining task before callers wait for room.
const QUEUE: usize = 1024;

/// The queue in front of one combining task.
pub(super) struct Queue<T> {
    /// Closing it (dropping the store) ends the task once the queue is empty.
    sender: mpsc::Sender<T>,
    /// How many writes the task wrote together with others (observability, tests).
    combined: Arc<AtomicU64>,
}

impl<T: Send + 'static> Queue<T> {
    /// Starts `task` on the receiving end of a new queue; `combined` is the counter the task
    /// adds to.
    pub fn start<F, Fut>(combined: Arc<AtomicU64>, task: F) -> Self
    where
        F: FnOnce(mpsc::Receiver<T>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(task(receiver));
        Self { sender, combined }
    }

    /// How many writes so far were written together with others.
    pub fn combined(&self) -> u64 {
        self.combined.load(Ordering::Relaxed)
    }

    /// Queues one write (waiting for room when the queue is full).
    pub async fn push(&self, item: T) -> StoreResult<()> {
        self.sender.send(item).await.map_err(|_| StoreError::Unavailable("the store is shutting down".into()))
    }
}

/// Waits for one queued item, then takes whatever else is already waiting, up to `max` in all
/// (nothing waits on purpose). None when the queue is closed and empty.
pub(super) async fn next_batch<T>(queue: &mut mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let mut batch = vec![queue.recv().await?];
    while batch.len() < max {
        match queue.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    Some(batch)
}
