//! The conformance suite on the SQLite store, plus what only a file-backed store can show.

use std::sync::Arc;

use reports_store::{conformance, sqlite::SqliteStore, DynStore, Store};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_conformance_suite() {
    conformance::run_all(|| async { Arc::new(SqliteStore::open_temporary().unwrap()) as DynStore }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_and_resource_versions_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/reports.db");
    let (created, last_rv) = {
        let store = SqliteStore::open(&path).unwrap();
        let body = json!({"apiVersion":"wgpolicyk8s.io/v1alpha2","kind":"PolicyReport",
            "metadata":{"name":"a","namespace":"ns","uid":"u"}});
        let created = store.create("policyreports", body).await.unwrap();
        (created.clone(), store.current_rv().await.unwrap())
    };
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.get("policyreports", "ns", "a").await.unwrap(), Some(created));
    let next = store
        .create("policyreports", json!({"metadata":{"name":"b","namespace":"ns","uid":"u2"}}))
        .await
        .unwrap();
    assert!(next.rv > last_rv, "the counter continues after a restart instead of starting over");
}

#[tokio::test]
async fn refuses_an_unknown_storage_url() {
    let err = reports_store::open("mysql://x", &Default::default()).await.err().unwrap();
    assert!(err.to_string().contains("unsupported storage URL"), "{err}");
}
