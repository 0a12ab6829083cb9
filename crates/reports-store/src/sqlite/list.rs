//! Streaming a list from one read transaction: the snapshot RV and the rows come from the same
//! snapshot, and rows go out in chunks of bounded size while the statement runs.

use rusqlite::{types::Value as SqlValue, Connection};
use tokio::sync::{mpsc, oneshot};

use super::{errors::sqlite_error, selectors::push_selectors};
use crate::{
    error::StoreResult,
    model::{ListChunk, ListQuery, StoredObject},
};

/// Rows per list chunk.
const CHUNK_ROWS: usize = 256;
/// The byte budget that closes a chunk early (large reports).
const CHUNK_BYTES: usize = 1 << 20;

/// An object from a row of `namespace, name, uid, rv, body`.
pub(super) fn stored_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredObject> {
    Ok(StoredObject {
        namespace: r.get(0)?,
        name: r.get(1)?,
        uid: r.get(2)?,
        rv: r.get::<_, i64>(3)? as u64,
        body: r.get(4)?,
    })
}

/// Streams one list inside a read transaction (runs on a blocking thread).
pub(super) fn stream_list(
    conn: &mut Connection,
    query: &ListQuery,
    snapshot: oneshot::Sender<StoreResult<u64>>,
    chunks: &mpsc::Sender<StoreResult<ListChunk>>,
) -> StoreResult<()> {
    let tx = conn.transaction().map_err(sqlite_error)?;
    // The first read fixes the snapshot: the counter and the rows below come from the same one.
    let rv: i64 = match tx.query_row("SELECT rv FROM counter", [], |r| r.get(0)) {
        Ok(rv) => rv,
        Err(e) => {
            let _ = snapshot.send(Err(sqlite_error(e)));
            return Ok(());
        }
    };
    if snapshot.send(Ok(rv as u64)).is_err() {
        return Ok(());
    }
    let mut sql = String::from("SELECT namespace, name, uid, rv, body FROM objects WHERE resource = ?");
    let mut args: Vec<SqlValue> = vec![SqlValue::Text(query.resource.clone())];
    if let Some(ns) = &query.namespace {
        sql.push_str(" AND namespace = ?");
        args.push(SqlValue::Text(ns.clone()));
    }
    if let Some((ns, name)) = &query.after {
        sql.push_str(" AND (namespace, name) > (?, ?)");
        args.extend([SqlValue::Text(ns.clone()), SqlValue::Text(name.clone())]);
    }
    push_selectors(&query.labels, &query.fields, &mut sql, &mut args);
    sql.push_str(" ORDER BY namespace, name");
    if let Some(limit) = query.limit {
        sql.push_str(" LIMIT ?");
        args.push(SqlValue::Integer(limit.saturating_add(1).min(i64::MAX as u64) as i64));
    }
    let mut stmt = tx.prepare(&sql).map_err(sqlite_error)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args)).map_err(sqlite_error)?;
    let limit = query.limit.unwrap_or(u64::MAX);
    let mut sent: u64 = 0;
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut more = false;
    while let Some(row) = rows.next().map_err(sqlite_error)? {
        if sent == limit {
            more = true;
            break;
        }
        let object = stored_from_row(row).map_err(sqlite_error)?;
        batch_bytes += object.body.len();
        batch.push(object);
        sent += 1;
        if batch.len() >= CHUNK_ROWS || batch_bytes >= CHUNK_BYTES {
            if chunks.blocking_send(Ok(ListChunk::Items(std::mem::take(&mut batch)))).is_err() {
                return Ok(()); // the client went away
            }
            batch_bytes = 0;
        }
    }
    if !batch.is_empty() && chunks.blocking_send(Ok(ListChunk::Items(batch))).is_err() {
        return Ok(());
    }
    let _ = chunks.blocking_send(Ok(ListChunk::End { more }));
    Ok(())
}
