//! Labels of stored objects: 4-byte hashes in the row, the truth in the body.
//!
//! # Why hashes
//!
//! Every report carries its labels twice if the row keeps them as `jsonb` beside the body: a
//! Kyverno report has one `cpol.kyverno.io/<policy>` label per policy, so about 1 KB of labels
//! (500 bytes after compression) for a 7 KB report that itself compresses to 1.5 KB. Kept inline,
//! they were a fifth of the storage per report. The row instead keeps `label_hashes`, one
//! `integer` per label: the first four bytes of SHA-256 of `key=value` (`=` cannot occur in a
//! label key, so the text is unambiguous). Fifteen labels cost 84 bytes, stored inline (`STORAGE
//! MAIN`) so a filtered scan never opens the TOAST table.
//!
//! # Selectors: pushed down, then checked exactly
//!
//! `key=value` and `key in (...)` become `label_hashes @> ARRAY[h]` and `label_hashes && ARRAY[...]`
//! in SQL: an object with the label always has its hash, so no match is ever lost, and the rows
//! that reach the server are (up to a hash collision) the matching ones. Requirements that a hash
//! cannot decide (`!key`, `key`, `!=`, `notin`, `gt`, `lt`) are not pushed. Every row returned for
//! a query with a label selector is then checked against the whole selector with the labels read
//! from its body, so collisions and the unpushed requirements are exact; a page is filled from as
//! many rows as that takes (see `stream_list`).
//!
//! The same hash is available in SQL as `reports_label_hash(key, value)` (schema migration 2), so
//! migrations and the adoption of an upstream database compute it where the data is.

use reports_core::selector::{LabelSelector, Operator};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio_postgres::types::ToSql;

/// The hash of one label: the first four bytes of SHA-256 of `key=value`, big-endian, signed.
pub fn label_hash(key: &str, value: &str) -> i32 {
    let mut hasher = Sha256::new();
    hasher.update(key.as_bytes());
    hasher.update(b"=");
    hasher.update(value.as_bytes());
    let digest = hasher.finalize();
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The hashes of an object's labels, sorted (the order is irrelevant to `@>` and `&&`; sorting
/// makes equal label sets store equal arrays).
pub(super) fn label_hashes(object: &Value) -> Vec<i32> {
    let mut hashes: Vec<i32> = object
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|labels| labels.iter().filter_map(|(k, v)| v.as_str().map(|v| label_hash(k, v))).collect())
        .unwrap_or_default();
    hashes.sort_unstable();
    hashes
}

/// [`label_hashes`] as a PostgreSQL array literal, for statements that take one text per row.
pub(super) fn label_hashes_literal(object: &Value) -> String {
    hashes_literal(&label_hashes(object))
}

/// Label hashes as a PostgreSQL array literal.
pub(super) fn hashes_literal(hashes: &[i32]) -> String {
    let hashes: Vec<String> = hashes.iter().map(i32::to_string).collect();
    format!("{{{}}}", hashes.join(","))
}

/// The labels of a stored object's JSON, read without building the rest of the document.
pub(super) fn body_labels(body: &str) -> Vec<(String, String)> {
    crate::model::parse_labels(&body_labels_json(body))
}

/// The labels object of a stored object's JSON as text (`{}` when it has none), for the change
/// log, taken verbatim without parsing the labels or the rest of the document.
pub(super) fn body_labels_json(body: &str) -> String {
    #[derive(Deserialize)]
    struct Metadata<'a> {
        #[serde(default, borrow)]
        labels: Option<&'a serde_json::value::RawValue>,
    }
    crate::model::raw_metadata(body)
        .and_then(|raw| serde_json::from_str::<Metadata<'_>>(raw.get()).ok())
        .and_then(|m| m.labels)
        .map(|raw| raw.get())
        .filter(|text| text.starts_with('{'))
        .unwrap_or("{}")
        .to_string()
}

/// Whether a stored object's JSON satisfies `selector` (the exact check after the SQL prefilter).
pub(super) fn body_matches(selector: &LabelSelector, body: &str) -> bool {
    let labels = body_labels(body);
    selector.matches(|key| labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()))
}

/// Appends the SQL conditions that a hash can decide (`=`, `in`); `params` grows with the hashes.
pub(super) fn push_label_prefilter(
    selector: &LabelSelector,
    sql: &mut String,
    params: &mut Vec<Box<dyn ToSql + Send + Sync>>,
) {
    for req in &selector.requirements {
        let hashes: Vec<i32> = match req.op {
            Operator::Equals | Operator::In => req.values.iter().map(|v| label_hash(&req.key, v)).collect(),
            _ => continue,
        };
        params.push(Box::new(hashes));
        // One value: the object must have it; several (`in`): it must have one of them.
        let op = if req.op == Operator::Equals { "@>" } else { "&&" };
        sql.push_str(&format!(" AND label_hashes {op} ${}::integer[]", params.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_read_from_the_body_and_ignore_everything_else() {
        let body = r#"{"apiVersion":"v1","metadata":{"name":"a","labels":{"app":"web","n":"1"}},"results":[{"x":1}]}"#;
        assert_eq!(body_labels(body), vec![("app".into(), "web".into()), ("n".into(), "1".into())]);
        assert!(body_labels(r#"{"metadata":{"name":"a"}}"#).is_empty());
        assert!(body_labels("not json").is_empty());
        assert_eq!(body_labels_json(body), r#"{"app":"web","n":"1"}"#);
        assert_eq!(body_labels_json(r#"{"metadata":{"labels":null}}"#), "{}");
        assert_eq!(body_labels_json(r#"{"kind":"X"}"#), "{}");
    }

    #[test]
    fn the_exact_check_applies_every_requirement() {
        let body = r#"{"metadata":{"labels":{"app":"web","tier":"2"}}}"#;
        let matches = |s: &str| body_matches(&LabelSelector::parse(s).unwrap(), body);
        assert!(matches("app=web,tier"));
        assert!(matches("app in (db,web),!missing,tier>1"));
        assert!(!matches("app=db"));
        assert!(!matches("app!=web"));
        assert!(!matches("tier,!app"));
    }

    #[test]
    fn hashes_depend_on_key_and_value() {
        assert_ne!(label_hash("a", "b"), label_hash("a", "c"));
        assert_ne!(label_hash("a", "b"), label_hash("b", "a"));
        assert_eq!(label_hash("app", "web"), label_hash("app", "web"));
    }
}
