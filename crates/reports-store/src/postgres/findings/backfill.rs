//! Findings of reports written before they were indexed: a database from before the findings
//! migration, or a start with another set of indexed kinds. Runs at start-up under the migration
//! lock, so replicas starting together do it once; the set it indexed is recorded per cluster,
//! and a start with the recorded set does nothing.
//!
//! Kinds that left the set lose their rows; kinds that joined it are rebuilt: their leftover rows
//! (a start that stopped halfway) are dropped, then their reports are read in key order, a batch
//! per transaction, each batch's rows locked (`FOR SHARE`) so a concurrent update of one of them
//! waits and then writes its own findings over these. Memory holds one batch.

use deadpool_postgres::Object;
use uuid::Uuid;

use super::write::{sets_statement, FindingArrays, SetRow};
use crate::{error::StoreResult, findings::FindingsIndex, model::parse_body, postgres::errors::db_error};

/// Reports per backfill transaction.
const BATCH: i64 = 100;

/// Brings the findings of `cluster` in line with `index` (see the module docs).
pub(in crate::postgres) async fn backfill(
    client: &mut Object,
    cluster: Uuid,
    index: &FindingsIndex,
) -> StoreResult<()> {
    let recorded: Option<String> = client
        .query_opt("SELECT resources FROM report_findings_indexed WHERE cluster_id = $1", &[&cluster])
        .await
        .map_err(db_error)?
        .map(|row| row.get(0));
    let Some(plan) = index.backfill_from(recorded.as_deref()) else { return Ok(()) };
    for resource in &plan.dropped {
        drop_rows(client, cluster, resource).await?;
    }
    for resource in &plan.rebuilt {
        tracing::info!(resource, "indexing the findings of existing reports");
        drop_rows(client, cluster, resource).await?;
        rebuild(client, cluster, resource, index).await?;
    }
    client
        .execute(
            "INSERT INTO report_findings_indexed (cluster_id, resources) VALUES ($1, $2)
             ON CONFLICT (cluster_id) DO UPDATE SET resources = excluded.resources",
            &[&cluster, &plan.recorded],
        )
        .await
        .map_err(db_error)?;
    Ok(())
}

async fn drop_rows(client: &Object, cluster: Uuid, resource: &str) -> StoreResult<()> {
    client
        .execute(
            "DELETE FROM report_finding_sets WHERE cluster_id = $1 AND resource = $2",
            &[&cluster, &resource],
        )
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Writes the findings of every report of `resource`, a batch per transaction.
async fn rebuild(
    client: &mut Object,
    cluster: Uuid,
    resource: &str,
    index: &FindingsIndex,
) -> StoreResult<()> {
    let write = sets_statement(true);
    let (mut namespace, mut name) = (String::new(), String::new());
    loop {
        let tx = client.transaction().await.map_err(db_error)?;
        let rows = tx
            .query(
                "SELECT namespace, name, body FROM report_objects
                 WHERE cluster_id = $1 AND resource = $2 AND (namespace, name) > ($3, $4)
                 ORDER BY namespace, name LIMIT $5 FOR SHARE",
                &[&cluster, &resource, &namespace, &name, &BATCH],
            )
            .await
            .map_err(db_error)?;
        let Some(last) = rows.last() else { break };
        (namespace, name) = (last.get(0), last.get(1));
        let mut keys: (Vec<&str>, Vec<&str>, Vec<&str>) = Default::default();
        let mut findings: Vec<SetRow> = Vec::with_capacity(rows.len());
        for row in &rows {
            keys.0.push(resource);
            keys.1.push(row.get(0));
            keys.2.push(row.get(1));
            findings.push(SetRow::new(&index.rows(resource, &parse_body(row.get(2))?)));
        }
        let mut arrays = FindingArrays::default();
        for (i, rows) in findings.iter().enumerate() {
            arrays.push(i + 1, rows);
        }
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&cluster, &keys.0, &keys.1, &keys.2];
        params.extend(arrays.params());
        tx.execute(&write, &params).await.map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        if (rows.len() as i64) < BATCH {
            break;
        }
    }
    Ok(())
}
