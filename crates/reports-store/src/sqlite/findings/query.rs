//! Reading findings: the list in one read transaction, grouped counts, and the namespaces
//! holding a resource.

use reports_core::findings::query::{CountQuery, FindingCount, FindingKey, FindingQuery, FindingRecord};
use rusqlite::{types::Value as SqlValue, Connection};
use tokio::sync::{mpsc, oneshot};

use crate::{
    error::StoreResult,
    findings::{
        fold_counts,
        sql::{Arg, Dialect, Sql},
        StoredFinding, FINDING_COLUMNS,
    },
    model::FindingChunk,
    sqlite::errors::sqlite_error,
};

/// Findings per chunk.
const CHUNK_ROWS: usize = 256;

fn value(arg: Arg) -> SqlValue {
    match arg {
        Arg::Text(text) => SqlValue::Text(text),
        // The SQL builder sends sets to SQLite as JSON array text.
        Arg::Texts(texts) => SqlValue::Text(serde_json::Value::from(texts).to_string()),
        Arg::Float(value) => SqlValue::Real(value),
        Arg::Int(value) => SqlValue::Integer(value),
    }
}

/// A finding from a row of key columns, [`FINDING_COLUMNS`] and the properties.
fn record_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<FindingRecord> {
    let ordinal = row.get::<_, i64>(3)?.clamp(0, i64::from(u32::MAX)) as u32;
    let stored = StoredFinding {
        ordinal,
        texts: [row.get(4)?, row.get(5)?, row.get(6)?, row.get(7)?, row.get(8)?, row.get(9)?],
        scored: row.get(10)?,
        timestamp: row.get(11)?,
        message: row.get(12)?,
        subject: [row.get(13)?, row.get(14)?, row.get(15)?, row.get(16)?, row.get(17)?],
        properties: row.get(18)?,
    };
    Ok(FindingRecord {
        key: FindingKey { namespace: row.get(0)?, name: row.get(1)?, resource: row.get(2)?, ordinal },
        finding: stored.into_finding(),
    })
}

/// Streams a findings list inside one read transaction (on a blocking thread).
pub(in crate::sqlite) fn stream_findings(
    conn: &mut Connection,
    query: &FindingQuery,
    snapshot: oneshot::Sender<StoreResult<u64>>,
    chunks: &mpsc::Sender<StoreResult<FindingChunk>>,
) -> StoreResult<()> {
    let tx = conn.transaction().map_err(sqlite_error)?;
    // The first read fixes the snapshot: the counter and the rows come from the same one.
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
    // ?1..?4: the key to read after, ?5: the row limit.
    let mut sql = Sql::new(Dialect::Sqlite, 5);
    sql.text = format!(
        "SELECT f.namespace, f.name, f.resource, f.ordinal, {FINDING_COLUMNS}, f.properties FROM findings f
         WHERE (f.namespace, f.name, f.resource, f.ordinal) > (?1, ?2, ?3, ?4)"
    );
    sql.push_scope(query.namespace.as_deref(), &query.visibility);
    sql.push_conditions(&query.conditions);
    sql.text.push_str(" ORDER BY f.namespace, f.name, f.resource, f.ordinal LIMIT ?5");
    let limit = query.limit.unwrap_or(u64::MAX);
    // Before the first finding: every key has a name, and ordinals start at 0.
    let (namespace, name, resource, ordinal) = match query.after.clone() {
        Some(k) => (k.namespace, k.name, k.resource, i64::from(k.ordinal)),
        None => (String::new(), String::new(), String::new(), -1),
    };
    let mut args = vec![
        SqlValue::Text(namespace),
        SqlValue::Text(name),
        SqlValue::Text(resource),
        SqlValue::Integer(ordinal),
        SqlValue::Integer(limit.saturating_add(1).min(i64::MAX as u64) as i64),
    ];
    args.extend(std::mem::take(&mut sql.args).into_iter().map(value));
    let mut statement = tx.prepare(&sql.text).map_err(sqlite_error)?;
    let mut rows = statement.query(rusqlite::params_from_iter(args)).map_err(sqlite_error)?;
    let (mut sent, mut more) = (0u64, false);
    let mut batch = Vec::new();
    while let Some(row) = rows.next().map_err(sqlite_error)? {
        if sent == limit {
            more = true;
            break;
        }
        batch.push(record_from_row(row).map_err(sqlite_error)?);
        sent += 1;
        if batch.len() >= CHUNK_ROWS
            && chunks.blocking_send(Ok(FindingChunk::Items(std::mem::take(&mut batch)))).is_err()
        {
            return Ok(()); // the client went away
        }
    }
    if !batch.is_empty() && chunks.blocking_send(Ok(FindingChunk::Items(batch))).is_err() {
        return Ok(());
    }
    let _ = chunks.blocking_send(Ok(FindingChunk::End { more }));
    Ok(())
}

/// Counts findings per group and result in SQL, folded into groups here; with the RV of the
/// same snapshot.
pub(in crate::sqlite) fn count_findings(
    conn: &mut Connection,
    query: &CountQuery,
) -> StoreResult<(u64, Vec<FindingCount>)> {
    let tx = conn.transaction().map_err(sqlite_error)?;
    let rv: i64 = tx.query_row("SELECT rv FROM counter", [], |r| r.get(0)).map_err(sqlite_error)?;
    let mut sql = Sql::new(Dialect::Sqlite, 0);
    let mut select: Vec<String> = query.group_by.iter().map(|field| sql.group_expr(field)).collect();
    let width = select.len();
    select.push("f.result".into());
    let positions: Vec<String> = (1..=select.len()).map(|i| i.to_string()).collect();
    sql.text = format!("SELECT {}, count(*) FROM findings f WHERE TRUE", select.join(", "));
    sql.push_scope(query.namespace.as_deref(), &query.visibility);
    sql.push_conditions(&query.conditions);
    sql.text.push_str(&format!(" GROUP BY {}", positions.join(", ")));
    let args: Vec<SqlValue> = std::mem::take(&mut sql.args).into_iter().map(value).collect();
    let mut statement = tx.prepare(&sql.text).map_err(sqlite_error)?;
    let rows = statement
        .query_map(rusqlite::params_from_iter(args), |row| {
            let key = (0..width).map(|i| row.get::<_, String>(i)).collect::<Result<Vec<_>, _>>()?;
            Ok((key, row.get::<_, String>(width)?, row.get::<_, i64>(width + 1)?.max(0) as u64))
        })
        .map_err(sqlite_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sqlite_error)?;
    Ok((rv as u64, fold_counts(rows)))
}

/// The namespaces holding objects of `resource`: one probe of the objects' primary key per
/// namespace.
pub(in crate::sqlite) fn namespaces_of(conn: &Connection, resource: &str) -> StoreResult<Vec<String>> {
    let mut statement = conn
        .prepare_cached(
            "WITH RECURSIVE ns(namespace) AS (
                SELECT min(namespace) FROM objects WHERE resource = ?1
                UNION ALL
                SELECT (SELECT min(o.namespace) FROM objects o WHERE o.resource = ?1 AND o.namespace > ns.namespace)
                FROM ns WHERE ns.namespace IS NOT NULL)
             SELECT namespace FROM ns WHERE namespace IS NOT NULL",
        )
        .map_err(sqlite_error)?;
    let rows = statement.query_map([resource], |r| r.get(0)).map_err(sqlite_error)?;
    rows.collect::<Result<_, _>>().map_err(sqlite_error)
}
