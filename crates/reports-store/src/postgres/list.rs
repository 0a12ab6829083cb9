//! Streaming a list: one read-only REPEATABLE READ transaction (the counter and the rows come
//! from one snapshot), keyset statements of bounded size, and the selectors as SQL conditions.
//! A list at a past RV merges in the versions the change log kept (`crate::snapshot`).

use futures::TryStreamExt as _;
use reports_core::selector::FieldSelector;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{
    changes,
    errors::db_error,
    labels,
    reads::{compacted_rv, newest_rv, stored_from_row},
};
use crate::{
    error::{StoreError, StoreResult},
    model::{field_condition, ListChunk, ListQuery, StoredObject},
    snapshot::body_rv,
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
    let plan = match plan(&tx, cluster, &query).await {
        Ok(plan) => plan,
        Err(e) => {
            let _ = snapshot.send(Err(e));
            return;
        }
    };
    if snapshot.send(Ok(plan.rv)).is_err() {
        return;
    }
    // Every statement reads at most READ_ROWS rows after the last key read, in key order, so the
    // planner walks the primary key and stops early (a statement without LIMIT is planned as a
    // scan and sort of the whole range). Rows that fail the exact label check are skipped and the
    // reading goes on until the page is full; all statements see the transaction's one snapshot.
    // $3, $4: the key to read after; $5: how many rows; $6: the snapshot RV.
    let (mut after_namespace, mut after_name) = query.after.clone().unwrap_or_default();
    let mut params: Vec<Box<dyn ToSql + Send + Sync>> = vec![
        Box::new(cluster),
        Box::new(query.resource.clone()),
        Box::new(String::new()),
        Box::new(String::new()),
        Box::new(0i64),
        Box::new(plan.rv as i64),
    ];
    let (sql, count_sql) = statements(&query, plan.replaced, &mut params);
    let exact_check = !query.labels.is_empty();
    let result = async {
        let statement = prepare(&tx, &sql).await?;
        let limit = query.limit.unwrap_or(u64::MAX);
        let mut sent: u64 = 0;
        let mut last_sent: Option<(String, String)> = None;
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
                let object = object_at_snapshot(&row)?;
                after_namespace.clone_from(&object.namespace);
                after_name.clone_from(&object.name);
                if exact_check && !labels::body_matches(&query.labels, &object.body) {
                    continue;
                }
                if sent == limit {
                    more = true;
                    break 'statements;
                }
                last_sent = Some((object.namespace.clone(), object.name.clone()));
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
        // Counted for lists without a label selector only (what kube gives the count for).
        let remaining = match (more && query.count_remaining && query.labels.is_empty(), last_sent) {
            (true, Some((namespace, name))) => {
                params[2] = Box::new(namespace);
                params[3] = Box::new(name);
                let stmt = prepare(&tx, &count_sql).await?;
                let count: i64 = tx.query_one(&stmt, &as_params(&params)).await.map_err(db_error)?.get(0);
                Some(count as u64)
            }
            _ => None,
        };
        let _ = chunks.send(Ok(ListChunk::End { more, remaining })).await;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = chunks.send(Err(e)).await;
    }
    // Read-only: ending it either way is the same.
    let _ = tx.rollback().await;
}

/// What a list reads: the RV its objects are at, and whether some of them must come from the
/// change log because they were replaced after it.
struct Plan {
    rv: u64,
    replaced: bool,
}

/// Fixes the list's snapshot RV: the current one, or [`ListQuery::at`] while the change log
/// covers it ([`StoreError::Expired`] when not). Runs first in the transaction, so the counter,
/// the compacted RV and the rows all come from its one snapshot.
async fn plan(
    tx: &deadpool_postgres::Transaction<'_>,
    cluster: Uuid,
    query: &ListQuery,
) -> StoreResult<Plan> {
    let current = newest_rv(tx, cluster).await?;
    let Some(at) = query.at.filter(|&at| at < current) else {
        return Ok(Plan { rv: current, replaced: false });
    };
    if at < compacted_rv(tx, cluster).await? {
        return Err(StoreError::Expired);
    }
    let replaced = changes::changed_since(tx, cluster, &query.resource, at).await?;
    Ok(Plan { rv: at, replaced })
}

