//! Group commit on the one writer connection.
//!
//! SQLite allows one writer at a time, so the store keeps exactly one writer connection behind a
//! mutex: that lock is what puts RV assignment in commit order. Each write queues its work and
//! starts a blocking task; the task that gets the writer runs every queued write in one
//! transaction, each inside its own savepoint (a refused or failed write rolls back to its
//! savepoint, taking back its RV and its change-log rows, and the others carry on), commits
//! once, announces the newest RV once, and only then answers each write: an acknowledged write
//! is always committed, and a failed commit fails every write of its batch.
//!
//! Writes of every type wait in one queue as [`Job`]s; each keeps its own typed reply channel
//! and sends its own answer, so nothing is type-erased on the way back.

use std::{
    cell::RefCell,
    sync::{Arc, Mutex, TryLockError},
};

use rusqlite::{Connection, Transaction};
use tokio::sync::oneshot;

use super::{errors::sqlite_error, recent::RecentChanges};
use crate::{
    commits::CommitSignal,
    counter::CombinedWrites,
    error::{StoreError, StoreResult},
    model::Change,
};

/// A write transaction plus the changes it appended, handed to the recent-changes window after
/// commit (so the watch feed need not read back what was just written).
pub(super) struct WriteTx<'c> {
    tx: Transaction<'c>,
    appended: RefCell<Vec<Change>>,
}

impl<'c> std::ops::Deref for WriteTx<'c> {
    type Target = Transaction<'c>;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl WriteTx<'_> {
    /// Records a change this transaction appended to the log.
    pub fn appended(&self, change: Change) {
        self.appended.borrow_mut().push(change);
    }
}

/// A write waiting for the writer connection.
trait Job: Send {
    /// Runs the write in `tx` and keeps its answer; an error means the write failed and its
    /// savepoint is rolled back.
    fn run(&mut self, tx: &WriteTx<'_>) -> StoreResult<()>;

    /// Sends the answer once the transaction's fate is known: the kept answer if `outcome` is
    /// Ok (committed), else `outcome`'s error.
    fn answer(self: Box<Self>, outcome: StoreResult<()>);
}

/// A [`Job`] whose work answers a `T`.
struct TypedJob<T, F> {
    work: Option<F>,
    kept: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send,
    F: FnOnce(&WriteTx<'_>) -> StoreResult<T> + Send,
{
    fn run(&mut self, tx: &WriteTx<'_>) -> StoreResult<()> {
        let work = self.work.take().ok_or_else(|| StoreError::backend("a write ran twice"))?;
        let result = work(tx);
        let outcome = result.as_ref().map(|_| ()).map_err(StoreError::clone);
        self.kept = Some(result);
        outcome
    }

    fn answer(self: Box<Self>, outcome: StoreResult<()>) {
        let answer = match (outcome, self.kept) {
            (Ok(()), Some(kept)) => kept,
            (Ok(()), None) => Err(StoreError::backend("a write was answered without running")),
            (Err(e), _) => Err(e),
        };
        let _ = self.reply.send(answer);
    }
}

/// The writer connection and the queue of writes waiting for it.
#[derive(Clone)]
pub(super) struct GroupCommit {
    shared: Arc<Shared>,
}

struct Shared {
    /// The only connection that writes. Holding its lock for a whole transaction serializes
    /// writers, so RVs are assigned in commit order.
    writer: Mutex<Connection>,
    /// Writes waiting for the writer; whoever holds the writer runs them all in one transaction.
    pending: Mutex<Vec<Box<dyn Job>>>,
    /// Where commits are announced.
    committed: Arc<CommitSignal>,
    /// The newest changes; filled under the writer lock, so it never has a hole.
    recent: Arc<RecentChanges>,
    /// Writes that shared their transaction with at least one other.
    grouped: CombinedWrites,
}

impl GroupCommit {
    /// Group commit on `writer`, announcing commits on `committed` and recording them in `recent`.
    pub fn new(writer: Connection, committed: Arc<CommitSignal>, recent: Arc<RecentChanges>) -> Self {
        let shared = Shared {
            writer: Mutex::new(writer),
            pending: Mutex::new(Vec::new()),
            committed,
            recent,
            grouped: CombinedWrites::default(),
        };
        Self { shared: Arc::new(shared) }
    }

    /// Runs `work` in a write transaction and answers once that transaction has committed.
    /// The write joins the queue of waiting writes; the blocking task that gets the writer lock
    /// runs them all in one transaction, each inside its own savepoint, so one write's error
    /// undoes only that write.
    pub async fn write<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTx<'_>) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(TypedJob { work: Some(work), kept: None, reply });
        self.shared.pending.lock().map_err(|_| StoreError::backend("write queue poisoned"))?.push(job);
        let shared = self.shared.clone();
        // Not awaited: the answer comes from whichever task runs this write, and this task
        // may find another one already running writes and leave at once.
        drop(tokio::task::spawn_blocking(move || shared.run_pending()));
        answer.await.map_err(|_| StoreError::backend("the write was abandoned"))?
    }

    /// How many writes shared their transaction with at least one other.
    #[cfg(feature = "testing")]
    pub fn grouped(&self) -> u64 {
        self.shared.grouped.get()
    }

    /// Runs `work` on the writer connection between two write transactions (maintenance that
    /// must not compete with the writer for SQLite's write lock, such as resetting the WAL),
    /// then runs the writes that queued meanwhile. Blocking: call it from a plain thread.
    pub fn between_writes<T>(&self, work: impl FnOnce(&mut Connection) -> T) -> Option<T> {
        let mut conn = self.shared.writer.lock().ok()?;
        let result = work(&mut conn);
        // Writes that arrived while the writer was held found it busy and left their jobs
        // queued: they are this holder's to run.
        self.shared.run_held(conn);
        Some(result)
    }
}

impl Shared {
    /// Runs waiting writes, a transaction per round, for as long as writes keep arriving. Only
    /// one task runs writes at a time: a task that finds the writer busy leaves at once, because
    /// the running one looks at the queue again before it lets go of the writer, and lets go
    /// while holding the queue, so a write queued before that look is run by it and one queued
    /// after finds the writer free.
    fn run_pending(&self) {
        let conn = match self.writer.try_lock() {
            Ok(conn) => conn,
            Err(TryLockError::WouldBlock) => return,
            Err(TryLockError::Poisoned(_)) => {
                let jobs = self.pending.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
                answer_all(jobs, &StoreError::backend("writer lock poisoned"));
                return;
            }
        };
        self.run_held(conn);
    }

