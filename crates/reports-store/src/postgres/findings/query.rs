//! Reading findings: the list (keyset statements in one REPEATABLE READ snapshot, as object
//! lists read), grouped counts, and the namespaces holding a resource.

use futures::TryStreamExt as _;
use reports_core::findings::query::{CountQuery, FindingCount, FindingKey, FindingQuery, FindingRecord};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::{
    error::StoreResult,
    findings::{
        fold_counts,
        sql::{Arg, Dialect, Sql},
        StoredFinding, FINDING_COLUMNS,
    },
    model::FindingChunk,
    postgres::{errors::db_error, reads::newest_rv},
};

/// Most rows one statement of a list reads.
const READ_ROWS: u64 = 1000;
/// Findings per chunk.
const CHUNK_ROWS: usize = 256;

/// A bound value as a driver parameter.
fn param(arg: Arg) -> Box<dyn ToSql + Send + Sync> {
    match arg {
        Arg::Text(text) => Box::new(text),
        Arg::Texts(texts) => Box::new(texts),
        Arg::Float(value) => Box::new(value),
        Arg::Int(value) => Box::new(value),
    }
}

fn as_params(params: &[Box<dyn ToSql + Send + Sync>]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
}

/// A read-only REPEATABLE READ transaction and the RV of its snapshot.
async fn snapshot(
    client: &mut deadpool_postgres::Object,
    cluster: Uuid,
) -> StoreResult<(deadpool_postgres::Transaction<'_>, u64)> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db_error)?;
    let rv = newest_rv(&tx, cluster).await?;
    Ok((tx, rv))
}

/// A finding from a row of key columns, [`FINDING_COLUMNS`] and the properties' text.
fn record_from_row(row: &tokio_postgres::Row) -> FindingRecord {
    let ordinal = row.get::<_, i32>(3).max(0) as u32;
    let stored = StoredFinding {
        ordinal,
        texts: [row.get(4), row.get(5), row.get(6), row.get(7), row.get(8), row.get(9)],
        scored: row.get(10),
        timestamp: row.get(11),
        message: row.get(12),
        subject: [row.get(13), row.get(14), row.get(15), row.get(16), row.get(17)],
        properties: row.get(18),
    };
    FindingRecord {
        key: FindingKey { namespace: row.get(0), name: row.get(1), resource: row.get(2), ordinal },
        finding: stored.into_finding(),
    }
}

/// Streams a findings list: the snapshot RV first, then chunks in key order, then the end.
pub(in crate::postgres) async fn stream_findings(
    mut client: deadpool_postgres::Object,
    cluster: Uuid,
    query: FindingQuery,
    snapshot_rv: oneshot::Sender<StoreResult<u64>>,
    chunks: mpsc::Sender<StoreResult<FindingChunk>>,
) {
    let (tx, rv) = match snapshot(&mut client, cluster).await {
        Ok(open) => open,
        Err(e) => {
            let _ = snapshot_rv.send(Err(e));
            return;
        }
    };
    if snapshot_rv.send(Ok(rv)).is_err() {
        return;
    }
    // $1 cluster, $2..$5 the key to read after, $6 how many rows; each statement reads the next
    // rows in key order, so the planner walks the primary key and stops early.
    let mut sql = Sql::new(Dialect::Postgres, 6);
    sql.text = format!(
        "SELECT f.namespace, f.name, f.resource, f.ordinal, {FINDING_COLUMNS}, f.properties::text
         FROM report_findings f
         WHERE f.cluster_id = $1 AND (f.namespace, f.name, f.resource, f.ordinal) > ($2::text, $3::text, $4::text, $5::int4)"
    );
    sql.push_scope(query.namespace.as_deref(), &query.visibility);
    sql.push_conditions(&query.conditions);
    sql.text.push_str(" ORDER BY f.namespace, f.name, f.resource, f.ordinal LIMIT $6::int8");
    // Before the first finding: every key has a name, and ordinals start at 0.
    let mut after = query.after.clone().map_or((String::new(), String::new(), String::new(), -1), |k| {
        (k.namespace, k.name, k.resource, i32::try_from(k.ordinal).unwrap_or(i32::MAX))
    });
    let mut params: Vec<Box<dyn ToSql + Send + Sync>> = vec![
        Box::new(cluster),
        Box::new(String::new()),
        Box::new(String::new()),
        Box::new(String::new()),
        Box::new(0i32),
        Box::new(0i64),
    ];
    params.extend(std::mem::take(&mut sql.args).into_iter().map(param));
    let result = async {
        let statement = tx.prepare(&sql.text).await.map_err(db_error)?;
        let limit = query.limit.unwrap_or(u64::MAX);
        let (mut sent, mut more) = (0u64, false);
        let mut batch = Vec::new();
        'statements: loop {
            let want = limit.saturating_sub(sent).saturating_add(1).min(READ_ROWS);
            params[1] = Box::new(std::mem::take(&mut after.0));
            params[2] = Box::new(std::mem::take(&mut after.1));
            params[3] = Box::new(std::mem::take(&mut after.2));
            params[4] = Box::new(after.3);
            params[5] = Box::new(want as i64);
            let rows = tx.query_raw(&statement, as_params(&params)).await.map_err(db_error)?;
            futures::pin_mut!(rows);
            let mut read: u64 = 0;
            while let Some(row) = rows.try_next().await.map_err(db_error)? {
                read += 1;
                if sent == limit {
                    more = true;
                    break 'statements;
                }
                let record = record_from_row(&row);
                let key = &record.key;
                after = (key.namespace.clone(), key.name.clone(), key.resource.clone(), row.get(3));
                batch.push(record);
                sent += 1;
                if batch.len() >= CHUNK_ROWS
                    && chunks.send(Ok(FindingChunk::Items(std::mem::take(&mut batch)))).await.is_err()
                {
                    return Ok(()); // the client went away
                }
            }
            if read < want {
                break;
            }
        }
        if !batch.is_empty() && chunks.send(Ok(FindingChunk::Items(batch))).await.is_err() {
            return Ok(());
        }
        let _ = chunks.send(Ok(FindingChunk::End { more })).await;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = chunks.send(Err(e)).await;
    }
    let _ = tx.rollback().await;
}

