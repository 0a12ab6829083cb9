//! Object semantics on writes: system fields, names, namespaces, generation, and the checks
//! kube-apiserver runs for a custom resource before it reaches storage.
//!
//! The functions here mutate a parsed `serde_json::Value` in place. They never assign a
//! resourceVersion: that is the store's job, inside the transaction that commits the write, so
//! RVs are assigned in commit order. Nor do they read a clock or draw random numbers: the time,
//! the uid and the generateName randomness come from the caller, so every outcome here is
//! reproducible.

use serde_json::{Map, Value};

use crate::{
    error::{field_forbidden, field_invalid, field_required, ApiError, StatusCause},
    validation::go_quote,
    ResourceKind,
};

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used \
for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// Why `name` is not a DNS-1123 subdomain, or `None` when it is one.
pub fn dns_subdomain_error(name: &str) -> Option<String> {
    if name.len() > 253 {
        return Some("must be no more than 253 characters".into());
    }
    let label_ok = |label: &str| {
        let b = label.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    };
    if name.split('.').all(label_ok) {
        None
    } else {
        Some(DNS1123_SUBDOMAIN_MSG.into())
    }
}

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric \
characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', \
regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

/// Why `name` is not a DNS-1123 label (what a namespace name must be), or `None`.
pub fn dns_label_error(name: &str) -> Option<String> {
    if name.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    (!ok).then(|| DNS1123_LABEL_MSG.into())
}

/// kube's check of the namespace of a namespaced object being created (422 on
/// `metadata.namespace`); `name` names the object in the message.
pub fn validate_create_namespace(kind: &ResourceKind, namespace: &str, name: &str) -> Result<(), ApiError> {
    match dns_label_error(namespace) {
        Some(why) if kind.namespaced => {
            Err(ApiError::invalid(kind, name, vec![field_invalid("metadata.namespace", namespace, &why)]))
        }
        _ => Ok(()),
    }
}

fn qualified_name_part_ok(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Why `key` is not a valid label key (`[prefix/]name`), or `None`.
pub fn label_key_error(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if let Some(why) = dns_subdomain_error(prefix) {
            return Some(format!("prefix part {why}"));
        }
    }
    if qualified_name_part_ok(name) {
        None
    } else {
        Some(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an \
             alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is \
             '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
                .into(),
        )
    }
}

/// Why `value` is not a valid label value, or `None`.
pub fn label_value_error(value: &str) -> Option<String> {
    if value.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    if value.is_empty() || qualified_name_part_ok(value) {
        None
    } else {
        Some(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and \
             must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex \
             used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
                .into(),
        )
    }
}

/// The characters kube uses for generated name suffixes (no vowels, no confusable digits).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `generateName` + 5 characters drawn from `random`, with the base cut to 58 characters as kube
/// does. The suffix is `random` written in base 27 over [`NAME_ALPHABET`] (its low five digits),
/// so uniformly random bits give a uniformly random suffix.
pub fn generate_name(base: &str, random: u64) -> String {
    let mut name: String = base.chars().take(58).collect();
    let radix = NAME_ALPHABET.len() as u64;
    let mut rest = random;
    for _ in 0..5 {
        name.push(NAME_ALPHABET[(rest % radix) as usize] as char);
        rest /= radix;
    }
    name
}

/// Read-only accessors on a parsed object.
pub trait ObjectExt {
    /// `metadata` as a map, if it is one.
    fn meta(&self) -> Option<&Map<String, Value>>;
    /// A string field of `metadata` ("" when absent).
    fn meta_str(&self, key: &str) -> &str;
    /// `metadata.labels` as pairs of strings (non-string values are skipped).
    fn labels(&self) -> Vec<(String, String)>;
    /// `metadata.finalizers`.
    fn finalizers(&self) -> Vec<String>;
}

impl ObjectExt for Value {
    fn meta(&self) -> Option<&Map<String, Value>> {
        self.get("metadata").and_then(Value::as_object)
    }

