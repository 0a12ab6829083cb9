//! Content negotiation: Table, PartialObjectMetadata, YAML, and the refusals.

use kube::api::{ListParams, PostParams};
use reqwest::header;
use serde_json::{json, Value};

use crate::harness::{dynamic_api, sample_object, to_dynamic, TestServer};

const KUBECTL_TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
const METADATA_CLIENT: &str = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";

async fn seed(t: &TestServer) {
    let (api, _) = dynamic_api(&t.kube(), 0, Some("default"));
    let mut object = sample_object(0, "web", None);
    object["summary"] = json!({"pass": 3, "fail": 1, "warn": 0, "error": 0, "skip": 2});
    api.create(&PostParams::default(), &to_dynamic(object)).await.unwrap();
    let (ephr, _) = dynamic_api(&t.kube(), 2, Some("default"));
    let mut e = sample_object(2, "e1", None);
    e["metadata"]["labels"] =
        json!({"audit.kyverno.io/source": "admission", "audit.kyverno.io/resource.kind": "Pod"});
    ephr.create(&PostParams::default(), &to_dynamic(e)).await.unwrap();
}

on_both_stores! {
    async fn tables_use_the_crd_printer_columns(t) {
        seed(&t).await;
        let http = t.http();
        let table: Value = http
            .get(t.url("/apis/wgpolicyk8s.io/v1alpha2/policyreports?limit=500"))
            .header(header::ACCEPT, KUBECTL_TABLE)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(table["kind"], "Table");
        assert_eq!(table["apiVersion"], "meta.k8s.io/v1");
        let columns: Vec<&str> =
            table["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(columns, ["Name", "Kind", "Name", "Pass", "Fail", "Warn", "Error", "Skip", "Age"]);
        let row = &table["rows"][0];
        assert_eq!(
            row["cells"].as_array().unwrap()[..8],
            [json!("web"), json!("Pod"), json!("web"), json!(3), json!(1), json!(0), json!(0), json!(2)]
        );
        assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(row["object"]["metadata"]["namespace"], "default");
        assert!(!table["metadata"]["resourceVersion"].as_str().unwrap().is_empty());

        let ephr: Value = http
            .get(t.url("/apis/reports.kyverno.io/v1/namespaces/default/ephemeralreports/e1?includeObject=Object"))
            .header(header::ACCEPT, "application/json;as=Table;v=v1beta1;g=meta.k8s.io")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ephr["apiVersion"], "meta.k8s.io/v1beta1");
        assert_eq!(
            ephr["rows"][0]["cells"][1], "admission",
            "Source column comes from an escaped-dot label path"
        );
        assert_eq!(ephr["rows"][0]["object"]["kind"], "EphemeralReport");

        let none: Value = http
            .get(t.url("/apis/wgpolicyk8s.io/v1alpha2/namespaces/default/policyreports?includeObject=None"))
            .header(header::ACCEPT, KUBECTL_TABLE)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(none["rows"][0]["object"].is_null(), "{none}");
        let bad = http
            .get(t.url("/apis/wgpolicyk8s.io/v1alpha2/namespaces/default/policyreports?includeObject=All"))
            .header(header::ACCEPT, KUBECTL_TABLE)
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400);
    }
}

