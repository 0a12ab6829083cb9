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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commit_trace_covers_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("reports.db").display());
    conformance::the_commit_trace_covers_every_acknowledged_write(&url).await;
}

#[tokio::test]
async fn refuses_an_unknown_storage_url() {
    let err = reports_store::open("mysql://x", &Default::default()).await.err().unwrap();
    assert!(err.to_string().contains("unsupported storage URL"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_copied_into_the_database_file_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reports.db");
    let store = SqliteStore::open(&path).unwrap();
    let file_size = || std::fs::metadata(&path).map_or(0, |m| m.len());
    let empty = file_size();
    // About 2 MB of reports: the commits land in the WAL; with automatic checkpoints off on the
    // writer, only the checkpoint thread brings them into the database file.
    for i in 0..256 {
        let body = json!({"metadata":{"name":format!("r{i}"),"namespace":"ns","uid":format!("u{i}")},
            "results":[{"message":incompressible(8 * 1024, i)}]});
        store.create("policyreports", body).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while file_size() < empty + 1024 * 1024 {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint copied the WAL into the file within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(store.get("policyreports", "ns", "r255").await.unwrap().map(|o| o.name), Some("r255".into()));
}

/// Concurrent writes share transactions (group commit) without changing any answer: taken names
/// are refused mid-batch without undoing their neighbours, successful writes take dense RVs, and
/// the change log (read from memory and from the file) holds exactly the writes that succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits_without_changing_any_answer() {
    let store = Arc::new(SqliteStore::open_temporary().unwrap());
    let report = |name: String| {
        json!({"apiVersion":"wgpolicyk8s.io/v1alpha2","kind":"PolicyReport",
            "metadata":{"name": name,"namespace":"ns","uid": format!("uid-{name}")}})
    };
    store.create("policyreports", report("n0".into())).await.unwrap();
    let start = store.current_rv().await.unwrap();
    let mut rounds = 0;
    // Group commit needs writes to meet at the writer; on a busy machine they always do, on an
    // idle one a few rounds are enough.
    while store.grouped_writes() == 0 {
        rounds += 1;
        assert!(rounds <= 50, "writes sent together never shared a transaction");
        let tasks: Vec<_> = (0..96)
            .map(|i| {
                let store = store.clone();
                let (name, body) = match i % 40 {
                    0 => ("n0".to_string(), report("n0".into())),
                    // Fails inside the store after taking an RV: its savepoint must give it back.
                    20 => ("broken".to_string(), json!({"kind": "PolicyReport"})),
                    n => (format!("r{rounds}-n{n}"), report(format!("r{rounds}-n{n}"))),
                };
                tokio::spawn(async move { (name, store.create("policyreports", body).await) })
            })
            .collect();
        for task in tasks {
            match task.await.unwrap() {
                (_, Ok(_)) | (_, Err(reports_store::StoreError::AlreadyExists)) => {}
                (name, Err(reports_store::StoreError::Backend(_))) if name == "broken" => {}
                (name, Err(e)) => panic!("{name}: {e}"),
            }
        }
    }
    let end = store.current_rv().await.unwrap();
    // Every round: 38 free names, each created once (the other attempts refused), n0 refused,
    // the broken ones failed.
    assert_eq!(end - start, 38 * rounds as u64, "successful creates take dense RVs, failures none");
    let logged = store.changes_since(None, start, 100_000).await.unwrap();
    assert_eq!(logged.iter().map(|c| c.rv).collect::<Vec<_>>(), (start + 1..=end).collect::<Vec<_>>());
    for change in &logged {
        let stored = store.get("policyreports", "ns", &change.object.name).await.unwrap().unwrap();
        assert_eq!(stored, change.object, "the log holds what is stored, and nothing refused");
    }
    // The same from the file, past the in-memory window of recent changes.
    let reopened = SqliteStore::open(store.path()).unwrap();
    let from_file = reopened.changes_since(None, start, 100_000).await.unwrap();
    assert_eq!(from_file.iter().map(|c| c.rv).collect::<Vec<_>>(), (start + 1..=end).collect::<Vec<_>>());
}

/// A report of about 8 KB, which stays about 8 KB compressed.
fn padded_report(i: usize) -> serde_json::Value {
    json!({"apiVersion":"wgpolicyk8s.io/v1alpha2","kind":"PolicyReport",
        "metadata":{"name":format!("r{i}"),"namespace":"ns","uid":format!("u{i}")},
        "results":[{"message":incompressible(8 * 1024, i)}]})
}

/// `len` hex digits that no compressor can shrink much (the store compresses bodies).
fn incompressible(len: usize, seed: usize) -> String {
    let mut state = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from_digit((state % 16) as u32, 16).unwrap_or('0')
        })
        .collect()
}

/// Waits (at most 30 s) until `condition` holds, failing the test with `what` otherwise.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "{what} within 30 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Reads without pause keep SQLite from ever starting its WAL over on its own (it grew to 5 GB
/// under a flood); the store resets it once it passes its limit, reads going on all the while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_reset_past_its_limit_while_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reports.db");
    // Opened as the server opens its store, so the limit is the one its settings carry.
    let settings = reports_store::StoreSettings {
        sqlite: reports_store::sqlite::SqliteLimits { wal_bytes: 1 << 20, ..Default::default() },
        ..Default::default()
    };
    let store = reports_store::open(&format!("sqlite://{}", path.display()), &settings).await.unwrap();
    let wal = dir.path().join("reports.db-wal");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = tokio::spawn({
        let (store, stop) = (store.clone(), stop.clone());
        async move {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                store.get("policyreports", "ns", "r0").await.unwrap();
                reads += 1;
            }
            reads
        }
    });
    let mut largest = 0;
    for i in 0..1024 {
        store.create("policyreports", padded_report(i)).await.unwrap();
        largest = largest.max(file_len(&wal));
    }
    assert!(largest > 4 << 20, "the writes did reach the WAL ({largest} bytes at most)");
    eventually("the WAL reset below its limit while reads continue", || file_len(&wal) <= 1 << 20).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.await.unwrap() > 0);
    assert_eq!(
        store.get("policyreports", "ns", "r1023").await.unwrap().map(|o| o.name),
        Some("r1023".into())
    );
}

