//! Pruning: drops every field the schema does not declare, as kube's decoder does for a custom
//! resource, and reports the unknown paths.

use serde_json::{Map, Value};

use super::{
    schema::{as_stored_integer, Node, META_FIELDS},
    FieldPath,
};

pub(super) fn prune(value: &mut Value, node: Option<&Node>, path: &FieldPath<'_>, unknown: &mut Vec<String>) {
    // kube decodes numbers into int64 or float64 and stores an integral float of an integer
    // field as an integer; Go clients cannot read `100.0` or `-0.0` into their int64 fields.
    if let Some(integer) = node.filter(|n| n.holds_integers()).and_then(|_| as_stored_integer(value)) {
        *value = integer;
        return;
    }
    match value {
        Value::Object(map) => prune_map(map, node, false, path, unknown),
        Value::Array(items) => {
            let item_node = node.and_then(|n| n.items.as_deref());
            // Below a preserved array, items keep unknown fields too.
            let keep = node.is_some_and(|n| n.preserve_unknown_fields);
            for (index, item) in items.iter_mut().enumerate() {
                let here = path.index(index);
                match (keep, item_node) {
                    (true, None) => {}
                    (true, Some(n)) if !n.preserve_unknown_fields => {
                        if let Value::Object(map) = item {
                            prune_map_preserving(map, n, &here, unknown);
                        }
                    }
                    _ => prune(item, item_node, &here, unknown),
                }
            }
        }
        _ => {}
    }
}

pub(super) fn prune_map(
    map: &mut Map<String, Value>,
    node: Option<&Node>,
    at_root: bool,
    path: &FieldPath<'_>,
    unknown: &mut Vec<String>,
) {
    if let Some(node) = node.filter(|n| n.preserve_unknown_fields) {
        prune_map_preserving(map, node, path, unknown);
        return;
    }
    map.retain(|key, child| {
        if at_root && META_FIELDS.contains(&key.as_str()) {
            return true;
        }
        match node.and_then(|n| n.field(key)) {
            Some(schema) => {
                if child.is_null() && !schema.nullable && !schema.has_default {
                    return false;
                }
                prune(child, Some(schema), &path.key(key), unknown);
                true
            }
            None => {
                unknown.push(path.key(key).to_string());
                false
            }
        }
    });
}

/// Pruning below `x-kubernetes-preserve-unknown-fields`: undeclared fields stay, declared ones
/// are still pruned by their own schemas.
pub(super) fn prune_map_preserving(
    map: &mut Map<String, Value>,
    node: &Node,
    path: &FieldPath<'_>,
    unknown: &mut Vec<String>,
) {
    map.retain(|key, child| {
        let Some(schema) = node.field(key) else { return true };
        if child.is_null() && !schema.nullable && !schema.has_default {
            return false;
        }
        prune(child, Some(schema), &path.key(key), unknown);
        true
    });
}
