//! Validation of a pruned object against its compiled schema: one `details.causes` entry per
//! violation, worded like kube-openapi's errors after apiextensions turns them into field errors.

use serde_json::{Map, Value};

use super::{
    go_quote,
    schema::{JsonType, Node, META_FIELDS},
    FieldPath,
};
use crate::error::StatusCause;

/// How a bad value is shown after `Invalid value: ` (apimachinery's field error rendering).
pub(super) fn show_value(value: &Value) -> String {
    match value {
        Value::String(s) => go_quote(s),
        Value::Null => "\"null\"".into(),
        Value::Bool(_) | Value::Number(_) => value.to_string(),
        other => other.to_string(),
    }
}

pub(super) fn cause(reason: &str, path: &FieldPath<'_>, message: String) -> StatusCause {
    StatusCause { reason: reason.into(), message, field: path.to_string() }
}

pub(super) fn type_invalid(path: &FieldPath<'_>, shown: &str, expected: &str, got: &str) -> StatusCause {
    let detail = format!("{path} in body must be of type {expected}: {}", go_quote(got));
    cause("FieldValueTypeInvalid", path, format!("Invalid value: {}: {detail}", go_quote(shown)))
}

pub(super) fn validate_value(
    value: &Value,
    node: &Node,
    path: &FieldPath<'_>,
    causes: &mut Vec<StatusCause>,
) {
    let Some(actual) = JsonType::of(value) else {
        if !node.types.is_empty() && !node.nullable {
            causes.push(type_invalid(path, "null", &node.type_names(), "null"));
        }
        return;
    };
    if !node.admits(value, actual) {
        causes.push(type_invalid(path, actual.name(), &node.type_names(), actual.name()));
        check_enum(value, node, path, causes);
        return;
    }
    match value {
        Value::String(text) => check_string(text, node, path, causes),
        Value::Number(_) => check_number(value, node, path, causes),
        _ => {}
    }
    check_enum(value, node, path, causes);
    match value {
        Value::Object(map) => validate_object(map, node, false, path, causes),
        Value::Array(items) => {
            check_count(items.len(), node.min_items, node.max_items, "items", path, causes);
            if let Some(item_node) = node.items.as_deref() {
                for (index, item) in items.iter().enumerate() {
                    validate_value(item, item_node, &path.index(index), causes);
                }
            }
        }
        _ => {}
    }
}

pub(super) fn check_string(text: &str, node: &Node, path: &FieldPath<'_>, causes: &mut Vec<StatusCause>) {
    if node.max_length.is_some() || node.min_length.is_some() {
        // kube-openapi counts characters, not bytes.
        let chars = text.chars().count() as u64;
        if let Some(max) = node.max_length.filter(|max| chars > *max) {
            let noun = if max == 1 { "byte" } else { "bytes" };
            causes.push(cause(
                "FieldValueTooLong",
                path,
                format!("Too long: may not be more than {max} {noun}"),
            ));
        }
        if let Some(min) = node.min_length.filter(|min| chars < *min) {
            let detail = format!("{path} in body should be at least {min} chars long");
            causes.push(cause(
                "FieldValueInvalid",
                path,
                format!("Invalid value: {}: {detail}", go_quote(text)),
            ));
        }
    }
    if let Some(format) = node.format.filter(|f| !f.accepts(text)) {
        causes.push(type_invalid(path, text, format.name(), text));
    }
}

pub(super) fn check_number(value: &Value, node: &Node, path: &FieldPath<'_>, causes: &mut Vec<StatusCause>) {
    let Some(number) = value.as_f64() else { return };
    if let Some(min) = node.minimum {
        if number < min.limit || (min.exclusive && number == min.limit) {
            let relation = if min.exclusive { "greater than" } else { "greater than or equal to" };
            let detail = format!("{path} in body should be {relation} {}", min.limit);
            causes.push(cause("FieldValueInvalid", path, format!("Invalid value: {value}: {detail}")));
        }
    }
    if let Some(max) = node.maximum {
        if number > max.limit || (max.exclusive && number == max.limit) {
            let relation = if max.exclusive { "less than" } else { "less than or equal to" };
            let detail = format!("{path} in body should be {relation} {}", max.limit);
            causes.push(cause("FieldValueInvalid", path, format!("Invalid value: {value}: {detail}")));
        }
    }
}

pub(super) fn check_enum(value: &Value, node: &Node, path: &FieldPath<'_>, causes: &mut Vec<StatusCause>) {
    if node.enumeration.is_empty() || node.enumeration.iter().any(|allowed| enum_equal(allowed, value)) {
        return;
    }
    let supported = node
        .enumeration
        .iter()
        .map(|v| match v {
            Value::String(s) => go_quote(s),
            other => go_quote(&other.to_string()),
        })
        .collect::<Vec<_>>()
        .join(", ");
    causes.push(cause(
        "FieldValueNotSupported",
        path,
        format!("Unsupported value: {}: supported values: {supported}", show_value(value)),
    ));
}

/// Enum membership compares numbers by value (1 and 1.0 are the same JSON number).
pub(super) fn enum_equal(allowed: &Value, value: &Value) -> bool {
    match (allowed, value) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => allowed == value,
    }
}

/// `minItems`/`maxItems` and `minProperties`/`maxProperties`: kube words an excess as a
/// TooMany of "items" whatever is counted, and a shortfall by what is counted (`unit`).
fn check_count(
    count: usize,
    min: Option<u64>,
    max: Option<u64>,
    unit: &str,
    path: &FieldPath<'_>,
    causes: &mut Vec<StatusCause>,
) {
    let count = count as u64;
    if let Some(max) = max.filter(|max| count > *max) {
        let noun = if max == 1 { "item" } else { "items" };
        causes.push(cause(
            "FieldValueTooMany",
            path,
            format!("Too many: {count}: must have at most {max} {noun}"),
        ));
    }
    if let Some(min) = min.filter(|min| count < *min) {
        let detail = format!("{path} in body should have at least {min} {unit}");
        causes.push(cause("FieldValueInvalid", path, format!("Invalid value: {count}: {detail}")));
    }
}

pub(super) fn validate_object(
    map: &Map<String, Value>,
    node: &Node,
    at_root: bool,
    path: &FieldPath<'_>,
    causes: &mut Vec<StatusCause>,
) {
    check_count(map.len(), node.min_properties, node.max_properties, "properties", path, causes);
    for (key, child) in map {
        if at_root && META_FIELDS.contains(&key.as_str()) {
            continue;
        }
        if let Some(schema) = node.field(key) {
            validate_value(child, schema, &path.key(key), causes);
        }
    }
    for key in &node.required {
        if !map.contains_key(key) {
            causes.push(cause("FieldValueRequired", &path.key(key), "Required value".into()));
        }
    }
}
