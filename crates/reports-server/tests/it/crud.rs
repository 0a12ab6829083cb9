//! Object semantics through kube-rs on every kind: create, get, replace, patch, delete, and the
//! conflicts and validation errors a CRD gives.

use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::ResourceExt;
use serde_json::json;

use crate::harness::{dynamic_api, sample_object, status_of, to_dynamic, KINDS};

on_both_stores! {
    async fn every_kind_supports_the_full_object_lifecycle(t) {
        let client = t.kube();
        for (index, &(_, _, kind, plural, namespaced)) in KINDS.iter().enumerate() {
            let (api, _) = dynamic_api(&client, index, Some("team-a"));
            let input = sample_object(index, "r1", Some("team-a"));
            let created = api.create(&PostParams::default(), &to_dynamic(input.clone())).await.unwrap();
            let meta = &created.metadata;
            assert!(meta.uid.as_deref().is_some_and(|u| u.len() == 36), "{kind}: uid");
            assert!(meta.creation_timestamp.is_some(), "{kind}: creationTimestamp");
            assert_eq!(meta.generation, Some(1), "{kind}: generation");
            assert_eq!(
                meta.namespace.as_deref(),
                if namespaced { Some("team-a") } else { None },
                "{kind}: namespace"
            );
            let rv1: u64 = meta.resource_version.as_deref().unwrap().parse().unwrap();
            assert_eq!(created.types.as_ref().unwrap().kind, kind);

            let fetched = api.get("r1").await.unwrap();
            assert_eq!(fetched.metadata.resource_version, created.metadata.resource_version);
            // The content (all but apiVersion, kind and metadata) is what the client sent.
            let mut content = input.clone();
            for key in ["apiVersion", "kind", "metadata"] {
                content.as_object_mut().unwrap().remove(key);
            }
            assert_eq!(fetched.data, content, "{kind}: stored content comes back as written");
            assert_eq!(created.data, content, "{kind}: the create answers with the content as written");
            assert_eq!(fetched.metadata.labels.as_ref().unwrap()["app"], "demo", "{kind}: labels as written");

            // Create of an existing name is 409 AlreadyExists, never an upsert.
            let mut again = sample_object(index, "r1", Some("team-a"));
            again["metadata"]["labels"] = json!({"app": "overwritten"});
            let err = status_of(api.create(&PostParams::default(), &to_dynamic(again)).await.unwrap_err());
            assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"), "{kind}");
            assert_eq!(err.message, format!("{plural}.{} \"r1\" already exists", KINDS[index].0));
            assert_eq!(api.get("r1").await.unwrap().labels().get("app").map(String::as_str), Some("demo"));

            // A labels-only replace keeps the generation; a content change bumps it.
            let mut labelled = fetched.clone();
            labelled.labels_mut().insert("tier".into(), "web".into());
            let replaced = api.replace("r1", &PostParams::default(), &labelled).await.unwrap();
            assert_eq!(replaced.metadata.generation, Some(1), "{kind}: metadata-only update keeps generation");
            let rv2: u64 = replaced.metadata.resource_version.as_deref().unwrap().parse().unwrap();
            assert!(rv2 > rv1);

            // The stale copy now conflicts.
            let err = status_of(api.replace("r1", &PostParams::default(), &labelled).await.unwrap_err());
            assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"), "{kind}: stale replace");
            assert!(err.message.contains("the object has been modified"), "{}", err.message);

            // Merge patch of content bumps the generation; JSON patch with a failing test is 422.
            let content_path = if KINDS[index].0 == "reports.kyverno.io" {
                json!({"spec": {"summary": {"fail": 2}}})
            } else {
                json!({"summary": {"fail": 2}})
            };
            let patched = api.patch("r1", &PatchParams::default(), &Patch::Merge(&content_path)).await.unwrap();
            assert_eq!(patched.metadata.generation, Some(2), "{kind}: content patch bumps generation");
            let failing: json_patch::Patch =
                serde_json::from_value(json!([{"op": "test", "path": "/metadata/name", "value": "other"}]))
                    .unwrap();
            let err = status_of(
                api.patch("r1", &PatchParams::default(), &Patch::<()>::Json(failing)).await.unwrap_err(),
            );
            assert_eq!(err.code, 422, "{kind}: failed json-patch test");
            let add_label: json_patch::Patch =
                serde_json::from_value(json!([{"op": "add", "path": "/metadata/labels/jp", "value": "yes"}]))
                    .unwrap();
            let jp = api.patch("r1", &PatchParams::default(), &Patch::<()>::Json(add_label)).await.unwrap();
            assert_eq!(jp.labels().get("jp").map(String::as_str), Some("yes"));

            // Delete with a wrong uid precondition conflicts; a plain delete returns a Status.
            let wrong = DeleteParams {
                preconditions: Some(Preconditions { uid: Some("nope".into()), resource_version: None }),
                ..Default::default()
            };
            let err = status_of(api.delete("r1", &wrong).await.unwrap_err());
            assert_eq!(err.code, 409, "{kind}: uid precondition");
            assert!(err.message.contains("Precondition failed: UID in precondition: nope"), "{}", err.message);
            let deleted = api.delete("r1", &DeleteParams::default()).await.unwrap();
            let status = deleted.right().expect("a CRD delete answers with a Status");
            assert_eq!(status.details.unwrap().uid, created.metadata.uid.unwrap());
            let err = status_of(api.get("r1").await.unwrap_err());
            assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
        }
    }
}

