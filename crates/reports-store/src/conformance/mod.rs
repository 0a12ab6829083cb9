//! The store conformance suite: one set of behavioural checks that every [`crate::Store`]
//! implementation must pass. Each check takes a fresh, empty store and panics with a message on
//! a violation; a backend's test file calls [`run_all`] (or the checks one by one) with its own
//! factory. Built only with the `testing` feature: the product does not carry it.

use std::{collections::BTreeSet, sync::Arc};

use reports_core::selector::{FieldSelector, LabelSelector};
use serde_json::{json, Value};

mod snapshots;

pub use snapshots::{lists_at_a_past_rv_show_that_state, versions_outlive_the_compaction_of_their_creation};

use crate::{
    commits::CommitTrace,
    error::StoreError,
    model::{ChangeType, ListChunk, ListQuery, Retention, StoredObject},
    store::DynStore,
};

fn report(ns: &str, name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "wgpolicyk8s.io/v1alpha2",
        "kind": "PolicyReport",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"), "labels": labels},
        "summary": {"pass": 1},
    })
}

const POLR: &str = "policyreports";

/// Collects a whole list stream: (snapshot RV, objects, more).
pub async fn collect(store: &DynStore, query: ListQuery) -> (u64, Vec<StoredObject>, bool) {
    let mut stream = store.list(query).await.expect("list");
    let mut items = Vec::new();
    while let Some(chunk) = stream.chunks.recv().await {
        match chunk.expect("chunk") {
            ListChunk::Items(mut batch) => items.append(&mut batch),
            ListChunk::End { more, .. } => return (stream.snapshot_rv, items, more),
        }
    }
    panic!("list stream ended without End");
}

fn names(items: &[StoredObject]) -> Vec<String> {
    items.iter().map(|o| format!("{}/{}", o.namespace, o.name)).collect()
}

/// Creates assign increasing RVs written into the body; a duplicate key is AlreadyExists and
/// leaves the stored object untouched (never an upsert).
pub async fn create_is_not_an_upsert(store: DynStore) {
    let a = store.create(POLR, report("ns", "a", json!({}))).await.unwrap();
    let b = store.create(POLR, report("ns", "b", json!({}))).await.unwrap();
    assert!(b.rv > a.rv, "RVs increase");
    let body: Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(body["metadata"]["resourceVersion"], a.rv.to_string());
    let mut changed = report("ns", "a", json!({}));
    changed["summary"]["pass"] = json!(99);
    assert_eq!(store.create(POLR, changed).await.unwrap_err(), StoreError::AlreadyExists);
    let stored = store.get(POLR, "ns", "a").await.unwrap().unwrap();
    assert_eq!(stored, a, "duplicate create must not overwrite");
    assert_eq!(store.current_rv().await.unwrap(), b.rv, "a failed create consumes no RV");
    // The same name in another namespace or another resource is a different object.
    store.create(POLR, report("other", "a", json!({}))).await.unwrap();
    store.create("reports", report("ns", "a", json!({}))).await.unwrap();
    // Counts follow: a refused create adds nothing.
    let mut counts = store.count_by_resource().await.unwrap();
    counts.sort();
    assert_eq!(counts, vec![(POLR.to_string(), 3), ("reports".to_string(), 1)]);
    let gone = store.get(POLR, "ns", "b").await.unwrap().unwrap();
    store.delete(POLR, "ns", "b", gone.rv).await.unwrap();
    let counts = store.count_by_resource().await.unwrap();
    assert!(counts.contains(&(POLR.to_string(), 2)), "{counts:?}");
}

