//! Adopting a database written by kyverno/reports-server: one table per kind with the report
//! as JSONB, golang-migrate's `schema_migrations` at version 11. Every report is copied into
//! `report_objects` in the start-up transaction (so a crash or a refusal leaves nothing half
//! done), with a fresh RV, its apiVersion and kind from the embedded CRDs, and a uid and
//! creationTimestamp where upstream left them empty. The upstream tables are then renamed with
//! an `_upstream_backup` suffix rather than dropped: nothing is destroyed, and a second start
//! does not import again. Rows that upstream never assigned to a cluster (the all-zero UUID)
//! belong to this server's cluster, as upstream itself would have decided.
//!
//! **The adoption point.** Clients of upstream (Kyverno, informers) may still hold its
//! resourceVersions: small per-process counters, unrelated to ours. A watch or continue token
//! from one of them must get 410 and relist, never a stream of "changes since" an RV that means
//! nothing here. So the adopted reports are numbered from above every RV upstream could have
//! handed out (its largest stored RV plus [`ADOPTION_GAP`], for the deletions and replicas
//! whose counters ran past it), and the change log of every adopted cluster starts compacted
//! at the adoption point: any RV below it is too old, and the RV of a list served right after
//! adoption is the first one a watch can start from.

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use reports_core::Catalogue;

use super::errors::db_error;
use crate::error::{StoreError, StoreResult};

/// The upstream (kyverno/reports-server) schema version this store adopts in place.
const UPSTREAM_SCHEMA_VERSION: i64 = 11;

/// Suffix given to adopted upstream tables.
const BACKUP_SUFFIX: &str = "_upstream_backup";