/// The page statement and the statement counting what follows a key (`$5` dropped). Without
/// changes after the snapshot, the object rows alone; with them, the merge described in
/// `crate::snapshot`: rows at most `$6`, and the version each later-changed key had at `$6`.
/// Label requirements are only prefiltered on object rows; every row gets the exact check.
fn statements(
    query: &ListQuery,
    replaced: bool,
    params: &mut Vec<Box<dyn ToSql + Send + Sync>>,
) -> (String, String) {
    let mut common = String::new();
    if let Some(ns) = &query.namespace {
        params.push(Box::new(ns.clone()));
        common.push_str(&format!(" AND namespace = ${}", params.len()));
    }
    push_field_selector(&query.fields, &mut common, params);
    let mut object_conds = common.clone();
    labels::push_label_prefilter(&query.labels, &mut object_conds, params);
    let objects = format!(
        "SELECT namespace, name, uid, rv, body, false AS replaced FROM report_objects
         WHERE cluster_id = $1 AND resource = $2 AND (namespace, name) > ($3, $4){object_conds}"
    );
    let count_objects = format!(
        "SELECT count(*) FROM report_objects
         WHERE cluster_id = $1 AND resource = $2 AND (namespace, name) > ($3, $4){common}"
    );
    if !replaced {
        return (format!("{objects} ORDER BY namespace, name LIMIT $5"), count_objects);
    }
    // The first change of each key after $6 that is not its creation: it kept the body of the
    // version the key had at $6 (NULL for rows written before `prev_body` existed).
    // Only keys, RVs and types are ordered (the planner picks the log's index by key or by RV,
    // whichever reads less); each kept body is fetched by RV as the page reaches it.
    let first_changes = format!(
        "SELECT c.namespace, c.name, c.uid, c.prev_body FROM (
            SELECT DISTINCT ON (namespace, name) namespace, name, rv, type FROM report_changes
            WHERE cluster_id = $1 AND resource = $2 AND (namespace, name) > ($3, $4) AND rv > $6{common}
            ORDER BY namespace, name, rv) first
         JOIN report_changes c ON c.cluster_id = $1 AND c.rv = first.rv
         WHERE first.type <> 'ADDED'"
    );
    let page = format!(
        "SELECT * FROM (
            ({objects} AND rv <= $6 ORDER BY namespace, name LIMIT $5)
            UNION ALL
            (SELECT namespace, name, uid, 0::bigint, prev_body, true FROM ({first_changes}) f
             ORDER BY namespace, name LIMIT $5)) page
         ORDER BY namespace, name LIMIT $5"
    );
    // The current objects after the key (the primary key's index alone), corrected by the keys
    // changed since $6: one more for each that existed then (its first change is not its
    // creation), one fewer for each that exists now (its last change is not its deletion).
    let changed = |order: &str, exists: &str| {
        format!(
            "(SELECT count(*) FILTER (WHERE {exists}) FROM (
                SELECT DISTINCT ON (namespace, name) type FROM report_changes
                WHERE cluster_id = $1 AND resource = $2 AND (namespace, name) > ($3, $4) AND rv > $6{common}
                ORDER BY namespace, name, rv {order}) c)"
        )
    };
    let count = format!(
        "SELECT ({count_objects}) + {} - {}",
        changed("ASC", "type <> 'ADDED'"),
        changed("DESC", "type <> 'DELETED'")
    );
    (page, count)
}

/// An object from a page row: an object row as it is, or a replaced version from the change log
/// (its RV is the one written in its body).
fn object_at_snapshot(row: &tokio_postgres::Row) -> StoreResult<StoredObject> {
    if !row.get::<_, bool>(5) {
        return Ok(stored_from_row(row));
    }
    // A change written before the log kept replaced bodies: this snapshot cannot be rebuilt.
    let body: String = row.get::<_, Option<String>>(4).ok_or(StoreError::Expired)?;
    Ok(StoredObject { namespace: row.get(0), name: row.get(1), uid: row.get(2), rv: body_rv(&body)?, body })
}

/// Appends the WHERE conditions of a field selector; `params` grows with their values.
fn push_field_selector(
    fields: &FieldSelector,
    sql: &mut String,
    params: &mut Vec<Box<dyn ToSql + Send + Sync>>,
) {
    for req in &fields.requirements {
        let (column, op) = field_condition(req);
        params.push(Box::new(req.value.clone()));
        sql.push_str(&format!(" AND {column} {op} ${}::text", params.len()));
    }
}

/// Prepares a list statement; the first six parameters are typed here because a statement may
/// leave some of them unused (the current page needs no snapshot RV, a count no LIMIT).
async fn prepare(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
) -> StoreResult<tokio_postgres::Statement> {
    use tokio_postgres::types::Type;
    let types = [Type::UUID, Type::TEXT, Type::TEXT, Type::TEXT, Type::INT8, Type::INT8];
    tx.prepare_typed(sql, &types).await.map_err(db_error)
}

fn as_params(params: &[Box<dyn ToSql + Send + Sync>]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
}