/// Updates check the expected RV atomically.
pub async fn update_checks_resource_version(store: DynStore) {
    let a = store.create(POLR, report("ns", "a", json!({"x": "1"}))).await.unwrap();
    let mut next = report("ns", "a", json!({"x": "2"}));
    assert_eq!(store.update(POLR, next.clone(), a.rv + 100).await.unwrap_err(), StoreError::Conflict);
    let updated = store.update(POLR, next.clone(), a.rv).await.unwrap();
    assert!(updated.rv > a.rv);
    assert_eq!(store.update(POLR, next.clone(), a.rv).await.unwrap_err(), StoreError::Conflict, "stale RV");
    next["metadata"]["name"] = json!("missing");
    assert_eq!(store.update(POLR, next, 1).await.unwrap_err(), StoreError::NotFound);
    let changes = store.changes_since(Some(POLR), a.rv, 10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].change_type, ChangeType::Modified);
    assert_eq!(changes[0].prev_labels, Some(vec![("x".to_string(), "1".to_string())]));
    assert_eq!(changes[0].labels, vec![("x".to_string(), "2".to_string())]);
}

/// Deletes check the RV and leave a DELETED change carrying the final state at the new RV.
pub async fn delete_records_final_state(store: DynStore) {
    let a = store.create(POLR, report("ns", "a", json!({}))).await.unwrap();
    assert_eq!(store.delete(POLR, "ns", "a", a.rv + 1).await.unwrap_err(), StoreError::Conflict);
    let gone = store.delete(POLR, "ns", "a", a.rv).await.unwrap();
    assert!(gone.rv > a.rv);
    assert_eq!(
        serde_json::from_str::<Value>(&gone.body).unwrap()["metadata"]["resourceVersion"],
        gone.rv.to_string()
    );
    assert!(store.get(POLR, "ns", "a").await.unwrap().is_none());
    assert_eq!(store.delete(POLR, "ns", "a", gone.rv).await.unwrap_err(), StoreError::NotFound);
    let changes = store.changes_since(None, 0, 10).await.unwrap();
    let types: Vec<_> = changes.iter().map(|c| (c.rv, c.change_type)).collect();
    assert_eq!(types, vec![(a.rv, ChangeType::Added), (gone.rv, ChangeType::Deleted)]);
    assert_eq!(changes[1].object.body, gone.body);
}

/// A batch delete skips moved or vanished entries and deletes the rest in one go.
pub async fn delete_batch_skips_conflicts(store: DynStore) {
    let a = store.create(POLR, report("ns", "a", json!({}))).await.unwrap();
    let b = store.create(POLR, report("ns", "b", json!({}))).await.unwrap();
    let never_created = StoredObject { name: "c".into(), rv: 1, ..a.clone() };
    let moved_on = StoredObject { rv: b.rv + 7, ..b.clone() };
    let out = store.delete_batch(POLR, vec![a.clone(), moved_on, never_created]).await.unwrap();
    assert!(out[0].is_some() && out[1].is_none() && out[2].is_none());
    assert!(store.get(POLR, "ns", "b").await.unwrap().is_some());
    // A larger batch, given out of order and with a key twice, after one of its objects was
    // updated: each object is deleted once, each with its own RV in its final body.
    let mut read = Vec::new();
    for name in ["d", "e", "f", "g"] {
        read.push(store.create(POLR, report("ns", name, json!({}))).await.unwrap());
    }
    read[1] = store.update(POLR, report("ns", "e", json!({"x": "y"})), read[1].rv).await.unwrap();
    let before = store.current_rv().await.unwrap();
    let at = |i: usize| read[i].clone();
    let out = store.delete_batch(POLR, vec![at(2), at(0), at(3), at(1), at(0)]).await.unwrap();
    assert_eq!(out.len(), 5);
    let mut rvs: Vec<u64> = out.iter().take(4).map(|o| o.as_ref().expect("deleted").rv).collect();
    for object in out.iter().flatten() {
        let body: Value = serde_json::from_str(&object.body).unwrap();
        assert_eq!(body["metadata"]["resourceVersion"], object.rv.to_string());
        assert_eq!(body["metadata"]["name"], object.name);
    }
    rvs.sort();
    rvs.dedup();
    assert_eq!(rvs, (before + 1..=before + 4).collect::<Vec<_>>(), "one RV per deleted object");
    let changes = store.changes_since(Some(POLR), before, 10).await.unwrap();
    let mut logged: Vec<(ChangeType, String)> =
        changes.iter().map(|c| (c.change_type, c.object.name.clone())).collect();
    logged.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        logged,
        ["d", "e", "f", "g"].map(|n| (ChangeType::Deleted, n.to_string())).to_vec(),
        "one DELETED per object"
    );
    assert_eq!(out[4], None, "a key given twice is deleted once");
    let e = changes.iter().find(|c| c.object.name == "e").unwrap();
    assert_eq!(e.labels, vec![("x".to_string(), "y".to_string())], "the final state's labels");
    // The version the update replaced is still replayed as it was.
    let replaced = store.changes_since(Some(POLR), read[1].rv - 1, 1).await.unwrap();
    assert_eq!(replaced[0].change_type, ChangeType::Modified);
    for name in ["d", "e", "f", "g"] {
        assert!(store.get(POLR, "ns", name).await.unwrap().is_none());
    }
}

