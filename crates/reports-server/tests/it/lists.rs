//! Lists: selectors evaluated in the store, pagination with stable resourceVersions, and the
//! resourceVersion rules for list requests.

use kube::api::{ListParams, PostParams, VersionMatch};
use serde_json::{json, Value};

use crate::harness::{dynamic_api, polr_api, sample_object, status_of, to_dynamic, TestServer};

async fn seed(t: &TestServer) {
    let client = t.kube();
    let fixtures = [
        ("a", "r1", json!({"env": "prod", "tier": "web", "cpu": "5"})),
        ("a", "r2", json!({"env": "dev", "cpu": "50"})),
        ("b", "r1", json!({"env": "prod"})),
        ("b", "r3", json!({"audit.kyverno.io/resource.uid": "u-1"})),
    ];
    for (ns, name, labels) in fixtures {
        let mut object = sample_object(0, name, Some(ns));
        object["metadata"]["labels"] = labels;
        polr_api(&client, ns).create(&PostParams::default(), &to_dynamic(object)).await.unwrap();
    }
}

fn keys(list: &kube::core::ObjectList<kube::api::DynamicObject>) -> Vec<String> {
    list.items
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o.metadata.namespace.as_deref().unwrap_or(""),
                o.metadata.name.as_deref().unwrap()
            )
        })
        .collect()
}

on_both_stores! {
    async fn label_and_field_selectors_filter_lists(t) {
        seed(&t).await;
        let (all, _) = dynamic_api(&t.kube(), 0, None);
        let cases: &[(&str, &str, &[&str])] = &[
            ("", "", &["a/r1", "a/r2", "b/r1", "b/r3"]),
            ("env=prod", "", &["a/r1", "b/r1"]),
            ("env!=prod", "", &["a/r2", "b/r3"]),
            ("env in (prod, dev),tier", "", &["a/r1"]),
            ("env notin (prod)", "", &["a/r2", "b/r3"]),
            ("!env", "", &["b/r3"]),
            ("audit.kyverno.io/resource.uid=u-1", "", &["b/r3"]),
            ("cpu>10", "", &["a/r2"]),
            ("cpu<10", "", &["a/r1"]),
            ("", "metadata.name=r1", &["a/r1", "b/r1"]),
            ("", "metadata.namespace=b,metadata.name!=r1", &["b/r3"]),
        ];
        for (labels, fields, want) in cases {
            let mut params = ListParams::default();
            if !labels.is_empty() {
                params = params.labels(labels);
            }
            if !fields.is_empty() {
                params = params.fields(fields);
            }
            let list = all.list(&params).await.unwrap();
            assert_eq!(keys(&list), *want, "labels {labels:?} fields {fields:?}");
        }
        let ns_b = polr_api(&t.kube(), "b").list(&ListParams::default()).await.unwrap();
        assert_eq!(keys(&ns_b), ["b/r1", "b/r3"]);

        let err = status_of(all.list(&ListParams::default().fields("spec.foo=bar")).await.unwrap_err());
        assert_eq!((err.code, err.message.as_str()), (400, "field label not supported: spec.foo"));
        let err = status_of(all.list(&ListParams::default().labels("env in (")).await.unwrap_err());
        assert_eq!(err.code, 400);
        let (cluster, _) = dynamic_api(&t.kube(), 1, None);
        let err =
            status_of(cluster.list(&ListParams::default().fields("metadata.namespace=a")).await.unwrap_err());
        assert_eq!(err.code, 400, "cluster-scoped kinds have no metadata.namespace field");
    }
}

