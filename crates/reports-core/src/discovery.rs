//! Discovery documents: legacy `APIGroupList` / `APIGroup` / `APIResourceList`, and aggregated
//! discovery (`apidiscovery.k8s.io` v2 and v2beta1), all derived from the catalogue.

use serde_json::{json, Value};

use crate::{Catalogue, ResourceKind};

/// Verbs of a CRD resource, in the order apiextensions publishes them.
pub const VERBS: [&str; 8] =
    ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"];

fn group_version_for_discovery(group: &str, version: &str) -> Value {
    json!({"groupVersion": format!("{group}/{version}"), "version": version})
}

fn api_group(group: &str, version: &str) -> Value {
    json!({
        "name": group,
        "versions": [group_version_for_discovery(group, version)],
        "preferredVersion": group_version_for_discovery(group, version),
    })
}

/// `GET /apis` in the legacy shape.
pub fn api_group_list(catalogue: &Catalogue) -> Value {
    let groups: Vec<Value> = catalogue.groups().iter().map(|g| api_group(&g.group, &g.version)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>`, or `None` when the group is not served.
pub fn api_group_doc(catalogue: &Catalogue, group: &str) -> Option<Value> {
    let info = catalogue.groups().into_iter().find(|g| g.group == group)?;
    let mut doc = api_group(&info.group, &info.version);
    let map = doc.as_object_mut()?;
    map.insert("kind".into(), "APIGroup".into());
    map.insert("apiVersion".into(), "v1".into());
    Some(doc)
}

fn api_resource(kind: &ResourceKind) -> Value {
    let mut resource = json!({
        "name": kind.plural,
        "singularName": kind.singular,
        "namespaced": kind.namespaced,
        "group": kind.group,
        "version": kind.version,
        "kind": kind.kind,
        "verbs": if kind.query { &crate::catalogue::QUERY_VERBS[..] } else { &VERBS[..] },
        "shortNames": kind.short_names,
        "storageVersionHash": kind.storage_version_hash,
    });
    if !kind.categories.is_empty() {
        resource["categories"] = json!(kind.categories);
    }
    resource
}

/// `GET /apis/<group>/<version>`, or `None` when not served.
pub fn api_resource_list(catalogue: &Catalogue, group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = catalogue.in_group_version(group, version).map(api_resource).collect();
    if resources.is_empty() {
        return None;
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{group}/{version}"),
        "resources": resources,
    }))
}

/// Aggregated discovery for `/apis` in `apidiscovery.k8s.io/<version>` (`v2` or `v2beta1`).
pub fn aggregated_discovery(catalogue: &Catalogue, version: &str) -> Value {
    let items: Vec<Value> = catalogue
        .groups()
        .iter()
        .map(|g| {
            let resources: Vec<Value> = catalogue
                .in_group_version(&g.group, &g.version)
                .map(|k| {
                    let mut r = json!({
                        "resource": k.plural,
                        "responseKind": {"group": k.group, "version": k.version, "kind": k.kind},
                        "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": k.singular,
                        "verbs": if k.query { &crate::catalogue::QUERY_VERBS[..] } else { &VERBS[..] },
                        "shortNames": k.short_names,
                    });
                    if !k.categories.is_empty() {
                        r["categories"] = json!(k.categories);
                    }
                    r
                })
                .collect();
            json!({
                "metadata": {"name": g.group, "creationTimestamp": null},
                "versions": [{"version": g.version, "resources": resources, "freshness": "Current"}],
            })
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

/// An empty aggregated discovery list (our answer for `/api`, which serves no legacy group).
pub fn empty_aggregated_discovery(version: &str) -> Value {
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"), "metadata": {}, "items": []})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_have_the_contract_shape() {
        let cat = Catalogue::embedded().unwrap();
        let list = api_group_list(&cat);
        assert_eq!(list["groups"].as_array().unwrap().len(), 4);
        assert_eq!(list["groups"][0]["preferredVersion"]["groupVersion"], "wgpolicyk8s.io/v1alpha2");
        let resources = api_resource_list(&cat, "reports.kyverno.io", "v1").unwrap();
        assert_eq!(resources["resources"][0]["categories"], json!(["kyverno"]));
        assert_eq!(resources["resources"][1]["namespaced"], false);
        assert!(api_resource_list(&cat, "reports.kyverno.io", "v2").is_none());
        let v2 = aggregated_discovery(&cat, "v2");
        let openreports = &v2["items"][2];
        assert_eq!(openreports["metadata"]["name"], "openreports.io");
        assert_eq!(openreports["versions"][0]["resources"][1]["scope"], "Cluster");
        assert_eq!(openreports["versions"][0]["resources"][0]["responseKind"]["kind"], "Report");
        let query = &v2["items"][3];
        assert_eq!(query["metadata"]["name"], "query.reports-server.io");
        assert_eq!(query["versions"][0]["resources"][0]["verbs"], json!(["list"]), "computed: list only");
        let legacy = api_resource_list(&cat, "query.reports-server.io", "v1alpha1").unwrap();
        assert_eq!(legacy["resources"][1]["name"], "findingcounts");
        assert_eq!(legacy["resources"][1]["verbs"], json!(["list"]));
    }
}
