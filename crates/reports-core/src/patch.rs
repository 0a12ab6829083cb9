//! JSON patch (RFC 6902) and JSON merge patch (RFC 7386) applied to a stored object.

use serde_json::Value;

use crate::{error::ApiError, negotiate::BodyType};

/// kube-apiserver refuses JSON patches with more operations than this (413).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Applies `patch` (already decoded as JSON) of the given type to `target` in place.
///
/// A malformed patch document is 400; a patch that cannot be applied (a failed `test`, a missing
/// path) is 422 with the library's explanation, as kube reports it. `copy` operations may copy
/// at most `max_copy_bytes` in all (kube's accumulated copy size limit, which kube-apiserver sets
/// to its request body limit): each `copy` of a path into itself doubles the object, so a patch
/// of a few hundred bytes could otherwise build gigabytes. On error `target` is left partly
/// patched; callers patch a copy.
pub fn apply_patch(
    target: &mut Value,
    patch: &Value,
    body_type: BodyType,
    max_copy_bytes: usize,
) -> Result<(), ApiError> {
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
            let mut copied: usize = 0;
            // One operation at a time, so each copy is measured on the document it copies from.
            for (index, op) in parsed.0.into_iter().enumerate() {
                if let json_patch::PatchOperation::Copy(copy) = &op {
                    if let Some(value) = target.pointer(copy.from.as_str()) {
                        let budget = max_copy_bytes.saturating_sub(copied);
                        copied = copied.saturating_add(json_size_up_to(value, budget));
                        if copied > max_copy_bytes {
                            return Err(ApiError::new(
                                422,
                                "Invalid",
                                format!(
                                    "Unable to complete the copy, the accumulated size increase of copy is \
                                     {copied}, exceeding the limit {max_copy_bytes}"
                                ),
                            ));
                        }
                    }
                }
                json_patch::patch(target, std::slice::from_ref(&op)).map_err(|e| {
                    ApiError::new(
                        422,
                        "Invalid",
                        format!("operation '/{index}' failed at path '{}': {}", e.path, e.kind),
                    )
                })?;
            }
            Ok(())
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

/// The length of `value` serialized as compact JSON, counted only up to just past `limit`: a
/// result above `limit` means "more than `limit`", and counting stops there.
pub fn json_size_up_to(value: &Value, limit: usize) -> usize {
    struct Counter {
        count: usize,
        limit: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.count = self.count.saturating_add(buf.len());
            if self.count > self.limit {
                return Err(std::io::Error::other("over the limit"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { count: 0, limit };
    // The only possible error is the counter's own, which has recorded the overflow.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.count
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

    const LIMIT: usize = 3 * 1024 * 1024;

    #[test]
    fn json_patch_with_test_op() {
        let mut doc = json!({"metadata":{"name":"a","finalizers":["x"]}});
        let ok = json!([{"op":"test","path":"/metadata/finalizers/0","value":"x"},{"op":"remove","path":"/metadata/finalizers/0"}]);
        apply_patch(&mut doc, &ok, BodyType::JsonPatch, LIMIT).unwrap();
        assert_eq!(doc["metadata"]["finalizers"], json!([]));
        let failing = json!([{"op":"test","path":"/metadata/name","value":"b"}]);
        assert_eq!(apply_patch(&mut doc, &failing, BodyType::JsonPatch, LIMIT).unwrap_err().code, 422);
        assert_eq!(
            apply_patch(&mut doc, &json!({"op":"x"}), BodyType::JsonPatch, LIMIT).unwrap_err().code,
            400
        );
        assert_eq!(
            apply_patch(&mut doc, &json!([{"op":"jump"}]), BodyType::JsonPatch, LIMIT).unwrap_err().code,
            400
        );
    }

    #[test]
    fn copies_are_limited_in_total() {
        let mut doc = json!({"a": ["x"]});
        let mut ops = vec![json!({"op": "add", "path": "/a/0", "value": "y".repeat(100)})];
        ops.extend((0..30).map(|_| json!({"op": "copy", "from": "/a", "path": "/a/-"})));
        let error = apply_patch(&mut doc, &json!(ops), BodyType::JsonPatch, 10_000).unwrap_err();
        assert_eq!((error.code, error.reason), (422, "Invalid"));
        assert!(error.message.contains("exceeding the limit 10000"), "{}", error.message);
        let mut doc = json!({"a": ["x"]});
        let three = json!([{"op": "copy", "from": "/a/0", "path": "/a/-"}, {"op": "copy", "from": "/a/0", "path": "/a/-"}]);
        apply_patch(&mut doc, &three, BodyType::JsonPatch, 6).unwrap();
        assert_eq!(doc, json!({"a": ["x", "x", "x"]}));
        let mut doc = json!({"a": ["x"]});
        assert_eq!(apply_patch(&mut doc, &three, BodyType::JsonPatch, 5).unwrap_err().code, 422);
        // Errors name the operation that failed, as when the patch is applied at once.
        let mut doc = json!({"a": 1});
        let failing = json!([{"op": "test", "path": "/a", "value": 1}, {"op": "remove", "path": "/b"}]);
        let error = apply_patch(&mut doc, &failing, BodyType::JsonPatch, LIMIT).unwrap_err();
        assert_eq!(error.message, "operation '/1' failed at path '/b': path is invalid");
    }

    #[test]
    fn merge_patch_deletes_with_null() {
        let mut doc = json!({"a":1,"b":{"c":2,"d":3}});
        apply_patch(&mut doc, &json!({"b":{"c":null},"e":[1]}), BodyType::MergePatch, LIMIT).unwrap();
        assert_eq!(doc, json!({"a":1,"b":{"d":3},"e":[1]}));
    }
}