/// Deleted reports give their space back to the file system, and a clean close leaves no WAL
/// and no free pages behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_space_is_given_back_and_a_clean_close_leaves_a_compact_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reports.db");
    let limits = reports_store::sqlite::SqliteLimits { wal_bytes: 1 << 20, free_pages: 64 };
    let store = SqliteStore::open_with_limits(&path, limits).unwrap();
    let mut created = Vec::new();
    for i in 0..1024 {
        created.push(store.create("policyreports", padded_report(i)).await.unwrap());
    }
    eventually("the reports reached the database file", || file_len(&path) > 4 << 20).await;
    let full = file_len(&path);
    for chunk in created.chunks(256) {
        store.delete_batch("policyreports", chunk.to_vec()).await.unwrap();
    }
    // The change log's copies go with compaction; then the pages are free.
    store.compact(0).await.unwrap();
    eventually("the free pages given back", || file_len(&path) < full / 4).await;

    drop(store);

    // Free pages under the threshold stay until the store closes, and go then.
    let patient = reports_store::sqlite::SqliteLimits { free_pages: u64::MAX, ..limits };
    let store = SqliteStore::open_with_limits(&path, patient).unwrap();
    let mut created = Vec::new();
    for i in 0..64 {
        created.push(store.create("policyreports", padded_report(i)).await.unwrap());
    }
    store.delete_batch("policyreports", created).await.unwrap();
    store.compact(0).await.unwrap();
    drop(store);
    assert_eq!(file_len(&dir.path().join("reports.db-wal")), 0, "no WAL left after a clean close");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0)).unwrap();
    assert_eq!(free, 0, "no free pages left after a clean close");
}