    fn meta_str(&self, key: &str) -> &str {
        self.meta().and_then(|m| m.get(key)).and_then(Value::as_str).unwrap_or_default()
    }

    fn labels(&self) -> Vec<(String, String)> {
        self.meta()
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object)
            .map(|l| l.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
            .unwrap_or_default()
    }

    fn finalizers(&self) -> Vec<String> {
        self.meta()
            .and_then(|m| m.get("finalizers"))
            .and_then(Value::as_array)
            .map(|f| f.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }
}

/// `metadata` as a mutable map, creating it when absent.
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    let root = obj.as_object_mut().expect("checked to be an object by check_shape");
    let meta = root.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut().expect("just made an object")
}

/// Checks that a decoded body is an object of this kind and group/version.
///
/// Missing type information is a 400 (the decoder cannot tell what it is), a different
/// apiVersion is a 400 as in kube's create handler, and a different kind is a 422 as the CRD
/// validator reports it.
pub fn check_shape(kind: &ResourceKind, obj: &Value) -> Result<(), ApiError> {
    let map =
        obj.as_object().ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let object_kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
    if object_kind.is_empty() {
        return Err(ApiError::bad_request("Object 'Kind' is missing in the request body"));
    }
    if api_version.is_empty() {
        return Err(ApiError::bad_request("Object 'apiVersion' is missing in the request body"));
    }
    if api_version != kind.api_version() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            kind.api_version()
        )));
    }
    let name = obj.meta_str("name").to_string();
    if object_kind != kind.kind {
        return Err(ApiError::invalid(
            kind,
            &name,
            vec![field_invalid("kind", object_kind, &format!("must be {}", kind.kind))],
        ));
    }
    if let Some(meta) = map.get("metadata") {
        let Some(meta) = meta.as_object() else {
            return Err(ApiError::bad_request("metadata must be a JSON object"));
        };
        if let Some(message) = object_meta_type_error(meta) {
            return Err(ApiError::bad_request(message));
        }
    }
    Ok(())
}

/// What kube's decoder says when `metadata` does not decode into its ObjectMeta type (400):
/// wrong-typed fields, unparsable times, fractional integers. Such an object would be stored and
/// served, and then fail to decode in every client that reads it, metadata-only informers too.
/// The messages are Go's `encoding/json` errors, which kube passes on.
pub fn object_meta_type_error(meta: &Map<String, Value>) -> Option<String> {
    use GoType::*;
    const FIELDS: [(&str, GoType); 15] = [
        ("name", Str),
        ("generateName", Str),
        ("namespace", Str),
        ("selfLink", Str),
        ("uid", Uid),
        ("resourceVersion", Str),
        ("generation", Int64),
        ("creationTimestamp", Time),
        ("deletionTimestamp", Time),
        ("deletionGracePeriodSeconds", Int64),
        ("labels", StringMap),
        ("annotations", StringMap),
        ("ownerReferences", OwnerReferences),
        ("finalizers", Strings),
        ("managedFields", ManagedFields),
    ];
    FIELDS
        .iter()
        .find_map(|(key, go)| meta.get(*key).and_then(|value| go.decode_error(value, "ObjectMeta", key)))
}

/// The Go types of ObjectMeta's fields, as `encoding/json` names them in its errors.
#[derive(Clone, Copy)]
enum GoType {
    Str,
    Uid,
    Bool,
    Int64,
    Time,
    StringMap,
    Strings,
    OwnerReferences,
    ManagedFields,
    /// `FieldsV1`: any JSON at all.
    Raw,
}