on_both_stores! {
    async fn pages_share_the_first_resource_version_and_cover_everything(t) {
        seed(&t).await;
        let (all, _) = dynamic_api(&t.kube(), 0, None);
        let first = all.list(&ListParams::default().limit(3)).await.unwrap();
        assert_eq!(keys(&first), ["a/r1", "a/r2", "b/r1"]);
        let snapshot = first.metadata.resource_version.clone().unwrap();
        let token = first.metadata.continue_.clone().expect("more remain");
        // A write between pages changes neither the RV the next page reports nor what it shows.
        polr_api(&t.kube(), "c")
            .create(&PostParams::default(), &to_dynamic(sample_object(0, "late", Some("c"))))
            .await
            .unwrap();
        let second = all.list(&ListParams::default().limit(3).continue_token(&token)).await.unwrap();
        assert_eq!(second.metadata.resource_version.as_deref(), Some(snapshot.as_str()));
        assert_eq!(keys(&second), ["b/r3"]);
        assert!(second.metadata.continue_.as_deref().unwrap_or_default().is_empty());

        let err = status_of(all.list(&ListParams::default().continue_token("garbage")).await.unwrap_err());
        assert_eq!(err.code, 400);
        assert!(err.message.starts_with("invalid continue token"), "{}", err.message);

        // Once the change log no longer covers the snapshot the token is expired: 410.
        t.store().compact(0).await.unwrap();
        let err = status_of(all.list(&ListParams::default().limit(3).continue_token(&token)).await.unwrap_err());
        assert_eq!((err.code, err.reason.as_str()), (410, "Expired"));
    }
}