/// Lists filter by namespace and selectors in the store, page by key and report the snapshot RV.
pub async fn list_filters_and_pages(store: DynStore) {
    let fixtures = [
        ("a", "r1", json!({"env": "prod", "tier": "web", "n": "5"})),
        ("a", "r2", json!({"env": "dev", "n": "50"})),
        ("b", "r1", json!({"env": "prod", "n": "x5"})),
        ("b", "r3", json!({})),
    ];
    for (ns, name, labels) in fixtures {
        store.create(POLR, report(ns, name, labels)).await.unwrap();
    }
    store.create("reports", report("a", "other-kind", json!({"env": "prod"}))).await.unwrap();
    let current = store.current_rv().await.unwrap();
    let list = |labels: &str, fields: &str, ns: Option<&str>| ListQuery {
        resource: POLR.into(),
        namespace: ns.map(str::to_string),
        labels: LabelSelector::parse(labels).unwrap(),
        fields: FieldSelector::parse(fields, true).unwrap(),
        ..Default::default()
    };
    let cases: Vec<(&str, &str, Option<&str>, Vec<&str>)> = vec![
        ("", "", None, vec!["a/r1", "a/r2", "b/r1", "b/r3"]),
        ("", "", Some("b"), vec!["b/r1", "b/r3"]),
        ("env=prod", "", None, vec!["a/r1", "b/r1"]),
        ("env==prod", "", None, vec!["a/r1", "b/r1"]),
        ("env!=prod", "", None, vec!["a/r2", "b/r3"]),
        ("env in (dev, prod),tier", "", None, vec!["a/r1"]),
        ("env notin (prod)", "", None, vec!["a/r2", "b/r3"]),
        ("!env", "", None, vec!["b/r3"]),
        ("tier", "", None, vec!["a/r1"]),
        ("n>4", "", None, vec!["a/r1", "a/r2"]),
        ("n<10", "", None, vec!["a/r1"]),
        ("", "metadata.name=r1", None, vec!["a/r1", "b/r1"]),
        ("", "metadata.name!=r1,metadata.namespace=b", None, vec!["b/r3"]),
        ("env=prod", "metadata.namespace!=a", None, vec!["b/r1"]),
    ];
    for (labels, fields, ns, want) in cases {
        let (rv, items, more) = collect(&store, list(labels, fields, ns)).await;
        assert_eq!(names(&items), want, "labels {labels:?} fields {fields:?} ns {ns:?}");
        assert_eq!(rv, current);
        assert!(!more);
    }
    // Pages by key.
    let mut page = list("", "", None);
    page.limit = Some(3);
    let (_, first, more) = collect(&store, page.clone()).await;
    assert_eq!((names(&first), more), (vec!["a/r1".to_string(), "a/r2".into(), "b/r1".into()], true));
    page.after = Some(("b".into(), "r1".into()));
    let (_, rest, more) = collect(&store, page).await;
    assert_eq!((names(&rest), more), (vec!["b/r3".to_string()], false));
}

