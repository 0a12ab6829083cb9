//! Paged and exact-RV lists show the objects as they were at the list's resourceVersion, as
//! kube-apiserver serves them from one etcd revision, while the change log covers it; after
//! that, kube's 410 Expired, with its inconsistent-continue token for a paged list.

use kube::api::{DynamicObject, ListParams, PostParams};
use serde_json::{json, Value};

use crate::harness::{dynamic_api, polr_api, sample_object, status_of, to_dynamic, TestServer};

const COLLECTION: &str = "/apis/wgpolicyk8s.io/v1alpha2/policyreports";

/// Creates `ns/rNN` for each name, with a `team` label and a pass count of 1.
async fn seed(t: &TestServer, keys: &[(&str, &str)]) {
    for (ns, name) in keys {
        let mut object = sample_object(0, name, Some(ns));
        object["metadata"]["labels"] = json!({"team": "blue"});
        polr_api(&t.kube(), ns).create(&PostParams::default(), &to_dynamic(object)).await.unwrap();
    }
}

/// (namespace/name, resourceVersion, summary.pass) of each object.
fn states(items: &[DynamicObject]) -> Vec<(String, String, Value)> {
    items
        .iter()
        .map(|o| {
            let key = format!(
                "{}/{}",
                o.metadata.namespace.as_deref().unwrap_or(""),
                o.metadata.name.as_deref().unwrap()
            );
            (key, o.metadata.resource_version.clone().unwrap(), o.data["summary"]["pass"].clone())
        })
        .collect()
}

