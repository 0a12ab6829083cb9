//! Schema validation and pruning of written objects, compiled from the CRDs' `openAPIV3Schema`.
//!
//! kube-apiserver treats the body of a create, update or patch of a custom resource in two
//! steps, and clients see the difference, so we keep both:
//!
//! 1. **Decoding** prunes. Every field the schema does not declare is dropped (a node marked
//!    `x-kubernetes-preserve-unknown-fields` keeps its undeclared fields), as are `null` values
//!    of fields that are neither `nullable` nor defaulted. Unknown fields of `metadata` are dropped
//!    too, because kube round-trips metadata through its ObjectMeta type. The dropped paths
//!    (`results[0].foo`, `metadata.bar`) drive `fieldValidation`: `Ignore` says nothing, `Warn`
//!    (the default) sends one `Warning` header per path, and `Strict` refuses the request, with
//!    400 on create and update and 422 on patch, exactly as the CRD handler does.
//! 2. **Validation** of the pruned object, with the registry's other checks. Type, `enum`,
//!    `required`, `format`, length, bound and item-count violations each become one
//!    `details.causes` entry of a 422 Invalid, named by JSON path (`results[0].result`) and
//!    worded like kube-openapi's errors after apiextensions turns them into field errors.
//!
//! The schema is compiled once at start-up into a tree of [`Node`]s (no IO, no regular
//! expressions), so a write costs one walk to prune and one walk to validate, without copying
//! the object. `metadata`, `apiVersion` and `kind` at the root are not the schema's business:
//! kube validates them with its object-meta rules, which live in [`crate::object`].
//!
//! Not covered, because none of the served CRDs uses them: `pattern`, `uniqueItems`,
//! `multipleOf`, `allOf`/`anyOf`/`oneOf`/`not`, CEL rules (`x-kubernetes-validations`) and the
//! map/set invariants of `x-kubernetes-list-type`. String formats other than `date-time`,
//! `date`, `byte` and `uuid` are accepted unchecked.
//!
//! The parts: [`schema`] compiles the schema into nodes, [`prune`] drops what it does not
//! declare, [`check`] validates what remains. How the dropped paths become warnings or errors
//! (`fieldValidation`) and how duplicate keys are found while decoding is
//! [`crate::field_validation`]'s business.

mod check;
mod prune;
mod schema;

use serde_json::Value;

use crate::error::StatusCause;
use check::validate_object;
use prune::{prune, prune_map};
use schema::{object_meta_schema, Node};

/// A kind's compiled schema: prunes unknown fields and validates what remains.
#[derive(Debug)]
pub struct SchemaValidator {
    root: Node,
    metadata: Node,
}

impl SchemaValidator {
    /// Compiles a CRD version's `openAPIV3Schema`. Fails only on a malformed schema (a build
    /// defect, never user input).
    pub fn compile(schema: &Value) -> Result<Self, String> {
        Ok(Self {
            root: Node::compile(schema, "openAPIV3Schema")?,
            metadata: Node::compile(&object_meta_schema(), "metadata")?,
        })
    }

    /// Drops every field the schema does not declare, and `null`s of non-nullable fields,
    /// in place. Returns the dropped unknown paths (metadata first, then the rest in byte order,
    /// as kube reports them); dropped nulls are not reported, as in kube.
    pub fn prune(&self, object: &mut Value) -> Vec<String> {
        let mut unknown = Vec::new();
        let Some(root) = object.as_object_mut() else { return unknown };
        if let Some(meta) = root.get_mut("metadata") {
            prune(meta, Some(&self.metadata), &FieldPath::ROOT.key("metadata"), &mut unknown);
            unknown.sort_unstable();
        }
        let meta_count = unknown.len();
        prune_map(root, Some(&self.root), true, &FieldPath::ROOT, &mut unknown);
        unknown[meta_count..].sort_unstable();
        unknown
    }

    /// Checks a (pruned) object against the schema; one cause per violation, in walk order.
    pub fn validate(&self, object: &Value) -> Vec<StatusCause> {
        let mut causes = Vec::new();
        if let Some(root) = object.as_object() {
            validate_object(root, &self.root, true, &FieldPath::ROOT, &mut causes);
        }
        causes
    }
}

/// Where the walk is, as a chain of borrowed segments on the stack: nothing is allocated or
/// formatted unless a path is reported.
#[derive(Clone, Copy)]
pub(super) struct FieldPath<'a> {
    parent: Option<&'a FieldPath<'a>>,
    segment: Segment<'a>,
}

