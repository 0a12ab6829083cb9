//! OpenAPI documents for the served group/versions: `/openapi/v2` (Swagger 2.0) and the
//! `/openapi/v3/apis/<group>/<version>` documents, both built from one description of the
//! operations so they cannot disagree.
//!
//! They follow what kube-apiserver publishes for a CRD: per kind, a collection path (list,
//! create, deletecollection) and an item path (read, replace, patch, delete), plus the
//! all-namespaces list of a namespaced kind; each operation tagged with
//! `x-kubernetes-action` and `x-kubernetes-group-version-kind`, and the query parameters of
//! its options type. kubectl reads these tags: a PATCH operation carrying the kind's GVK and a
//! `fieldValidation` parameter tells it the server validates fields itself, and the PATCH
//! media types tell `kubectl apply` which patch to send. We list exactly the patch types we
//! accept: JSON patch and merge patch, neither strategic merge (which CRDs never take) nor
//! apply (server-side apply is refused, see `docs/design.md`).
//!
//! Schemas: each kind is its CRD's `openAPIV3Schema` with `metadata` pointing at ObjectMeta, the
//! list kind wraps it, and the apimachinery meta types they and the operations refer to
//! (ObjectMeta, ListMeta, Status, DeleteOptions, Patch, WatchEvent and their parts) are
//! described here, in the same component names kube uses, so `kubectl explain polr.metadata`
//! resolves.

use serde_json::{json, Map, Value};

use crate::catalogue::{Catalogue, ResourceKind};

/// Which OpenAPI dialect a document is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Swagger 2.0 (`/openapi/v2`): schemas under `definitions`, parameters typed inline.
    V2,
    /// OpenAPI 3.0 (`/openapi/v3/...`): schemas under `components.schemas`.
    V3,
}

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";
const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";
const DELETE_OPTIONS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions";
const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";

/// The patch media types we accept, in the order kube lists them.
pub const PATCH_MEDIA_TYPES: [&str; 2] = ["application/json-patch+json", "application/merge-patch+json"];

impl Dialect {
    fn reference(self, name: &str) -> Value {
        match self {
            Self::V2 => json!({"$ref": format!("#/definitions/{name}")}),
            Self::V3 => json!({"$ref": format!("#/components/schemas/{name}")}),
        }
    }

    /// A field that refers to another schema, with its own description. OpenAPI 3.0 ignores
    /// siblings of `$ref`, so v3 wraps the reference in `allOf` as kube does.
    fn field_ref(self, name: &str, description: &str) -> Value {
        match self {
            Self::V2 => {
                let mut r = self.reference(name);
                r["description"] = json!(description);
                r
            }
            Self::V3 => json!({"allOf": [self.reference(name)], "default": {}, "description": description}),
        }
    }
}

fn string(description: &str) -> Value {
    json!({"type": "string", "default": "", "description": description})
}

fn integer(format: &str, description: &str) -> Value {
    json!({"type": "integer", "format": format, "description": description})
}

fn boolean(description: &str) -> Value {
    json!({"type": "boolean", "description": description})
}

fn string_list(description: &str) -> Value {
    json!({"type": "array", "items": {"type": "string", "default": ""}, "description": description})
}

fn string_map(description: &str) -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": description})
}