impl GoType {
    fn name(self) -> &'static str {
        match self {
            GoType::Str => "string",
            GoType::Uid => "types.UID",
            GoType::Bool => "bool",
            GoType::Int64 => "int64",
            GoType::Time => "v1.Time",
            GoType::StringMap => "map[string]string",
            GoType::Strings => "[]string",
            GoType::OwnerReferences => "[]v1.OwnerReference",
            GoType::ManagedFields => "[]v1.ManagedFieldsEntry",
            GoType::Raw => "v1.FieldsV1",
        }
    }

    /// Go's error for decoding `value` into this type, as field `path` of struct `owner`;
    /// `None` when it decodes (JSON `null` always does).
    fn decode_error(self, value: &Value, owner: &str, path: &str) -> Option<String> {
        let mismatch = |go: &str| {
            Some(format!(
                "json: cannot unmarshal {} into Go struct field {owner}.{path} of type {go}",
                json_kind(value)
            ))
        };
        match (self, value) {
            (_, Value::Null) | (GoType::Raw, _) => None,
            (GoType::Str | GoType::Uid, Value::String(_)) | (GoType::Bool, Value::Bool(_)) => None,
            (GoType::Int64, Value::Number(n)) => (!n.is_i64()).then(|| {
                format!("json: cannot unmarshal number {n} into Go struct field {owner}.{path} of type int64")
            }),
            (GoType::Time, Value::String(text)) => text.parse::<jiff::Timestamp>().err().map(|_| {
                format!(
                    "parsing time {} as \"2006-01-02T15:04:05Z07:00\": cannot parse {} as RFC 3339",
                    go_quote(text),
                    go_quote(text)
                )
            }),
            // metav1.Time decodes its JSON as a string first.
            (GoType::Time, _) => {
                Some(format!("json: cannot unmarshal {} into Go value of type string", json_kind(value)))
            }
            (GoType::StringMap, Value::Object(map)) => {
                map.values().find_map(|v| GoType::Str.decode_error(v, owner, path))
            }
            (GoType::Strings, Value::Array(items)) => {
                items.iter().find_map(|v| GoType::Str.decode_error(v, owner, path))
            }
            (GoType::OwnerReferences, Value::Array(items)) => items.iter().find_map(|item| {
                struct_error(
                    item,
                    "OwnerReference",
                    path,
                    "v1.OwnerReference",
                    &[
                        ("apiVersion", GoType::Str),
                        ("kind", GoType::Str),
                        ("name", GoType::Str),
                        ("uid", GoType::Uid),
                        ("controller", GoType::Bool),
                        ("blockOwnerDeletion", GoType::Bool),
                    ],
                )
            }),
            (GoType::ManagedFields, Value::Array(items)) => items.iter().find_map(|item| {
                struct_error(
                    item,
                    "ManagedFieldsEntry",
                    path,
                    "v1.ManagedFieldsEntry",
                    &[
                        ("manager", GoType::Str),
                        ("operation", GoType::Str),
                        ("apiVersion", GoType::Str),
                        ("time", GoType::Time),
                        ("fieldsType", GoType::Str),
                        ("fieldsV1", GoType::Raw),
                        ("subresource", GoType::Str),
                    ],
                )
            }),
            _ => mismatch(self.name()),
        }
    }
}

/// Go's error for decoding `item` into a struct with the given fields (at `path` in ObjectMeta).
fn struct_error(
    item: &Value,
    owner: &str,
    path: &str,
    go_name: &str,
    fields: &[(&str, GoType)],
) -> Option<String> {
    match item {
        Value::Null => None,
        Value::Object(map) => fields.iter().find_map(|(key, go)| {
            map.get(*key).and_then(|v| go.decode_error(v, owner, &format!("{path}.{key}")))
        }),
        other => Some(format!(
            "json: cannot unmarshal {} into Go struct field ObjectMeta.{path} of type {go_name}",
            json_kind(other)
        )),
    }
}

