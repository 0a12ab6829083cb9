//! The conformance suite on the PostgreSQL store, plus what only PostgreSQL has: several stores
//! (replicas) on one database, cluster identity, adopting an upstream database, outages.
//!
//! One throwaway cluster serves the whole binary; every test gets its own database copied from a
//! template that was migrated once.

use std::sync::Arc;

use reports_store::{
    conformance,
    postgres::{PgSettings, PgStore},
    DynStore, Store, StoreError,
};
use reports_test_support::PgCluster;
use serde_json::{json, Value};

fn cluster() -> &'static PgCluster {
    PgCluster::shared()
}

/// A new, migrated, empty database; returns its URL.
async fn fresh_database() -> String {
    PgCluster::fresh_database(|url| async move {
        drop(PgStore::connect(&url, &PgSettings::default()).await.expect("migrate the template"));
        // Cluster rows are per test database: keep the template free of them.
        cluster()
            .psql(
                reports_test_support::TEMPLATE_DATABASE,
                "DELETE FROM report_counters; DELETE FROM clusters;",
            )
            .unwrap();
    })
    .await
}

async fn store_on(url: &str, settings: &PgSettings) -> Arc<PgStore> {
    Arc::new(PgStore::connect(url, settings).await.expect("connect"))
}

fn report(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
           "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": {"app": name}},
           "results": [{"policy": "p", "result": "pass"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_conformance_suite() {
    conformance::run_all(|| async {
        let url = fresh_database().await;
        store_on(&url, &PgSettings::default()).await as DynStore
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commit_trace_covers_every_acknowledged_write() {
    conformance::the_commit_trace_covers_every_acknowledged_write(&fresh_database().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_rv_sequence_and_see_each_others_commits() {
    let url = fresh_database().await;
    let a = store_on(&url, &PgSettings::default()).await;
    let b = store_on(&url, &PgSettings::default()).await;
    assert_eq!(a.cluster_id(), b.cluster_id(), "the second replica adopts the recorded cluster");
    let mut b_commits = b.subscribe();
    let mut tasks = Vec::new();
    for (i, store) in [a.clone(), b.clone(), a.clone(), b.clone()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut rvs = Vec::new();
            for j in 0..20 {
                rvs.push(store.create("policyreports", report("ns", &format!("r{i}-{j}"))).await.unwrap().rv);
            }
            rvs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 80, "RVs are unique across replicas");
    let newest = *all.last().unwrap();
    // Replica B hears of A's commits through notifications (or its poll): wait for the newest.
    b_commits.wait_for(|rv| *rv >= newest).await.unwrap();
    let logged: Vec<u64> = b.changes_since(None, 0, 1000).await.unwrap().iter().map(|c| c.rv).collect();
    assert_eq!(logged, all, "either replica's log has every write in RV order");
    // Optimistic concurrency holds across replicas.
    let on_a = a.get("policyreports", "ns", "r0-0").await.unwrap().unwrap();
    b.update("policyreports", report("ns", "r0-0"), on_a.rv).await.unwrap();
    assert_eq!(
        a.update("policyreports", report("ns", "r0-0"), on_a.rv).await.unwrap_err(),
        StoreError::Conflict
    );
    assert_eq!(a.create("policyreports", report("ns", "r0-0")).await.unwrap_err(), StoreError::AlreadyExists);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_in_one_database_are_isolated() {
    let url = fresh_database().await;
    let one = PgSettings { cluster_id: Some(uuid::Uuid::new_v4().to_string()), ..Default::default() };
    let two = PgSettings { cluster_id: Some(uuid::Uuid::new_v4().to_string()), ..Default::default() };
    let a = store_on(&url, &one).await;
    let b = store_on(&url, &two).await;
    let first_in_a = a.create("policyreports", report("ns", "shared")).await.unwrap();
    let second_in_a = a.create("policyreports", report("ns", "only-in-a")).await.unwrap();
    let mut theirs = report("ns", "shared");
    theirs["metadata"]["labels"]["app"] = json!("b");
    let first_in_b =
        b.create("policyreports", theirs).await.expect("the same key in another cluster is free");
    // What one cluster wrote is invisible to the other: by name, in lists and in the change log.
    assert!(b.get("policyreports", "ns", "only-in-a").await.unwrap().is_none(), "a's report read from b");
    let shared_on_a: Value =
        serde_json::from_str(&a.get("policyreports", "ns", "shared").await.unwrap().unwrap().body).unwrap();
    assert_eq!(shared_on_a["metadata"]["labels"]["app"], "shared", "a reads its own copy, not b's");
    let names = |store: Arc<PgStore>| async move {
        let query = reports_store::ListQuery { resource: "policyreports".into(), ..Default::default() };
        let (_, items, _) = conformance::collect(&(store as DynStore), query).await;
        items.into_iter().map(|o| o.name).collect::<Vec<_>>()
    };
    assert_eq!(names(a.clone()).await, ["only-in-a", "shared"]);
    assert_eq!(names(b.clone()).await, ["shared"]);
    let logged: Vec<String> =
        b.changes_since(None, 0, 100).await.unwrap().into_iter().map(|c| c.object.name).collect();
    assert_eq!(logged, ["shared"], "b's change log holds only b's write");
    assert_eq!(first_in_b.rv, first_in_a.rv, "each cluster has its own RV sequence");
    assert_eq!(a.current_rv().await.unwrap(), second_in_a.rv);
    assert_eq!(b.current_rv().await.unwrap(), first_in_b.rv);
    // With two clusters recorded and no id given, the server refuses to guess.
    let err = PgStore::connect(&url, &PgSettings::default()).await.err().unwrap();
    assert!(err.to_string().contains("--cluster-id"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_compacts_at_a_time() {
    let url = fresh_database().await;
    let a = store_on(&url, &PgSettings::default()).await;
    let b = store_on(&url, &PgSettings::default()).await;
    for i in 0..5 {
        a.create("policyreports", report("ns", &format!("r{i}"))).await.unwrap();
    }
    let newest = a.current_rv().await.unwrap();
    // Another replica in the middle of a compaction pass holds the cluster's compaction lock.
    let (other, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    other.batch_execute("BEGIN").await.unwrap();
    let key = format!("reports-server compaction {}", a.cluster_id());
    other.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key]).await.unwrap();
    for store in [&a, &b] {
        assert_eq!(store.compact(0).await.unwrap(), 0, "a pass skips while another replica compacts");
    }
    assert_eq!(b.compacted_rv().await.unwrap(), 0);
    assert_eq!(b.changes_since(None, 0, 100).await.unwrap().len(), 5, "the log is untouched");
    other.batch_execute("COMMIT").await.unwrap();
    assert_eq!(b.compact(0).await.unwrap(), 5, "the next pass compacts");
    assert_eq!(a.compacted_rv().await.unwrap(), newest);
}

/// Rows of `relation` a plan (`EXPLAIN (ANALYZE, FORMAT JSON)` output) read: what its scans of
/// it returned plus what their filters removed.
fn rows_read(plan: &Value, relation: &str) -> u64 {
    let scan = plan.get("Node Type").and_then(Value::as_str).is_some_and(|t| t.ends_with("Scan"));
    let own = match plan.get("Relation Name").and_then(Value::as_str) {
        Some(name) if scan && name == relation => ["Actual Rows", "Rows Removed by Filter"]
            .iter()
            .filter_map(|field| plan.get(*field).and_then(Value::as_u64))
            .sum(),
        _ => 0,
    };
    let children = plan
        .get("Plans")
        .and_then(Value::as_array)
        .map_or(0, |plans| plans.iter().map(|child| rows_read(child, relation)).sum::<u64>());
    own + children
}

/// Rows of the change log one compaction pass reads, by its plan (`EXPLAIN ANALYZE` of the pass's
/// statement prepared as `pass`, in a transaction rolled back), given `cutoff` (Unix seconds).
async fn pass_rows_read(client: &tokio_postgres::Client, cluster: uuid::Uuid, cutoff: f64) -> u64 {
    let explain = format!(
        "BEGIN; EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE pass ('{cluster}', {cutoff}, {}, {}); ROLLBACK",
        reports_store::COMPACTION_BATCH,
        i64::MAX
    );
    let output = client.simple_query(&explain).await.unwrap();
    let text = output
        .iter()
        .find_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
            _ => None,
        })
        .unwrap();
    let plan: Value = serde_json::from_str(text).unwrap();
    rows_read(&plan[0]["Plan"], "report_changes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_pass_reads_only_the_oldest_batch_of_the_log() {
    let url = fresh_database().await;
    let store = store_on(&url, &PgSettings::default()).await;
    store.create("policyreports", report("ns", "r")).await.unwrap();
    let cluster_id = store.cluster_id();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    // A log three batches long, every change young and within any length limit.
    let batch = reports_store::COMPACTION_BATCH;
    client
        .execute(
            "INSERT INTO report_changes (cluster_id, rv, resource, namespace, name, uid, type, labels)
             SELECT $1, 1000 + g, 'policyreports', 'ns', 'r' || g, 'u', 'ADDED', '{}'
             FROM generate_series(1, $2::bigint) g",
            &[&cluster_id, &(3 * batch as i64)],
        )
        .await
        .unwrap();
    let prepare = format!(
        "UPDATE report_counters SET rv = rv + 1000000; ANALYZE report_changes;
         PREPARE pass (uuid, float8, int8, int8) AS {}",
        reports_store::postgres::COMPACTION_SQL
    );
    client.batch_execute(&prepare).await.unwrap();
    // Nothing is due, which a pass can only know by reading the oldest batch.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let an_hour_ago = now.as_secs_f64() - 3600.0;
    let read = pass_rows_read(&client, cluster_id, an_hour_ago).await;
    assert!(read <= batch, "a pass with nothing to drop read {read} rows of the log");
    assert_eq!(store.compact_log(reports_store::Retention::by_age(3600)).await.unwrap(), 0, "nothing is old");
    // Everything is due, half the table is dead versions and the statistics predate both, as
    // after a flood: a pass still reads its batch, then deletes it by where it read it.
    client.execute("UPDATE report_changes SET created_at = now() - interval '2 hours'", &[]).await.unwrap();
    let read = pass_rows_read(&client, cluster_id, an_hour_ago).await;
    assert!(read <= 2 * batch, "a pass dropping a batch read {read} rows of the log");
    assert_eq!(store.compact_log(reports_store::Retention::by_age(3600)).await.unwrap(), batch);
    assert_eq!(store.compacted_rv().await.unwrap(), 1000 + batch - 1, "up to the batch's newest RV");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_never_carry_the_password() {
    let pg = cluster();
    let url = format!("postgres://nobody:hunter2-secret@127.0.0.1:{}/nothing", pg.port());
    let err = PgStore::connect(&url, &PgSettings::default()).await.err().unwrap();
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_waits_for_a_database_that_comes_up_later() {
    let pg = PgCluster::start().unwrap();
    pg.create_database("reports", None).unwrap();
    pg.stop().unwrap();
    let url = pg.url("reports");
    // Hold the database's port while it is down, so the first attempt is seen to fail: the
    // connection is accepted and closed at once, as by a database still starting up.
    let port = tokio::net::TcpListener::bind(("127.0.0.1", pg.port())).await.unwrap();
    let connecting = tokio::spawn(async move { PgStore::connect(&url, &PgSettings::default()).await });
    let deadline = std::time::Duration::from_secs(30);
    let (refused, _) = tokio::time::timeout(deadline, port.accept())
        .await
        .expect("start-up makes a first attempt within 30 s")
        .unwrap();
    drop((refused, port));
    // Start-up retries until the database is back (well within the default 60 s); success after
    // the refused attempt is the proof that it retried.
    pg.resume().unwrap();
    let store = connecting.await.unwrap().expect("connects once the database is up");
    store.create("policyreports", report("ns", "late")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_fails_fast_as_unavailable() {
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/x");
    let impatient = PgSettings { startup_timeout: std::time::Duration::ZERO, ..Default::default() };
    match PgStore::connect(&url, &impatient).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {:?}", other.err()),
    }
}

const UPSTREAM_FIXTURE: &str = include_str!("fixtures/upstream_v11.sql");
const PROD_EU: &str = "6f1d2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b";
const PROD_US: &str = "9e8d7c6b-5a49-4382-a1b0-c9d8e7f6a5b4";

/// A database holding exactly what upstream leaves behind (no reports-server tables yet).
fn upstream_database() -> String {
    let pg = cluster();
    let name = PgCluster::unique_name("upstream");
    pg.create_database(&name, None).unwrap();
    pg.psql(&name, UPSTREAM_FIXTURE).unwrap();
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_database_is_adopted_in_place_keeping_every_report() {
    let pg = cluster();
    let db = upstream_database();
    let eu = PgSettings { cluster_id: Some(PROD_EU.into()), ..Default::default() };
    let store = store_on(&pg.url(&db), &eu).await;
    let expected = [
        ("policyreports", "default", "legacy", "PolicyReport", "wgpolicyk8s.io/v1alpha2"),
        ("policyreports", "web", "pod-nginx", "PolicyReport", "wgpolicyk8s.io/v1alpha2"),
        ("clusterpolicyreports", "", "ns-checks", "ClusterPolicyReport", "wgpolicyk8s.io/v1alpha2"),
        ("ephemeralreports", "web", "e-1", "EphemeralReport", "reports.kyverno.io/v1"),
        ("clusterephemeralreports", "", "ce-1", "ClusterEphemeralReport", "reports.kyverno.io/v1"),
        ("reports", "web", "trivy-vulns", "Report", "openreports.io/v1alpha1"),
        ("clusterreports", "", "kube-bench", "ClusterReport", "openreports.io/v1alpha1"),
    ];
    let mut rvs = Vec::new();
    for (resource, ns, name, kind, api_version) in expected {
        let stored =
            store.get(resource, ns, name).await.unwrap().unwrap_or_else(|| panic!("{resource} {ns}/{name}"));
        let body: Value = serde_json::from_str(&stored.body).unwrap();
        assert_eq!(body["kind"], kind, "{name}: kind from the CRD");
        assert_eq!(body["apiVersion"], api_version);
        assert_eq!(body["metadata"]["name"], name);
        assert_eq!(
            body["metadata"]["resourceVersion"],
            stored.rv.to_string(),
            "{name}: a fresh RV in the body"
        );
        assert_eq!(body["metadata"].get("namespace").and_then(Value::as_str).unwrap_or(""), ns);
        assert!(!stored.uid.is_empty() && body["metadata"]["uid"] == stored.uid.as_str(), "{name}: uid");
        assert!(body["metadata"]["creationTimestamp"].is_string(), "{name}: creationTimestamp");
        rvs.push(stored.rv);
    }
    // Upstream's own fields survive: uid, creationTimestamp, owner references, results.
    let nginx: Value =
        serde_json::from_str(&store.get("policyreports", "web", "pod-nginx").await.unwrap().unwrap().body)
            .unwrap();
    assert_eq!(nginx["metadata"]["uid"], "0b7c1f52-1111-4a44-9a0e-7d1c2b3a4f50");
    assert_eq!(nginx["metadata"]["creationTimestamp"], "2024-06-01T12:00:00Z");
    assert_eq!(nginx["metadata"]["ownerReferences"][0]["name"], "nginx");
    assert_eq!(nginx["results"][0]["policy"], "disallow-latest-tag");
    rvs.sort();
    rvs.dedup();
    assert_eq!(rvs.len(), 7, "every adopted report has its own RV");
    assert_eq!(store.current_rv().await.unwrap(), *rvs.last().unwrap(), "the counter continues after them");
    // Upstream's clients hold upstream's RVs (at most 17 in the fixture): every RV up to the
    // adoption point is too old, so a watch or continue token from one of them gets 410 and
    // relists, while the RV of a list served now is where a watch can start.
    assert!(rvs[0] > 17, "adopted reports are numbered above every upstream RV: {rvs:?}");
    assert_eq!(store.compacted_rv().await.unwrap(), *rvs.last().unwrap());
    // Labels are queryable like any other report's.
    let mut query = reports_store::ListQuery { resource: "policyreports".into(), ..Default::default() };
    query.labels =
        reports_core::selector::LabelSelector::parse("app.kubernetes.io/managed-by=kyverno").unwrap();
    let (_, items, _) = conformance::collect(&(store.clone() as DynStore), query).await;
    assert_eq!(items.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["legacy", "pod-nginx"]);
    // New writes work as usual and continue the sequence.
    let created = store.create("policyreports", report("web", "new")).await.unwrap();
    assert_eq!(created.rv, rvs.last().unwrap() + 1);
    // Upstream's tables are kept, renamed, so nothing is imported twice.
    let tables = pg
        .psql(&db, "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE tablename LIKE '%upstream_backup'")
        .unwrap();
    assert_eq!(
        tables.trim(),
        "clusterephemeralreports_upstream_backup,clusterpolicyreports_upstream_backup,clusterreports_upstream_backup,\
         ephemeralreports_upstream_backup,policyreports_upstream_backup,reports_upstream_backup,schema_migrations_upstream_backup"
    );
    drop(store);
    let again = store_on(&pg.url(&db), &eu).await;
    assert_eq!(again.current_rv().await.unwrap(), created.rv, "a second start imports nothing");
    // The other cluster's report went to that cluster, with its own sequence.
    let us =
        store_on(&pg.url(&db), &PgSettings { cluster_id: Some(PROD_US.into()), ..Default::default() }).await;
    let theirs = us.get("policyreports", "web", "pod-nginx").await.unwrap().unwrap();
    assert_eq!(theirs.uid, "aa7c1f52-8888-4a44-9a0e-7d1c2b3a4f57");
    assert!(us.current_rv().await.unwrap() > 17);
    assert_eq!(us.compacted_rv().await.unwrap(), us.current_rv().await.unwrap(), "too old below it");
    // Picking the cluster by upstream's --clustername works too.
    let by_name =
        store_on(&pg.url(&db), &PgSettings { cluster_name: Some("prod-us".into()), ..Default::default() })
            .await;
    assert_eq!(by_name.cluster_id().to_string(), PROD_US);
}

/// Everything a start could create or change: tables, the label-hash function, recorded clusters.
fn schema_snapshot(pg: &PgCluster, db: &str) -> String {
    pg.psql(
        db,
        "SELECT (SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public')
             || ' | ' || (SELECT count(*) FROM pg_proc WHERE proname = 'reports_label_hash')
             || ' | ' || (SELECT string_agg(id::text, ',' ORDER BY id) FROM clusters)
             || ' | ' || (SELECT count(*) FROM policyreports)",
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dirty_or_older_upstream_schema_is_refused_and_left_untouched() {
    let pg = cluster();
    for (breakage, expected) in [
        ("UPDATE schema_migrations SET dirty = true", "dirty"),
        ("UPDATE schema_migrations SET version = 10", "version 10"),
    ] {
        let db = upstream_database();
        pg.psql(&db, breakage).unwrap();
        let before = schema_snapshot(pg, &db);
        // Without a cluster id, as a start that would otherwise record a new cluster.
        let err = PgStore::connect(&pg.url(&db), &PgSettings::default()).await.err().expect("refused");
        assert!(err.to_string().contains(expected), "{err}");
        assert_eq!(schema_snapshot(pg, &db), before, "a refused start changed the database");
        // Once upstream's migration is repaired, the adoption goes through.
        pg.psql(&db, "UPDATE schema_migrations SET dirty = false, version = 11").unwrap();
        let eu = PgSettings { cluster_id: Some(PROD_EU.into()), ..Default::default() };
        let store = store_on(&pg.url(&db), &eu).await;
        assert!(store.get("policyreports", "web", "pod-nginx").await.unwrap().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_abandoned_midway_frees_its_connection_for_later_statements() {
    let url = fresh_database().await;
    // Two connections: later statements must reuse the one the abandoned list had.
    let store = store_on(&url, &PgSettings { pool_size: 2, ..Default::default() }).await;
    for i in 0..700 {
        store.create("policyreports", report("ns", &format!("r{i:04}"))).await.unwrap();
    }
    for _ in 0..3 {
        let mut stream = store
            .list(reports_store::ListQuery { resource: "policyreports".into(), ..Default::default() })
            .await
            .unwrap();
        match stream.chunks.recv().await.unwrap().unwrap() {
            reports_store::ListChunk::Items(items) => assert!(!items.is_empty()),
            other => panic!("{other:?}"),
        }
        drop(stream); // the client hung up after the first chunk
    }
    for i in 0..20 {
        store.get("policyreports", "ns", "r0001").await.unwrap().expect("reads work");
        store.create("policyreports", report("ns", &format!("after{i}"))).await.expect("writes work");
    }
    let (_, items, _) = conformance::collect(
        &(store.clone() as DynStore),
        reports_store::ListQuery { resource: "policyreports".into(), ..Default::default() },
    )
    .await;
    assert_eq!(items.len(), 720, "a complete list still returns everything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_is_open_before_the_first_request() {
    let url = fresh_database().await;
    let database = url.rsplit('/').next().unwrap().split('?').next().unwrap().to_string();
    let store = store_on(&url, &PgSettings { pool_size: 6, ..Default::default() }).await;
    assert_eq!(store.open_connections(), 6, "every pooled connection is open after connect");
    let sessions = cluster()
        .psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}' \
                 AND application_name = 'reports-server'"
            ),
        )
        .unwrap();
    // The six pooled connections and the notification listener.
    assert!(sessions.trim().parse::<usize>().unwrap() >= 6, "PostgreSQL sees them: {sessions}");
}

/// A CA, a server certificate signed by it valid for `names` only, and a client certificate
/// for the PostgreSQL user `certuser` signed by the same CA.
struct TlsMaterial {
    ca: String,
    cert: String,
    key: String,
    client_cert: String,
    client_key: String,
}

fn tls_material(names: &[&str]) -> TlsMaterial {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // A name of its own, so another CA's certificates have an unknown issuer.
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("CA {}", uuid::Uuid::new_v4()));
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names).unwrap().signed_by(&key, &ca).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params.distinguished_name.push(rcgen::DnType::CommonName, "certuser");
    let client_cert = client_params.signed_by(&client_key, &ca).unwrap();
    TlsMaterial {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    }
}

/// (encrypted, unencrypted) sessions of the store on `database`, as PostgreSQL sees them.
fn sessions_by_encryption(pg: &PgCluster, database: &str) -> (u32, u32) {
    let counts = pg
        .psql(
            "postgres",
            &format!(
                "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
                 FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.application_name = 'reports-server' AND a.datname = '{database}'"
            ),
        )
        .unwrap();
    let (encrypted, plain) = counts.trim().split_once('|').unwrap();
    (encrypted.parse().unwrap(), plain.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes_verify_what_libpq_verifies() {
    use reports_store::postgres::SslMode;
    let material = tls_material(&["127.0.0.1"]);
    let other = tls_material(&["127.0.0.1"]);
    // certuser must present a certificate signed by the CA (and may only connect over TLS);
    // everyone else is trusted, so psql and the other modes need none.
    let hba = "local all all trust\n\
               hostssl all certuser 127.0.0.1/32 cert\n\
               host all certuser 127.0.0.1/32 reject\n\
               host all all 127.0.0.1/32 trust\n";
    let pg = PgCluster::start_with(
        &[
            "ssl = on",
            "ssl_cert_file = 'server.crt'",
            "ssl_key_file = 'server.key'",
            "ssl_ca_file = 'ca.crt'",
        ],
        &[
            ("server.crt", material.cert.as_bytes()),
            ("server.key", material.key.as_bytes()),
            ("ca.crt", material.ca.as_bytes()),
            ("pg_hba.conf", hba.as_bytes()),
        ],
    )
    .unwrap();
    for database in ["reports", "noroot", "preferred"] {
        pg.create_database(database, None).unwrap();
    }
    pg.psql("postgres", "CREATE ROLE certuser LOGIN").unwrap();
    pg.psql("postgres", "CREATE DATABASE certdb OWNER certuser").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    let root = path("ca.pem", &material.ca);
    let wrong_root = path("other.pem", &other.ca);
    let url = |host: &str, database: &str| format!("postgres://postgres@{host}:{}/{database}", pg.port());
    let (by_ip, by_name) = (url("127.0.0.1", "reports"), url("localhost", "reports"));
    let settings = |mode, root: Option<&std::path::Path>| PgSettings {
        ssl_mode: Some(mode),
        ssl_root_cert: root.map(|r| r.to_path_buf()),
        ..Default::default()
    };
    // The error with its causes, as the binary logs it.
    let refused = |result: Result<PgStore, StoreError>| {
        let err = result.err().expect("refused");
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    };
    // verify-full: chain and name both checked.
    let store = store_on(&by_ip, &settings(SslMode::VerifyFull, Some(&root))).await;
    store.create("policyreports", report("ns", "over-tls")).await.unwrap();
    assert_eq!(sessions_by_encryption(&pg, "reports").1, 0, "no connection is in the clear");
    assert!(sessions_by_encryption(&pg, "reports").0 > 0, "the connections are encrypted");
    drop(store);
    let err = refused(PgStore::connect(&by_name, &settings(SslMode::VerifyFull, Some(&root))).await);
    assert!(err.contains("certificate") && err.contains("not valid for name"), "wrong name: {err}");
    let err = refused(PgStore::connect(&by_ip, &settings(SslMode::VerifyFull, Some(&wrong_root))).await);
    assert!(err.contains("UnknownIssuer"), "wrong CA: {err}");
    // verify-ca: the chain, not the name; require with a root certificate behaves the same.
    store_on(&by_name, &settings(SslMode::VerifyCa, Some(&root))).await;
    store_on(&by_name, &settings(SslMode::Require, Some(&root))).await;
    let err = refused(PgStore::connect(&by_ip, &settings(SslMode::Require, Some(&wrong_root))).await);
    assert!(err.contains("UnknownIssuer"), "require with a root certificate checks the chain: {err}");
    // require without a root certificate encrypts without verifying (PostgreSQL sees TLS on
    // every session); verify-* without one is refused.
    let store = store_on(&url("localhost", "noroot"), &settings(SslMode::Require, None)).await;
    store.create("policyreports", report("ns", "encrypted")).await.unwrap();
    let (encrypted, plain) = sessions_by_encryption(&pg, "noroot");
    assert!(encrypted > 0 && plain == 0, "require encrypts: {encrypted} encrypted, {plain} in the clear");
    drop(store);
    let err = refused(PgStore::connect(&by_ip, &settings(SslMode::VerifyFull, None)).await);
    assert!(err.contains("dbsslrootcert"), "{err}");
    // prefer takes TLS when the server offers it, and connects in the clear when it does not.
    let store = store_on(&url("127.0.0.1", "preferred"), &settings(SslMode::Prefer, None)).await;
    let (encrypted, plain) = sessions_by_encryption(&pg, "preferred");
    assert!(encrypted > 0 && plain == 0, "prefer uses TLS when offered: {encrypted}/{plain}");
    drop(store);
    let without_tls = cluster();
    let database = PgCluster::unique_name("prefer");
    without_tls.create_database(&database, None).unwrap();
    let store = store_on(&without_tls.url(&database), &settings(SslMode::Prefer, None)).await;
    store.create("policyreports", report("ns", "in-the-clear")).await.unwrap();
    let (encrypted, plain) = sessions_by_encryption(without_tls, &database);
    assert!(encrypted == 0 && plain > 0, "prefer falls back to no TLS: {encrypted}/{plain}");
    drop(store);
    // A client certificate authenticates certuser; without it the server refuses the login.
    let cert_url = format!("postgres://certuser@127.0.0.1:{}/certdb", pg.port());
    let with_cert = PgSettings {
        ssl_cert: Some(path("client.crt", &material.client_cert)),
        ssl_key: Some(path("client.key", &material.client_key)),
        ..settings(SslMode::VerifyFull, Some(&root))
    };
    let store = store_on(&cert_url, &with_cert).await;
    store.create("policyreports", report("ns", "by-certificate")).await.unwrap();
    let dn = pg
        .psql(
            "postgres",
            "SELECT DISTINCT s.client_dn FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = 'certdb' AND a.application_name = 'reports-server'",
        )
        .unwrap();
    assert_eq!(dn.trim(), "/CN=certuser", "the sessions authenticated with the client certificate");
    drop(store);
    let err = refused(PgStore::connect(&cert_url, &settings(SslMode::VerifyFull, Some(&root))).await);
    assert!(err.contains("certificate"), "no client certificate: {err}");
    // The URL's own sslmode works too, including the modes tokio-postgres itself does not know.
    let url = format!("{by_ip}?sslmode=verify-full");
    store_on(&url, &PgSettings { ssl_root_cert: Some(root.clone()), ..Default::default() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_are_combined_without_changing_any_answer() {
    let url = fresh_database().await;
    let store = store_on(&url, &PgSettings::default()).await;
    store.create("policyreports", report("ns", "n0")).await.unwrap();
    let start = store.current_rv().await.unwrap();
    // 96 creates at once over 40 names (n0 exists already): batches form, and some of them hit
    // taken names.
    let tasks: Vec<_> = (0..96)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                (i % 40, store.create("policyreports", report("ns", &format!("n{}", i % 40))).await)
            })
        })
        .collect();
    let mut created = std::collections::BTreeMap::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            (n, Ok(object)) => {
                assert!(created.insert(n, object).is_none(), "n{n} created twice");
            }
            (_, Err(StoreError::AlreadyExists)) => refused += 1,
            (_, Err(e)) => panic!("{e}"),
        }
    }
    assert_eq!(created.len(), 39, "every free name is created exactly once");
    assert_eq!(refused, 96 - 39);
    let mut rvs: Vec<u64> = created.values().map(|o| o.rv).collect();
    rvs.sort();
    assert_eq!(rvs, (start + 1..=start + 39).collect::<Vec<_>>(), "successful creates take dense RVs");
    for object in created.values() {
        let stored = store.get("policyreports", "ns", &object.name).await.unwrap().unwrap();
        assert_eq!(&stored, object, "what was answered is what is stored");
        let body: Value = serde_json::from_str(&stored.body).unwrap();
        assert_eq!(body["metadata"]["resourceVersion"], stored.rv.to_string());
    }
    let logged: Vec<u64> =
        store.changes_since(None, start, 1000).await.unwrap().iter().map(|c| c.rv).collect();
    assert_eq!(logged, rvs, "one ADDED change per create");
    assert_eq!(*store.subscribe().borrow(), *rvs.last().unwrap());
    // Batches that met a taken name were replayed one by one; free names go in together.
    let before = store.current_rv().await.unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store.create("policyreports", report("free", &format!("f{i}"))).await.unwrap().rv
            })
        })
        .collect();
    let mut rvs = Vec::new();
    for task in tasks {
        rvs.push(task.await.unwrap());
    }
    rvs.sort();
    assert_eq!(rvs, (before + 1..=before + 64).collect::<Vec<_>>());
    assert!(store.combined_creates() > 0, "creates sent together were written together");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_are_combined_without_changing_any_answer() {
    let url = fresh_database().await;
    let store = store_on(&url, &PgSettings::default()).await;
    let mut rvs = std::collections::BTreeMap::new();
    for i in 0..60 {
        let name = format!("u{i:02}");
        rvs.insert(name.clone(), store.create("policyreports", report("ns", &name)).await.unwrap().rv);
    }
    let start = store.current_rv().await.unwrap();
    let updated = |name: &str| {
        let mut object = report("ns", name);
        object["metadata"]["labels"]["app"] = json!("v2");
        object
    };
    // All at once: one good update per object; a second update with the same RV for u00..u09
    // (one of each pair must lose); a wrong RV for u50..u54; and objects that do not exist.
    let mut requests: Vec<(String, u64)> = rvs.iter().map(|(name, rv)| (name.clone(), *rv)).collect();
    requests.extend(rvs.iter().take(10).map(|(name, rv)| (name.clone(), *rv)));
    requests.extend(rvs.iter().skip(50).take(5).map(|(name, rv)| (name.clone(), rv + 1000)));
    requests.extend((0..5).map(|i| (format!("missing{i}"), 1)));
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(name, rv)| {
            let (store, object) = (store.clone(), updated(&name));
            tokio::spawn(async move { (name, store.update("policyreports", object, rv).await) })
        })
        .collect();
    let mut succeeded = std::collections::BTreeMap::new();
    let (mut conflicts, mut missing) = (Vec::new(), Vec::new());
    for task in tasks {
        match task.await.unwrap() {
            (name, Ok(object)) => {
                assert!(succeeded.insert(name.clone(), object).is_none(), "{name} updated twice from one RV")
            }
            (name, Err(StoreError::Conflict)) => conflicts.push(name),
            (name, Err(StoreError::NotFound)) => missing.push(name),
            (name, Err(e)) => panic!("{name}: {e}"),
        }
    }
    assert_eq!(succeeded.len(), 60, "every object updated exactly once");
    conflicts.sort();
    let mut expected_conflicts: Vec<String> = (0..10).chain(50..55).map(|i| format!("u{i:02}")).collect();
    expected_conflicts.sort();
    assert_eq!(conflicts, expected_conflicts, "a repeat and a wrong RV are conflicts");
    missing.sort();
    assert_eq!(missing, (0..5).map(|i| format!("missing{i}")).collect::<Vec<_>>());
    // The RVs are the 60 after the start, each answer matches what is stored, and the log holds
    // one MODIFIED per update with the labels before and after.
    let mut new_rvs: Vec<u64> = succeeded.values().map(|o| o.rv).collect();
    new_rvs.sort();
    assert_eq!(new_rvs, (start + 1..=start + 60).collect::<Vec<_>>());
    for (name, object) in &succeeded {
        let stored = store.get("policyreports", "ns", name).await.unwrap().unwrap();
        assert_eq!((stored.rv, &stored.body), (object.rv, &object.body));
        let body: Value = serde_json::from_str(&stored.body).unwrap();
        assert_eq!(body["metadata"]["labels"]["app"], "v2");
        assert_eq!(body["metadata"]["resourceVersion"], object.rv.to_string());
    }
    let changes = store.changes_since(Some("policyreports"), start, 1000).await.unwrap();
    assert_eq!(changes.iter().map(|c| c.rv).collect::<Vec<_>>(), new_rvs);
    for change in &changes {
        assert_eq!(change.change_type, reports_store::ChangeType::Modified);
        let name = &change.object.name;
        assert_eq!(change.labels, vec![("app".to_string(), "v2".to_string())]);
        assert_eq!(change.prev_labels, Some(vec![("app".to_string(), name.clone())]), "{name}");
    }
    assert!(store.combined_updates() > 0, "updates sent together were written together");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_label_hash_is_the_servers_label_hash() {
    let pg = cluster();
    let db = fresh_database().await;
    let labels =
        [("app", "web"), ("app.kubernetes.io/managed-by", "kyverno"), ("empty", ""), ("k", "ünïcode")];
    for (key, value) in labels {
        let sql = pg.psql(&db, &format!("SELECT reports_label_hash('{key}', '{value}')")).unwrap();
        assert_eq!(
            sql.trim().parse::<i32>().unwrap(),
            reports_store::postgres::labels::label_hash(key, value),
            "{key}={value}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_version_1_is_migrated_keeping_labels_selectable() {
    let pg = cluster();
    let db = PgCluster::unique_name("schema_v1");
    pg.create_database(&db, None).unwrap();
    pg.psql(&db, include_str!("fixtures/schema_v1.sql")).unwrap();
    let store = store_on(&pg.url(&db), &PgSettings::default()).await as DynStore;
    let select = |selector: &str| reports_store::ListQuery {
        resource: "policyreports".into(),
        labels: reports_core::selector::LabelSelector::parse(selector).unwrap(),
        ..Default::default()
    };
    for (selector, want) in [
        ("app.kubernetes.io/managed-by=kyverno", vec!["kept"]),
        ("app.kubernetes.io/managed-by in (kyverno,trivy)", vec!["kept", "other"]),
        ("cpol.kyverno.io/require-labels", vec!["kept"]),
        ("app.kubernetes.io/managed-by!=kyverno", vec!["other"]),
    ] {
        let (_, items, _) = conformance::collect(&store, select(selector)).await;
        assert_eq!(items.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), want, "{selector}");
    }
    // The update of a migrated row logs the labels it had before.
    let kept = store.get("policyreports", "web", "kept").await.unwrap().unwrap();
    let mut body: Value = serde_json::from_str(&kept.body).unwrap();
    body["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "kyverno"});
    let updated = store.update("policyreports", body, kept.rv).await.unwrap();
    let changes = store.changes_since(Some("policyreports"), kept.rv, 10).await.unwrap();
    let change = changes.iter().find(|c| c.rv == updated.rv).unwrap();
    assert_eq!(
        change.prev_labels.as_ref().map(Vec::len),
        Some(2),
        "the labels before the update, read from the migrated body"
    );
    assert_eq!(change.labels.len(), 1);
    // Up to the newest schema (version 7: findings, the BI views, the kept bodies of snapshot
    // reads, findings as one row per report, lz4 for the change log's labels), the start-up's
    // set of indexed kinds recorded.
    assert_eq!(pg.psql(&db, "SELECT max(version) FROM reports_server_migrations").unwrap().trim(), "7");
    let compression = "SELECT string_agg(attname || '=' || attcompression::text, ',' ORDER BY attname)
        FROM pg_attribute WHERE attrelid = 'report_changes'::regclass AND attname LIKE '%labels'";
    assert_eq!(pg.psql(&db, compression).unwrap().trim(), "labels=l,prev_labels=l");
    assert_eq!(pg.psql(&db, "SELECT count(*) FROM report_findings_indexed").unwrap().trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_findings_pass_the_findings_conformance_suite() {
    reports_store::findings_conformance::run_all(|findings| async move {
        let url = fresh_database().await;
        store_on(&url, &PgSettings { findings, ..Default::default() }).await as DynStore
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_findings_backfill_existing_reports() {
    let url = fresh_database().await;
    reports_store::findings_conformance::backfill_indexes_existing_reports(|findings| {
        let url = url.clone();
        async move { store_on(&url, &PgSettings { findings, ..Default::default() }).await as DynStore }
    })
    .await;
}
