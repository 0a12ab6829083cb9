//! Discovery as kube-apiserver's aggregator, client-go and kube-rs read it.

use reqwest::header;
use serde_json::Value;

use crate::harness::{TestServer, KINDS};

const V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
const CLIENT_GO_ACCEPT: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";

#[tokio::test]
async fn legacy_discovery_documents_list_every_kind() {
    let t = TestServer::start().await;
    let http = t.http();
    let groups: Value = http.get(t.url("/apis")).send().await.unwrap().json().await.unwrap();
    assert_eq!(groups["kind"], "APIGroupList");
    let names: Vec<&str> =
        groups["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["wgpolicyk8s.io", "reports.kyverno.io", "openreports.io", "query.reports-server.io"]);

    // The query resources are computed: listed, nothing else.
    let query: Value =
        http.get(t.url("/apis/query.reports-server.io/v1alpha1")).send().await.unwrap().json().await.unwrap();
    let query: Vec<(&str, &Value)> = query["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), &r["verbs"]))
        .collect();
    assert_eq!(
        query,
        [("findings", &serde_json::json!(["list"])), ("findingcounts", &serde_json::json!(["list"]))]
    );

    let group: Value =
        http.get(t.url("/apis/reports.kyverno.io")).send().await.unwrap().json().await.unwrap();
    assert_eq!(group["kind"], "APIGroup");
    assert_eq!(group["preferredVersion"]["version"], "v1");

    let resources: Value =
        http.get(t.url("/apis/wgpolicyk8s.io/v1alpha2")).send().await.unwrap().json().await.unwrap();
    assert_eq!(resources["kind"], "APIResourceList");
    let polr = &resources["resources"][0];
    assert_eq!(polr["name"], "policyreports");
    assert_eq!(polr["shortNames"][0], "polr");
    assert_eq!(polr["namespaced"], true);
    assert_eq!(polr["storageVersionHash"], "oABByl1YGQo=");
    assert_eq!(polr["verbs"].as_array().unwrap().len(), 8);

    // Every kind, in the resource list of its group version, as its CRD declares it.
    for (group, version, kind, plural, namespaced) in KINDS {
        let list: Value =
            http.get(t.url(&format!("/apis/{group}/{version}"))).send().await.unwrap().json().await.unwrap();
        assert_eq!(list["groupVersion"], format!("{group}/{version}"));
        let resources = list["resources"].as_array().unwrap();
        let names: Vec<&str> = resources.iter().map(|r| r["name"].as_str().unwrap()).collect();
        let expected: Vec<&str> = KINDS.iter().filter(|k| k.0 == group).map(|k| k.3).collect();
        assert_eq!(names, expected, "{group}/{version}: exactly its kinds");
        let resource = resources.iter().find(|r| r["name"] == plural).unwrap();
        assert_eq!(resource["kind"], kind);
        assert_eq!(resource["namespaced"], namespaced, "{kind}");
        assert_eq!(resource["singularName"], kind.to_lowercase(), "{kind}");
        assert!(!resource["shortNames"].as_array().unwrap().is_empty(), "{kind}: short names");
        assert!(!resource["storageVersionHash"].as_str().unwrap().is_empty(), "{kind}: storage hash");
        let mut verbs: Vec<&str> =
            resource["verbs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        verbs.sort();
        assert_eq!(
            verbs,
            ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            "{kind}"
        );
    }

    let missing = http.get(t.url("/apis/wgpolicyk8s.io/v1beta1")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["kind"], "Status");
}

#[tokio::test]
async fn aggregated_discovery_has_exact_content_type_and_etag() {
    let t = TestServer::start().await;
    let http = t.http();
    let response = http.get(t.url("/apis")).header(header::ACCEPT, CLIENT_GO_ACCEPT).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[header::CONTENT_TYPE], V2);
    assert_eq!(response.headers()[header::VARY], "Accept");
    let etag = response.headers()[header::ETAG].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() == 130, "{etag}");
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["apiVersion"], "apidiscovery.k8s.io/v2");
    let kyverno = &doc["items"][1];
    assert_eq!(kyverno["metadata"]["name"], "reports.kyverno.io");
    let ephr = &kyverno["versions"][0]["resources"][0];
    assert_eq!(ephr["resource"], "ephemeralreports");
    assert_eq!(ephr["scope"], "Namespaced");
    assert_eq!(ephr["categories"][0], "kyverno");
    assert_eq!(ephr["responseKind"]["kind"], "EphemeralReport");

    let cached = http
        .get(t.url("/apis"))
        .header(header::ACCEPT, V2)
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);

    let beta = http
        .get(t.url("/apis"))
        .header(header::ACCEPT, "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList")
        .send()
        .await
        .unwrap();
    assert_eq!(
        beta.headers()[header::CONTENT_TYPE],
        "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
    );
    let beta: Value = beta.json().await.unwrap();
    assert_eq!(beta["apiVersion"], "apidiscovery.k8s.io/v2beta1");

    // Group-version documents never answer in the aggregated format: the clause falls through.
    let gv = http
        .get(t.url("/apis/openreports.io/v1alpha1"))
        .header(header::ACCEPT, CLIENT_GO_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(gv.headers()[header::CONTENT_TYPE], "application/json");
    let only_v2 =
        http.get(t.url("/apis/openreports.io/v1alpha1")).header(header::ACCEPT, V2).send().await.unwrap();
    assert_eq!(only_v2.status(), 406);
}