/// How Go's `encoding/json` names a JSON value's kind in its errors.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Applies the namespace rules of `EnsureObjectNamespaceMatchesRequestNamespace`.
fn reconcile_namespace(
    kind: &ResourceKind,
    url_namespace: Option<&str>,
    obj: &mut Value,
) -> Result<(), ApiError> {
    let meta = meta_mut(obj);
    if !kind.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    let body_ns = meta.get("namespace").and_then(Value::as_str).unwrap_or_default().to_string();
    let url_ns = url_namespace.unwrap_or_default();
    if url_ns.is_empty() {
        return Err(ApiError::bad_request("Namespace parameter required."));
    }
    if body_ns.is_empty() {
        meta.insert("namespace".into(), Value::String(url_ns.to_string()));
    } else if body_ns != url_ns {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

/// Validation of labels, annotations and other metadata that kube runs on every write, then of
/// everything else against the kind's schema.
fn validate_metadata(kind: &ResourceKind, obj: &Value) -> Result<(), ApiError> {
    let mut causes: Vec<StatusCause> = Vec::new();
    let name = obj.meta_str("name").to_string();
    if let Some(meta) = obj.meta() {
        for (key, expect) in [("labels", "string"), ("annotations", "string")] {
            if let Some(map) = meta.get(key) {
                match map {
                    Value::Null => {}
                    Value::Object(entries) => {
                        for (k, v) in entries {
                            if !v.is_string() {
                                causes.push(field_invalid(
                                    &format!("metadata.{key}"),
                                    k,
                                    &format!("values must be of type {expect}"),
                                ));
                            }
                        }
                    }
                    _ => {
                        causes.push(field_invalid(&format!("metadata.{key}"), "", "must be a map of strings"))
                    }
                }
            }
        }
        for (key, value) in obj.labels() {
            if let Some(why) = label_key_error(&key) {
                causes.push(field_invalid("metadata.labels", &key, &why));
            }
            if let Some(why) = label_value_error(&value) {
                causes.push(field_invalid(&format!("metadata.labels.{key}"), &value, &why));
            }
        }
        let annotation_bytes: usize = meta
            .get("annotations")
            .and_then(Value::as_object)
            .map(|a| a.iter().map(|(k, v)| k.len() + v.as_str().map_or(0, str::len)).sum())
            .unwrap_or(0);
        if annotation_bytes > 256 * 1024 {
            causes.push(StatusCause {
                reason: "FieldValueTooLong".into(),
                message: "Too long: must have at most 262144 bytes".into(),
                field: "metadata.annotations".into(),
            });
        }
        if let Some(f) = meta.get("finalizers") {
            if !(f.is_null() || f.as_array().is_some_and(|a| a.iter().all(Value::is_string))) {
                causes.push(field_invalid("metadata.finalizers", "", "must be a list of strings"));
            }
            for finalizer in f.as_array().into_iter().flatten().filter_map(Value::as_str) {
                if let Some(why) = label_key_error(finalizer) {
                    causes.push(field_invalid("metadata.finalizers", finalizer, &why));
                }
            }
        }
        owner_reference_causes(meta.get("ownerReferences"), &mut causes);
    }
    // kube reports object-meta and schema violations together, metadata first.
    causes.extend(kind.validator.validate(obj));
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(kind, &name, causes))
    }
}

/// kube's owner reference rules: the garbage collector needs a version, kind, name and uid in
/// each, and at most one may be the controller.
fn owner_reference_causes(refs: Option<&Value>, causes: &mut Vec<StatusCause>) {
    const PATH: &str = "metadata.ownerReferences";
    let refs = match refs {
        None | Some(Value::Null) => return,
        Some(Value::Array(refs)) => refs,
        Some(_) => {
            causes.push(field_invalid(PATH, "", "must be a list of owner references"));
            return;
        }
    };
    let text = |r: &Value, key: &str| r.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
    let mut controllers = Vec::new();
    for r in refs {
        if !r.is_object() {
            causes.push(field_invalid(PATH, "", "must be a list of owner references"));
            continue;
        }
        let api_version = text(r, "apiVersion");
        let version = api_version.rsplit('/').next().unwrap_or_default();
        if version.is_empty() || api_version.matches('/').count() > 1 {
            causes.push(field_invalid(
                &format!("{PATH}.apiVersion"),
                &api_version,
                "version must not be empty",
            ));
        }
        for (key, what) in [("kind", "kind"), ("name", "name"), ("uid", "uid")] {
            let value = text(r, key);
            if value.is_empty() {
                causes.push(field_invalid(
                    &format!("{PATH}.{key}"),
                    &value,
                    &format!("{what} must not be empty"),
                ));
            }
        }
        if r.get("controller").and_then(Value::as_bool) == Some(true) {
            controllers.push(format!("{}/{}", text(r, "kind"), text(r, "name")));
        }
    }
    if controllers.len() > 1 {
        causes.push(field_invalid(
            PATH,
            "",
            &format!(
                "Only one reference can have Controller set to true. Found \"true\" in references for {}",
                controllers.join(" and ")
            ),
        ));
    }
}