fn object(description: &str, properties: Value, required: &[&str]) -> Value {
    let mut schema = json!({"type": "object", "description": description, "properties": properties});
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

fn array_of(dialect: Dialect, name: &str, description: &str) -> Value {
    json!({"type": "array", "items": dialect.field_ref(name, ""), "description": description})
}

/// The apimachinery types the kinds and operations refer to, under kube's component names.
/// Descriptions are ours; shapes and names follow `meta/v1`.
pub fn meta_schemas(dialect: Dialect) -> Map<String, Value> {
    let d = dialect;
    let time = |description: &str| d.field_ref(&format!("{META}.Time"), description);
    let mut schemas = Map::new();
    let mut add = |name: &str, schema: Value| {
        let full = if name.contains('.') { name.to_string() } else { format!("{META}.{name}") };
        schemas.insert(full, schema);
    };
    add(
        "Time",
        json!({"type": "string", "format": "date-time", "description": "A point in time, RFC 3339, whole seconds."}),
    );
    add(
        "FieldsV1",
        json!({"type": "object", "description": "The set of fields a manager owns, in the FieldsV1 trie format."}),
    );
    add(
        "ObjectMeta",
        object(
            "Metadata every persisted object has.",
            json!({
                "name": string("Unique within a namespace; cannot be changed."),
                "generateName": string("Prefix the server completes into a unique name when name is empty."),
                "namespace": string("Namespace of a namespaced object; empty for cluster-scoped ones."),
                "selfLink": string("Deprecated and never set."),
                "uid": string("Unique identifier the server assigns on creation."),
                "resourceVersion": string("Opaque version of the object, for optimistic concurrency and watches."),
                "generation": integer("int64", "Sequence number of changes to the desired state."),
                "creationTimestamp": time("When the server created the object."),
                "deletionTimestamp": time("When deletion was requested; set by the server."),
                "deletionGracePeriodSeconds": integer("int64", "Seconds allowed for graceful termination."),
                "labels": string_map("Keys and values for organizing and selecting objects."),
                "annotations": string_map("Non-identifying metadata for tools."),
                "ownerReferences": array_of(d, &format!("{META}.OwnerReference"), "Objects this object depends on."),
                "finalizers": string_list("Conditions that must be cleared before the object is removed."),
                "managedFields": array_of(d, &format!("{META}.ManagedFieldsEntry"), "Which manager set which fields."),
            }),
            &[],
        ),
    );
    add(
        "OwnerReference",
        object(
            "Identifies an owning object in the same namespace or at cluster scope.",
            json!({
                "apiVersion": string("API version of the owner."),
                "kind": string("Kind of the owner."),
                "name": string("Name of the owner."),
                "uid": string("UID of the owner."),
                "controller": boolean("True for the managing controller; at most one owner may be."),
                "blockOwnerDeletion": boolean("Whether foreground deletion of the owner waits for this object."),
            }),
            &["apiVersion", "kind", "name", "uid"],
        ),
    );
    add(
        "ManagedFieldsEntry",
        object(
            "One manager's claim on fields of the object.",
            json!({
                "manager": string("Name of the workflow managing the fields."),
                "operation": string("Apply or Update."),
                "apiVersion": string("Version the fields refer to."),
                "time": time("When the entry last changed."),
                "fieldsType": string("Format of fieldsV1; always FieldsV1."),
                "fieldsV1": d.field_ref(&format!("{META}.FieldsV1"), "The owned fields."),
                "subresource": string("Subresource the fields were written through, if any."),
            }),
            &[],
        ),
    );
    add(
        "ListMeta",
        object(
            "Metadata of a list.",
            json!({
                "resourceVersion": string("Version of the collection the list reflects."),
                "continue": string("Token for the next page; empty on the last page."),
                "remainingItemCount": integer("int64", "Estimated number of items after this page."),
                "selfLink": string("Deprecated and never set."),
            }),
            &[],
        ),
    );
    add(
        "StatusCause",
        object(
            "One reason a request failed, often naming a field.",
            json!({
                "reason": string("Machine-readable cause, such as FieldValueInvalid."),
                "message": string("Human-readable explanation."),
                "field": string("Path of the field at fault, such as results[0].result."),
            }),
            &[],
        ),
    );
    add(
        "StatusDetails",
        object(
            "Extra data about a failure.",
            json!({
                "name": string("Name of the object involved."),
                "group": string("API group of the object."),
                "kind": string("Kind or resource of the object."),
                "uid": string("UID of the object."),
                "causes": array_of(d, &format!("{META}.StatusCause"), "Field-level causes."),
                "retryAfterSeconds": integer("int32", "Seconds to wait before retrying."),
            }),
            &[],
        ),
    );
    add(
        "Status",
        object(
            "Result of an operation that returns no object, and every error.",
            json!({
                "apiVersion": string("Always v1."),
                "kind": string("Always Status."),
                "metadata": d.field_ref(LIST_META, "Standard list metadata."),
                "status": string("Success or Failure."),
                "message": string("Human-readable description."),
                "reason": string("Machine-readable reason, such as NotFound or Invalid."),
                "details": d.field_ref(&format!("{META}.StatusDetails"), "Extra data about the failure."),
                "code": integer("int32", "HTTP status code."),
            }),
            &[],
        ),
    );
    add(
        "Preconditions",
        object(
            "Conditions the object must meet for a delete to proceed.",
            json!({
                "uid": string("Required UID of the object."),
                "resourceVersion": string("Required resourceVersion of the object."),
            }),
            &[],
        ),
    );
    add(
        "DeleteOptions",
        object(
            "Options of a delete.",
            json!({
                "apiVersion": string("meta.k8s.io/v1 or v1."),
                "kind": string("DeleteOptions."),
                "dryRun": string_list("All: process the request without persisting it."),
                "gracePeriodSeconds": integer("int64", "Accepted; report objects have no grace period."),
                "preconditions": d.field_ref(&format!("{META}.Preconditions"), "Must hold for the delete to proceed."),
                "orphanDependents": boolean("Deprecated; use propagationPolicy."),
                "propagationPolicy": string("Orphan, Background or Foreground garbage collection of dependents."),
            }),
            &[],
        ),
    );
    add("Patch", json!({"type": "object", "description": "A JSON patch or JSON merge patch document."}));
    add(
        "io.k8s.apimachinery.pkg.runtime.RawExtension",
        json!({"type": "object", "description": "An embedded object in its serialized form."}),
    );
    add(
        "WatchEvent",
        object(
            "One event of a watch stream.",
            json!({
                "type": string("ADDED, MODIFIED, DELETED, BOOKMARK or ERROR."),
                "object": d.field_ref(
                    "io.k8s.apimachinery.pkg.runtime.RawExtension",
                    "The object, or a Status for ERROR events.",
                ),
            }),
            &["type", "object"],
        ),
    );
    for (name, kind) in
        [(STATUS, "Status"), (DELETE_OPTIONS, "DeleteOptions"), (&format!("{META}.WatchEvent"), "WatchEvent")]
    {
        if let Some(schema) = schemas.get_mut(name) {
            schema["x-kubernetes-group-version-kind"] = json!([{"group": "", "kind": kind, "version": "v1"}]);
        }
    }
    schemas
}

/// The `x-kubernetes-group-version-kind` extension value of a kind.
fn gvk(kind: &ResourceKind, kind_name: &str) -> Value {
    json!({"group": kind.group, "version": kind.version, "kind": kind_name})
}

/// The component name kube uses for a CRD kind: reversed group, version, kind.
pub fn schema_name(kind: &ResourceKind, kind_name: &str) -> String {
    let reversed: Vec<&str> = kind.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), kind.version, kind_name)
}