/// One raw page: status code and body.
async fn page(t: &TestServer, query: &str) -> (u16, Value) {
    let response = t.http().get(t.url(&format!("{COLLECTION}?{query}"))).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// A merge patch of one object's pass count and labels.
async fn patch(t: &TestServer, ns: &str, name: &str, pass: u64, team: &str) {
    let url = t.url(&format!("/apis/wgpolicyk8s.io/v1alpha2/namespaces/{ns}/policyreports/{name}"));
    let body = json!({"metadata": {"labels": {"team": team}}, "summary": {"pass": pass}});
    let response = t
        .http()
        .patch(url)
        .header("Content-Type", "application/merge-patch+json")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

async fn delete(t: &TestServer, ns: &str, name: &str) {
    let url = t.url(&format!("/apis/wgpolicyk8s.io/v1alpha2/namespaces/{ns}/policyreports/{name}"));
    assert_eq!(t.http().delete(url).send().await.unwrap().status(), 200);
}

const KEYS: [(&str, &str); 7] =
    [("a", "r1"), ("a", "r2"), ("a", "r3"), ("a", "r4"), ("b", "r1"), ("b", "r2"), ("b", "r3")];

on_both_stores! {
    /// kube-rs pages of 2 while objects are created, updated, deleted and re-created after the
    /// first page: every page shows the state at the first page's RV, and unfiltered pages
    /// count what is left of that state.
    async fn pages_show_the_first_pages_snapshot_whatever_changes_between_them(t) {
        seed(&t, &KEYS).await;
        let (all, _) = dynamic_api(&t.kube(), 0, None);
        let before = all.list(&ListParams::default()).await.unwrap();
        let first = all.list(&ListParams::default().limit(2)).await.unwrap();
        assert_eq!(first.metadata.resource_version, before.metadata.resource_version);
        assert_eq!(first.metadata.remaining_item_count, Some(5));
        // After the first page, changes all over the rest of the range.
        patch(&t, "a", "r3", 7, "red").await;
        patch(&t, "a", "r3", 8, "red").await;
        delete(&t, "a", "r4").await;
        seed(&t, &[("a", "r35"), ("c", "r1")]).await;
        delete(&t, "b", "r2").await;
        seed(&t, &[("b", "r2")]).await;
        patch(&t, "b", "r3", 9, "red").await;

        let mut items = first.items.clone();
        let mut token = first.metadata.continue_.clone();
        let mut counts = vec![first.metadata.remaining_item_count];
        while let Some(next) = token.filter(|t| !t.is_empty()) {
            let page = all.list(&ListParams::default().limit(2).continue_token(&next)).await.unwrap();
            assert_eq!(page.metadata.resource_version, before.metadata.resource_version, "every page's RV");
            counts.push(page.metadata.remaining_item_count);
            items.extend(page.items);
            token = page.metadata.continue_;
        }
        assert_eq!(states(&items), states(&before.items), "the pages show the snapshot");
        assert_eq!(counts, [Some(5), Some(3), Some(1), None], "remainingItemCount at the snapshot");

        // A label selector applies to the labels the objects had then; kube gives no count.
        let (status, first) = page(&t, "limit=1&labelSelector=team%3Dblue").await;
        assert_eq!(status, 200);
        assert!(first["metadata"].get("remainingItemCount").is_none(), "{first}");
        let old_rv = first["metadata"]["resourceVersion"].clone();
        patch(&t, "a", "r2", 3, "red").await;
        let token = first["metadata"]["continue"].as_str().unwrap().to_string();
        let (status, second) = page(&t, &format!("limit=1&labelSelector=team%3Dblue&continue={token}")).await;
        assert_eq!(status, 200);
        assert_eq!(second["metadata"]["resourceVersion"], old_rv);
        assert_eq!(second["items"][0]["metadata"]["name"], "r2", "still blue at the snapshot: {second}");
        assert_eq!(second["items"][0]["summary"]["pass"], 1);
        assert!(second["metadata"].get("remainingItemCount").is_none());
    }
}

on_both_stores! {
    /// A token whose snapshot was compacted away: kube's 410 Expired Status, carrying a token
    /// that goes on from the same key at the newest RV; following it lists the rest as it is now,
    /// and its pages continue at that RV.
    async fn an_expired_token_offers_kubes_inconsistent_continue(t) {
        seed(&t, &KEYS).await;
        let (status, first) = page(&t, "limit=2").await;
        assert_eq!(status, 200);
        let token = first["metadata"]["continue"].as_str().unwrap().to_string();
        seed(&t, &[("a", "r25")]).await;
        delete(&t, "b", "r3").await;
        t.store().compact(0).await.unwrap();
        let (status, expired) = page(&t, &format!("limit=2&continue={token}")).await;
        assert_eq!((status, expired["reason"].as_str()), (410, Some("Expired")), "{expired}");
        assert_eq!(expired["kind"], "Status");
        assert!(expired["message"].as_str().unwrap().contains("inconsistent list"), "{expired}");
        let onward = expired["metadata"]["continue"].as_str().expect("an inconsistent continue token");
        assert_ne!(onward, token);
        // kube-rs sees the same 410.
        let (all, _) = dynamic_api(&t.kube(), 0, None);
        let err = status_of(all.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap_err());
        assert_eq!((err.code, err.reason.as_str()), (410, "Expired"));

        let now = t.store().current_rv().await.unwrap().to_string();
        let rest = all.list(&ListParams::default().limit(2).continue_token(onward)).await.unwrap();
        assert_eq!(rest.metadata.resource_version.as_deref(), Some(now.as_str()), "the newest RV");
        let names = |items: &[DynamicObject]| -> Vec<String> {
            items.iter().map(|o| format!("{}/{}", o.metadata.namespace.clone().unwrap(), o.metadata.name.clone().unwrap())).collect()
        };
        assert_eq!(names(&rest.items), ["a/r25", "a/r3"], "after the key, as it is now");
        assert_eq!(rest.metadata.remaining_item_count, Some(3));
        seed(&t, &[("b", "r9")]).await;
        let next = rest.metadata.continue_.clone().unwrap();
        let last = all.list(&ListParams::default().limit(10).continue_token(&next)).await.unwrap();
        assert_eq!(last.metadata.resource_version.as_deref(), Some(now.as_str()), "its pages share its RV");
        assert_eq!(names(&last.items), ["a/r4", "b/r1", "b/r2"], "and its snapshot");
    }
}

on_both_stores! {
    /// `resourceVersionMatch=Exact` (and a legacy RV with a limit) lists the objects as they were
    /// at that RV while the change log covers it, then 410 Expired with no token.
    async fn exact_rv_lists_return_the_past_state(t) {
        seed(&t, &KEYS).await;
        let (all, _) = dynamic_api(&t.kube(), 0, None);
        let before = all.list(&ListParams::default()).await.unwrap();
        let rv = before.metadata.resource_version.clone().unwrap();
        patch(&t, "a", "r1", 5, "red").await;
        delete(&t, "b", "r1").await;
        seed(&t, &[("a", "r0")]).await;

        let exact = ListParams::default().at(&rv).matching(kube::api::VersionMatch::Exact);
        let past = all.list(&exact).await.unwrap();
        assert_eq!(past.metadata.resource_version.as_deref(), Some(rv.as_str()));
        assert_eq!(states(&past.items), states(&before.items), "the state at the RV");
        // Legacy: an RV with a limit means exact, and its pages go on at that RV.
        let (status, first) = page(&t, &format!("resourceVersion={rv}&limit=4")).await;
        assert_eq!(status, 200);
        assert_eq!(first["metadata"]["resourceVersion"], rv.as_str());
        assert_eq!(first["metadata"]["remainingItemCount"], 3);
        let token = first["metadata"]["continue"].as_str().unwrap();
        let (_, second) = page(&t, &format!("limit=4&continue={token}")).await;
        let names: Vec<&str> = first["items"].as_array().unwrap().iter().chain(second["items"].as_array().unwrap())
            .map(|o| o["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["r1", "r2", "r3", "r4", "r1", "r2", "r3"]);
        assert_eq!(first["items"][0]["summary"]["pass"], 1, "a/r1 before its update");

        t.store().compact(0).await.unwrap();
        let (status, body) = page(&t, &format!("resourceVersion={rv}&resourceVersionMatch=Exact")).await;
        assert_eq!((status, body["reason"].as_str()), (410, Some("Expired")));
        assert_eq!(body["message"], "The resourceVersion for the provided list is too old.");
        assert!(body["metadata"].get("continue").is_none());
    }
}