/// Pages under a label selector are full pages of matching objects, however many stored objects
/// fail the selector in between (a store that filters after reading must read on), and walking
/// them by key yields every match exactly once.
pub async fn selector_pages_are_full_and_complete(store: DynStore) {
    const COUNT: usize = 1200;
    for chunk in (0..COUNT).collect::<Vec<_>>().chunks(100) {
        let creates = chunk.iter().map(|&i| {
            let mut labels = json!({"keep": if i % 3 == 0 { "yes" } else { "no" }});
            if i % 5 == 0 {
                labels["drop"] = json!("");
            }
            let store = store.clone();
            async move { store.create(POLR, report("a", &format!("r{i:04}"), labels)).await.unwrap() }
        });
        futures::future::join_all(creates).await;
    }
    let walk = |selector: &'static str, limit: Option<u64>| {
        let store = store.clone();
        async move {
            let mut query = ListQuery {
                resource: POLR.into(),
                labels: LabelSelector::parse(selector).unwrap(),
                limit,
                ..Default::default()
            };
            let mut pages = Vec::new();
            loop {
                let (_, items, more) = collect(&store, query.clone()).await;
                pages.push(items.len());
                let Some(last) = items.last() else { break };
                query.after = Some((last.namespace.clone(), last.name.clone()));
                if !more {
                    break;
                }
            }
            (pages, query.after.map(|(_, name)| name))
        }
    };
    // 1200 / 3 matches keep=yes, 80 of them carry drop: 320 over pages of 50.
    let (pages, last) = walk("keep=yes,!drop", Some(50)).await;
    assert_eq!(pages, [50, 50, 50, 50, 50, 50, 20], "keep=yes,!drop in pages of 50");
    assert_eq!(last.as_deref(), Some("r1197"));
    // Exactly as many matches as the limit: one page, and nothing more to read.
    let (pages, _) = walk("keep notin (no)", Some(400)).await;
    assert_eq!(pages, [400], "keep notin (no) with limit 400");
    // Unpaged, with most rows failing a requirement no index can decide.
    let (_, items, more) = collect(
        &store,
        ListQuery {
            resource: POLR.into(),
            labels: LabelSelector::parse("!drop").unwrap(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!((items.len(), more), (COUNT - COUNT / 5, false), "!drop unpaged");
    assert!(items.iter().all(|o| !o.body.contains("\"drop\"")));
}

/// RVs stay unique, strictly increasing and gap-free in the change log under concurrent writers.
pub async fn concurrent_writers_get_ordered_unique_rvs(store: DynStore) {
    let start = store.current_rv().await.unwrap();
    let mut tasks = Vec::new();
    for writer in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut rvs = Vec::new();
            for i in 0..25 {
                let obj =
                    store.create(POLR, report("ns", &format!("w{writer}-{i}"), json!({}))).await.unwrap();
                rvs.push(obj.rv);
            }
            rvs
        }));
    }
    let mut all = BTreeSet::new();
    for task in tasks {
        let rvs = task.await.unwrap();
        assert!(rvs.windows(2).all(|w| w[0] < w[1]), "each writer sees increasing RVs");
        all.extend(rvs);
    }
    assert_eq!(all.len(), 100, "unique RVs");
    let changes = store.changes_since(Some(POLR), start, 1000).await.unwrap();
    let logged: Vec<u64> = changes.iter().map(|c| c.rv).collect();
    assert_eq!(logged, all.iter().copied().collect::<Vec<_>>(), "change log holds every RV in order");
    assert_eq!(*store.subscribe().borrow(), *all.last().unwrap(), "subscribers see the newest RV");
}

