//! Single-row reads: one object, and the cluster's counters.

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::errors::db_error;
use crate::{error::StoreResult, model::StoredObject};

/// An object from a row of `namespace, name, uid, rv, body`.
pub(super) fn stored_from_row(row: &tokio_postgres::Row) -> StoredObject {
    StoredObject {
        namespace: row.get(0),
        name: row.get(1),
        uid: row.get(2),
        rv: row.get::<_, i64>(3) as u64,
        body: row.get(4),
    }
}

/// One object by key.
pub(super) async fn object<C: GenericClient>(
    client: &C,
    cluster: Uuid,
    (resource, namespace, name): (&str, &str, &str),
) -> StoreResult<Option<StoredObject>> {
    let stmt = client
        .prepare_cached(
            "SELECT namespace, name, uid, rv, body FROM report_objects
             WHERE cluster_id = $1 AND resource = $2 AND namespace = $3 AND name = $4",
        )
        .await
        .map_err(db_error)?;
    let row = client.query_opt(&stmt, &[&cluster, &resource, &namespace, &name]).await.map_err(db_error)?;
    Ok(row.as_ref().map(stored_from_row))
}

/// The cluster's newest RV.
pub(super) async fn newest_rv<C: GenericClient>(client: &C, cluster: Uuid) -> StoreResult<u64> {
    counter(client, "SELECT rv FROM report_counters WHERE cluster_id = $1", cluster).await
}

/// The cluster's compacted RV.
pub(super) async fn compacted_rv<C: GenericClient>(client: &C, cluster: Uuid) -> StoreResult<u64> {
    counter(client, "SELECT compacted_rv FROM report_counters WHERE cluster_id = $1", cluster).await
}

async fn counter<C: GenericClient>(client: &C, sql: &str, cluster: Uuid) -> StoreResult<u64> {
    let stmt = client.prepare_cached(sql).await.map_err(db_error)?;
    Ok(client.query_one(&stmt, &[&cluster]).await.map_err(db_error)?.get::<_, i64>(0) as u64)
}

/// Objects per resource of the cluster.
pub(super) async fn count_by_resource<C: GenericClient>(
    client: &C,
    cluster: Uuid,
) -> StoreResult<Vec<(String, u64)>> {
    let stmt = client
        .prepare_cached(
            "SELECT resource, count(*) FROM report_objects WHERE cluster_id = $1 GROUP BY resource",
        )
        .await
        .map_err(db_error)?;
    let rows = client.query(&stmt, &[&cluster]).await.map_err(db_error)?;
    Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64)).collect())
}
