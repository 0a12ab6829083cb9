//! OpenAPI v3 documents for the served group/versions: the first slice of issue 6.
//!
//! kubectl decides whether the server validates fields itself (and so whether it must download
//! schemas and validate on the client) by looking, in `/openapi/v3/apis/<group>/<version>`, for a
//! PATCH operation tagged with the kind's `x-kubernetes-group-version-kind` that accepts a
//! `fieldValidation` query parameter. These documents publish exactly the operations we serve,
//! with the parameters and patch media types we accept (no strategic merge, no apply yet), and
//! the kinds' schemas from the embedded CRDs.

use serde_json::{json, Map, Value};

use crate::catalogue::{Catalogue, ResourceKind};

/// A query parameter object.
fn query_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string"}, "uniqueItems": true})
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}, "uniqueItems": true})
}

/// The `x-kubernetes-group-version-kind` extension value of a kind.
fn gvk(kind: &ResourceKind) -> Value {
    json!({"group": kind.group, "version": kind.version, "kind": kind.kind})
}

fn schema_ref(kind: &ResourceKind) -> Value {
    json!({"$ref": format!("#/components/schemas/{}", schema_name(kind))})
}

/// The component name kube uses for a CRD kind: reversed group, version, kind.
fn schema_name(kind: &ResourceKind) -> String {
    let reversed: Vec<&str> = kind.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), kind.version, kind.kind)
}

fn operation(
    kind: &ResourceKind,
    action: &str,
    id: &str,
    params: Vec<Value>,
    body: Option<Vec<&str>>,
) -> Value {
    let mut op = json!({
        "operationId": id,
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref(kind)}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(kind),
    });
    if let Some(types) = body {
        let content: Map<String, Value> =
            types.into_iter().map(|t| (t.to_string(), json!({"schema": {"type": "object"}}))).collect();
        op["requestBody"] = json!({"required": true, "content": content});
    }
    op
}

/// The OpenAPI v3 document of one group/version, or `None` if nothing is served there.
pub fn group_version_doc(catalogue: &Catalogue, group: &str, version: &str) -> Option<Value> {
    let kinds: Vec<&ResourceKind> =
        catalogue.kinds().iter().filter(|k| k.group == group && k.version == version).collect();
    if kinds.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let write_params = || {
        vec![
            query_param("dryRun", "When present, modifications are not persisted. Valid value: All"),
            query_param("fieldManager", "Name of the actor making the change"),
            query_param("fieldValidation", "Ignore, Warn or Strict handling of unknown fields"),
        ]
    };
    for kind in kinds {
        let prefix = format!("/apis/{group}/{version}");
        let scope = if kind.namespaced { "/namespaces/{namespace}" } else { "" };
        let collection = format!("{prefix}{scope}/{}", kind.plural);
        let item = format!("{collection}/{{name}}");
        let mut scope_params = Vec::new();
        if kind.namespaced {
            scope_params.push(path_param("namespace"));
        }
        let list_params: Vec<Value> = [
            "labelSelector",
            "fieldSelector",
            "limit",
            "continue",
            "resourceVersion",
            "resourceVersionMatch",
            "watch",
            "allowWatchBookmarks",
            "sendInitialEvents",
            "timeoutSeconds",
        ]
        .iter()
        .map(|p| query_param(p, ""))
        .collect();
        let id = |verb: &str| format!("{verb}{}", kind.kind);
        let mut collection_ops = json!({
            "get": operation(kind, "list", &id("list"), list_params, None),
            "post": operation(kind, "post", &id("create"), write_params(), Some(vec!["application/json", "application/yaml"])),
            "delete": operation(kind, "deletecollection", &id("deleteCollectionOf"), vec![], None),
        });
        collection_ops["parameters"] = Value::Array(scope_params.clone());
        paths.insert(collection, collection_ops);
        let mut patch_params = write_params();
        patch_params.push(query_param("force", "Force an apply (not supported yet)"));
        let mut item_ops = json!({
            "get": operation(kind, "get", &id("read"), vec![], None),
            "put": operation(kind, "put", &id("replace"), write_params(), Some(vec!["application/json", "application/yaml"])),
            "patch": operation(kind, "patch", &id("patch"), patch_params,
                Some(vec!["application/json-patch+json", "application/merge-patch+json"])),
            "delete": operation(kind, "delete", &id("delete"), vec![], None),
        });
        let mut item_params = vec![path_param("name")];
        item_params.extend(scope_params);
        item_ops["parameters"] = Value::Array(item_params);
        paths.insert(item, item_ops);
        let mut schema = kind.schema.clone();
        schema["x-kubernetes-group-version-kind"] = json!([gvk(kind)]);
        schemas.insert(schema_name(kind), schema);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "unversioned"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// Every served group/version as `apis/<group>/<version>`, the keys of the `/openapi/v3` index.
pub fn group_versions(catalogue: &Catalogue) -> Vec<(String, String)> {
    let mut gvs: Vec<(String, String)> =
        catalogue.kinds().iter().map(|k| (k.group.clone(), k.version.clone())).collect();
    gvs.sort();
    gvs.dedup();
    gvs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_operations_advertise_field_validation_and_no_strategic_merge() {
        let catalogue = Catalogue::embedded().unwrap();
        let doc = group_version_doc(&catalogue, "wgpolicyk8s.io", "v1alpha2").unwrap();
        let patch = &doc["paths"]
            ["/apis/wgpolicyk8s.io/v1alpha2/namespaces/{namespace}/policyreports/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "PolicyReport");
        assert!(patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
        let types: Vec<&String> = patch["requestBody"]["content"].as_object().unwrap().keys().collect();
        assert_eq!(types, ["application/json-patch+json", "application/merge-patch+json"]);
        assert!(doc["components"]["schemas"]["io.wgpolicyk8s.v1alpha2.PolicyReport"].is_object());
        assert!(group_version_doc(&catalogue, "wgpolicyk8s.io", "v9").is_none());
        assert_eq!(group_versions(&catalogue).len(), 3);
    }
}
