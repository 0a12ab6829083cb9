//! What only the PostgreSQL store has: several replicas on one database, upstream's `DB_*`
//! configuration, and surviving a database outage. (Every behaviour shared with the embedded
//! store is tested on both stores by `on_both_stores!` in the other modules.)

use futures::StreamExt as _;
use kube::api::{
    DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use reports_test_support::PgCluster;
use serde_json::{json, Value};

use crate::{
    harness::{next_event, polr_api, postgres_database, sample_object, to_dynamic, TestServer},
    process::{insecure_client, start_binary},
};

fn rv(object: &DynamicObject) -> String {
    object.metadata.resource_version.clone().unwrap()
}

/// Events of a watch up to and including `last`, as (type, name, RV); bookmarks skipped.
async fn events_until(
    events: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<DynamicObject>>> + Unpin),
    last: u64,
) -> Vec<(&'static str, String, u64)> {
    let mut seen = Vec::new();
    while seen.last().is_none_or(|(_, _, rv)| *rv < last) {
        let (kind, object) = match next_event(events).await.expect("the watch stays open") {
            WatchEvent::Added(o) => ("ADDED", o),
            WatchEvent::Modified(o) => ("MODIFIED", o),
            WatchEvent::Deleted(o) => ("DELETED", o),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("{e:?}"),
        };
        seen.push((kind, object.metadata.name.clone().unwrap(), rv(&object).parse().unwrap()));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_on_either_replica_see_concurrent_writes_through_both_by_notification() {
    let url = postgres_database().await;
    // A safety poll far beyond the test's deadlines: only NOTIFY tells a replica of the other's
    // commits in time.
    let replica = |url: String| {
        TestServer::start_with(move |c| {
            c.storage = url;
            c.postgres.safety_poll = std::time::Duration::from_secs(3600);
        })
    };
    let (a, b) = (replica(url.clone()).await, replica(url).await);
    let (on_a, on_b) = (polr_api(&a.kube(), "ns"), polr_api(&b.kube(), "ns"));
    let start: u64 =
        on_b.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap().parse().unwrap();
    let mut on_a_events = on_a.watch(&WatchParams::default(), &start.to_string()).await.unwrap().boxed();
    let mut on_b_events = on_b.watch(&WatchParams::default(), &start.to_string()).await.unwrap().boxed();
    // Four writers at once, two through each replica: create, patch, and finally delete one.
    let mut writers = Vec::new();
    for (w, api) in [on_a.clone(), on_b.clone(), on_a.clone(), on_b.clone()].into_iter().enumerate() {
        writers.push(tokio::spawn(async move {
            let patch = json!({"metadata": {"labels": {"rescanned": "yes"}}});
            for i in 0..8 {
                let name = format!("w{w}-{i}");
                api.create(&PostParams::default(), &to_dynamic(sample_object(0, &name, Some("ns"))))
                    .await
                    .unwrap();
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
            }
            api.delete(&format!("w{w}-0"), &DeleteParams::default()).await.unwrap();
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let writes = 4 * (8 * 2 + 1);
    // Then one write through A that B can only hear of by notification (no later commit of its
    // own carries it), and one through B that A can only hear of that way.
    let from_a: u64 = rv(&on_a
        .create(&PostParams::default(), &to_dynamic(sample_object(0, "from-a", Some("ns"))))
        .await
        .unwrap())
    .parse()
    .unwrap();
    assert_eq!(from_a, start + writes + 1, "one RV per write across both replicas");
    let seen_on_b = events_until(&mut on_b_events, from_a).await;
    let from_b: u64 = rv(&on_b
        .create(&PostParams::default(), &to_dynamic(sample_object(0, "from-b", Some("ns"))))
        .await
        .unwrap())
    .parse()
    .unwrap();
    let seen_on_a = events_until(&mut on_a_events, from_b).await;
    for (replica, seen, last) in [("B", &seen_on_b, from_a), ("A", &seen_on_a, from_b)] {
        let rvs: Vec<u64> = seen.iter().map(|(_, _, rv)| *rv).collect();
        assert_eq!(rvs, (start + 1..=last).collect::<Vec<_>>(), "{replica}: every RV, in order, once");
        let count = |kind: &str| seen.iter().filter(|(k, _, _)| *k == kind).count();
        assert_eq!((count("MODIFIED"), count("DELETED")), (32, 4), "{replica}: {seen:?}");
    }
    assert_eq!(seen_on_a[..seen_on_b.len()], seen_on_b[..], "both replicas stream one history");
    assert_eq!(seen_on_b.last().unwrap().1, "from-a");
    assert_eq!(seen_on_a.last().unwrap().1, "from-b");
    // A list on either replica agrees.
    let names = |list: kube::core::ObjectList<DynamicObject>| {
        list.items.into_iter().map(|o| o.metadata.name.unwrap()).collect::<Vec<_>>()
    };
    let listed = names(on_a.list(&ListParams::default()).await.unwrap());
    assert_eq!(listed.len(), 4 * 7 + 2);
    assert_eq!(listed, names(on_b.list(&ListParams::default()).await.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_takes_upstream_db_environment_and_never_logs_the_password() {
    let url = postgres_database().await;
    let config: tokio_postgres::Config = url.parse().unwrap();
    let database = config.get_dbname().unwrap().to_string();
    let port = PgCluster::shared().port().to_string();
    let env = [
        ("DB_HOST", "127.0.0.1"),
        ("DB_PORT", port.as_str()),
        ("DB_USER", "postgres"),
        // Trust authentication ignores it; what matters is that it never reaches a log line.
        ("DB_PASSWORD", "pa ss'word-never-logged"),
        ("DB_DATABASE", database.as_str()),
    ];
    let (mut first, first_url, first_log) =
        start_binary(&["--clustername", "dev", "--dbsslmode", "disable"], &env);
    let (mut second, second_url, second_log) = start_binary(&[], &env);
    let http = insecure_client();
    let body = json!({"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport", "metadata": {"name": "shared"}});
    let path = "/apis/wgpolicyk8s.io/v1alpha2/namespaces/default/policyreports";
    let created = http.post(format!("{first_url}{path}")).json(&body).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let read: Value =
        http.get(format!("{second_url}{path}/shared")).send().await.unwrap().json().await.unwrap();
    assert_eq!(read["metadata"]["name"], "shared", "the second process serves what the first wrote");
    let ready = http.get(format!("{second_url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    first.kill().unwrap();
    second.kill().unwrap();
    first.wait().unwrap();
    second.wait().unwrap();
    let logs = format!("{:?}{:?}", first_log.lock().unwrap(), second_log.lock().unwrap());
    assert!(logs.contains("is ready on"), "{logs}");
    assert!(!logs.contains("never-logged"), "a password reached the log: {logs}");
    let names = PgCluster::shared().psql(&database, "SELECT name FROM clusters").unwrap();
    assert_eq!(names.trim(), "dev", "--clustername is recorded with the cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_a_503_and_loses_no_acknowledged_write() {
    // A cluster of its own: this test stops it.
    let pg = PgCluster::start().unwrap();
    pg.create_database("reports", None).unwrap();
    let t = TestServer::start_with(|c| c.storage = pg.url("reports")).await;
    let http = t.http();
    let collection = t.url("/apis/reports.kyverno.io/v1/namespaces/ns/ephemeralreports");
    // A watch open across the whole outage.
    let ephr = crate::harness::dynamic_api(&t.kube(), 2, Some("ns")).0;
    let start = ephr.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut events = ephr.watch(&WatchParams::default(), &start).await.unwrap().boxed();
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut writers = Vec::new();
    for w in 0..3 {
        let (http, collection, acked_tx, stop_rx) =
            (http.clone(), collection.clone(), acked_tx.clone(), stop_rx.clone());
        writers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..2000 {
                if *stop_rx.borrow() {
                    break;
                }
                let name = format!("w{w}-{i}");
                let body = sample_object(2, &name, Some("ns"));
                match http.post(&collection).json(&body).send().await {
                    Ok(response) => {
                        statuses.push(response.status().as_u16());
                        if response.status() == 201 {
                            acked_tx.send(name).unwrap();
                        }
                    }
                    Err(_) => statuses.push(0),
                }
            }
            statuses
        }));
    }
    drop(acked_tx);
    let mut acked = Vec::new();
    while acked.len() < 30 {
        acked.push(acked_rx.recv().await.unwrap());
    }
    pg.stop().unwrap();
    // While the database is down: a Status 503 with Retry-After, and readiness fails.
    let down =
        http.post(&collection).json(&sample_object(2, "during-outage", Some("ns"))).send().await.unwrap();
    assert_eq!(down.status(), 503);
    assert!(down.headers().contains_key("retry-after"));
    let status: Value = down.json().await.unwrap();
    assert_eq!(
        (status["kind"].as_str(), status["reason"].as_str()),
        (Some("Status"), Some("ServiceUnavailable"))
    );
    assert!(!status["message"].as_str().unwrap().contains("127.0.0.1"), "no driver detail leaks: {status}");
    let get = http.get(format!("{collection}/w0-0")).send().await.unwrap();
    assert_eq!(get.status(), 503);
    let ready = http.get(t.url("/readyz?verbose")).send().await.unwrap();
    assert_eq!(ready.status(), 500);
    assert!(ready.text().await.unwrap().contains("[-]storage failed"));
    // Back up: the server recovers by itself.
    pg.resume().unwrap();
    let mut recovered = false;
    for _ in 0..100 {
        if http.get(t.url("/readyz")).send().await.unwrap().status() == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(recovered, "readiness comes back once the database is back");
    let after =
        http.post(&collection).json(&sample_object(2, "after-outage", Some("ns"))).send().await.unwrap();
    assert_eq!(after.status(), 201);
    stop_tx.send(true).unwrap();
    let mut statuses = Vec::new();
    for writer in writers {
        statuses.extend(writer.await.unwrap());
    }
    while let Some(name) = acked_rx.recv().await {
        acked.push(name);
    }
    assert!(statuses.contains(&201), "writes succeeded before the outage");
    assert!(
        statuses.iter().all(|s| matches!(s, 201 | 503 | 504)),
        "writers only ever see success or a retryable Status: {:?}",
        statuses.iter().filter(|s| !matches!(s, 201 | 503 | 504)).collect::<Vec<_>>()
    );
    let list: Value = http.get(&collection).send().await.unwrap().json().await.unwrap();
    let stored: std::collections::HashSet<&str> =
        list["items"].as_array().unwrap().iter().map(|o| o["metadata"]["name"].as_str().unwrap()).collect();
    let lost: Vec<&String> = acked.iter().filter(|name| !stored.contains(name.as_str())).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(stored.contains("after-outage"));
    // The watch stayed open through the outage and delivers every create once, in RV order,
    // including those committed after the database came back.
    let newest: u64 = list["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    let mut seen = Vec::new();
    let mut last_rv = 0u64;
    while last_rv < newest {
        match next_event(&mut events).await.expect("the watch stays open") {
            WatchEvent::Added(o) => {
                let rv: u64 = rv(&o).parse().unwrap();
                assert!(rv > last_rv, "events in RV order");
                last_rv = rv;
                seen.push(o.metadata.name.unwrap());
            }
            WatchEvent::Bookmark(b) => last_rv = last_rv.max(b.metadata.resource_version.parse().unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
    let seen: std::collections::HashSet<&str> = seen.iter().map(String::as_str).collect();
    assert!(seen.contains("after-outage"));
    let unseen: Vec<&String> = acked.iter().filter(|name| !seen.contains(name.as_str())).collect();
    assert!(unseen.is_empty(), "acknowledged creates the watch never delivered: {unseen:?}");
}

/// After adopting an upstream database, the RVs upstream's clients still hold are too old: a
/// watch from one gets 410 and relists (never a stream of changes to objects it was never sent),
/// and the list served right after the adoption is where a new watch starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_adopting_upstream_its_resource_versions_are_too_old() {
    let pg = PgCluster::shared();
    let db = PgCluster::unique_name("adopted");
    pg.create_database(&db, None).unwrap();
    pg.psql(&db, include_str!("../../../reports-store/tests/fixtures/upstream_v11.sql")).unwrap();
    let t = TestServer::start_with(|c| {
        c.storage = pg.url(&db);
        c.postgres.cluster_id = Some("6f1d2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b".into());
    })
    .await;
    let api = polr_api(&t.kube(), "web");
    for upstream_rv in ["1", "5", "17"] {
        let mut events = api.watch(&WatchParams::default(), upstream_rv).await.unwrap().boxed();
        match next_event(&mut events).await {
            Some(WatchEvent::Error(status)) => {
                assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
            }
            other => panic!("a watch from upstream's RV {upstream_rv} must get 410, got {other:?}"),
        }
    }
    // List, then watch from the list's RV: a change made afterwards arrives, nothing before it.
    let listed = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1, "upstream's report in web");
    let mut events =
        api.watch(&WatchParams::default(), &listed.metadata.resource_version.unwrap()).await.unwrap().boxed();
    api.create(&PostParams::default(), &to_dynamic(sample_object(0, "after", Some("web")))).await.unwrap();
    match next_event(&mut events).await {
        Some(WatchEvent::Added(object)) => assert_eq!(object.metadata.name.as_deref(), Some("after")),
        other => panic!("expected the ADDED of the new report, got {other:?}"),
    }
}
