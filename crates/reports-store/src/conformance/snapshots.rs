//! Conformance checks of lists at a past resourceVersion (`crate::snapshot`).

use reports_core::selector::{FieldSelector, LabelSelector};
use serde_json::{json, Value};

use super::{collect, report, POLR};
use crate::{
    error::StoreError,
    model::{ListChunk, ListQuery, StoredObject},
    store::DynStore,
};

fn at(rv: u64) -> ListQuery {
    ListQuery { resource: POLR.into(), at: Some(rv), ..Default::default() }
}

fn keys(objects: &[StoredObject]) -> Vec<(String, String, u64, String)> {
    objects.iter().map(|o| (o.namespace.clone(), o.name.clone(), o.rv, o.body.clone())).collect()
}

/// Reads a list page by page with `limit`, each page at `rv`; returns the objects and the
/// remaining counts the pages reported.
async fn paged(store: &DynStore, mut query: ListQuery, limit: u64) -> (Vec<StoredObject>, Vec<Option<u64>>) {
    query.limit = Some(limit);
    query.count_remaining = true;
    let (mut all, mut remaining) = (Vec::new(), Vec::new());
    loop {
        let mut stream = store.list(query.clone()).await.expect("list");
        let mut page = Vec::new();
        let (more, left) = loop {
            match stream.chunks.recv().await.expect("a chunk").expect("chunk") {
                ListChunk::Items(mut items) => page.append(&mut items),
                ListChunk::End { more, remaining } => break (more, remaining),
            }
        };
        remaining.push(left);
        let last = page.last().map(|o| (o.namespace.clone(), o.name.clone()));
        all.append(&mut page);
        match (more, last) {
            (true, Some(last)) => query.after = Some(last),
            _ => return (all, remaining),
        }
    }
}

fn with_summary(ns: &str, name: &str, labels: Value, pass: u64) -> Value {
    let mut object = report(ns, name, labels);
    object["summary"]["pass"] = json!(pass);
    object
}

/// Creates, updates and deletes after a snapshot do not show in a list at it: every page shows
/// the objects as they were, byte for byte, with the selectors applied to those versions, and
/// the remaining counts are those of the snapshot.
pub async fn lists_at_a_past_rv_show_that_state(store: DynStore) {
    for (ns, name, team) in
        [("a", "1", "x"), ("a", "2", "x"), ("a", "3", "y"), ("b", "1", "x"), ("b", "2", "y")]
    {
        store.create(POLR, report(ns, name, json!({ "team": team }))).await.unwrap();
    }
    let (snapshot, before, _) =
        collect(&store, ListQuery { resource: POLR.into(), ..Default::default() }).await;
    let get = |ns: &'static str, name: &'static str| {
        let store = store.clone();
        async move { store.get(POLR, ns, name).await.unwrap().unwrap() }
    };
    // After the snapshot: an update that moves a label, a delete, a create between existing
    // keys, a create at the end, a delete and re-create, and an update of an update.
    let a1 = get("a", "1").await;
    store.update(POLR, with_summary("a", "1", json!({"team": "y"}), 7), a1.rv).await.unwrap();
    store.delete(POLR, "a", "2", get("a", "2").await.rv).await.unwrap();
    store.create(POLR, report("a", "25", json!({"team": "x"}))).await.unwrap();
    store.create(POLR, report("c", "1", json!({"team": "x"}))).await.unwrap();
    store.delete(POLR, "b", "1", get("b", "1").await.rv).await.unwrap();
    store.create(POLR, with_summary("b", "1", json!({"team": "x"}), 9)).await.unwrap();
    let b2 = store
        .update(POLR, with_summary("b", "2", json!({"team": "y"}), 5), get("b", "2").await.rv)
        .await
        .unwrap();
    store.update(POLR, with_summary("b", "2", json!({"team": "x"}), 6), b2.rv).await.unwrap();

    let (rv, now, _) = collect(&store, at(snapshot)).await;
    assert_eq!(rv, snapshot, "the stream reports the snapshot RV");
    assert_eq!(keys(&now), keys(&before), "a list at the snapshot RV shows that state");
    for limit in [1, 2, 4] {
        let (pages, remaining) = paged(&store, at(snapshot), limit).await;
        assert_eq!(keys(&pages), keys(&before), "pages of {limit} at the snapshot RV");
        let expected: Vec<Option<u64>> = (1..=before.len() as u64)
            .step_by(limit as usize)
            .map(|shown| Some(before.len() as u64 - (shown + limit - 1).min(before.len() as u64)))
            .map(|left| left.filter(|&n| n > 0))
            .collect();
        assert_eq!(remaining, expected, "remaining counts at the snapshot, pages of {limit}");
    }
    // Selectors apply to the versions at the snapshot.
    let team_x = ListQuery { labels: LabelSelector::parse("team=x").unwrap(), ..at(snapshot) };
    let (_, selected, _) = collect(&store, team_x.clone()).await;
    let names: Vec<(String, String)> =
        selected.iter().map(|o| (o.namespace.clone(), o.name.clone())).collect();
    let expected = [("a", "1"), ("a", "2"), ("b", "1")].map(|(ns, n)| (ns.to_string(), n.to_string()));
    assert_eq!(names, expected, "label selector on the snapshot's labels");
    let (pages, _) = paged(&store, team_x, 1).await;
    assert_eq!(keys(&pages), keys(&selected));
    let ns_b = ListQuery {
        namespace: Some("b".into()),
        fields: FieldSelector::parse("metadata.name!=1", true).unwrap(),
        ..at(snapshot)
    };
    let (_, selected, _) = collect(&store, ns_b).await;
    assert_eq!(keys(&selected), keys(&before[4..]), "namespace and field selector at the snapshot");
    // The current state is unaffected.
    let (_, current, _) = collect(&store, ListQuery { resource: POLR.into(), ..Default::default() }).await;
    let names: Vec<&str> = current.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["1", "25", "3", "1", "2", "1"]);
}

/// A version whose own creation is compacted out of the log is still given back at a later
/// snapshot, from the change that replaced it; a snapshot below the compacted RV is expired.
pub async fn versions_outlive_the_compaction_of_their_creation(store: DynStore) {
    let a = store.create(POLR, report("ns", "a", json!({"v": "1"}))).await.unwrap();
    let b = store.create(POLR, report("ns", "b", json!({"v": "1"}))).await.unwrap();
    store.compact(0).await.unwrap();
    assert_eq!(store.compacted_rv().await.unwrap(), b.rv);
    let snapshot = store.current_rv().await.unwrap();
    store.update(POLR, with_summary("ns", "a", json!({"v": "2"}), 2), a.rv).await.unwrap();
    store.delete(POLR, "ns", "b", b.rv).await.unwrap();
    let (_, objects, _) = collect(&store, at(snapshot)).await;
    assert_eq!(keys(&objects), keys(&[a.clone(), b.clone()]), "both as they were at the snapshot");
    // Compacting past the snapshot expires it.
    store.compact(0).await.unwrap();
    let err = store.list(at(snapshot - 1)).await.err();
    assert_eq!(err, Some(StoreError::Expired), "a snapshot below the compacted RV");
    // At or past the newest commit, a list reads the current objects.
    let newest = store.current_rv().await.unwrap();
    let (rv, objects, _) = collect(&store, at(newest + 5)).await;
    assert_eq!(rv, newest);
    assert_eq!(objects.len(), 1);
}