/// The kind's schema as published: the CRD's, with `metadata` pointing at ObjectMeta.
fn kind_schema(kind: &ResourceKind, dialect: Dialect) -> Value {
    let mut schema = kind.schema.clone();
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        properties.insert(
            "metadata".into(),
            dialect.field_ref(
                OBJECT_META,
                "Standard object's metadata. More info: \
                 https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
            ),
        );
    }
    schema["x-kubernetes-group-version-kind"] = json!([gvk(kind, &kind.kind)]);
    schema
}

fn list_schema(kind: &ResourceKind, dialect: Dialect) -> Value {
    let mut schema = object(
        &format!("{} is a list of {}", kind.list_kind, kind.kind),
        json!({
            "apiVersion": string("The versioned schema of this representation of an object."),
            "kind": string("The REST resource this object represents."),
            "items": {
                "type": "array",
                "items": dialect.reference(&schema_name(kind, &kind.kind)),
                "description": format!("List of {}.", kind.plural),
            },
            "metadata": dialect.field_ref(LIST_META, "Standard list metadata."),
        }),
        &["items"],
    );
    schema["x-kubernetes-group-version-kind"] = json!([gvk(kind, &kind.list_kind)]);
    schema
}

/// A query parameter: name, JSON type and description.
type Param = (&'static str, &'static str, &'static str);

const PRETTY: Param = ("pretty", "string", "If 'true', the output is indented.");
const LIST_PARAMS: &[Param] = &[
    ("allowWatchBookmarks", "boolean", "Ask for BOOKMARK events on a watch."),
    ("continue", "string", "Token of the next page, from the previous page's metadata."),
    ("fieldSelector", "string", "Restrict the list by metadata.name and metadata.namespace."),
    ("labelSelector", "string", "Restrict the list by labels."),
    ("limit", "integer", "Maximum number of items in a page."),
    ("resourceVersion", "string", "Which version of the collection to serve or watch from."),
    ("resourceVersionMatch", "string", "How resourceVersion applies to a list: Exact or NotOlderThan."),
    ("sendInitialEvents", "boolean", "Start a watch with the current objects, then a bookmark."),
    ("timeoutSeconds", "integer", "End a list or watch after this many seconds."),
    ("watch", "boolean", "Stream changes instead of listing."),
];
const WRITE_PARAMS: &[Param] = &[
    ("dryRun", "string", "All: process the request without persisting it."),
    ("fieldManager", "string", "Name of the actor making the change."),
    ("fieldValidation", "string", "Ignore, Warn (default) or Strict handling of unknown fields."),
];
const DELETE_PARAMS: &[Param] = &[
    ("dryRun", "string", "All: process the request without persisting it."),
    ("gracePeriodSeconds", "integer", "Accepted; report objects have no grace period."),
    ("orphanDependents", "boolean", "Deprecated; use propagationPolicy."),
    ("propagationPolicy", "string", "Orphan, Background or Foreground garbage collection of dependents."),
];
const GET_PARAMS: &[Param] = &[("resourceVersion", "string", "Accepted for compatibility.")];
const FORCE: Param = ("force", "boolean", "Only meaningful for apply patches, which are not served.");

fn parameter(dialect: Dialect, location: &str, (name, type_, description): Param) -> Value {
    let mut p = json!({"name": name, "in": location, "description": description, "uniqueItems": true});
    if location == "path" {
        p["required"] = json!(true);
    }
    match dialect {
        Dialect::V2 => p["type"] = json!(type_),
        Dialect::V3 => p["schema"] = json!({"type": type_, "uniqueItems": true}),
    }
    p
}

/// kube's operation ids: verb, group and version as one identifier, then the rest.
fn operation_id(verb: &str, kind: &ResourceKind, rest: &str) -> (String, String) {
    let ident = |text: &str, capital_first: bool| {
        let mut out = String::new();
        let mut upper = capital_first;
        for c in text.chars() {
            if c.is_ascii_alphanumeric() {
                out.push(if upper { c.to_ascii_uppercase() } else { c });
                upper = false;
            } else {
                upper = true;
            }
        }
        out
    };
    let group = kind.group.strip_suffix(".k8s.io").unwrap_or(&kind.group);
    let id = format!("{verb}{}{}{rest}", ident(group, true), ident(&kind.version, true));
    let tag = format!("{}_{}", ident(group, false), ident(&kind.version, false));
    (id, tag)
}

/// Everything that differs between the operations of a kind.
struct Operation<'a> {
    action: &'a str,
    verb: &'a str,
    id_rest: String,
    params: Vec<Param>,
    body: Option<(&'a str, Vec<&'a str>, bool)>,
    response: String,
    extra_responses: &'a [(&'a str, &'a str)],
}