on_both_stores! {
    async fn metadata_only_clients_get_partial_object_metadata(t) {
        seed(&t).await;
        let http = t.http();
        let list: Value = http
            .get(t.url("/apis/wgpolicyk8s.io/v1alpha2/policyreports?limit=500&resourceVersion=0"))
            .header(header::ACCEPT, METADATA_CLIENT)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list["kind"], "PartialObjectMetadataList");
        assert_eq!(list["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(list["items"][0]["kind"], "PartialObjectMetadata");
        assert_eq!(list["items"][0]["metadata"]["name"], "web");
        assert!(list["items"][0].get("summary").is_none());

        // kube-rs metadata calls send a single clause with no fallback.
        let (api, _) = dynamic_api(&t.kube(), 0, Some("default"));
        let meta = api.get_metadata("web").await.unwrap();
        assert_eq!(meta.metadata.name.as_deref(), Some("web"));
        let metas = api.list_metadata(&ListParams::default()).await.unwrap();
        assert_eq!(metas.items.len(), 1);

        // The singular transform on a list, and the list transform on an object, are 406.
        let wrong = http
            .get(t.url("/apis/wgpolicyk8s.io/v1alpha2/policyreports"))
            .header(header::ACCEPT, "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 406);
    }
}

on_both_stores! {
    async fn yaml_in_and_out_protobuf_refused_cleanly(t) {
        let http = t.http();
        let url = t.url("/apis/openreports.io/v1alpha1/namespaces/default/reports");
        let yaml = "apiVersion: openreports.io/v1alpha1\nkind: Report\nmetadata:\n  name: from-yaml\nsummary:\n  pass: 1\n";
        let created =
            http.post(&url).header(header::CONTENT_TYPE, "application/yaml").body(yaml).send().await.unwrap();
        assert_eq!(created.status(), 201);
        let as_yaml =
            http.get(format!("{url}/from-yaml")).header(header::ACCEPT, "application/yaml").send().await.unwrap();
        assert_eq!(as_yaml.headers()[header::CONTENT_TYPE], "application/yaml");
        let text = as_yaml.text().await.unwrap();
        assert!(text.contains("name: from-yaml") && text.contains("kind: Report"), "{text}");

        // PUT in YAML: the stored object is replaced, and a stale resourceVersion conflicts.
        let current: Value = serde_saphyr::from_str(&text).unwrap();
        let rv = current["metadata"]["resourceVersion"].as_str().unwrap().to_string();
        let replacement = format!(
            "apiVersion: openreports.io/v1alpha1\nkind: Report\nmetadata:\n  name: from-yaml\n  \
             resourceVersion: \"{rv}\"\n  labels:\n    edited: by-yaml\nsummary:\n  pass: 7\n"
        );
        let put = |body: String| {
            http.put(format!("{url}/from-yaml"))
                .header(header::CONTENT_TYPE, "application/yaml")
                .header(header::ACCEPT, "application/yaml")
                .body(body)
                .send()
        };
        let replaced = put(replacement.clone()).await.unwrap();
        assert_eq!(replaced.status(), 200);
        assert_eq!(replaced.headers()[header::CONTENT_TYPE], "application/yaml");
        let replaced: Value = serde_saphyr::from_str(&replaced.text().await.unwrap()).unwrap();
        assert_eq!(replaced["summary"]["pass"], 7);
        assert_eq!(replaced["metadata"]["labels"]["edited"], "by-yaml");
        assert_ne!(replaced["metadata"]["resourceVersion"], rv.as_str());
        let stored: Value = http.get(format!("{url}/from-yaml")).send().await.unwrap().json().await.unwrap();
        assert_eq!(stored["summary"]["pass"], 7, "the YAML PUT is what is stored");
        let stale = put(replacement).await.unwrap();
        assert_eq!(stale.status(), 409);
        let status: Value = serde_saphyr::from_str(&stale.text().await.unwrap()).unwrap();
        assert_eq!((status["kind"].as_str(), status["reason"].as_str()), (Some("Status"), Some("Conflict")));

        let protobuf_first = http
            .get(format!("{url}/from-yaml"))
            .header(header::ACCEPT, "application/vnd.kubernetes.protobuf, application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(protobuf_first.status(), 200);
        assert_eq!(protobuf_first.headers()[header::CONTENT_TYPE], "application/json");
        let only_protobuf = http
            .get(format!("{url}/from-yaml"))
            .header(header::ACCEPT, "application/vnd.kubernetes.protobuf")
            .send()
            .await
            .unwrap();
        assert_eq!(only_protobuf.status(), 406);
        let body: Value = only_protobuf.json().await.unwrap();
        assert_eq!(body["reason"], "NotAcceptable");

        let protobuf_body = http
            .post(&url)
            .header(header::CONTENT_TYPE, "application/vnd.kubernetes.protobuf")
            .body(vec![0u8, 1, 2])
            .send()
            .await
            .unwrap();
        assert_eq!(protobuf_body.status(), 415);
        let smp = http
            .patch(format!("{url}/from-yaml"))
            .header(header::CONTENT_TYPE, "application/strategic-merge-patch+json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(smp.status(), 415);
        let body: Value = smp.json().await.unwrap();
        assert_eq!(body["reason"], "UnsupportedMediaType");
        assert!(body["message"].as_str().unwrap().contains("application/merge-patch+json"));
    }
}

on_both_stores! {
    /// Pretty JSON and YAML lists are streamed an item at a time; what they say is exactly what the
    /// compact JSON list says, for objects, Tables and metadata, empty or not.
    async fn pretty_and_yaml_lists_say_what_the_json_list_says(t) {
        let http = t.http();
        let collection = t.url("/apis/wgpolicyk8s.io/v1alpha2/namespaces/default/policyreports");
        let empty = t.url("/apis/wgpolicyk8s.io/v1alpha2/namespaces/empty/policyreports");
        for i in 0..5 {
            let mut report = crate::harness::sample_object(0, &format!("r{i}"), Some("default"));
            report["results"][0]["message"] = serde_json::json!("multi\nline: text");
            assert_eq!(http.post(&collection).json(&report).send().await.unwrap().status(), 201);
        }
        let get = |url: String, accept: &'static str, query: &'static str| {
            let http = http.clone();
            async move {
                let response = http.get(format!("{url}{query}")).header("accept", accept).send().await.unwrap();
                assert_eq!(response.status(), 200);
                response.text().await.unwrap()
            }
        };
        for url in [collection.clone(), empty] {
            for shape in [
                "application/json",
                "application/json;as=Table;v=v1;g=meta.k8s.io",
                "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
            ] {
                let compact: serde_json::Value =
                    serde_json::from_str(&get(url.clone(), shape, "").await).unwrap();
                let pretty_text = get(url.clone(), shape, "?pretty=true").await;
                assert!(pretty_text.contains("\n  \""), "indented: {pretty_text}");
                let pretty: serde_json::Value = serde_json::from_str(&pretty_text).unwrap();
                assert_eq!(pretty, compact, "{shape} pretty");
                assert_eq!(
                    pretty_text,
                    serde_json::to_string_pretty(&compact).unwrap(),
                    "{shape}: as the whole document would be printed"
                );
                if shape == "application/json" {
                    let yaml: serde_json::Value =
                        serde_saphyr::from_str(&get(url.clone(), "application/yaml", "").await).unwrap();
                    assert_eq!(yaml, compact, "YAML list");
                }
            }
        }
        // Paged YAML keeps the continue token in its metadata.
        let page: serde_json::Value =
            serde_saphyr::from_str(&get(collection.clone(), "application/yaml", "?limit=2").await).unwrap();
        assert_eq!(page["items"].as_array().unwrap().len(), 2);
        assert!(page["metadata"]["continue"].as_str().is_some_and(|c| !c.is_empty()), "{page}");
    }
}

on_both_stores! {
    /// Every kind's Table has its CRD's printer columns (with their priorities) and cells read
    /// from each column's JSON path.
    async fn tables_of_all_six_kinds(t) {
        let client = t.kube();
        let http = t.http();
        let kyverno_columns = [
            ("Source", 0), ("Group", 0), ("Kind", 0), ("Owner", 0), ("Pass", 0), ("Fail", 0), ("Warn", 0),
            ("Error", 0), ("Skip", 0), ("Age", 0),
        ];
        let scope_columns = |priority| {
            vec![("Kind", priority), ("Name", priority), ("Pass", 0), ("Fail", 0), ("Warn", 0), ("Error", 0),
                 ("Skip", 0), ("Age", 0)]
        };
        let summary = [json!(3), json!(1), json!(0), json!(0), json!(2)];
        for (index, (group, version, kind, plural, namespaced)) in crate::harness::KINDS.into_iter().enumerate() {
            let name = format!("table-{}", kind.to_lowercase());
            let mut object = sample_object(index, &name, Some("tables"));
            object["metadata"]["labels"] = json!({
                "audit.kyverno.io/source": "admission", "audit.kyverno.io/resource.group": "apps",
                "audit.kyverno.io/resource.kind": "Deployment", "audit.kyverno.io/resource.uid": "u-1",
                "audit.kyverno.io/resource.hash": "h1",
            });
            object["metadata"]["annotations"] = json!({"audit.kyverno.io/resource.name": "web"});
            let counts = json!({"pass": 3, "fail": 1, "warn": 0, "error": 0, "skip": 2});
            let (mut columns, mut cells) = (vec![("Name", 0)], vec![json!(name)]);
            if group == "reports.kyverno.io" {
                object["spec"]["summary"] = counts;
                columns.extend(kyverno_columns);
                let uid_priority = if namespaced { 1 } else { 0 };
                columns.extend([("Uid", uid_priority), ("Hash", 1)]);
                cells.extend([json!("admission"), json!("apps"), json!("Deployment"), json!("web")]);
                cells.extend(summary.clone());
            } else {
                object["summary"] = counts;
                columns.extend(scope_columns(if group == "openreports.io" { 1 } else { 0 }));
                cells.extend([json!("Pod"), json!("web")]);
                cells.extend(summary.clone());
            }
            let (api, _) = dynamic_api(&client, index, Some("tables"));
            api.create(&PostParams::default(), &to_dynamic(object)).await.unwrap();
            let path = if namespaced {
                format!("/apis/{group}/{version}/namespaces/tables/{plural}")
            } else {
                format!("/apis/{group}/{version}/{plural}")
            };
            let table: Value =
                http.get(t.url(&path)).header(header::ACCEPT, KUBECTL_TABLE).send().await.unwrap().json().await.unwrap();
            assert_eq!(table["kind"], "Table", "{kind}");
            let got: Vec<(&str, u64)> = table["columnDefinitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| (c["name"].as_str().unwrap(), c["priority"].as_u64().unwrap()))
                .collect();
            assert_eq!(got, columns, "{kind}: columns");
            let rows = table["rows"].as_array().unwrap();
            assert_eq!(rows.len(), 1, "{kind}");
            let row = rows[0]["cells"].as_array().unwrap();
            assert_eq!(row.len(), columns.len(), "{kind}: one cell per column");
            assert_eq!(row[..cells.len()], cells[..], "{kind}: cells");
            let age = columns.iter().position(|c| c.0 == "Age").unwrap();
            assert!(row[age].as_str().is_some_and(|a| a.ends_with('s') || a.ends_with('m')), "{kind}: age {}", row[age]);
            if group == "reports.kyverno.io" {
                assert_eq!(row[age + 1..], [json!("u-1"), json!("h1")], "{kind}: Uid and Hash");
            }
            assert_eq!(rows[0]["object"]["kind"], "PartialObjectMetadata", "{kind}");
        }
    }
}
