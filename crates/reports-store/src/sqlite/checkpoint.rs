//! Keeping the files bounded: the WAL copied back into the database file off the write path,
//! reset when it grows, and free pages given back to the file system.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses the threshold, so every
//! thousandth write or so would wait for the copy and its fsyncs (tens of milliseconds at a few
//! MB/s of reports). Instead a thread runs a passive checkpoint on its own connection every
//! half second, which never blocks the writer or readers.
//!
//! A passive checkpoint alone does not bound the WAL under a flood: SQLite only starts the WAL
//! over from its beginning when no reader still uses it, and with reads and writes arriving
//! without pause that moment never comes (5 GB of WAL after 150,000 reports). So when the WAL
//! passes [`SqliteLimits::wal_bytes`], the thread takes the writer between two group commits
//! (queued writes wait, then run together) and runs a truncating checkpoint there, waiting at
//! most [`TRUNCATE_WAIT`] for readers; a reader that holds an old snapshot longer (a list being
//! streamed to a slow client) only postpones the reset to a later round.
//!
//! The database is in incremental auto-vacuum mode: when deletes leave more than
//! [`SqliteLimits::free_pages`] free pages, the thread gives them back in steps between group
//! commits. On a clean close the WAL is truncated and every free page given back.

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    thread::JoinHandle,
    time::Duration,
};

use rusqlite::Connection;

use super::{errors::sqlite_error, group_commit::GroupCommit, schema::open_connection};
use crate::error::{StoreError, StoreResult};

/// How often the checkpoint thread copies the WAL back into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// Longest wait of a truncating checkpoint for readers, during which writes queue.
const TRUNCATE_WAIT: Duration = Duration::from_millis(200);
/// The writer's usual wait for a lock (see `open_connection`).
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pages given back per step, so a step holds up writes for milliseconds, not seconds.
const VACUUM_STEP_PAGES: u32 = 4096;

/// When the files are trimmed.
#[derive(Debug, Clone, Copy)]
pub struct SqliteLimits {
    /// WAL size beyond which it is checkpointed and truncated.
    pub wal_bytes: u64,
    /// Free pages in the database file beyond which they are given back.
    pub free_pages: u64,
}

impl Default for SqliteLimits {
    fn default() -> Self {
        Self { wal_bytes: 64 << 20, free_pages: 2048 }
    }
}

/// The checkpoint thread; dropping it stops the thread after a last truncation and vacuum.
pub(super) struct Checkpointer {
    stop: Option<mpsc::SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the checkpoint thread for the database at `path`, written through `writes`.
pub(super) fn start_checkpointer(
    path: &Path,
    writes: GroupCommit,
    limits: SqliteLimits,
) -> StoreResult<Checkpointer> {
    let conn = open_connection(path)?;
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let (stop, stopped) = mpsc::sync_channel::<()>(0);
    let thread = std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            // Disconnected (the store was dropped) ends the loop.
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_INTERVAL) {
                if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(%error, "SQLite WAL checkpoint failed; retrying");
                }
                if std::fs::metadata(&wal).map_or(0, |m| m.len()) > limits.wal_bytes {
                    writes.between_writes(truncate_wal);
                }
                if free_pages(&conn) > limits.free_pages {
                    writes.between_writes(|writer| vacuum(writer, Some(VACUUM_STEP_PAGES)));
                }
            }
            writes.between_writes(|writer| {
                vacuum(writer, None);
                truncate_wal(writer);
            });
        })
        .map_err(|e| StoreError::backend_caused("starting the checkpoint thread", e))?;
    Ok(Checkpointer { stop: Some(stop), thread: Some(thread) })
}

/// Checkpoints the whole WAL and truncates it, waiting at most [`TRUNCATE_WAIT`] for readers.
fn truncate_wal(writer: &mut Connection) {
    let _ = writer.busy_timeout(TRUNCATE_WAIT);
    let outcome = writer.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get::<_, i64>(0));
    let _ = writer.busy_timeout(WRITER_BUSY_TIMEOUT);
    match outcome {
        Ok(0) => {}
        // Busy: a reader still uses the WAL; the next round tries again.
        Ok(_) => tracing::debug!("SQLite WAL reset postponed: a reader still uses it"),
        Err(error) => tracing::warn!(%error, "SQLite WAL truncation failed; retrying"),
    }
}

/// Gives `pages` free pages (all when None) back to the file system.
fn vacuum(writer: &mut Connection, pages: Option<u32>) {
    let statement = match pages {
        Some(pages) => format!("PRAGMA incremental_vacuum({pages})"),
        None => "PRAGMA incremental_vacuum".to_string(),
    };
    // Each step of the statement frees one page: it is stepped to the end.
    let run = writer.prepare(&statement).and_then(|mut statement| {
        let mut steps = statement.raw_query();
        while steps.next()?.is_some() {}
        Ok(())
    });
    if let Err(error) = run.map_err(sqlite_error) {
        tracing::warn!(%error, "SQLite incremental vacuum failed; retrying");
    }
}

/// Free pages in the database file.
fn free_pages(conn: &Connection) -> u64 {
    conn.query_row("PRAGMA freelist_count", [], |row| row.get::<_, i64>(0)).map_or(0, |n| n.max(0) as u64)
}
