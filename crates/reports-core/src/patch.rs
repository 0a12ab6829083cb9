//! JSON patch (RFC 6902) and JSON merge patch (RFC 7386) applied to a stored object.

use serde_json::Value;

use crate::{error::ApiError, negotiate::BodyType};

/// kube-apiserver refuses JSON patches with more operations than this (413).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Applies `patch` (already decoded as JSON) of the given type to `target` in place.
///
/// A malformed patch document is 400; a patch that cannot be applied (a failed `test`, a missing
/// path) is 422 with the library's explanation, as kube reports it.
pub fn apply_patch(target: &mut Value, patch: &Value, body_type: BodyType) -> Result<(), ApiError> {
    match body_type {
        BodyType::JsonPatch => {
            let ops = patch
                .as_array()
                .ok_or_else(|| ApiError::bad_request("json patch must be a JSON array of operations"))?;
            if ops.len() > MAX_JSON_PATCH_OPERATIONS {
                return Err(ApiError::new(
                    413,
                    "RequestEntityTooLarge",
                    format!(
                        "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
                        ops.len()
                    ),
                ));
            }
            let parsed: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid json patch: {e}")))?;
            json_patch::patch(target, &parsed).map_err(|e| ApiError::new(422, "Invalid", e.to_string()))
        }
        BodyType::MergePatch => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("merge patch must be a JSON object"));
            }
            json_patch::merge(target, patch);
            Ok(())
        }
        BodyType::Json | BodyType::Yaml => {
            Err(ApiError::unsupported_media_type(crate::negotiate::PATCH_TYPES))
        }
    }
}

/// True when the patch itself writes `metadata.resourceVersion`: the patch is then pinned to that
/// version, and a conflict is the client's answer rather than a reason to retry on a newer one.
pub fn patch_sets_resource_version(patch: &Value, body_type: BodyType) -> bool {
    match body_type {
        BodyType::MergePatch => {
            patch.get("metadata").and_then(|m| m.get("resourceVersion")).is_some_and(|v| !v.is_null())
        }
        BodyType::JsonPatch => patch.as_array().is_some_and(|ops| {
            ops.iter().any(|op| {
                op.get("path").and_then(Value::as_str) == Some("/metadata/resourceVersion")
                    && op.get("op").and_then(Value::as_str) != Some("test")
            })
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_with_test_op() {
        let mut doc = json!({"metadata":{"name":"a","finalizers":["x"]}});
        let ok = json!([{"op":"test","path":"/metadata/finalizers/0","value":"x"},{"op":"remove","path":"/metadata/finalizers/0"}]);
        apply_patch(&mut doc, &ok, BodyType::JsonPatch).unwrap();
        assert_eq!(doc["metadata"]["finalizers"], json!([]));
        let failing = json!([{"op":"test","path":"/metadata/name","value":"b"}]);
        assert_eq!(apply_patch(&mut doc, &failing, BodyType::JsonPatch).unwrap_err().code, 422);
        assert_eq!(apply_patch(&mut doc, &json!({"op":"x"}), BodyType::JsonPatch).unwrap_err().code, 400);
        assert_eq!(
            apply_patch(&mut doc, &json!([{"op":"jump"}]), BodyType::JsonPatch).unwrap_err().code,
            400
        );
    }

    #[test]
    fn merge_patch_deletes_with_null() {
        let mut doc = json!({"a":1,"b":{"c":2,"d":3}});
        apply_patch(&mut doc, &json!({"b":{"c":null},"e":[1]}), BodyType::MergePatch).unwrap();
        assert_eq!(doc, json!({"a":1,"b":{"d":3},"e":[1]}));
    }
}