/// Compaction moves the compacted RV forward and drops old changes; `changed_since` sees changes.
pub async fn compaction_moves_the_watermark(store: DynStore) {
    let a = store.create(POLR, report("ns", "a", json!({}))).await.unwrap();
    assert!(store.changed_since(POLR, 0).await.unwrap());
    assert!(!store.changed_since(POLR, a.rv).await.unwrap());
    assert!(!store.changed_since("reports", 0).await.unwrap());
    assert_eq!(store.compacted_rv().await.unwrap(), 0);
    // Nothing is older than an hour yet.
    assert_eq!(store.compact(3600).await.unwrap(), 0);
    // An age of zero drops everything committed so far, and nothing serves it any more.
    assert_eq!(store.compact(0).await.unwrap(), 1);
    assert_eq!(store.compacted_rv().await.unwrap(), a.rv);
    assert!(store.changes_since(None, 0, 10).await.unwrap().is_empty());
    assert!(store.changes_since(None, a.rv - 1, 10).await.unwrap().is_empty());
    store.ping().await.unwrap();
}

/// Compaction keeps at most `max_entries` of the newest RVs' changes however young they are,
/// and keeps every change when the log is shorter than that.
pub async fn compaction_bounds_the_log_length(store: DynStore) {
    let mut rvs = Vec::new();
    for i in 0..12 {
        rvs.push(store.create(POLR, report("ns", &format!("r{i}"), json!({}))).await.unwrap().rv);
    }
    let (newest, young) = (*rvs.last().unwrap(), 3600);
    let long_enough = Retention { max_age_seconds: young, max_entries: 12 };
    assert_eq!(store.compact_log(long_enough).await.unwrap(), 0, "twelve changes fit in twelve");
    assert_eq!(store.compacted_rv().await.unwrap(), 0);
    let keep_five = Retention { max_age_seconds: young, max_entries: 5 };
    assert_eq!(store.compact_log(keep_five).await.unwrap(), 7, "all but the newest five are dropped");
    assert_eq!(store.compacted_rv().await.unwrap(), newest - 5);
    let kept: Vec<u64> =
        store.changes_since(None, newest - 5, 100).await.unwrap().iter().map(|c| c.rv).collect();
    assert_eq!(kept, rvs[7..], "the newest five remain, in order");
    assert_eq!(store.compact_log(keep_five).await.unwrap(), 0, "a second pass finds nothing more");
    // The objects themselves are untouched.
    assert!(store.get(POLR, "ns", "r0").await.unwrap().is_some());
}

/// The change log replays every version as it was at its RV, also after the object changed again
/// or went away (a store may share storage between the log and the current row, but never
/// serve a newer body for an older change).
pub async fn change_log_replays_every_version(store: DynStore) {
    let created = store.create(POLR, report("ns", "a", json!({"v": "1"}))).await.unwrap();
    let mut second = report("ns", "a", json!({"v": "2"}));
    second["summary"]["pass"] = json!(2);
    let updated = store.update(POLR, second, created.rv).await.unwrap();
    let mut third = report("ns", "a", json!({"v": "3"}));
    third["summary"]["pass"] = json!(3);
    let updated_again = store.update(POLR, third, updated.rv).await.unwrap();
    let deleted = store.delete(POLR, "ns", "a", updated_again.rv).await.unwrap();
    let changes = store.changes_since(Some(POLR), 0, 10).await.unwrap();
    let seen: Vec<(ChangeType, u64, Value, String)> = changes
        .iter()
        .map(|c| {
            let body: Value = serde_json::from_str(&c.object.body).unwrap();
            assert_eq!(body["metadata"]["resourceVersion"], c.rv.to_string(), "body carries its own RV");
            assert_eq!(c.object.rv, c.rv);
            (c.change_type, c.rv, body["summary"]["pass"].clone(), c.labels[0].1.clone())
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (ChangeType::Added, created.rv, json!(1), "1".to_string()),
            (ChangeType::Modified, updated.rv, json!(2), "2".to_string()),
            (ChangeType::Modified, updated_again.rv, json!(3), "3".to_string()),
            (ChangeType::Deleted, deleted.rv, json!(3), "3".to_string()),
        ]
    );
    assert_eq!(changes[0].object.body, created.body, "the create is replayed byte for byte");
    assert_eq!(changes[3].object.body, deleted.body);
}