fn operation(kind: &ResourceKind, dialect: Dialect, op: Operation<'_>) -> Value {
    let (id, tag) = operation_id(op.verb, kind, &op.id_rest);
    let schema = dialect.reference(&op.response);
    let mut responses = Map::new();
    let response = |description: &str| match dialect {
        Dialect::V2 => json!({"description": description, "schema": schema}),
        Dialect::V3 => json!({"description": description, "content": {
            "application/json": {"schema": schema}, "application/yaml": {"schema": schema},
        }}),
    };
    responses.insert("200".into(), response("OK"));
    for (code, description) in op.extra_responses {
        responses.insert((*code).into(), response(description));
    }
    responses.insert("401".into(), json!({"description": "Unauthorized"}));
    let mut params: Vec<Value> = op.params.iter().map(|p| parameter(dialect, "query", *p)).collect();
    let mut value = json!({
        "description": format!("{} {}", op.action, kind.kind),
        "operationId": id,
        "tags": [tag],
        "responses": responses,
        "x-kubernetes-action": op.action,
        "x-kubernetes-group-version-kind": gvk(kind, &kind.kind),
    });
    let consumes = op.body.as_ref().map(|(_, types, _)| types.clone()).unwrap_or_default();
    match (dialect, &op.body) {
        (Dialect::V2, Some((schema, _, required))) => {
            params.insert(
                0,
                json!({"name": "body", "in": "body", "required": required, "schema": dialect.reference(schema)}),
            );
        }
        (Dialect::V3, Some((schema, types, required))) => {
            let content: Map<String, Value> =
                types.iter().map(|t| (t.to_string(), json!({"schema": dialect.reference(schema)}))).collect();
            value["requestBody"] = json!({"content": content, "required": required});
        }
        _ => {}
    }
    value["parameters"] = Value::Array(params);
    if dialect == Dialect::V2 {
        // Operations without a body list what kube's CRD builder lists for them.
        let consumes =
            if consumes.is_empty() { vec!["application/json", "application/yaml"] } else { consumes };
        value["consumes"] = json!(consumes);
        value["produces"] = json!(["application/json", "application/yaml"]);
        value["schemes"] = json!(["https"]);
    }
    value
}