/// Counts findings per group and result in SQL, folded into groups here.
pub(in crate::postgres) async fn count_findings(
    mut client: deadpool_postgres::Object,
    cluster: Uuid,
    query: CountQuery,
) -> StoreResult<(u64, Vec<FindingCount>)> {
    let (tx, rv) = snapshot(&mut client, cluster).await?;
    let mut sql = Sql::new(Dialect::Postgres, 1);
    let groups: Vec<String> = query.group_by.iter().map(|field| sql.group_expr(field)).collect();
    let mut select = groups.clone();
    select.push("f.result".into());
    let positions: Vec<String> = (1..=select.len()).map(|i| i.to_string()).collect();
    let head =
        format!("SELECT {}, count(*) FROM report_findings f WHERE f.cluster_id = $1", select.join(", "));
    sql.text = head;
    sql.push_scope(query.namespace.as_deref(), &query.visibility);
    sql.push_conditions(&query.conditions);
    sql.text.push_str(&format!(" GROUP BY {}", positions.join(", ")));
    let mut params: Vec<Box<dyn ToSql + Send + Sync>> = vec![Box::new(cluster)];
    params.extend(std::mem::take(&mut sql.args).into_iter().map(param));
    let rows = tx.query(&sql.text, &as_params(&params)).await.map_err(db_error)?;
    let width = groups.len();
    let counts = fold_counts(rows.iter().map(|row| {
        let key = (0..width).map(|i| row.get::<_, String>(i)).collect();
        (key, row.get::<_, String>(width), row.get::<_, i64>(width + 1).max(0) as u64)
    }));
    let _ = tx.rollback().await;
    Ok((rv, counts))
}

/// The namespaces holding objects of `resource`: a loose index scan of the objects' primary key
/// (one probe per namespace, not a scan of every object).
pub(in crate::postgres) async fn namespaces_of(
    client: &deadpool_postgres::Object,
    cluster: Uuid,
    resource: &str,
) -> StoreResult<Vec<String>> {
    let statement = client
        .prepare_cached(
            "WITH RECURSIVE ns(namespace) AS (
                (SELECT namespace FROM report_objects WHERE cluster_id = $1 AND resource = $2
                 ORDER BY namespace LIMIT 1)
                UNION ALL
                SELECT (SELECT o.namespace FROM report_objects o
                        WHERE o.cluster_id = $1 AND o.resource = $2 AND o.namespace > ns.namespace
                        ORDER BY o.namespace LIMIT 1)
                FROM ns WHERE ns.namespace IS NOT NULL)
             SELECT namespace FROM ns WHERE namespace IS NOT NULL",
        )
        .await
        .map_err(db_error)?;
    let rows = client.query(&statement, &[&cluster, &resource]).await.map_err(db_error)?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