/// Prepares a create: checks type, namespace, name and metadata, then wipes and fills the system
/// fields (`uid`, `creationTimestamp` from `now`, generation). The name may still be empty when
/// `generateName` is set; the caller generates it (with retries on collision) through
/// [`generate_name`].
pub fn prepare_create(
    kind: &ResourceKind,
    url_namespace: Option<&str>,
    obj: &mut Value,
    now: &str,
    uid: &str,
) -> Result<(), ApiError> {
    check_shape(kind, obj)?;
    reconcile_namespace(kind, url_namespace, obj)?;
    let name = obj.meta_str("name").to_string();
    validate_create_namespace(kind, obj.meta_str("namespace"), &name)?;
    let generate = obj.meta_str("generateName").to_string();
    if !obj.meta_str("resourceVersion").is_empty() {
        // kube's storage layer refuses this with a plain (reason-less) 500; keep that parity.
        return Err(ApiError::new(500, "", "resourceVersion should not be set on objects to be created"));
    }
    if name.is_empty() && generate.is_empty() {
        return Err(ApiError::invalid(
            kind,
            "",
            vec![field_required("metadata.name", "name or generateName is required")],
        ));
    }
    if !name.is_empty() {
        if let Some(why) = dns_subdomain_error(&name) {
            return Err(ApiError::invalid(kind, &name, vec![field_invalid("metadata.name", &name, &why)]));
        }
    } else if let Some(why) = dns_subdomain_error(&format!("{generate}a")) {
        return Err(ApiError::invalid(
            kind,
            "",
            vec![field_invalid("metadata.generateName", &generate, &why)],
        ));
    }
    validate_metadata(kind, obj)?;
    let meta = meta_mut(obj);
    for field in ["deletionTimestamp", "deletionGracePeriodSeconds", "selfLink", "uid", "creationTimestamp"] {
        meta.remove(field);
    }
    meta.insert("uid".into(), Value::String(uid.to_string()));
    meta.insert("creationTimestamp".into(), Value::String(now.to_string()));
    meta.insert("generation".into(), Value::from(1));
    Ok(())
}

/// True when anything outside `metadata` differs (kube bumps `generation` only then).
pub fn spec_changed(old: &Value, new: &Value) -> bool {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else { return true };
    let outside = |m: &Map<String, Value>| m.iter().filter(|(k, _)| k.as_str() != "metadata").count();
    outside(old) != outside(new) || new.iter().any(|(k, v)| k != "metadata" && old.get(k) != Some(v))
}