/// The paths of one kind, in the order kube lists them.
fn kind_paths(kind: &ResourceKind, dialect: Dialect, paths: &mut Map<String, Value>) {
    let prefix = format!("/apis/{}/{}", kind.group, kind.version);
    let object_ref = schema_name(kind, &kind.kind);
    let list_ref = schema_name(kind, &kind.list_kind);
    let scoped = if kind.namespaced { "Namespaced" } else { "" };
    let write_types = vec!["application/json", "application/yaml"];
    let list = |rest: String| Operation {
        action: "list",
        verb: "list",
        id_rest: rest,
        params: LIST_PARAMS.to_vec(),
        body: None,
        response: list_ref.clone(),
        extra_responses: &[],
    };
    let pretty = parameter(dialect, "query", PRETTY);
    let namespace = parameter(
        dialect,
        "path",
        ("namespace", "string", "object name and auth scope, such as for teams and projects"),
    );
    if kind.namespaced {
        let all = operation(kind, dialect, list(format!("{}ForAllNamespaces", kind.kind)));
        paths.insert(format!("{prefix}/{}", kind.plural), json!({"get": all, "parameters": [pretty]}));
    }
    let scope = if kind.namespaced { "/namespaces/{namespace}" } else { "" };
    let mut scope_params = vec![pretty];
    if kind.namespaced {
        scope_params.insert(0, namespace);
    }
    let mut delete_collection_params = LIST_PARAMS.to_vec();
    delete_collection_params.extend_from_slice(DELETE_PARAMS);
    let collection = json!({
        "get": operation(kind, dialect, list(format!("{scoped}{}", kind.kind))),
        "post": operation(kind, dialect, Operation {
            action: "post", verb: "create", id_rest: format!("{scoped}{}", kind.kind),
            params: WRITE_PARAMS.to_vec(), body: Some((&object_ref, write_types.clone(), true)),
            response: object_ref.clone(), extra_responses: &[("201", "Created"), ("202", "Accepted")],
        }),
        "delete": operation(kind, dialect, Operation {
            action: "deletecollection", verb: "deletecollection", id_rest: format!("{scoped}{}", kind.kind),
            params: delete_collection_params, body: Some((DELETE_OPTIONS, vec!["application/json"], false)),
            response: STATUS.to_string(), extra_responses: &[],
        }),
        "parameters": scope_params.clone(),
    });
    paths.insert(format!("{prefix}{scope}/{}", kind.plural), collection);
    let mut item_params = vec![parameter(dialect, "path", ("name", "string", "name of the object"))];
    item_params.extend(scope_params);
    let mut patch_params = WRITE_PARAMS.to_vec();
    patch_params.push(FORCE);
    let item = json!({
        "get": operation(kind, dialect, Operation {
            action: "get", verb: "read", id_rest: format!("{scoped}{}", kind.kind),
            params: GET_PARAMS.to_vec(), body: None, response: object_ref.clone(), extra_responses: &[],
        }),
        "put": operation(kind, dialect, Operation {
            action: "put", verb: "replace", id_rest: format!("{scoped}{}", kind.kind),
            params: WRITE_PARAMS.to_vec(), body: Some((&object_ref, write_types, true)),
            response: object_ref.clone(), extra_responses: &[("201", "Created")],
        }),
        "patch": operation(kind, dialect, Operation {
            action: "patch", verb: "patch", id_rest: format!("{scoped}{}", kind.kind),
            params: patch_params, body: Some((PATCH, PATCH_MEDIA_TYPES.to_vec(), true)),
            response: object_ref.clone(), extra_responses: &[("201", "Created")],
        }),
        "delete": operation(kind, dialect, Operation {
            action: "delete", verb: "delete", id_rest: format!("{scoped}{}", kind.kind),
            params: DELETE_PARAMS.to_vec(), body: Some((DELETE_OPTIONS, vec!["application/json"], false)),
            response: STATUS.to_string(), extra_responses: &[("202", "Accepted")],
        }),
        "parameters": item_params,
    });
    paths.insert(format!("{prefix}{scope}/{}/{{name}}", kind.plural), item);
}