on_both_stores! {
    async fn replace_requires_resource_version_and_an_existing_object(t) {
        let (api, _) = dynamic_api(&t.kube(), 0, Some("default"));
        let mut object = to_dynamic(sample_object(0, "r1", None));
        let err = status_of(api.replace("r1", &PostParams::default(), &object).await.unwrap_err());
        assert_eq!(err.code, 404, "no create-on-update for CRDs");
        api.create(&PostParams::default(), &object).await.unwrap();
        object.metadata.resource_version = None;
        let err = status_of(api.replace("r1", &PostParams::default(), &object).await.unwrap_err());
        assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
        assert!(
            err.message.contains("metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"),
            "{}",
            err.message
        );
    }
}

on_both_stores! {
    async fn generate_name_creates_unique_names(t) {
        let (api, _) = dynamic_api(&t.kube(), 2, Some("default"));
        let mut object = sample_object(2, "", None);
        object["metadata"].as_object_mut().unwrap().remove("name");
        object["metadata"]["generateName"] = json!("ephr-");
        let a = api.create(&PostParams::default(), &to_dynamic(object.clone())).await.unwrap();
        let b = api.create(&PostParams::default(), &to_dynamic(object)).await.unwrap();
        let (a, b) = (a.metadata.name.unwrap(), b.metadata.name.unwrap());
        assert!(a.starts_with("ephr-") && a.len() == 10, "{a}");
        assert_ne!(a, b);
    }
}