on_both_stores! {
    async fn list_resource_version_rules(t) {
        seed(&t).await;
        let http = t.http();
        let url = t.url("/apis/wgpolicyk8s.io/v1alpha2/policyreports");
        let list: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        let rv: u64 = list["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
        assert_eq!(rv, t.store().current_rv().await.unwrap());
        assert_eq!(list["kind"], "PolicyReportList");
        assert_eq!(list["apiVersion"], "wgpolicyk8s.io/v1alpha2");

        let get = |q: String| {
            let http = http.clone();
            let url = format!("{url}?{q}");
            async move {
                let response = http.get(url).send().await.unwrap();
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.unwrap())
            }
        };
        // Too new: 504 with the cause reflectors look for.
        let (status, body) = get(format!("resourceVersion={}", rv + 10)).await;
        assert_eq!(status, 504);
        assert_eq!(body["details"]["causes"][0]["reason"], "ResourceVersionTooLarge");
        // NotOlderThan an old RV: current data.
        let (status, body) = get("resourceVersion=1&resourceVersionMatch=NotOlderThan".into()).await;
        assert_eq!(
            (status, body["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap()),
            (200, rv)
        );
        // Exact at the current RV works; at an older RV, the state then (the store was empty at
        // RV 1), and 410 once the change log no longer covers it.
        assert_eq!(get(format!("resourceVersion={rv}&resourceVersionMatch=Exact")).await.0, 200);
        let (status, body) = get("resourceVersion=1&resourceVersionMatch=Exact".into()).await;
        assert_eq!((status, body["items"].clone()), (200, json!([])), "{body}");
        t.store().compact(0).await.unwrap();
        let (status, body) = get("resourceVersion=1&resourceVersionMatch=Exact".into()).await;
        assert_eq!((status, body["reason"].as_str().unwrap()), (410, "Expired"));
        // Validation of list options.
        let (status, body) = get("resourceVersionMatch=Exact".into()).await;
        assert_eq!(status, 422);
        assert!(
            body["message"].as_str().unwrap().starts_with("ListOptions.meta.k8s.io \"\" is invalid"),
            "{body}"
        );
        assert_eq!(get("resourceVersion=bogus".into()).await.0, 400);
        assert_eq!(get("limit=ten".into()).await.0, 400);

        // kube-rs VersionMatch::NotOlderThan with RV 0 (what reflectors send) lists everything.
        let (all, _) = dynamic_api(&t.kube(), 0, None);
        let list = all.list(&ListParams::default().match_any()).await.unwrap();
        assert_eq!(list.items.len(), 4);
        let exact = ListParams {
            resource_version: Some(rv.to_string()),
            version_match: Some(VersionMatch::Exact),
            ..Default::default()
        };
        assert_eq!(all.list(&exact).await.unwrap().items.len(), 4);
    }
}

on_both_stores! {
    async fn empty_lists_have_items_and_a_resource_version(t) {
        let body: Value = t
            .http()
            .get(t.url("/apis/openreports.io/v1alpha1/namespaces/none/reports"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["items"], json!([]));
        assert!(!body["metadata"]["resourceVersion"].as_str().unwrap().is_empty());
    }
}

on_both_stores! {
    async fn delete_collection_removes_only_the_selected_objects(t) {
        seed(&t).await;
        let http = t.http();
        let url = t.url("/apis/wgpolicyk8s.io/v1alpha2/namespaces/a/policyreports?labelSelector=env%3Dprod");
        let response = http
            .delete(&url)
            .json(&json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["kind"], "PolicyReportList");
        assert_eq!(body["items"].as_array().unwrap().len(), 1);
        assert_eq!(body["items"][0]["metadata"]["name"], "r1");
        let (all, _) = dynamic_api(&t.kube(), 0, None);
        assert_eq!(keys(&all.list(&ListParams::default()).await.unwrap()), ["a/r2", "b/r1", "b/r3"]);
        // Across all namespaces it is refused rather than deleting everywhere.
        let response = http.delete(t.url("/apis/wgpolicyk8s.io/v1alpha2/policyreports")).send().await.unwrap();
        assert_eq!(response.status(), 400);
        // The namespace controller's call: everything in the namespace.
        let response = http
            .delete(t.url("/apis/wgpolicyk8s.io/v1alpha2/namespaces/b/policyreports"))
            .json(&json!({"propagationPolicy": "Background"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let deleted: Value = response.json().await.unwrap();
        assert_eq!(deleted["items"].as_array().unwrap().len(), 2);
        assert_eq!(keys(&all.list(&ListParams::default()).await.unwrap()), ["a/r2"]);
    }
}

on_both_stores! {
    /// Objects in three of the stores' 256-row list chunks, each chunk deleted and streamed
    /// out in turn, while other clients update them and create more in the namespace.
    async fn delete_collection_spans_chunks_and_deletes_objects_changed_meanwhile(t) {
        use futures::StreamExt as _;
        const N: usize = 1100; // beyond one page of the deletecollection's listing (1,000)
        let http = t.http();
        let collection = t.url("/apis/wgpolicyk8s.io/v1alpha2/namespaces/bulk/policyreports");
        let created: Vec<u16> = futures::stream::iter(0..N)
            .map(|i| {
                let request = http.post(&collection).json(&sample_object(0, &format!("r{i:03}"), Some("bulk")));
                async move { request.send().await.unwrap().status().as_u16() }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        assert!(created.iter().all(|s| *s == 201));
        // Meanwhile: updates of the objects from the last one back (the ones deleted last), and
        // new objects, until the deletecollection has answered.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let busy = {
            let (http, collection, stopped) = (http.clone(), collection.clone(), stopped.clone());
            tokio::spawn(async move {
                let (mut updated, mut added) = (0, Vec::new());
                for i in (0..N).rev() {
                    if *stopped.borrow() {
                        break;
                    }
                    let patch = json!({"metadata": {"labels": {"touched": "yes"}}});
                    let response = http
                        .patch(format!("{collection}/r{i:03}"))
                        .header("Content-Type", "application/merge-patch+json")
                        .json(&patch)
                        .send()
                        .await
                        .unwrap();
                    updated += usize::from(response.status() == 200);
                    let name = format!("late{i:03}");
                    let response =
                        http.post(&collection).json(&sample_object(0, &name, Some("bulk"))).send().await.unwrap();
                    if response.status() == 201 {
                        added.push(name);
                    }
                }
                (updated, added)
            })
        };
        let response = http.delete(&collection).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let deleted: Value = response.json().await.unwrap();
        stop.send(true).unwrap();
        let (updated, added) = busy.await.unwrap();
        let mut names: Vec<&str> =
            deleted["items"].as_array().unwrap().iter().map(|o| o["metadata"]["name"].as_str().unwrap()).collect();
        let count = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), count, "each deleted object is returned once");
        // kube deletes every listed object whatever happened to it meanwhile (no RV precondition).
        let originals: Vec<String> = (0..N).map(|i| format!("r{i:03}")).collect();
        let missing: Vec<&String> = originals.iter().filter(|n| names.binary_search(&n.as_str()).is_err()).collect();
        assert!(missing.is_empty(), "objects listed but not deleted ({updated} updates raced): {missing:?}");
        let (api, _) = dynamic_api(&t.kube(), 0, Some("bulk"));
        let left: Vec<String> = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|o| o.metadata.name.unwrap())
            .collect();
        assert!(left.iter().all(|n| n.starts_with("late")), "only objects created meanwhile may be left: {left:?}");
        // A new object is either deleted (and returned) or left, never lost.
        for name in &added {
            let returned = names.binary_search(&name.as_str()).is_ok();
            assert!(returned != left.contains(name), "{name}: returned {returned}, left {}", !returned);
        }
    }
}