/// An empty store never reports RV 0, which clients would send back meaning "any version".
pub async fn an_empty_store_is_past_rv_zero(store: DynStore) {
    assert!(store.current_rv().await.unwrap() >= 1);
    let stream = store.list(ListQuery { resource: POLR.into(), ..Default::default() }).await.unwrap();
    assert!(stream.snapshot_rv >= 1);
}

/// With a commit trace attached, the store at `url` (fresh and empty) writes down every commit of
/// every kind of write: each acknowledged RV is covered by a line at or above it, refused writes
/// add nothing, and the newest line is the newest committed RV.
pub async fn the_commit_trace_covers_every_acknowledged_write(url: &str) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let trace_path = dir.path().join("commits");
    let store = crate::open(url, &Default::default()).await.expect("open");
    let trace = Arc::new(CommitTrace::create(&trace_path).expect("the trace file"));
    assert!(store.commits().observe(trace.clone()), "the first observer is attached");
    let creates = (0..12).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.create(POLR, report("ns", &format!("r{i}"), json!({}))).await })
    });
    let mut acknowledged = Vec::new();
    for create in creates.collect::<Vec<_>>() {
        acknowledged.push(create.await.expect("create task").expect("create").rv);
    }
    // The file is written behind the commits: what was recorded so far is in it after a flush.
    let read_trace = || {
        trace.flush();
        std::fs::read_to_string(&trace_path).expect("the trace file")
    };
    let before_refusal = read_trace();
    let refused = store.create(POLR, report("ns", "r0", json!({}))).await;
    assert_eq!(refused.err(), Some(StoreError::AlreadyExists));
    assert_eq!(read_trace(), before_refusal, "a refused write commits nothing and traces nothing");
    let first = store.get(POLR, "ns", "r0").await.unwrap().expect("r0");
    let mut changed = first.parse().unwrap();
    changed["summary"] = json!({"fail": 1});
    let parse = |text: &str| {
        crate::commits::parse_trace(text).unwrap_or_else(|| panic!("malformed commit trace: {text:?}"))
    };
    // The instant is recorded before the answer: an answered write is already in the trace.
    let traced_by_its_answer = |rv: u64| {
        let text = read_trace();
        assert!(
            parse(&text).iter().any(|(traced, _)| *traced >= rv),
            "RV {rv} answered before traced: {text}"
        );
        rv
    };
    for rv in &acknowledged {
        traced_by_its_answer(*rv);
    }
    let updated = store.update(POLR, changed, first.rv).await.expect("update").rv;
    acknowledged.push(traced_by_its_answer(updated));
    let second = store.get(POLR, "ns", "r1").await.unwrap().expect("r1");
    let deleted = store.delete(POLR, "ns", "r1", second.rv).await.expect("delete").rv;
    acknowledged.push(traced_by_its_answer(deleted));
    let newest = store.current_rv().await.unwrap();

    let text = read_trace();
    let lines = parse(&text);
    assert_eq!(lines.iter().map(|(rv, _)| *rv).max(), Some(newest), "{text}");
    assert!(lines.len() <= acknowledged.len(), "at most one line per commit: {text}");
}

/// Runs every check, each on a fresh store from `factory`.
pub async fn run_all<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = DynStore>,
{
    create_is_not_an_upsert(factory().await).await;
    update_checks_resource_version(factory().await).await;
    delete_records_final_state(factory().await).await;
    delete_batch_skips_conflicts(factory().await).await;
    list_filters_and_pages(factory().await).await;
    selector_pages_are_full_and_complete(factory().await).await;
    concurrent_writers_get_ordered_unique_rvs(factory().await).await;
    compaction_moves_the_watermark(factory().await).await;
    compaction_bounds_the_log_length(factory().await).await;
    change_log_replays_every_version(factory().await).await;
    an_empty_store_is_past_rv_zero(factory().await).await;
    lists_at_a_past_rv_show_that_state(factory().await).await;
    versions_outlive_the_compaction_of_their_creation(factory().await).await;
}
