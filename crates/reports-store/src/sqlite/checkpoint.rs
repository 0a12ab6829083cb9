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
//! holds more than [`SqliteLimits::wal_bytes`] of frames, the thread takes the writer between two
//! group commits (queued writes wait, then run together) and checkpoints the rest with RESTART
//! there, waiting at most [`RESET_WAIT`] for readers; a reader that holds an old snapshot longer
//! (a list being streamed to a slow client) only postpones the reset to a later round. The file
//! is reused from its start, not truncated: truncating a file just written waits for its pages to
//! reach the disk (under a flood of creates a truncating reset held the writer about 150 ms, a
//! restarting one 60 ms). `journal_size_limit` cuts a file that grew past the limit back at the
//! first commit after a reset, and a pause in writes lets the thread truncate it.
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
/// Longest wait of a resetting checkpoint for readers, during which writes queue.
const RESET_WAIT: Duration = Duration::from_millis(200);
/// The writer's usual wait for a lock (see `open_connection`).
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a WAL frame besides its page.
const WAL_FRAME_HEADER: u64 = 24;
/// Pages given back per step, so a step holds up writes for milliseconds, not seconds.
const VACUUM_STEP_PAGES: u32 = 4096;
/// Most bytes of WAL left to copy when a reset takes the writer (see `catch_up`).
const CATCH_UP_BYTES: u64 = 4 << 20;
/// Most passive checkpoints run to get there.
const CATCH_UP_ROUNDS: usize = 4;

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
            // A restarted WAL is reused from its start rather than truncated (truncating a file
            // just written waits for its pages to reach the disk); one that grew past the limit,
            // while a reader held it, is cut back to the limit at the first commit after.
            writes.between_writes(|writer| {
                if let Err(error) =
                    writer.execute_batch(&format!("PRAGMA journal_size_limit = {}", limits.wal_bytes))
                {
                    tracing::warn!(%error, "setting SQLite's WAL size limit failed");
                }
            });
            let frame_bytes = page_size(&conn) + WAL_FRAME_HEADER;
            let mut behind = false;
            // The WAL's frames at the previous round: the same count again, all copied, means
            // no write came for a whole round.
            let mut frames_before = None;
            // Disconnected (the store was dropped) ends the loop.
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(if behind { Duration::ZERO } else { CHECKPOINT_INTERVAL })
            {
                let (frames, copied) = passive_checkpoint(&conn);
                let idle = frames == copied && frames_before == Some(frames);
                frames_before = Some(frames);
                if idle && file_len(&wal) > limits.wal_bytes {
                    // Writes have paused and all is copied, but the file is past the limit (it
                    // grew while a reader held it, or waits for a commit to restart it): cut it
                    // back. Not while writes go on: a passive checkpoint often copies everything
                    // there was, and a file reused from its start is a little past the limit, so
                    // under a deletecollection every other round truncated, holding the writer
                    // 100-450 ms while the file's pages reached the disk.
                    writes.between_writes(|writer| checkpoint_all(writer, Reset::Truncate));
                } else if frames * frame_bytes > limits.wal_bytes {
                    catch_up(&conn, copied, frame_bytes, 2 * limits.wal_bytes);
                    writes.between_writes(|writer| checkpoint_all(writer, Reset::Restart));
                }
                let free = free_pages(&conn);
                if free > limits.free_pages {
                    writes.between_writes(|writer| vacuum(writer, Some(VACUUM_STEP_PAGES)));
                    // A mass delete frees pages faster than a step every half second gives back
                    // (the file lagged 400 MB behind a million deletes): while a step makes
                    // progress and more is left, the next round follows at once.
                    let left = free_pages(&conn);
                    behind = left > limits.free_pages && left < free;
                } else {
                    behind = false;
                }
            }
            writes.between_writes(|writer| {
                vacuum(writer, None);
                checkpoint_all(writer, Reset::Truncate);
            });
        })
        .map_err(|e| StoreError::backend_caused("starting the checkpoint thread", e))?;
    Ok(Checkpointer { stop: Some(stop), thread: Some(thread) })
}

/// Copies the WAL into the database file as far as readers allow, without blocking anyone;
/// returns the frames the WAL held when it started and the frames copied so far.
fn passive_checkpoint(conn: &Connection) -> (u64, u64) {
    match conn
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))
    {
        Ok((frames, copied)) => (frames.max(0) as u64, copied.max(0) as u64),
        Err(error) => {
            tracing::warn!(%error, "SQLite WAL checkpoint failed; retrying");
            (0, 0)
        }
    }
}

/// Before a reset: copies, still without the writer, what the writer appended while the last
/// passive checkpoint ran, until a round had little to copy, so that the reset, which copies
/// the rest while every write waits, has little left (under a deletecollection a reset holds
/// the writer 150-500 ms, mostly waiting for the copied pages to reach the disk). The WAL
/// grows meanwhile, so this stops once it holds `most_bytes`.
fn catch_up(conn: &Connection, mut copied: u64, frame_bytes: u64, most_bytes: u64) {
    for _ in 0..CATCH_UP_ROUNDS {
        let (frames, now_copied) = passive_checkpoint(conn);
        // Fewer frames than copied before: the WAL was restarted meanwhile.
        let appended = frames.saturating_sub(copied);
        copied = now_copied;
        if appended * frame_bytes <= CATCH_UP_BYTES || frames * frame_bytes >= most_bytes {
            break;
        }
    }
}

/// How a full checkpoint leaves the WAL.
#[derive(Clone, Copy)]
enum Reset {
    /// Written again from its start by the next commit (while the store runs).
    Restart,
    /// Emptied (on close, so a stopped store is one file).
    Truncate,
}

/// Checkpoints the whole WAL and resets it, waiting at most [`RESET_WAIT`] for readers.
fn checkpoint_all(writer: &mut Connection, reset: Reset) {
    // Polled every millisecond: SQLite's own busy timeout sleeps in growing steps, and each of
    // its oversleeps here is a pause for every queued write.
    let deadline = std::time::Instant::now() + RESET_WAIT;
    let _ = writer.busy_handler(Some(move |_| {
        std::thread::sleep(Duration::from_millis(1));
        std::time::Instant::now() < deadline
    }));
    let statement = match reset {
        Reset::Restart => "PRAGMA wal_checkpoint(RESTART)",
        Reset::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
    };
    let outcome = writer.query_row(statement, [], |row| row.get::<_, i64>(0));
    let _ = writer.busy_timeout(WRITER_BUSY_TIMEOUT);
    match outcome {
        Ok(0) => {}
        // Busy: a reader still uses the WAL; the next round tries again.
        Ok(_) => tracing::debug!("SQLite WAL reset postponed: a reader still uses it"),
        Err(error) => tracing::warn!(%error, "SQLite WAL reset failed; retrying"),
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

/// Bytes in the file at `path` (0 if it is missing).
fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The database's page size.
fn page_size(conn: &Connection) -> u64 {
    conn.query_row("PRAGMA page_size", [], |row| row.get::<_, i64>(0)).map_or(4096, |n| n.max(512) as u64)
}

/// Free pages in the database file.
fn free_pages(conn: &Connection) -> u64 {
    conn.query_row("PRAGMA freelist_count", [], |row| row.get::<_, i64>(0)).map_or(0, |n| n.max(0) as u64)
}
