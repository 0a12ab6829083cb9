//! The cluster's controllers against our resources, with the requests they send: the garbage
//! collector (metadata-only list and watch, deletes with uid preconditions) and the namespace
//! controller (discovery, then deletecollection of every namespaced resource of a terminating
//! namespace).

use std::time::Duration;

use futures::StreamExt as _;
use reqwest::header;
use serde_json::{json, Value};

use crate::harness::{sample_object, KINDS};

/// Fails the test instead of hanging when an event never comes.
const DEADLINE: Duration = Duration::from_secs(30);
const METADATA_LIST: &str =
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
const METADATA: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json";
const DISCOVERY: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";

fn collection(index: usize, namespace: Option<&str>) -> String {
    let (group, version, _, plural, _) = KINDS[index];
    match namespace {
        Some(ns) => format!("/apis/{group}/{version}/namespaces/{ns}/{plural}"),
        None => format!("/apis/{group}/{version}/{plural}"),
    }
}

on_both_stores! {
    async fn the_garbage_collectors_metadata_informer_and_preconditioned_deletes(t) {
        let http = t.http();
        for (ns, name) in [("team-a", "a"), ("team-b", "b")] {
            let response = http.post(t.url(&collection(0, Some(ns)))).json(&sample_object(0, name, Some(ns))).send().await.unwrap();
            assert_eq!(response.status(), 201);
        }
        // The GC's informer: a metadata-only list across namespaces, then a watch from its RV.
        let list: Value = http.get(t.url(&collection(0, None))).header(header::ACCEPT, METADATA_LIST).send().await.unwrap().json().await.unwrap();
        assert_eq!(list["kind"], "PartialObjectMetadataList");
        assert_eq!(list["apiVersion"], "meta.k8s.io/v1");
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(|i| i["kind"] == "PartialObjectMetadata" && i.get("results").is_none()));
        let uid = items[0]["metadata"]["uid"].as_str().unwrap().to_string();
        let rv = list["metadata"]["resourceVersion"].as_str().unwrap().to_string();
        let watch = http
            .get(t.url(&format!("{}?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=30", collection(0, None))))
            .header(header::ACCEPT, METADATA)
            .send()
            .await
            .unwrap();
        assert_eq!(watch.status(), 200);
        let mut events = watch.bytes_stream();

        // A delete whose uid precondition names another object (the owner was recreated) is a 409.
        let item = t.url(&format!("{}/a", collection(0, Some("team-a"))));
        let stale = json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "00000000-0000-0000-0000-000000000000"}, "propagationPolicy": "Background"});
        let refused = http.delete(&item).json(&stale).send().await.unwrap();
        assert_eq!(refused.status(), 409);
        let status: Value = refused.json().await.unwrap();
        assert_eq!(status["reason"], "Conflict");
        assert!(status["message"].as_str().unwrap().contains("Precondition failed: UID in precondition"), "{status}");
        // The GC's own delete: the uid it saw, background propagation.
        let delete = json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}, "propagationPolicy": "Background"});
        assert_eq!(http.delete(&item).json(&delete).send().await.unwrap().status(), 200);

        // The informer sees the deletion as a metadata-only DELETED event.
        let mut buffer = Vec::new();
        let event = tokio::time::timeout(DEADLINE, async {
            loop {
                let chunk = events.next().await.expect("the watch stays open").unwrap();
                buffer.extend_from_slice(&chunk);
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let event: Value = serde_json::from_slice(&line).unwrap();
                    if event["type"] != "BOOKMARK" {
                        return event;
                    }
                }
            }
        })
        .await
        .expect("a DELETED event");
        assert_eq!(event["type"], "DELETED");
        assert_eq!(event["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(event["object"]["metadata"]["uid"], uid);
    }
}

on_both_stores! {
    async fn the_namespace_controller_empties_a_terminating_namespace_from_discovery(t) {
        let http = t.http();
        for index in [0, 2, 4] {
            for ns in ["doomed", "kept"] {
                let response = http.post(t.url(&collection(index, Some(ns)))).json(&sample_object(index, "r", Some(ns))).send().await.unwrap();
                assert_eq!(response.status(), 201, "{}", collection(index, Some(ns)));
            }
        }
        // Discovery: every namespaced resource that supports deletecollection.
        let discovery: Value = http.get(t.url("/apis")).header(header::ACCEPT, DISCOVERY).send().await.unwrap().json().await.unwrap();
        let mut targets = Vec::new();
        for group in discovery["items"].as_array().unwrap() {
            for version in group["versions"].as_array().unwrap() {
                for resource in version["resources"].as_array().unwrap() {
                    let verbs = resource["verbs"].as_array().unwrap();
                    if resource["scope"] == "Namespaced" && verbs.contains(&json!("deletecollection")) {
                        targets.push(format!(
                            "/apis/{}/{}/namespaces/doomed/{}",
                            group["metadata"]["name"].as_str().unwrap(),
                            version["version"].as_str().unwrap(),
                            resource["resource"].as_str().unwrap()
                        ));
                    }
                }
            }
        }
        assert_eq!(targets.len(), 3, "{targets:?}");
        // The controller's deletes (background propagation), then its check that nothing is left.
        for target in &targets {
            let options = json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"});
            let deleted = http.delete(t.url(target)).json(&options).send().await.unwrap();
            assert_eq!(deleted.status(), 200, "{target}");
            // client-go reads the returned list before going on.
            let returned: Value = deleted.json().await.unwrap();
            assert_eq!(returned["items"].as_array().unwrap().len(), 1, "{target}: {returned}");
            let left: Value = http.get(t.url(&format!("{target}?limit=1"))).header(header::ACCEPT, METADATA_LIST).send().await.unwrap().json().await.unwrap();
            assert_eq!(left["items"], json!([]), "{target}");
        }
        for index in [0, 2, 4] {
            let kept: Value = http.get(t.url(&collection(index, Some("kept")))).send().await.unwrap().json().await.unwrap();
            assert_eq!(kept["items"].as_array().unwrap().len(), 1, "other namespaces untouched");
        }
    }
}

