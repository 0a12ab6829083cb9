//! Findings rows written in the report write's transaction, and the backfill at open.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::{
    error::StoreResult,
    findings::{FindingRow, FindingsIndex},
    model::parse_body,
    sqlite::errors::sqlite_error,
};

/// Reports per backfill transaction.
const BATCH: i64 = 100;

/// Inserts a report's findings rows.
pub(in crate::sqlite) fn insert(
    tx: &Transaction<'_>,
    (resource, namespace, name): (&str, &str, &str),
    rows: &[FindingRow],
) -> StoreResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut statement = tx
        .prepare_cached(
            "INSERT INTO findings (resource, namespace, name, ordinal, policy, rule, result, severity, category,
                source, scored, timestamp, message, subject_api_version, subject_kind, subject_namespace,
                subject_name, subject_uid, properties, numbers, score)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
        )
        .map_err(sqlite_error)?;
    for row in rows {
        let [api_version, kind, subject_namespace, subject_name, uid] = &row.subject;
        statement
            .execute(params![
                resource,
                namespace,
                name,
                row.ordinal,
                row.policy,
                row.rule,
                row.result,
                row.severity,
                row.category,
                row.source,
                row.scored,
                row.timestamp,
                row.message,
                api_version,
                kind,
                subject_namespace,
                subject_name,
                uid,
                row.properties,
                row.numbers,
                row.score,
            ])
            .map_err(sqlite_error)?;
    }
    Ok(())
}

/// Deletes a report's findings rows.
pub(in crate::sqlite) fn delete(
    tx: &Transaction<'_>,
    (resource, namespace, name): (&str, &str, &str),
) -> StoreResult<()> {
    tx.prepare_cached("DELETE FROM findings WHERE namespace = ?1 AND name = ?2 AND resource = ?3")
        .map_err(sqlite_error)?
        .execute(params![namespace, name, resource])
        .map_err(sqlite_error)?;
    Ok(())
}

/// Brings the findings in line with `index` before the store serves: kinds that left the set
/// lose their rows, kinds that joined it are rebuilt from their reports, a batch of reports per
/// transaction (memory holds one batch); the set is then recorded, so the next open with the
/// same set does nothing, and an open that stopped halfway starts those kinds over.
pub(in crate::sqlite) fn backfill(conn: &mut Connection, index: &FindingsIndex) -> StoreResult<()> {
    let recorded: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'findings_index'", [], |r| r.get(0))
        .optional()
        .map_err(sqlite_error)?;
    let Some(plan) = index.backfill_from(recorded.as_deref()) else { return Ok(()) };
    for resource in &plan.dropped {
        conn.execute("DELETE FROM findings WHERE resource = ?1", [resource]).map_err(sqlite_error)?;
    }
    for resource in &plan.rebuilt {
        tracing::info!(resource, "indexing the findings of existing reports");
        conn.execute("DELETE FROM findings WHERE resource = ?1", [resource]).map_err(sqlite_error)?;
        let (mut namespace, mut name) = (String::new(), String::new());
        loop {
            let tx = conn.transaction().map_err(sqlite_error)?;
            let reports: Vec<(String, String, String)> = {
                let mut statement = tx
                    .prepare_cached(
                        "SELECT namespace, name, body FROM objects
                         WHERE resource = ?1 AND (namespace, name) > (?2, ?3) ORDER BY namespace, name LIMIT ?4",
                    )
                    .map_err(sqlite_error)?;
                let rows = statement
                    .query_map(params![resource, namespace, name, BATCH], |r| {
                        Ok((r.get(0)?, r.get(1)?, crate::sqlite::body::unpack(r.get_ref(2)?)?))
                    })
                    .map_err(sqlite_error)?;
                rows.collect::<Result<_, _>>().map_err(sqlite_error)?
            };
            for (ns, report, body) in &reports {
                insert(&tx, (resource, ns, report), &index.rows(resource, &parse_body(body)?))?;
            }
            tx.commit().map_err(sqlite_error)?;
            match reports.last() {
                Some((ns, report, _)) if reports.len() as i64 == BATCH => {
                    (namespace, name) = (ns.clone(), report.clone())
                }
                _ => break,
            }
        }
    }
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('findings_index', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [&plan.recorded],
    )
    .map_err(sqlite_error)?;
    Ok(())
}