/// A file made before incremental vacuum existed is rebuilt once at open, keeping its reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_file_is_converted_to_incremental_vacuum() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reports.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        store.create("policyreports", padded_report(1)).await.unwrap();
    }
    // As an older binary left it: no auto-vacuum.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA journal_mode = DELETE; PRAGMA auto_vacuum = NONE; VACUUM;").unwrap();
    assert_eq!(conn.query_row("PRAGMA auto_vacuum", [], |r| r.get::<_, i64>(0)).unwrap(), 0);
    drop(conn);
    let store = SqliteStore::open(&path).unwrap();
    assert!(store.get("policyreports", "ns", "r1").await.unwrap().is_some());
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(conn.query_row("PRAGMA auto_vacuum", [], |r| r.get::<_, i64>(0)).unwrap(), 2, "incremental");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_findings_pass_the_findings_conformance_suite() {
    reports_store::findings_conformance::run_all(|index| async move {
        Arc::new(SqliteStore::open_temporary_with(index).unwrap()) as DynStore
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_findings_backfill_existing_reports() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reports.db");
    reports_store::findings_conformance::backfill_indexes_existing_reports(|index| {
        let path = path.clone();
        async move {
            let limits = reports_store::sqlite::SqliteLimits::default();
            Arc::new(SqliteStore::open_with_options(&path, limits, index).unwrap()) as DynStore
        }
    })
    .await;
}

/// A file written before bodies were compressed and before the change log kept replaced bodies
/// (schema 2: TEXT bodies, a full copy in every change) is migrated in place and reads as before;
/// its objects' next versions are compressed, and a list at an RV before the upgrade still shows
/// the version of then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_schema_2_keeps_its_text_bodies_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reports.db");
    let old = r#"{"apiVersion":"wgpolicyk8s.io/v1alpha2","kind":"PolicyReport","metadata":{"name":"r1","namespace":"ns","uid":"u1","resourceVersion":"2"},"summary":{"pass":1}}"#;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL;
         CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         INSERT INTO meta VALUES ('schema_version', '2'), ('compacted_rv', '0');
         CREATE TABLE counter (id INTEGER PRIMARY KEY CHECK (id = 1), rv INTEGER NOT NULL);
         INSERT INTO counter VALUES (1, 2);
         CREATE TABLE objects (resource TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
             uid TEXT NOT NULL, rv INTEGER NOT NULL, labels TEXT NOT NULL, body TEXT NOT NULL,
             PRIMARY KEY (resource, namespace, name)) WITHOUT ROWID;
         CREATE TABLE changes (rv INTEGER PRIMARY KEY, resource TEXT NOT NULL, namespace TEXT NOT NULL,
             name TEXT NOT NULL, uid TEXT NOT NULL,
             type TEXT NOT NULL CHECK (type IN ('ADDED', 'MODIFIED', 'DELETED')), labels TEXT NOT NULL,
             prev_labels TEXT, body TEXT NOT NULL, created_at INTEGER NOT NULL);
         CREATE INDEX changes_by_resource ON changes (resource, rv);",
    )
    .unwrap();
    conn.execute("INSERT INTO objects VALUES ('policyreports', 'ns', 'r1', 'u1', 2, '{}', ?1)", [old])
        .unwrap();
    conn.execute(
        "INSERT INTO changes VALUES (2, 'policyreports', 'ns', 'r1', 'u1', 'ADDED', '{}', NULL, ?1, 0)",
        [old],
    )
    .unwrap();
    drop(conn);

    let store = SqliteStore::open(&path).unwrap();
    let stored = store.get("policyreports", "ns", "r1").await.unwrap().unwrap();
    assert_eq!(stored.body, old, "the TEXT body served as stored");
    let mut next = stored.parse().unwrap();
    next["summary"]["pass"] = json!(2);
    let updated = store.update("policyreports", next, 2).await.unwrap();
    let changes = store.changes_since(Some("policyreports"), 0, 10).await.unwrap();
    assert_eq!(
        changes.iter().map(|c| c.object.body.as_str()).collect::<Vec<_>>(),
        [old, updated.body.as_str()]
    );
    let query =
        reports_store::ListQuery { resource: "policyreports".into(), at: Some(2), ..Default::default() };
    let (_, objects, _) = conformance::collect(&(Arc::new(store) as DynStore), query).await;
    assert_eq!(objects.iter().map(|o| o.body.as_str()).collect::<Vec<_>>(), [old], "the version at RV 2");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let kind: String =
        conn.query_row("SELECT typeof(body) FROM objects WHERE name = 'r1'", [], |r| r.get(0)).unwrap();
    assert_eq!(kind, "blob", "the new version is compressed");
    let rowid: i64 = conn.query_row("SELECT rowid FROM objects WHERE name = 'r1'", [], |r| r.get(0)).unwrap();
    assert!(rowid > 0, "objects is a rowid table, whose rows stay on their page");
}