on_both_stores! {
    async fn dry_run_persists_nothing(t) {
        let (api, _) = dynamic_api(&t.kube(), 4, Some("default"));
        let dry = PostParams { dry_run: true, ..Default::default() };
        let before = t.store().current_rv().await.unwrap();
        let answer = api.create(&dry, &to_dynamic(sample_object(4, "ghost", None))).await.unwrap();
        assert!(answer.metadata.uid.is_some());
        assert!(answer.metadata.resource_version.is_none(), "a dry-run create has no resourceVersion");
        assert_eq!(status_of(api.get("ghost").await.unwrap_err()).code, 404);
        api.create(&PostParams::default(), &to_dynamic(sample_object(4, "real", None))).await.unwrap();
        let after_create = t.store().current_rv().await.unwrap();
        let dp = DeleteParams { dry_run: true, ..Default::default() };
        api.delete("real", &dp).await.unwrap();
        api.patch(
            "real",
            &PatchParams { dry_run: true, ..Default::default() },
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
        assert!(api.get("real").await.unwrap().labels().get("x").is_none());
        assert_eq!(t.store().current_rv().await.unwrap(), after_create, "dry runs write nothing");
        assert_eq!(after_create, before + 1);
    }
}

on_both_stores! {
    async fn finalizers_delay_deletion_until_removed(t) {
        let (api, _) = dynamic_api(&t.kube(), 0, Some("default"));
        let mut object = sample_object(0, "held", None);
        object["metadata"]["finalizers"] = json!(["example.com/hold"]);
        api.create(&PostParams::default(), &to_dynamic(object)).await.unwrap();
        let answer = api.delete("held", &DeleteParams::default()).await.unwrap();
        let terminating = answer.left().expect("an object with finalizers comes back with deletionTimestamp");
        assert!(terminating.metadata.deletion_timestamp.is_some());
        assert!(api.get("held").await.unwrap().metadata.deletion_timestamp.is_some());
        // Creating the same name while it is being deleted is AlreadyExists with kube's prefix.
        let err = status_of(
            api.create(&PostParams::default(), &to_dynamic(sample_object(0, "held", None))).await.unwrap_err(),
        );
        assert!(err.message.starts_with("object is being deleted: "), "{}", err.message);
        // New finalizers cannot be added while deleting.
        let add = json!({"metadata": {"finalizers": ["example.com/hold", "example.com/more"]}});
        assert_eq!(
            status_of(api.patch("held", &PatchParams::default(), &Patch::Merge(add)).await.unwrap_err()).code,
            422
        );
        // Removing the last finalizer deletes it.
        api.patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
            .await
            .unwrap();
        assert_eq!(status_of(api.get("held").await.unwrap_err()).code, 404);
    }
}

on_both_stores! {
    async fn namespace_rules_follow_the_url(t) {
        let client = t.kube();
        let (api, _) = dynamic_api(&client, 0, Some("a"));
        let err = status_of(
            api.create(&PostParams::default(), &to_dynamic(sample_object(0, "x", Some("b")))).await.unwrap_err(),
        );
        assert_eq!(err.code, 400);
        assert_eq!(
            err.message,
            "the namespace of the provided object does not match the namespace sent on the request"
        );
        // A cluster-scoped kind silently drops a namespace in the body.
        let (cluster_api, _) = dynamic_api(&client, 1, None);
        let mut object = sample_object(1, "c", None);
        object["metadata"]["namespace"] = json!("ignored");
        let created = cluster_api.create(&PostParams::default(), &to_dynamic(object)).await.unwrap();
        assert_eq!(created.metadata.namespace, None);
        // Same name in two namespaces: two objects.
        let (other, _) = dynamic_api(&client, 0, Some("b"));
        api.create(&PostParams::default(), &to_dynamic(sample_object(0, "same", Some("a")))).await.unwrap();
        other.create(&PostParams::default(), &to_dynamic(sample_object(0, "same", Some("b")))).await.unwrap();
        assert_eq!(other.get("same").await.unwrap().metadata.namespace.as_deref(), Some("b"));
    }
}

on_both_stores! {
    async fn concurrent_patches_without_resource_version_all_apply(t) {
        let client = t.kube();
        let (api, _) = dynamic_api(&client, 0, Some("default"));
        api.create(&PostParams::default(), &to_dynamic(sample_object(0, "hot", None))).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let api = api.clone();
            tasks.push(tokio::spawn(async move {
                let patch = json!({"metadata": {"labels": {format!("k{i}"): "v"}}});
                api.patch("hot", &PatchParams::default(), &Patch::Merge(patch)).await.map(|_| ())
            }));
        }
        for task in tasks {
            task.await.unwrap().expect("a patch without resourceVersion never conflicts");
        }
        let labels = api.get("hot").await.unwrap().metadata.labels.unwrap();
        assert_eq!(labels.len(), 9, "every concurrent patch landed: {labels:?}");
    }
}
