//! Streaming a list: one read-only REPEATABLE READ transaction (the counter and the rows come
//! from one snapshot), keyset statements of bounded size, and the selectors as SQL conditions.

use futures::TryStreamExt as _;
use reports_core::selector::{FieldSelector, LabelSelector};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{
    errors::db_error,
    labels,
    reads::{newest_rv, stored_from_row},
};
use crate::{
    error::StoreResult,
    model::{field_condition, ListChunk, ListQuery},
};

/// Most rows one statement of a list reads.
const READ_ROWS: u64 = 1000;
/// Rows per list chunk.
const CHUNK_ROWS: usize = 256;
/// The byte budget that closes a chunk early.
const CHUNK_BYTES: usize = 1 << 20;

/// Streams one list inside a read-only REPEATABLE READ transaction: the counter and the rows come
/// from one snapshot.
pub(super) async fn stream_list(
    mut client: deadpool_postgres::Object,
    cluster: Uuid,
    query: ListQuery,
    snapshot: oneshot::Sender<StoreResult<u64>>,
    chunks: mpsc::Sender<StoreResult<ListChunk>>,
) {
    let tx = match client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
    {
        Ok(tx) => tx,
        Err(e) => {
            let _ = snapshot.send(Err(db_error(e)));
            return;
        }
    };
    let rv = match newest_rv(&tx, cluster).await {
        Ok(rv) => rv,
        Err(e) => {
            let _ = snapshot.send(Err(e));
            return;
        }
    };
    if snapshot.send(Ok(rv)).is_err() {
        return;
    }
    // Every statement reads at most READ_ROWS rows after the last key read, in key order, so the
    // planner walks the primary key and stops early (a statement without LIMIT is planned as a
    // scan and sort of the whole range). Rows that fail the exact label check are skipped and the
    // reading goes on until the page is full; all statements see the transaction's one snapshot.
    // $3, $4: the key to read after; $5: how many rows.
    let mut sql = String::from(
        "SELECT namespace, name, uid, rv, body FROM report_objects
         WHERE cluster_id = $1 AND resource = $2 AND (namespace, name) > ($3, $4)",
    );
    let (mut after_namespace, mut after_name) = query.after.clone().unwrap_or_default();
    let mut params: Vec<Box<dyn ToSql + Send + Sync>> = vec![
        Box::new(cluster),
        Box::new(query.resource.clone()),
        Box::new(String::new()),
        Box::new(String::new()),
        Box::new(0i64),
    ];
    if let Some(ns) = &query.namespace {
        params.push(Box::new(ns.clone()));
        sql.push_str(&format!(" AND namespace = ${}", params.len()));
    }
    push_selectors(&query.labels, &query.fields, &mut sql, &mut params);
    sql.push_str(" ORDER BY namespace, name LIMIT $5");
    let exact_check = !query.labels.is_empty();
    let result = async {
        let statement = tx.prepare(&sql).await.map_err(db_error)?;
        let limit = query.limit.unwrap_or(u64::MAX);
        let mut sent: u64 = 0;
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        let mut more = false;
        'statements: loop {
            // Without the exact check, one row past the page tells whether there is more.
            let want = if exact_check {
                READ_ROWS
            } else {
                limit.saturating_sub(sent).saturating_add(1).min(READ_ROWS)
            };
            params[2] = Box::new(std::mem::take(&mut after_namespace));
            params[3] = Box::new(std::mem::take(&mut after_name));
            params[4] = Box::new(want as i64);
            let rows = tx.query_raw(&statement, as_params(&params)).await.map_err(db_error)?;
            futures::pin_mut!(rows);
            let mut read: u64 = 0;
            while let Some(row) = rows.try_next().await.map_err(db_error)? {
                read += 1;
                let object = stored_from_row(&row);
                after_namespace.clone_from(&object.namespace);
                after_name.clone_from(&object.name);
                if exact_check && !labels::body_matches(&query.labels, &object.body) {
                    continue;
                }
                if sent == limit {
                    more = true;
                    break 'statements;
                }
                batch_bytes += object.body.len();
                batch.push(object);
                sent += 1;
                if batch.len() >= CHUNK_ROWS || batch_bytes >= CHUNK_BYTES {
                    if chunks.send(Ok(ListChunk::Items(std::mem::take(&mut batch)))).await.is_err() {
                        return Ok(()); // the client went away
                    }
                    batch_bytes = 0;
                }
            }
            if read < want {
                break; // the range is exhausted
            }
        }
        if !batch.is_empty() && chunks.send(Ok(ListChunk::Items(batch))).await.is_err() {
            return Ok(());
        }
        let _ = chunks.send(Ok(ListChunk::End { more })).await;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = chunks.send(Err(e)).await;
    }
    // Read-only: ending it either way is the same.
    let _ = tx.rollback().await;
}

/// Appends the WHERE conditions of the selectors; `params` grows with their values. Label
/// requirements are only prefiltered (see [`labels`]): the rows must still pass
/// [`labels::body_matches`].
fn push_selectors(
    label_selector: &LabelSelector,
    fields: &FieldSelector,
    sql: &mut String,
    params: &mut Vec<Box<dyn ToSql + Send + Sync>>,
) {
    let next = |params: &mut Vec<Box<dyn ToSql + Send + Sync>>, value: Box<dyn ToSql + Send + Sync>| {
        params.push(value);
        format!("${}", params.len())
    };
    labels::push_label_prefilter(label_selector, sql, params);
    for req in &fields.requirements {
        let (column, op) = field_condition(req);
        let v = next(params, Box::new(req.value.clone()));
        sql.push_str(&format!(" AND {column} {op} {v}::text"));
    }
}

fn as_params(params: &[Box<dyn ToSql + Send + Sync>]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
}