async fn table_columns<C: GenericClient>(client: &C, table: &str) -> StoreResult<Vec<String>> {
    Ok(client
        .query(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1",
            &[&table],
        )
        .await
        .map_err(db_error)?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// How far above upstream's largest stored RV the adopted reports are numbered: room for the
/// RVs upstream handed out without storing them (deletions after the last write, other replicas'
/// counters), so that no RV a client of upstream holds can be taken for one of ours.
const ADOPTION_GAP: i64 = 1_000_000;

/// Whether an upstream database waits here to be adopted. A dirty or unknown upstream schema
/// version is refused before anything is changed.
pub async fn find<C: GenericClient>(client: &C) -> StoreResult<bool> {
    let marker = table_columns(client, "schema_migrations").await?;
    if !(marker.iter().any(|c| c == "version") && marker.iter().any(|c| c == "dirty")) {
        return Ok(false);
    }
    let row =
        client.query_one("SELECT version, dirty FROM schema_migrations", &[]).await.map_err(db_error)?;
    let (version, dirty): (i64, bool) = (row.get(0), row.get(1));
    if dirty || version != UPSTREAM_SCHEMA_VERSION {
        return Err(StoreError::backend(format!(
            "found an upstream reports-server schema at version {version}{}; only version \
             {UPSTREAM_SCHEMA_VERSION} (clean) can be adopted: run upstream's migrations to completion first",
            if dirty { " (dirty)" } else { "" }
        )));
    }
    Ok(true)
}

/// Imports the upstream database [`find`] found, within the caller's transaction.
pub async fn adopt<C: GenericClient>(tx: &C, cluster: Uuid) -> StoreResult<()> {
    let catalogue =
        Catalogue::embedded().map_err(|e| StoreError::backend(format!("the embedded CRDs: {e}")))?;
    let mut sources = Vec::new();
    let mut tables = Vec::new();
    for kind in catalogue.kinds() {
        let table = kind.storage_key();
        let columns = table_columns(tx, table).await?;
        if columns.is_empty() {
            continue;
        }
        let namespace = if columns.iter().any(|c| c == "namespace") { "namespace::text" } else { "''" };
        let cluster_id = if columns.iter().any(|c| c == "cluster_id") { "cluster_id" } else { "NULL::uuid" };
        sources.push(format!(
            "SELECT coalesce(nullif({cluster_id}, '00000000-0000-0000-0000-000000000000'::uuid), $1) AS cluster_id,
                    '{table}'::text AS resource, '{api_version}'::text AS api_version, '{kind}'::text AS kind,
                    {namespace} AS namespace, name::text AS name, report FROM \"{table}\"",
            api_version = kind.api_version(),
            kind = kind.kind,
        ));
        tables.push(table.to_string());
    }
    if sources.is_empty() {
        return Ok(());
    }
    let sources = sources.join("\n UNION ALL ");
    // Above every counter of ours and every RV upstream stored (numeric ones; upstream wrote
    // nothing else, but a hand-edited row must not fail the adoption).
    let adoption_point: i64 = tx
        .query_one(
            &format!(
                "WITH src AS ({sources})
                 SELECT GREATEST((SELECT coalesce(max(rv), 1) FROM report_counters),
                                 (SELECT coalesce(max((report -> 'metadata' ->> 'resourceVersion')::numeric), 0)
                                  FROM src WHERE report -> 'metadata' ->> 'resourceVersion' ~ '^[0-9]{{1,15}}$')::bigint)
                        + {ADOPTION_GAP}"
            ),
            &[&cluster],
        )
        .await
        .map_err(db_error)?
        .get(0);
    let import = format!(
        "WITH src AS ({sources}),
        numbered AS (
            SELECT s.*, $2::bigint
                     + row_number() OVER (PARTITION BY s.cluster_id ORDER BY s.resource, s.namespace, s.name) AS new_rv,
                   coalesce(nullif(s.report -> 'metadata' ->> 'uid', ''), gen_random_uuid()::text) AS uid,
                   coalesce(s.report -> 'metadata', '{{}}'::jsonb) AS meta
            FROM src s),
        fixed AS (
            SELECT n.*, n.report || jsonb_build_object(
                'apiVersion', n.api_version, 'kind', n.kind,
                'metadata', (CASE WHEN n.namespace = '' THEN n.meta - 'namespace'
                                  ELSE n.meta || jsonb_build_object('namespace', n.namespace) END)
                    || jsonb_build_object(
                        'name', n.name, 'uid', n.uid, 'resourceVersion', n.new_rv::text,
                        'creationTimestamp', coalesce(n.meta -> 'creationTimestamp',
                            to_jsonb(to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'))))) AS doc
            FROM numbered n)
        INSERT INTO report_objects (cluster_id, resource, namespace, name, uid, rv, label_hashes, body)
        SELECT cluster_id, resource, namespace, name, uid, new_rv,
               ARRAY(SELECT reports_label_hash(l.key, l.value)
                     FROM jsonb_each_text(CASE WHEN jsonb_typeof(meta -> 'labels') = 'object'
                                               THEN meta -> 'labels' ELSE '{{}}'::jsonb END) AS l
                     ORDER BY 1),
               doc::text
        FROM fixed",
    );
    let imported = tx.execute(&import, &[&cluster, &adoption_point]).await.map_err(db_error)?;
    // This server's cluster and every adopted one continue after their imported reports, with
    // the log compacted up to there: older RVs get 410 (even with nothing imported, as clients
    // of an emptied upstream may still hold RVs).
    tx.execute(
        "INSERT INTO report_counters (cluster_id, rv, compacted_rv)
         SELECT id, GREATEST($2, coalesce((SELECT max(rv) FROM report_objects o WHERE o.cluster_id = id), 0)),
                GREATEST($2, coalesce((SELECT max(rv) FROM report_objects o WHERE o.cluster_id = id), 0))
         FROM (SELECT $1::uuid UNION SELECT DISTINCT cluster_id FROM report_objects WHERE rv > $2) AS adopted(id)
         ON CONFLICT (cluster_id) DO UPDATE SET rv = GREATEST(report_counters.rv, excluded.rv),
             compacted_rv = GREATEST(report_counters.compacted_rv, excluded.compacted_rv)",
        &[&cluster, &adoption_point],
    )
    .await
    .map_err(db_error)?;
    tx.execute(
        "INSERT INTO clusters (id) SELECT DISTINCT cluster_id FROM report_objects ON CONFLICT (id) DO NOTHING",
        &[],
    )
    .await
    .map_err(db_error)?;
    for table in tables.iter().chain(std::iter::once(&"schema_migrations".to_string())) {
        tx.batch_execute(&format!("ALTER TABLE \"{table}\" RENAME TO \"{table}{BACKUP_SUFFIX}\""))
            .await
            .map_err(db_error)?;
    }
    tracing::info!(
        reports = imported,
        adoption_point,
        tables = ?tables,
        "adopted an upstream reports-server database; its tables were kept with the suffix {BACKUP_SUFFIX}"
    );
    Ok(())
}