fn document<'a>(kinds: impl Iterator<Item = &'a ResourceKind>, dialect: Dialect) -> Value {
    let mut paths = Map::new();
    let mut schemas = meta_schemas(dialect);
    for kind in kinds {
        kind_paths(kind, dialect, &mut paths);
        schemas.insert(schema_name(kind, &kind.kind), kind_schema(kind, dialect));
        schemas.insert(schema_name(kind, &kind.list_kind), list_schema(kind, dialect));
    }
    let info = json!({"title": "Kubernetes", "version": "unversioned"});
    match dialect {
        Dialect::V2 => json!({"swagger": "2.0", "info": info, "paths": paths, "definitions": schemas}),
        Dialect::V3 => {
            json!({"openapi": "3.0.0", "info": info, "paths": paths, "components": {"schemas": schemas}})
        }
    }
}

/// The OpenAPI v3 document of one group/version, or `None` if nothing is served there. The query
/// resources have none: their objects are computed and free-form.
pub fn group_version_doc(catalogue: &Catalogue, group: &str, version: &str) -> Option<Value> {
    let mut kinds = catalogue.in_group_version(group, version).filter(|k| !k.query).peekable();
    kinds.peek()?;
    Some(document(kinds, Dialect::V3))
}

/// The Swagger 2.0 document of everything served (`/openapi/v2`).
pub fn v2_doc(catalogue: &Catalogue) -> Value {
    document(catalogue.kinds().iter(), Dialect::V2)
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

    /// Every `$ref` in a document names a schema the document defines.
    fn assert_refs_resolve(doc: &Value, prefix: &str, defined: &Map<String, Value>) {
        match doc {
            Value::Object(map) => {
                if let Some(target) = map.get("$ref").and_then(Value::as_str) {
                    let name = target.strip_prefix(prefix).unwrap_or_else(|| panic!("{target}"));
                    assert!(defined.contains_key(name), "dangling {target}");
                }
                map.values().for_each(|v| assert_refs_resolve(v, prefix, defined));
            }
            Value::Array(items) => items.iter().for_each(|v| assert_refs_resolve(v, prefix, defined)),
            _ => {}
        }
    }

    #[test]
    fn patch_operations_advertise_field_validation_and_no_strategic_merge() {
        let catalogue = Catalogue::embedded().unwrap();
        let doc = group_version_doc(&catalogue, "wgpolicyk8s.io", "v1alpha2").unwrap();
        let patch = &doc["paths"]
            ["/apis/wgpolicyk8s.io/v1alpha2/namespaces/{namespace}/policyreports/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "PolicyReport");
        assert_eq!(patch["operationId"], "patchWgpolicyk8sIoV1alpha2NamespacedPolicyReport");
        assert!(patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
        let types: Vec<&String> = patch["requestBody"]["content"].as_object().unwrap().keys().collect();
        assert_eq!(types, ["application/json-patch+json", "application/merge-patch+json"]);
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        assert!(schemas["io.wgpolicyk8s.v1alpha2.PolicyReport"].is_object());
        assert_eq!(
            schemas["io.wgpolicyk8s.v1alpha2.PolicyReportList"]["x-kubernetes-group-version-kind"][0]["kind"],
            "PolicyReportList"
        );
        assert_refs_resolve(&doc, "#/components/schemas/", schemas);
        assert!(group_version_doc(&catalogue, "wgpolicyk8s.io", "v9").is_none());
        assert_eq!(group_versions(&catalogue).len(), 3);
    }

    #[test]
    fn v2_lists_every_kind_with_swagger_shapes() {
        let catalogue = Catalogue::embedded().unwrap();
        let doc = v2_doc(&catalogue);
        assert_eq!(doc["swagger"], "2.0");
        let definitions = doc["definitions"].as_object().unwrap();
        assert_refs_resolve(&doc, "#/definitions/", definitions);
        for kind in catalogue.kinds() {
            assert!(definitions.contains_key(&schema_name(kind, &kind.kind)));
        }
        let item = &doc["paths"]["/apis/reports.kyverno.io/v1/clusterephemeralreports/{name}"];
        assert_eq!(item["patch"]["consumes"], json!(PATCH_MEDIA_TYPES));
        assert_eq!(item["patch"]["parameters"][0]["in"], "body");
        assert_eq!(item["get"]["x-kubernetes-action"], "get");
        let list = &doc["paths"]["/apis/openreports.io/v1alpha1/reports"]["get"];
        assert_eq!(list["operationId"], "listOpenreportsIoV1alpha1ReportForAllNamespaces");
        let limit = list["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "limit").unwrap();
        assert_eq!(limit["type"], "integer");
        assert!(definitions[OBJECT_META]["properties"]["ownerReferences"].is_object());
    }
}