/// Prepares an update of `old` to `new`: name and namespace checks, resourceVersion presence,
/// immutable and system fields carried over, generation bumped when the content changed. The
/// stale-RV comparison itself happens in the store, atomically with the write.
pub fn prepare_update(
    kind: &ResourceKind,
    url_namespace: Option<&str>,
    url_name: &str,
    new: &mut Value,
    old: &Value,
) -> Result<(), ApiError> {
    check_shape(kind, new)?;
    reconcile_namespace(kind, url_namespace, new)?;
    let name = new.meta_str("name").to_string();
    if name.is_empty() {
        meta_mut(new).insert("name".into(), Value::String(url_name.to_string()));
    } else if name != url_name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({name}) does not match the name on the URL ({url_name})"
        )));
    }
    if new.meta_str("resourceVersion").is_empty() {
        return Err(ApiError::invalid_qualified(
            &kind.qualified_resource(),
            &kind.kind,
            &kind.group,
            url_name,
            vec![field_invalid("metadata.resourceVersion", "0x0", "must be specified for an update")
                .with_message("Invalid value: 0x0: must be specified for an update")],
        ));
    }
    let old_uid = old.meta_str("uid").to_string();
    let new_uid = new.meta_str("uid").to_string();
    if !new_uid.is_empty() && new_uid != old_uid {
        return Err(ApiError::invalid(
            kind,
            url_name,
            vec![field_invalid("metadata.uid", &new_uid, "field is immutable")],
        ));
    }
    validate_metadata(kind, new)?;
    let deleting = old.meta().is_some_and(|m| m.contains_key("deletionTimestamp"));
    if deleting {
        let old_finalizers = old.finalizers();
        let added: Vec<String> =
            new.finalizers().into_iter().filter(|f| !old_finalizers.contains(f)).collect();
        if !added.is_empty() {
            return Err(ApiError::invalid(
                kind,
                url_name,
                vec![field_forbidden(
                    "metadata.finalizers",
                    &format!(
                        "no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                    ),
                )],
            ));
        }
    }
    let bump = spec_changed(old, new);
    let old_meta = old.meta().cloned().unwrap_or_default();
    let meta = meta_mut(new);
    meta.insert("uid".into(), Value::String(old_uid));
    for field in ["creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"] {
        match old_meta.get(field) {
            Some(v) => meta.insert(field.into(), v.clone()),
            None => meta.remove(field),
        };
    }
    meta.remove("selfLink");
    let generation = old_meta.get("generation").and_then(Value::as_i64).unwrap_or(1);
    meta.insert("generation".into(), Value::from(if bump { generation + 1 } else { generation }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Catalogue;
    use serde_json::json;

    fn kinds() -> (ResourceKind, ResourceKind) {
        let cat = Catalogue::embedded().unwrap();
        (
            cat.find("wgpolicyk8s.io", "v1alpha2", "policyreports").unwrap().clone(),
            cat.find("wgpolicyk8s.io", "v1alpha2", "clusterpolicyreports").unwrap().clone(),
        )
    }

    #[test]
    fn names() {
        assert!(dns_subdomain_error("a-b.c1").is_none());
        for bad in ["", "A", "-a", "a-", "a..b", "a_b", &"a".repeat(254)] {
            assert!(dns_subdomain_error(bad).is_some(), "{bad}");
        }
        let generated = generate_name(&"x".repeat(70), u64::MAX);
        assert_eq!(generated.len(), 63);
        assert!(generated[58..].bytes().all(|c| NAME_ALPHABET.contains(&c)));
    }

    #[test]
    fn create_fills_system_fields_and_checks_namespace() {
        let (polr, cpolr) = kinds();
        let mut obj = json!({"apiVersion":"wgpolicyk8s.io/v1alpha2","kind":"PolicyReport",
            "metadata":{"name":"a","uid":"spoof","generation":9}});
        prepare_create(&polr, Some("ns1"), &mut obj, "2026-01-01T00:00:00Z", "u1").unwrap();
        assert_eq!(obj["metadata"]["namespace"], "ns1");
        assert_eq!(obj["metadata"]["generation"], 1);
        assert_ne!(obj["metadata"]["uid"], "spoof");
        let mut other = json!({"apiVersion":"wgpolicyk8s.io/v1alpha2","kind":"PolicyReport",
            "metadata":{"name":"a","namespace":"ns2"}});
        assert_eq!(prepare_create(&polr, Some("ns1"), &mut other, "t", "u1").unwrap_err().code, 400);
        assert_eq!(
            prepare_create(&polr, None, &mut other, "t", "u1").unwrap_err().message,
            "Namespace parameter required."
        );
        let mut cluster = json!({"apiVersion":"wgpolicyk8s.io/v1alpha2","kind":"ClusterPolicyReport",
            "metadata":{"name":"a","namespace":"ns2"}});
        prepare_create(&cpolr, None, &mut cluster, "t", "u1").unwrap();
        assert!(cluster["metadata"].get("namespace").is_none());
    }

    #[test]
    fn create_rejections() {
        let (polr, _) = kinds();
        let check =
            |body: Value| prepare_create(&polr, Some("ns"), &mut body.clone(), "t", "u1").unwrap_err();
        assert_eq!(check(json!({"apiVersion":"v1","kind":"PolicyReport","metadata":{"name":"a"}})).code, 400);
        assert_eq!(
            check(json!({"apiVersion":"wgpolicyk8s.io/v1alpha2","kind":"Pod","metadata":{"name":"a"}})).code,
            422
        );
        assert_eq!(check(json!({"metadata":{"name":"a"}})).code, 400);
        let bad = check(
            json!({"apiVersion":"wgpolicyk8s.io/v1alpha2","kind":"PolicyReport","metadata":{"name":"Bad_Name"}}),
        );
        assert_eq!(bad.code, 422);
        assert!(bad.message.starts_with(
            "PolicyReport.wgpolicyk8s.io \"Bad_Name\" is invalid: metadata.name: Invalid value"
        ));
        let missing =
            check(json!({"apiVersion":"wgpolicyk8s.io/v1alpha2","kind":"PolicyReport","metadata":{}}));
        assert!(missing.message.contains("name or generateName is required"), "{}", missing.message);
        let rv = check(json!({"apiVersion":"wgpolicyk8s.io/v1alpha2","kind":"PolicyReport",
            "metadata":{"name":"a","resourceVersion":"3"}}));
        assert_eq!(rv.code, 500);
        let label = check(json!({"apiVersion":"wgpolicyk8s.io/v1alpha2","kind":"PolicyReport",
            "metadata":{"name":"a","labels":{"bad key!":"v"}}}));
        assert_eq!(label.code, 422);
    }

    #[test]
    fn update_keeps_system_fields_and_bumps_generation_on_content_change() {
        let (polr, _) = kinds();
        let old = json!({"apiVersion":"wgpolicyk8s.io/v1alpha2","kind":"PolicyReport",
            "metadata":{"name":"a","namespace":"ns","uid":"u1","generation":2,"creationTimestamp":"2024-01-01T00:00:00Z","resourceVersion":"5"},
            "summary":{"pass":1}});
        let mut labels_only = old.clone();
        labels_only["metadata"]["labels"] = json!({"x":"y"});
        labels_only["metadata"]["creationTimestamp"] = json!("2029-09-09T09:09:09Z"); // a time, or it would not decode
        prepare_update(&polr, Some("ns"), "a", &mut labels_only, &old).unwrap();
        assert_eq!(labels_only["metadata"]["generation"], 2);
        assert_eq!(labels_only["metadata"]["creationTimestamp"], "2024-01-01T00:00:00Z");
        let mut content = old.clone();
        content["summary"]["pass"] = json!(2);
        prepare_update(&polr, Some("ns"), "a", &mut content, &old).unwrap();
        assert_eq!(content["metadata"]["generation"], 3);
        let mut no_rv = old.clone();
        no_rv["metadata"].as_object_mut().unwrap().remove("resourceVersion");
        let err = prepare_update(&polr, Some("ns"), "a", &mut no_rv, &old).unwrap_err();
        assert_eq!(err.code, 422);
        assert!(err.message.contains("must be specified for an update"));
        let mut renamed = old.clone();
        renamed["metadata"]["name"] = json!("b");
        assert_eq!(prepare_update(&polr, Some("ns"), "a", &mut renamed, &old).unwrap_err().code, 400);
        let mut uid = old.clone();
        uid["metadata"]["uid"] = json!("other");
        assert_eq!(prepare_update(&polr, Some("ns"), "a", &mut uid, &old).unwrap_err().code, 422);
    }
}