#[tokio::test]
async fn legacy_api_root_and_version_answer_like_an_aggregated_server() {
    let t = TestServer::start().await;
    let http = t.http();
    assert_eq!(http.get(t.url("/api")).send().await.unwrap().status(), 404);
    let empty: Value = http
        .get(t.url("/api"))
        .header(header::ACCEPT, CLIENT_GO_ACCEPT)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(empty["items"].as_array().unwrap().len(), 0);
    let version: Value = http.get(t.url("/version")).send().await.unwrap().json().await.unwrap();
    assert_eq!(version["major"], "1");
    for endpoint in ["/healthz", "/livez", "/readyz"] {
        let response = http.get(t.url(endpoint)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{endpoint}");
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    let verbose = http.get(t.url("/readyz?verbose")).send().await.unwrap().text().await.unwrap();
    assert!(verbose.contains("[+]storage ok") && verbose.ends_with("readyz check passed\n"), "{verbose}");
}

#[tokio::test]
async fn kube_rs_discovery_finds_all_six_kinds() {
    let t = TestServer::start().await;
    // The core group lives in kube-apiserver, never here, so discovery is limited to our groups
    // (through the aggregator the client would see both).
    let groups = ["wgpolicyk8s.io", "reports.kyverno.io", "openreports.io"];
    let discovery = kube::Discovery::new(t.kube()).filter(&groups).run().await.unwrap();
    let mut found = Vec::new();
    for group in discovery.groups() {
        for (resource, caps) in group.recommended_resources() {
            found.push((resource.plural.clone(), caps.scope == kube::discovery::Scope::Namespaced));
        }
    }
    found.sort();
    assert_eq!(
        found,
        vec![
            ("clusterephemeralreports".to_string(), false),
            ("clusterpolicyreports".into(), false),
            ("clusterreports".into(), false),
            ("ephemeralreports".into(), true),
            ("policyreports".into(), true),
            ("reports".into(), true),
        ]
    );
}

#[tokio::test]
async fn openapi_v3_documents_are_hashed_cached_and_redirected() {
    let t = TestServer::start().await;
    let http = t.http();
    let index: Value = http.get(t.url("/openapi/v3")).send().await.unwrap().json().await.unwrap();
    let url = index["paths"]["apis/reports.kyverno.io/v1"]["serverRelativeURL"].as_str().unwrap().to_string();
    assert!(url.starts_with("/openapi/v3/apis/reports.kyverno.io/v1?hash="), "{url}");
    let response = http.get(t.url(&url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "public, immutable");
    let etag = response.headers()["etag"].to_str().unwrap().to_string();
    let doc: Value = response.json().await.unwrap();
    let patch =
        &doc["paths"]["/apis/reports.kyverno.io/v1/namespaces/{namespace}/ephemeralreports/{name}"]["patch"];
    assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "EphemeralReport");
    let cached = http.get(t.url(&url)).header("If-None-Match", &etag).send().await.unwrap();
    assert_eq!(cached.status(), 304);
    let stale = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(t.pki.ca_pem.as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(t.url("/openapi/v3/apis/reports.kyverno.io/v1?hash=OLD"))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 301);
    assert_eq!(stale.headers()["location"], url.as_str());
    let missing = http.get(t.url("/openapi/v3/apis/reports.kyverno.io/v9")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let protobuf = http
        .get(t.url(&url))
        .header("Accept", "application/com.github.proto-openapi.spec.v3@v1.0+protobuf")
        .send()
        .await
        .unwrap();
    assert_eq!(protobuf.status(), 406);
}

#[tokio::test]
async fn openapi_v2_is_json_with_etag_and_every_kind() {
    let t = TestServer::start().await;
    let http = t.http();
    let response = http.get(t.url("/openapi/v2")).header("Accept", "application/json").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.headers().contains_key("last-modified"));
    let etag = response.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["swagger"], "2.0");
    for (group, version, kind, plural, namespaced) in crate::harness::KINDS {
        let scope = if namespaced { "/namespaces/{namespace}" } else { "" };
        let item = &doc["paths"][format!("/apis/{group}/{version}{scope}/{plural}/{{name}}")];
        let patch = &item["patch"];
        assert_eq!(patch["x-kubernetes-action"], "patch", "{kind}");
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], kind);
        assert_eq!(
            patch["consumes"],
            serde_json::json!(["application/json-patch+json", "application/merge-patch+json"]),
            "{kind}: exactly the patch types we accept"
        );
        assert!(patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
        let collection = &doc["paths"][format!("/apis/{group}/{version}{scope}/{plural}")];
        assert_eq!(collection["get"]["x-kubernetes-action"], "list");
        let watch = collection["get"]["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "watch");
        assert_eq!(watch.unwrap()["type"], "boolean");
        let reversed: Vec<&str> = group.split('.').rev().collect();
        let name = format!("{}.{version}.{kind}", reversed.join("."));
        assert_eq!(doc["definitions"][&name]["x-kubernetes-group-version-kind"][0]["kind"], kind);
        assert_eq!(doc["definitions"][format!("{name}List")]["required"][0], "items");
    }
    for meta in ["ObjectMeta", "ListMeta", "Status", "DeleteOptions", "Patch", "WatchEvent"] {
        assert!(
            doc["definitions"][format!("io.k8s.apimachinery.pkg.apis.meta.v1.{meta}")].is_object(),
            "{meta}"
        );
    }
    let cached = http.get(t.url("/openapi/v2")).header("If-None-Match", &etag).send().await.unwrap();
    assert_eq!(cached.status(), 304);
    let protobuf_only = http
        .get(t.url("/openapi/v2"))
        .header("Accept", "application/com.github.proto-openapi.spec.v2@v1.0+protobuf")
        .send()
        .await
        .unwrap();
    assert_eq!(protobuf_only.status(), 406);
    let either = http
        .get(t.url("/openapi/v2"))
        .header("Accept", "application/com.github.proto-openapi.spec.v2@v1.0+protobuf, application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(either.status(), 200);
}
