//! Real reports from real tools (testdata/samples) go in and come back byte-for-value identical,
//! quirks included: negative or out-of-range nanos, a UTF-8 BOM, property keys with spaces and
//! dots, JSON-in-a-string values, 122-result kube-bench reports, legacy apiVersions.

use kube::api::{ListParams, PostParams};
use serde_json::{json, Value};

use crate::harness::{dynamic_api, to_dynamic, TestServer, KINDS};

/// Every object in every sample file, as (file name, object).
pub(crate) fn load_samples() -> Vec<(String, Value)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/samples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let docs: Vec<Value> = serde_saphyr::from_str_multiple(text.trim_start_matches('\u{feff}'))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        for doc in docs {
            // Some captures are Lists without `kind: List` (chainsaw assertions).
            if doc["items"].is_array() {
                objects.extend(doc["items"].as_array().unwrap().iter().map(|i| (file.clone(), i.clone())));
            } else if doc.is_object() {
                objects.push((file.clone(), doc));
            }
        }
    }
    objects
}

/// The index in KINDS a sample belongs to, mapping legacy versions and kinds to the served ones
/// (v1alpha1/v1beta1 wgpolicy reports, pre-1.12 Kyverno intermediate reports).
pub(crate) fn served_kind(object: &Value) -> usize {
    let kind = object["kind"].as_str().unwrap();
    let served = match kind {
        "BackgroundScanReport" | "AdmissionReport" => "EphemeralReport",
        "ClusterBackgroundScanReport" | "ClusterAdmissionReport" => "ClusterEphemeralReport",
        other => other,
    };
    KINDS.iter().position(|k| k.2 == served).unwrap_or_else(|| panic!("no served kind for {kind}"))
}

/// Turns a captured object into something a client could create: served apiVersion, no server
/// fields, a name for the chainsaw assertions that have none, owner uids where they lack them.
pub(crate) fn creatable(index: usize, n: usize, mut object: Value) -> Value {
    let (group, version, kind, _, namespaced) = KINDS[index];
    let legacy_kind = object["kind"].as_str() != Some(kind);
    if legacy_kind && object["spec"].is_object() && object["spec"].get("owner").is_none() {
        // Pre-1.12 intermediate reports had no spec.owner, which EphemeralReport's schema
        // requires; convert them as Kyverno does today, with an all-empty owner.
        object["spec"]["owner"] = json!({"apiVersion": "", "kind": "", "name": "", "uid": ""});
    }
    object["apiVersion"] = json!(format!("{group}/{version}"));
    object["kind"] = json!(kind);
    let meta = object["metadata"].as_object_mut().unwrap();
    for field in ["resourceVersion", "uid", "creationTimestamp", "selfLink", "managedFields", "generation"] {
        meta.remove(field);
    }
    if !meta.contains_key("name") {
        meta.insert("name".into(), json!(format!("sample-{n}")));
    }
    if namespaced && !meta.contains_key("namespace") {
        meta.insert("namespace".into(), json!("samples"));
    }
    for owner in meta.get_mut("ownerReferences").and_then(Value::as_array_mut).into_iter().flatten() {
        if owner.get("uid").is_none() {
            owner["uid"] = json!(format!("00000000-0000-0000-0000-{n:012}"));
        }
    }
    object
}