    /// Runs waiting writes on the held writer until the queue is empty (see [`Self::run_pending`]).
    fn run_held(&self, mut conn: std::sync::MutexGuard<'_, Connection>) {
        loop {
            let Ok(mut waiting) = self.pending.lock() else { return };
            if waiting.is_empty() {
                drop(conn);
                drop(waiting);
                return;
            }
            let jobs = std::mem::take(&mut *waiting);
            drop(waiting);
            if jobs.len() > 1 {
                self.grouped.add(jobs.len() as u64);
            }
            self.run_batch(&mut conn, jobs);
        }
    }

    /// Runs writes in one transaction, each in its own savepoint, and answers them after the
    /// commit, so an acknowledged write is always durable; a failed commit fails every write of
    /// the batch.
    fn run_batch(&self, conn: &mut Connection, jobs: Vec<Box<dyn Job>>) {
        let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
            Ok(tx) => WriteTx { tx, appended: Default::default() },
            Err(e) => return answer_all(jobs, &sqlite_error(e)),
        };
        let mut done = Vec::with_capacity(jobs.len());
        let mut jobs = jobs.into_iter();
        while let Some(mut job) = jobs.next() {
            match run_in_savepoint(&tx, job.as_mut()) {
                Ok(Ok(())) => done.push(job),
                Ok(Err(e)) => job.answer(Err(e)),
                Err(broken) => {
                    // Dropping the transaction rolls everything back; nobody's write happened.
                    drop(tx);
                    let unanswered = done.into_iter().chain(std::iter::once(job)).chain(jobs);
                    return answer_all(unanswered, &broken);
                }
            }
        }
        let finished = tx
            .prepare_cached("SELECT rv FROM counter")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
            .map_err(sqlite_error)
            .and_then(|rv| {
                let WriteTx { tx, appended } = tx;
                tx.commit().map_err(sqlite_error)?;
                Ok((rv as u64, appended.into_inner()))
            });
        match finished {
            Ok((rv, appended)) => {
                // Before the commit is announced, so whoever hears of it finds it here.
                self.recent.record(appended);
                // A batch of refused writes took no RV: nothing to announce. Still under the
                // writer lock, so announced RVs are in commit order.
                if rv > self.committed.newest() {
                    self.committed.committed(rv);
                }
                for job in done {
                    job.answer(Ok(()));
                }
            }
            Err(error) => answer_all(done, &error),
        }
    }
}

/// Answers every job with `error`.
fn answer_all(jobs: impl IntoIterator<Item = Box<dyn Job>>, error: &StoreError) {
    for job in jobs {
        job.answer(Err(error.clone()));
    }
}

/// Runs one write of a batch inside a savepoint: on error, only its own statements and the
/// changes it appended are undone. The outer error means the transaction itself is broken (a
/// savepoint could not be set, released or rolled back), and the whole batch must be abandoned.
fn run_in_savepoint(tx: &WriteTx<'_>, job: &mut dyn Job) -> StoreResult<StoreResult<()>> {
    tx.execute_batch("SAVEPOINT write").map_err(sqlite_error)?;
    let appended_before = tx.appended.borrow().len();
    // A panicking write must not take the batch, or the writer, down with it.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run(tx)))
        .unwrap_or_else(|_| Err(StoreError::backend("the write panicked")));
    if outcome.is_ok() && tx.execute_batch("RELEASE write").is_ok() {
        return Ok(outcome);
    }
    tx.appended.borrow_mut().truncate(appended_before);
    tx.execute_batch("ROLLBACK TO write; RELEASE write").map_err(sqlite_error)?;
    Ok(match outcome {
        Ok(()) => Err(StoreError::backend("releasing the write's savepoint failed")),
        Err(e) => Err(e),
    })
}
