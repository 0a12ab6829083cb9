//! Read connections: kept idle for reuse so a request does not pay for opening the file, and
//! used on tokio's blocking pool (every SQLite call blocks).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::schema::open_connection;
use crate::error::{StoreError, StoreResult};

/// Reader connections kept idle for reuse.
const MAX_IDLE_READERS: usize = 8;

/// The idle read connections of one database file.
#[derive(Clone)]
pub(super) struct Readers {
    idle: Arc<Mutex<Vec<Connection>>>,
    path: Arc<PathBuf>,
}

impl Readers {
    /// Readers of the file at `path` (opened when first needed).
    pub fn new(path: &Path) -> Self {
        Self { idle: Default::default(), path: Arc::new(path.to_path_buf()) }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An idle connection, or a new one.
    pub fn take(&self) -> StoreResult<Connection> {
        let idle = self.idle.lock().map_err(|_| StoreError::backend("reader pool poisoned"))?.pop();
        match idle {
            Some(conn) => Ok(conn),
            None => open_connection(&self.path),
        }
    }

    /// Keeps `conn` for the next read, unless enough are idle already.
    pub fn give_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
    }

    /// Runs a read on a pooled connection, on the blocking pool.
    pub async fn read<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let readers = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = readers.take()?;
            let out = work(&mut conn);
            readers.give_back(conn);
            out
        })
        .await
        .map_err(|e| StoreError::backend_caused("a read task failed", e))?
    }

    /// Runs a streamed read (a list, a findings list) on a pooled connection, on the blocking
    /// pool: `work` sends the RV of its snapshot, then chunks; an error it returns after that
    /// goes down the chunk channel. Returns the snapshot RV and the chunks.
    pub async fn stream<C, F>(&self, work: F) -> StoreResult<(u64, mpsc::Receiver<StoreResult<C>>)>
    where
        C: Send + 'static,
        F: FnOnce(
                &mut Connection,
                oneshot::Sender<StoreResult<u64>>,
                &mpsc::Sender<StoreResult<C>>,
            ) -> StoreResult<()>
            + Send
            + 'static,
    {
        let readers = self.clone();
        let (snapshot_tx, snapshot_rx) = oneshot::channel();
        let (chunk_tx, chunk_rx) = mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            let mut conn = match readers.take() {
                Ok(conn) => conn,
                Err(e) => {
                    let _ = snapshot_tx.send(Err(e));
                    return;
                }
            };
            if let Err(e) = work(&mut conn, snapshot_tx, &chunk_tx) {
                let _ = chunk_tx.blocking_send(Err(e));
            }
            readers.give_back(conn);
        });
        let snapshot_rv =
            snapshot_rx.await.map_err(|_| StoreError::backend("a streaming read ended early"))??;
        Ok((snapshot_rv, chunk_rx))
    }
}