on_both_stores! {
    async fn every_real_sample_round_trips_unchanged(t) {
        let client = t.kube();
        let samples = load_samples();
        assert!(samples.len() >= 25, "all sample files load ({})", samples.len());
        let mut per_kind = [0usize; 6];
        for (n, (file, raw)) in samples.into_iter().enumerate() {
            let index = served_kind(&raw);
            let object = creatable(index, n, raw);
            let ns = object["metadata"]["namespace"].as_str().map(str::to_string);
            let (api, _) = dynamic_api(&client, index, ns.as_deref());
            let name = object["metadata"]["name"].as_str().unwrap().to_string();
            api.create(&PostParams::default(), &to_dynamic(object.clone()))
                .await
                .unwrap_or_else(|e| panic!("{file}: create {name}: {e}"));
            per_kind[index] += 1;
            let back = serde_json::to_value(api.get(&name).await.unwrap()).unwrap();
            for (key, value) in object.as_object().unwrap() {
                if key != "metadata" {
                    assert_eq!(&back[key], value, "{file}: {key} of {name} comes back unchanged");
                }
            }
            for key in ["labels", "annotations", "ownerReferences"] {
                assert_eq!(back["metadata"][key], object["metadata"][key], "{file}: metadata.{key} of {name}");
            }
        }
        // Paging through each kind in small pages sees every object exactly once.
        for (index, expected) in per_kind.iter().enumerate() {
            let (api, _) = dynamic_api(&client, index, None);
            let mut seen = Vec::new();
            let mut params = ListParams::default().limit(2);
            loop {
                let page = api.list(&params).await.unwrap();
                seen.extend(page.items.iter().map(|o| (o.metadata.namespace.clone(), o.metadata.name.clone())));
                match page.metadata.continue_.filter(|c| !c.is_empty()) {
                    Some(token) => params = params.continue_token(&token),
                    None => break,
                }
            }
            let before = seen.len();
            seen.dedup();
            assert_eq!((before, seen.len()), (*expected, *expected), "{}", KINDS[index].2);
        }
    }
}

#[tokio::test]
async fn a_yaml_body_with_a_byte_order_mark_is_accepted() {
    let t = TestServer::start().await;
    let (_, raw) = load_samples().into_iter().find(|(file, _)| file.starts_with("kubearmor")).unwrap();
    let object = creatable(0, 1, raw);
    let body = format!("\u{feff}{}", serde_saphyr::to_string(&object).unwrap());
    let ns = object["metadata"]["namespace"].as_str().unwrap();
    let url = t.url(&format!("/apis/wgpolicyk8s.io/v1alpha2/namespaces/{ns}/policyreports"));
    let response =
        t.http().post(url).header("Content-Type", "application/yaml").body(body).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["results"], object["results"], "out-of-range nanos survive");
}

#[tokio::test]
async fn owner_references_without_uid_are_rejected_like_kube() {
    let t = TestServer::start().await;
    let (_, raw) = load_samples().into_iter().find(|(file, _)| file.starts_with("kyverno-cpolr")).unwrap();
    let mut object = creatable(1, 1, raw);
    object["metadata"]["ownerReferences"][0].as_object_mut().unwrap().remove("uid");
    let (api, _) = dynamic_api(&t.kube(), 1, None);
    let err = api.create(&PostParams::default(), &to_dynamic(object)).await.unwrap_err();
    let status = crate::harness::status_of(err);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(status.message.contains("metadata.ownerReferences.uid"), "{}", status.message);
    assert!(api.list(&ListParams::default()).await.unwrap().items.is_empty(), "nothing was stored");
}

#[tokio::test]
async fn every_real_sample_passes_strict_validation_without_warnings() {
    // kube-apiserver accepts every quirk in the samples: nanos is a plain integer in the schema
    // (no range, and int32 is not enforced on integers), `seconds` is any integer, `result` is
    // optional, the BOM is stripped by the decoder, and long values are fine outside labels.
    let t = TestServer::start().await;
    let http = t.http();
    for (n, (file, raw)) in load_samples().into_iter().enumerate() {
        let index = served_kind(&raw);
        let object = creatable(index, n, raw);
        let (group, version, _, plural, namespaced) = KINDS[index];
        let scope = match object["metadata"]["namespace"].as_str() {
            Some(ns) if namespaced => format!("/namespaces/{ns}"),
            _ => String::new(),
        };
        let url = t.url(&format!("/apis/{group}/{version}{scope}/{plural}?fieldValidation=Strict"));
        let response = http.post(url).json(&object).send().await.unwrap();
        let warnings = response.headers().get_all("warning").iter().count();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, 201, "{file}: {body}");
        assert_eq!(warnings, 0, "{file}: no unknown fields");
    }
}
