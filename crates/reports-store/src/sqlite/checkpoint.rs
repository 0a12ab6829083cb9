//! Copying the WAL back into the database file off the write path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses the threshold, so every
//! thousandth write or so would wait for the copy and its fsyncs (tens of milliseconds at a few
//! MB/s of reports). A passive checkpoint on its own connection never blocks the writer or readers.

use std::{path::Path, sync::mpsc, time::Duration};

use super::schema::open_connection;
use crate::error::{StoreError, StoreResult};

/// How often the checkpoint thread copies the WAL back into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// Starts the checkpoint thread; dropping the returned sender stops it.
pub(super) fn start_checkpointer(path: &Path) -> StoreResult<mpsc::SyncSender<()>> {
    let conn = open_connection(path)?;
    let (stop, stopped) = mpsc::sync_channel::<()>(0);
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            // Disconnected (the store was dropped) ends the loop; SQLite checkpoints the rest
            // when the last connection closes.
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_INTERVAL) {
                if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(%error, "SQLite WAL checkpoint failed; retrying");
                }
            }
        })
        .map_err(|e| StoreError::backend_caused("starting the checkpoint thread", e))?;
    Ok(stop)
}