on_both_stores! {
    /// The propagation policies as the API server's half of garbage collection: Orphan and
    /// Foreground add the collector's finalizer and keep the owner, marked, until the collector
    /// (played here by the test, as kube-controller-manager would) has orphaned or deleted the
    /// dependents and removed it; Background deletes the owner at once and leaves the dependents
    /// to the collector.
    async fn propagation_policies_hand_the_owner_to_the_garbage_collector(t) {
        use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy, WatchEvent, WatchParams};
        use crate::harness::{dynamic_api, next_event, to_dynamic};
        let client = t.kube();
        let (owners, _) = dynamic_api(&client, 5, None);
        let (dependents, _) = dynamic_api(&client, 4, Some("gc"));
        let start = dependents.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
        let mut dependent_events = dependents.watch(&WatchParams::default(), &start).await.unwrap().boxed();
        let mut owner_events = owners.watch(&WatchParams::default(), &start).await.unwrap().boxed();
        let finalizers = |o: &kube::api::DynamicObject| o.metadata.finalizers.clone().unwrap_or_default();
        for (policy, finalizer) in [
            (PropagationPolicy::Orphan, Some("orphan")),
            (PropagationPolicy::Foreground, Some("foregroundDeletion")),
            (PropagationPolicy::Background, None),
        ] {
            let owner_name = format!("owner-{}", format!("{policy:?}").to_lowercase());
            let owner = owners.create(&PostParams::default(), &to_dynamic(sample_object(5, &owner_name, None))).await.unwrap();
            let reference = json!([{"apiVersion": "openreports.io/v1alpha1", "kind": "ClusterReport", "name": owner_name,
                                    "uid": owner.metadata.uid.clone().unwrap(), "blockOwnerDeletion": true}]);
            let names: Vec<String> = (0..2).map(|i| format!("{owner_name}-dep{i}")).collect();
            for name in &names {
                let mut dependent = sample_object(4, name, Some("gc"));
                dependent["metadata"]["ownerReferences"] = reference.clone();
                dependents.create(&PostParams::default(), &to_dynamic(dependent)).await.unwrap();
            }
            let params = DeleteParams { propagation_policy: Some(policy.clone()), ..Default::default() };
            let answer = owners.delete(&owner_name, &params).await.unwrap();
            let Some(finalizer) = finalizer else {
                assert!(answer.is_right(), "Background: deleted at once, a Status comes back");
                assert!(owners.get_opt(&owner_name).await.unwrap().is_none());
                for name in &names {
                    assert!(dependents.get(name).await.unwrap().metadata.deletion_timestamp.is_none(), "{name}: left to the collector");
                }
                continue;
            };
            let marked = answer.left().expect("the marked owner comes back");
            assert_eq!(finalizers(&marked), [finalizer], "{policy:?}");
            assert!(marked.metadata.deletion_timestamp.is_some(), "{policy:?}");
            // Deleting again changes nothing; the owner waits for the collector.
            let again = owners.delete(&owner_name, &DeleteParams::default()).await.unwrap().left().unwrap();
            assert_eq!(again.metadata.resource_version, marked.metadata.resource_version, "{policy:?}");
            for name in &names {
                let dependent = dependents.get(name).await.unwrap();
                assert!(dependent.metadata.deletion_timestamp.is_none(), "{policy:?}: the server leaves {name} alone");
            }
            // The collector's work, then the removal of its finalizer.
            let mut dependents_gone = Vec::new();
            for name in &names {
                if finalizer == "orphan" {
                    let orphan = json!({"metadata": {"ownerReferences": null}});
                    dependents.patch(name, &PatchParams::default(), &Patch::Merge(&orphan)).await.unwrap();
                } else {
                    let uid = dependents.get(name).await.unwrap().metadata.uid.unwrap();
                    let params = DeleteParams { preconditions: Some(kube::api::Preconditions { uid: Some(uid), resource_version: None }), propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
                    dependents.delete(name, &params).await.unwrap();
                    dependents_gone.push(name.clone());
                }
            }
            let release = json!({"metadata": {"finalizers": null}});
            owners.patch(&owner_name, &PatchParams::default(), &Patch::Merge(&release)).await.unwrap();
            assert!(owners.get_opt(&owner_name).await.unwrap().is_none(), "{policy:?}: gone with its finalizer");
            // Watchers see the dependents' deletions before the owner's.
            let mut last_dependent = 0;
            while !dependents_gone.is_empty() {
                if let WatchEvent::Deleted(o) = next_event(&mut dependent_events).await.unwrap() {
                    dependents_gone.retain(|n| Some(n) != o.metadata.name.as_ref());
                    last_dependent = o.metadata.resource_version.unwrap().parse().unwrap();
                }
            }
            let owner_deleted: u64 = loop {
                if let WatchEvent::Deleted(o) = next_event(&mut owner_events).await.unwrap() {
                    assert_eq!(o.metadata.name.as_deref(), Some(owner_name.as_str()));
                    break o.metadata.resource_version.unwrap().parse().unwrap();
                }
            };
            assert!(owner_deleted > last_dependent, "{policy:?}: owner deleted after its dependents");
            let left = dependents.list(&ListParams::default()).await.unwrap().items;
            let orphans = left.iter().filter(|o| o.metadata.name.as_ref().is_some_and(|n| n.starts_with(&owner_name))).count();
            assert_eq!(orphans, if finalizer == "orphan" { 2 } else { 0 }, "{policy:?}");
        }
    }
}
