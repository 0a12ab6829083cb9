//! The conformance suite on the PostgreSQL store, plus what only PostgreSQL has: several stores
//! (replicas) on one database, cluster identity, adopting an upstream database, outages.
//!
//! One throwaway cluster serves the whole binary; every test gets its own database copied from a
//! template that was migrated once.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, OnceLock,
};

use reports_store::{
    conformance,
    postgres::{PgSettings, PgStore},
    DynStore, Store, StoreError,
};
use reports_test_support::PgCluster;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
static TEMPLATE: OnceCell<()> = OnceCell::const_new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

fn cluster() -> &'static PgCluster {
    CLUSTER.get_or_init(|| PgCluster::start().expect("start a throwaway PostgreSQL cluster"))
}

/// A new, migrated, empty database; returns its URL.
async fn fresh_database() -> String {
    let pg = cluster();
    TEMPLATE
        .get_or_init(|| async {
            pg.create_database("migrated_template", None).unwrap();
            let store = PgStore::connect(&pg.url("migrated_template"), &PgSettings::default()).await.unwrap();
            drop(store);
            // Cluster rows are per test database: keep the template free of them.
            pg.psql("migrated_template", "DELETE FROM report_counters; DELETE FROM clusters;").unwrap();
        })
        .await;
    let name = format!("t{}_{}", std::process::id(), NEXT_DB.fetch_add(1, Ordering::SeqCst));
    pg.create_database(&name, Some("migrated_template")).unwrap();
    pg.url(&name)
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
    a.create("policyreports", report("ns", "only-in-a")).await.unwrap();
    b.create("policyreports", report("ns", "only-in-a"))
        .await
        .expect("the same key in another cluster is free");
    assert!(b.get("policyreports", "ns", "x").await.unwrap().is_none());
    assert_eq!(a.current_rv().await.unwrap(), 1);
    assert_eq!(b.current_rv().await.unwrap(), 1, "each cluster has its own RV sequence");
    // With two clusters recorded and no id given, the server refuses to guess.
    let err = PgStore::connect(&url, &PgSettings::default()).await.err().unwrap();
    assert!(err.to_string().contains("--cluster-id"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_never_carry_the_password() {
    let pg = cluster();
    let url = format!("postgres://nobody:hunter2-secret@127.0.0.1:{}/nothing", pg.port());
    let err = PgStore::connect(&url, &PgSettings::default()).await.err().unwrap();
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_fails_fast_as_unavailable() {
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/x");
    match PgStore::connect(&url, &PgSettings::default()).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {:?}", other.err()),
    }
}