#[derive(Clone, Copy)]
pub(super) enum Segment<'a> {
    Root,
    Key(&'a str),
    Index(usize),
}

impl<'a> FieldPath<'a> {
    pub(super) const ROOT: FieldPath<'static> = FieldPath { parent: None, segment: Segment::Root };

    pub(super) fn key(&'a self, key: &'a str) -> FieldPath<'a> {
        FieldPath { parent: Some(self), segment: Segment::Key(key) }
    }

    pub(super) fn index(&'a self, index: usize) -> FieldPath<'a> {
        FieldPath { parent: Some(self), segment: Segment::Index(index) }
    }
}

/// `results[0].policy`: keys joined with dots, indices in brackets, as kube writes field paths.
impl std::fmt::Display for FieldPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut segments = Vec::new();
        let mut at = Some(self);
        while let Some(path) = at {
            segments.push(path.segment);
            at = path.parent;
        }
        let mut first = true;
        for segment in segments.into_iter().rev() {
            match segment {
                Segment::Root => continue,
                Segment::Key(key) if first => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// Go's `%q` for the strings that appear in messages (JSON escaping matches it for everything
/// a report carries).
pub fn go_quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| format!("\"{text}\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Catalogue;
    use serde_json::json;

    fn validator(plural: &str) -> std::sync::Arc<SchemaValidator> {
        let catalogue = Catalogue::embedded().unwrap();
        catalogue.kinds().iter().find(|k| k.plural == plural).unwrap().validator.clone()
    }

    fn polr(results: Value) -> Value {
        json!({"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
            "metadata": {"name": "a", "namespace": "n"}, "results": results})
    }

    #[test]
    fn prunes_unknown_fields_and_reports_sorted_paths() {
        let v = validator("policyreports");
        let mut object =
            polr(json!([{"policy": "p", "zeta": 1, "alpha": {"x": 1}, "properties": {"any.key": "v"}}]));
        object["spec"] = json!({"foo": 1});
        object["metadata"]["bogus"] = json!(true);
        object["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u", "extra": 1}]);
        let unknown = v.prune(&mut object);
        assert_eq!(
            unknown,
            vec![
                "metadata.bogus",
                "metadata.ownerReferences[0].extra",
                "results[0].alpha",
                "results[0].zeta",
                "spec"
            ]
        );
        assert_eq!(object["results"][0], json!({"policy": "p", "properties": {"any.key": "v"}}));
        assert!(object.get("spec").is_none());
        assert_eq!(
            object["metadata"],
            json!({"name": "a", "namespace": "n", "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u"}]})
        );
    }

    #[test]
    fn drops_nulls_of_non_nullable_fields_silently() {
        let v = validator("policyreports");
        let mut object = polr(json!([{"policy": "p", "result": null}]));
        object["scope"] = Value::Null;
        assert!(v.prune(&mut object).is_empty());
        assert!(object.get("scope").is_none());
        assert_eq!(object["results"][0], json!({"policy": "p"}));
    }

    #[test]
    fn validation_errors_name_the_path_like_kube() {
        let v = validator("policyreports");
        let object = polr(json!([
            {"policy": "p", "result": "bad"},
            {"result": "pass"},
            {"policy": 5, "scored": "yes", "timestamp": {"seconds": 1.5, "nanos": 3}},
            null,
        ]));
        let causes = v.validate(&object);
        let rendered: Vec<(String, String, String)> =
            causes.into_iter().map(|c| (c.reason, c.field, c.message)).collect();
        assert_eq!(
            rendered,
            vec![
                (
                    "FieldValueNotSupported".into(),
                    "results[0].result".into(),
                    "Unsupported value: \"bad\": supported values: \"pass\", \"fail\", \"warn\", \"error\", \"skip\"".into()
                ),
                ("FieldValueRequired".into(), "results[1].policy".into(), "Required value".into()),
                (
                    "FieldValueTypeInvalid".into(),
                    "results[2].policy".into(),
                    "Invalid value: \"integer\": results[2].policy in body must be of type string: \"integer\"".into()
                ),
                (
                    "FieldValueTypeInvalid".into(),
                    "results[2].scored".into(),
                    "Invalid value: \"string\": results[2].scored in body must be of type boolean: \"string\"".into()
                ),
                (
                    "FieldValueTypeInvalid".into(),
                    "results[2].timestamp.seconds".into(),
                    "Invalid value: \"number\": results[2].timestamp.seconds in body must be of type integer: \"number\"".into()
                ),
                (
                    "FieldValueTypeInvalid".into(),
                    "results[3]".into(),
                    "Invalid value: \"null\": results[3] in body must be of type object: \"null\"".into()
                ),
            ]
        );
    }

    #[test]
    fn ephemeral_reports_require_spec_and_owner() {
        let v = validator("ephemeralreports");
        let bare = json!({"apiVersion": "reports.kyverno.io/v1", "kind": "EphemeralReport", "metadata": {"name": "a"}});
        let fields: Vec<String> = v.validate(&bare).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, vec!["spec"]);
        let mut no_owner = bare.clone();
        no_owner["spec"] = json!({"results": []});
        let fields: Vec<String> = v.validate(&no_owner).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, vec!["spec.owner"]);
        let mut ok = bare;
        ok["spec"] = json!({"owner": {"apiVersion": "", "kind": "", "name": "", "uid": ""}});
        assert!(v.validate(&ok).is_empty());
    }

    #[test]
    fn openreports_configuration_needs_limits_and_known_status_filters() {
        let v = validator("reports");
        let mut object = json!({"apiVersion": "openreports.io/v1alpha1", "kind": "Report",
            "metadata": {"name": "a"}, "configuration": {}});
        let causes = v.validate(&object);
        assert_eq!(causes.len(), 1);
        assert_eq!(
            (causes[0].field.as_str(), causes[0].message.as_str()),
            ("configuration.limits", "Required value")
        );
        object["configuration"] = json!({"limits": {"maxResults": 10, "statusFilter": ["fail", "bogus"]}});
        let causes = v.validate(&object);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "configuration.limits.statusFilter[1]");
        assert_eq!(causes[0].reason, "FieldValueNotSupported");
    }

    #[test]
    fn integral_floats_pass_as_integers_and_negative_nanos_are_fine() {
        let v = validator("policyreports");
        let object = polr(json!([{"policy": "p", "timestamp": {"seconds": 2.0, "nanos": -5}}]));
        assert!(v.validate(&object).is_empty());
    }

    #[test]
    fn integer_fields_hold_int64_as_kube_stores_them() {
        let v = validator("policyreports");
        let mut object = polr(json!([{"policy": "p", "timestamp": {"seconds": 1e2, "nanos": -0.0}}]));
        v.prune(&mut object);
        assert_eq!(object["results"][0]["timestamp"].to_string(), r#"{"seconds":100,"nanos":0}"#);
        assert!(v.validate(&object).is_empty());
        for past in [json!(1e29), json!(18446744073709551615u64), json!(9007199254740993.0), json!(0.5)] {
            let mut object = polr(json!([{"policy": "p", "timestamp": {"seconds": past, "nanos": 0}}]));
            v.prune(&mut object);
            let causes = v.validate(&object);
            assert_eq!(causes.len(), 1, "{past}");
            assert_eq!(causes[0].field, "results[0].timestamp.seconds");
        }
    }

    #[test]
    fn keywords_the_crds_do_not_use_still_work() {
        let schema = json!({"type": "object", "required": ["s"], "properties": {
            "s": {"type": "string", "maxLength": 3, "format": "date-time"},
            "n": {"type": "integer", "minimum": 1},
            "io": {"x-kubernetes-int-or-string": true},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                "properties": {"known": {"type": "object", "properties": {}}}},
            "maybe": {"type": "string", "nullable": true},
            "few": {"type": "array", "maxItems": 1, "items": {"type": "string"}},
        }});
        let v = SchemaValidator::compile(&schema).unwrap();
        let mut object = json!({"s": "2026-01-01T00:00:00Z", "n": 0, "io": "50%", "maybe": null,
            "free": {"anything": {"goes": 1}, "known": {"dropped": 1}}, "few": ["a", "b"]});
        assert_eq!(v.prune(&mut object), vec!["free.known.dropped"]);
        assert_eq!(object["maybe"], Value::Null);
        assert_eq!(object["free"]["anything"], json!({"goes": 1}));
        let fields: Vec<(String, String)> =
            v.validate(&object).into_iter().map(|c| (c.field, c.reason)).collect();
        assert_eq!(
            fields,
            vec![
                ("s".into(), "FieldValueTooLong".into()),
                ("n".into(), "FieldValueInvalid".into()),
                ("few".into(), "FieldValueTooMany".into()),
            ]
        );
        let bad_time = json!({"s": "no"});
        let causes = v.validate(&bad_time);
        assert_eq!(causes[0].message, "Invalid value: \"no\": s in body must be of type date-time: \"no\"");
        assert_eq!(v.validate(&json!({"s": "x", "io": 3})).len(), 1, "int-or-string takes integers");
        assert_eq!(v.validate(&json!({}))[0].field, "s");
    }
}
