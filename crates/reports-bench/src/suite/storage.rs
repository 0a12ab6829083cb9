//! Storage per report: table and change-log sizes after VACUUM (PostgreSQL) or the database file
//! with its WAL (SQLite), after a workload and at the 6 KB reference size.

use serde_json::json;

use super::{prepare_core, Run, StoreKind, REFERENCE_RESULTS};
use crate::{
    api::Api,
    load::{closed_loop, op, round3},
    procs::ServerProcess,
};

/// Sizes and row counts of the store's two tables.
const SIZES_SQL: &str =
    "SELECT pg_total_relation_size('report_objects')::float8, (SELECT count(*) FROM report_objects),
    pg_total_relation_size('report_changes')::float8, (SELECT count(*) FROM report_changes),
    (SELECT coalesce(avg(pg_column_size(body)), 0)::float8 FROM report_objects),
    (SELECT coalesce(avg(octet_length(body)), 0)::float8 FROM report_objects)";

impl Run {
    /// Bytes per report at the size the storage target names (6 KB of JSON): a fifth of the core
    /// count of 16-result reports, created through the API into a fresh database.
    pub(super) async fn storage_at_reference_size(&mut self, store: StoreKind) -> anyhow::Result<()> {
        let count = (self.settings.core_reports / 5).max(10);
        let docs = prepare_core(count, REFERENCE_RESULTS);
        let storage = self.storage(store, "reference")?;
        let server = ServerProcess::start(Some(&storage))?;
        let api = Api::connect(&server.base, self.settings.concurrency).await?;
        let create = {
            let (api, docs) = (api.clone(), docs.clone());
            op(move |i| {
                let (api, docs) = (api.clone(), docs.clone());
                async move {
                    let doc = &docs[i];
                    api.create(i, &api.collection("policyreports", Some(&doc.namespace)), doc.body.clone())
                        .await?;
                    Ok(())
                }
            })
        };
        let measured = closed_loop(self.settings.concurrency, count, create).await;
        let size = docs.first().map_or(0, |d| d.body.len());
        let stage = format!("{size}-byte reports ({REFERENCE_RESULTS} results)");
        self.storage_per_report(store, store.label(), &storage, &stage, measured.ok, false).await
    }

    /// Bytes per report after VACUUM (PostgreSQL: `report_objects` with its indexes and TOAST;
    /// the change log `report_changes` apart, before and, when `compact`, after compaction).
    pub(super) async fn storage_per_report(
        &mut self,
        store: StoreKind,
        system: &str,
        storage: &str,
        stage: &str,
        objects: usize,
        compact: bool,
    ) -> anyhow::Result<()> {
        match store {
            StoreKind::Postgres => {
                let (client, connection) = tokio_postgres::connect(storage, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client.batch_execute("VACUUM (ANALYZE) report_objects").await?;
                client.batch_execute("VACUUM (ANALYZE) report_changes").await?;
                let row = client.query_one(SIZES_SQL, &[]).await?;
                let (objects_bytes, rows, changes_before, change_rows_before): (f64, i64, f64, i64) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                let mut values = json!({
                    "stage": stage,
                    "objects": rows,
                    "report_objects_bytes_per_report": (objects_bytes / rows.max(1) as f64).round(),
                    "report_objects_mb": round3(objects_bytes / 1e6),
                    "body_bytes_stored_avg": row.get::<_, f64>(4).round(),
                    "body_bytes_json_avg": row.get::<_, f64>(5).round(),
                    "report_changes_rows": change_rows_before,
                    "report_changes_mb": round3(changes_before / 1e6),
                    "report_changes_bytes_per_report": (changes_before / rows.max(1) as f64).round(),
                });
                if compact {
                    let store_handle = reports_store::open(storage, &Default::default()).await?;
                    let dropped = store_handle.compact(0).await?;
                    client.batch_execute("VACUUM (ANALYZE) report_changes").await?;
                    let row = client.query_one(SIZES_SQL, &[]).await?;
                    let (changes_after, change_rows_after): (f64, i64) = (row.get(2), row.get(3));
                    values["compaction_dropped_rows"] = json!(dropped);
                    values["report_changes_rows_after_compaction"] = json!(change_rows_after);
                    values["report_changes_mb_after_compaction"] = json!(round3(changes_after / 1e6));
                }
                self.record_value(system, "storage", values);
            }
            StoreKind::Sqlite => {
                let path = storage.trim_start_matches("sqlite://");
                let file_bytes =
                    |suffix: &str| std::fs::metadata(format!("{path}{suffix}")).map_or(0, |m| m.len());
                let total = file_bytes("") + file_bytes("-wal");
                self.record_value(
                    system,
                    "storage",
                    json!({
                        "stage": stage,
                        "objects": objects,
                        "database_file_bytes_per_report": (total as f64 / objects.max(1) as f64).round(),
                        "note": "file plus WAL; objects, change log and indexes together",
                    }),
                );
            }
        }
        Ok(())
    }
}
