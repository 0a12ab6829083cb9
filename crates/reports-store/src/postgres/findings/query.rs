//! Reading findings: the list (keyset statements in one REPEATABLE READ snapshot, as object
//! lists read), grouped counts, and the namespaces holding a resource.

use std::collections::HashMap;

use reports_core::findings::{
    filter::{Condition, FilterOp, FindingField},
    query::{CountQuery, FindingCount, FindingKey, FindingQuery, FindingRecord},
    SCORE_PROPERTY,
};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::{
    error::{StoreError, StoreResult},
    findings::{
        fold_counts,
        sql::{Arg, Dialect, Sql},
        StoredFinding,
    },
    model::FindingChunk,
    postgres::{errors::db_error, reads::newest_rv},
};

/// Most rows one statement of a list reads.
const READ_ROWS: u64 = 1000;
/// Findings per chunk.
const CHUNK_ROWS: usize = 256;
/// Most finding sets (reports) read in one statement when turning keys into findings.
const SETS_PER_READ: usize = 64;

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

/// The findings as rows aliased `f`: the report key and `max_score` from the set, `ordinal`
/// from the position, and of the per-finding columns only those `sql` mentions (plus `result`,
/// which counts always read). Unnesting a column reads its whole array, and the message and
/// properties are most of a set's bytes, so a question about scores and severities never
/// decompresses them. PostgreSQL flattens this into a scan of the sets (conditions on the key
/// and `max_score` reach it) with the unnest beside it.
fn findings_source(sql: &str) -> String {
    let mentioned = |field: &&str| {
        let needle = format!("f.{field}");
        sql.match_indices(&needle).any(|(at, _)| {
            let next = sql[at + needle.len()..].chars().next();
            !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    let fields: Vec<&str> = super::write::COLUMNS
        .iter()
        .map(|(field, _)| *field)
        .filter(|field| *field == "result" || mentioned(field))
        .collect();
    // Properties are stored as JSON text and read as jsonb, the type the query language's SQL
    // expects, only by the questions that mention them.
    let column = |c: &&str| match *c {
        "properties" => "u.properties::jsonb AS properties".to_string(),
        c => format!("u.{c}"),
    };
    format!(
        "(SELECT s.cluster_id, s.namespace, s.name, s.resource, s.max_score, (u.ord - 1)::int4 AS ordinal, {}
          FROM report_finding_sets s
          CROSS JOIN LATERAL unnest({}) WITH ORDINALITY AS u({}, ord)) f",
        fields.iter().map(column).collect::<Vec<_>>().join(", "),
        fields.iter().map(|c| format!("s.{c}")).collect::<Vec<_>>().join(", "),
        fields.join(", "),
    )
}

/// Appends what lets a score condition skip whole reports: a finding with a score of at least
/// `x` is in a report whose largest score is at least `x` (the partial index on `max_score`
/// finds those reports when they are few).
fn push_report_pruning(sql: &mut Sql, conditions: &[Condition]) {
    for c in conditions {
        let at_least = matches!(c.op, FilterOp::Greater | FilterOp::GreaterOrEqual);
        match (&c.field, c.numbers.first().copied().flatten()) {
            (FindingField::Property(key), Some(bound)) if at_least && key == SCORE_PROPERTY => {
                let bound = sql.bind(Arg::Float(bound));
                sql.text.push_str(&format!(" AND f.max_score >= {bound}"));
            }
            _ => {}
        }
    }
}

/// A report's findings as read back for a page: each column's array.
struct FindingSet {
    texts: [Vec<String>; 6],
    scored: Vec<bool>,
    timestamp: Vec<Option<i64>>,
    message: Vec<String>,
    subject: [Vec<String>; 5],
    properties: Vec<String>,
}

impl FindingSet {
    /// The columns [`FindingSet::from_row`] reads, after the key.
    const COLUMNS: &'static str = "policy, rule, result, severity, category, source, scored, timestamp, \
        message, subject_api_version, subject_kind, subject_namespace, subject_name, subject_uid, \
        properties";

    fn from_row(row: &tokio_postgres::Row) -> Self {
        Self {
            texts: [row.get(3), row.get(4), row.get(5), row.get(6), row.get(7), row.get(8)],
            scored: row.get(9),
            timestamp: row.get(10),
            message: row.get(11),
            subject: [row.get(12), row.get(13), row.get(14), row.get(15), row.get(16)],
            properties: row.get(17),
        }
    }

    /// Finding `ordinal`, if the set has it.
    fn finding(&self, ordinal: u32) -> Option<StoredFinding> {
        let i = ordinal as usize;
        let text = |column: &Vec<String>| column.get(i).cloned();
        Some(StoredFinding {
            ordinal,
            texts: [
                text(&self.texts[0])?,
                text(&self.texts[1])?,
                text(&self.texts[2])?,
                text(&self.texts[3])?,
                text(&self.texts[4])?,
                text(&self.texts[5])?,
            ],
            scored: *self.scored.get(i)?,
            timestamp: *self.timestamp.get(i)?,
            message: text(&self.message)?,
            subject: [
                text(&self.subject[0])?,
                text(&self.subject[1])?,
                text(&self.subject[2])?,
                text(&self.subject[3])?,
                text(&self.subject[4])?,
            ],
            properties: text(&self.properties)?,
        })
    }
}

/// The report key of a finding set: namespace, name, resource.
type SetKey = (String, String, String);

/// Reads the sets of `keys` (distinct) in the transaction's snapshot.
async fn read_sets(
    tx: &deadpool_postgres::Transaction<'_>,
    cluster: Uuid,
    keys: &[SetKey],
) -> StoreResult<HashMap<SetKey, FindingSet>> {
    let statement = tx
        .prepare_cached(&format!(
            "SELECT s.namespace, s.name, s.resource, {}
             FROM report_finding_sets s
             JOIN unnest($2::text[], $3::text[], $4::text[]) AS k(namespace, name, resource)
               ON s.namespace = k.namespace AND s.name = k.name AND s.resource = k.resource
             WHERE s.cluster_id = $1",
            FindingSet::COLUMNS
        ))
        .await
        .map_err(db_error)?;
    let column = |i: usize| -> Vec<&str> {
        keys.iter()
            .map(|k| match i {
                0 => k.0.as_str(),
                1 => k.1.as_str(),
                _ => k.2.as_str(),
            })
            .collect()
    };
    let (namespaces, names, resources) = (column(0), column(1), column(2));
    let rows = tx.query(&statement, &[&cluster, &namespaces, &names, &resources]).await.map_err(db_error)?;
    Ok(rows.iter().map(|row| ((row.get(0), row.get(1), row.get(2)), FindingSet::from_row(row))).collect())
}

/// Turns the keys of matching findings (in key order) into findings: the sets of at most
/// [`SETS_PER_READ`] reports are read at a time, so memory holds that many sets.
async fn findings_of(
    tx: &deadpool_postgres::Transaction<'_>,
    cluster: Uuid,
    matches: Vec<FindingKey>,
) -> StoreResult<Vec<FindingRecord>> {
    let mut records = Vec::with_capacity(matches.len());
    let mut start = 0;
    while start < matches.len() {
        // The next run of matches covering SETS_PER_READ reports (keys come grouped by report).
        let mut keys: Vec<SetKey> = Vec::new();
        let mut end = start;
        while end < matches.len() {
            let m = &matches[end];
            let same = keys.last().is_some_and(|k| k.0 == m.namespace && k.1 == m.name && k.2 == m.resource);
            if !same {
                if keys.len() == SETS_PER_READ {
                    break;
                }
                keys.push((m.namespace.clone(), m.name.clone(), m.resource.clone()));
            }
            end += 1;
        }
        let sets = read_sets(tx, cluster, &keys).await?;
        for key in matches[start..end].iter() {
            let set = sets.get(&(key.namespace.clone(), key.name.clone(), key.resource.clone()));
            // Both statements read one snapshot, so the set is there; a miss would be a bug,
            // and an error says so rather than a page quietly short of a finding.
            let Some(stored) = set.and_then(|set| set.finding(key.ordinal)) else {
                return Err(StoreError::backend(format!(
                    "finding {}/{}/{}#{} vanished between two reads of one snapshot",
                    key.resource, key.namespace, key.name, key.ordinal
                )));
            };
            records.push(FindingRecord { key: key.clone(), finding: stored.into_finding() });
        }
        start = end;
    }
    Ok(records)
}

/// Streams a findings list: the snapshot RV first, then chunks in key order, then the end.
///
/// Each round finds the keys of the next matching findings (a statement that unnests only the
/// columns the conditions read), then reads those findings whole from their reports' sets.
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
    // rows in key order: the planner walks the sets' primary key from the report of the last
    // key served and stops early.
    let mut sql = Sql::new(Dialect::Postgres, 6);
    sql.push_scope(query.namespace.as_deref(), &query.visibility);
    sql.push_conditions(&query.conditions);
    push_report_pruning(&mut sql, &query.conditions);
    let filter = std::mem::take(&mut sql.text);
    sql.text = format!(
        "SELECT f.namespace, f.name, f.resource, f.ordinal
         FROM {}
         WHERE f.cluster_id = $1 AND (f.namespace, f.name, f.resource) >= ($2::text, $3::text, $4::text)
           AND (f.namespace, f.name, f.resource, f.ordinal) > ($2::text, $3::text, $4::text, $5::int4){filter}
         ORDER BY f.namespace, f.name, f.resource, f.ordinal LIMIT $6::int8",
        findings_source(&filter)
    );
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
        loop {
            let want = limit.saturating_sub(sent).saturating_add(1).min(READ_ROWS);
            params[1] = Box::new(std::mem::take(&mut after.0));
            params[2] = Box::new(std::mem::take(&mut after.1));
            params[3] = Box::new(std::mem::take(&mut after.2));
            params[4] = Box::new(after.3);
            params[5] = Box::new(want as i64);
            let rows = tx.query(&statement, &as_params(&params)).await.map_err(db_error)?;
            let read = rows.len() as u64;
            let mut keys: Vec<FindingKey> = rows
                .iter()
                .map(|row| FindingKey {
                    namespace: row.get(0),
                    name: row.get(1),
                    resource: row.get(2),
                    ordinal: row.get::<_, i32>(3).max(0) as u32,
                })
                .collect();
            if let Some(last) = rows.last() {
                after = (last.get(0), last.get(1), last.get(2), last.get(3));
            }
            let room = limit.saturating_sub(sent);
            if keys.len() as u64 > room {
                keys.truncate(room as usize);
                more = true;
            }
            for chunk in keys.chunks(CHUNK_ROWS) {
                let records = findings_of(&tx, cluster, chunk.to_vec()).await?;
                sent += records.len() as u64;
                if chunks.send(Ok(FindingChunk::Items(records))).await.is_err() {
                    return Ok(()); // the client went away
                }
            }
            if more || read < want {
                break;
            }
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
    sql.push_scope(query.namespace.as_deref(), &query.visibility);
    sql.push_conditions(&query.conditions);
    push_report_pruning(&mut sql, &query.conditions);
    let filter = std::mem::take(&mut sql.text);
    let select = select.join(", ");
    sql.text = format!(
        "SELECT {select}, count(*) FROM {} WHERE f.cluster_id = $1{filter} GROUP BY {}",
        findings_source(&format!("{select} {filter}")),
        positions.join(", ")
    );
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
