//! What a delete does to an object: kube's preconditions, finalizers and the garbage
//! collector's propagation finalizers, decided from the object alone.
//!
//! An object without finalizers goes at once. One with finalizers is only marked: it gets a
//! `deletionTimestamp` (and `deletionGracePeriodSeconds: 0`) and stays until an update removes
//! its last finalizer, which then deletes it. `propagationPolicy` Orphan and Foreground add the
//! garbage collector's `orphan` or `foregroundDeletion` finalizer, so they always mark first.

use serde_json::{json, Value};

use crate::{
    error::ApiError,
    object::{meta_mut, ObjectExt as _},
    options::{DeleteOptions, Propagation},
    ResourceKind,
};

/// What a delete does to an object.
#[derive(Debug, Clone, PartialEq)]
pub enum DeletionPlan {
    /// No finalizers: remove it now.
    Immediately,
    /// Already terminating and nothing to add: return it as is.
    AlreadyDeleting,
    /// Finalizers pending: store this version carrying `deletionTimestamp`.
    MarkDeleting(Value),
}

/// True when the object already carries a `deletionTimestamp`.
pub fn is_deleting(object: &Value) -> bool {
    object.meta().is_some_and(|m| m.contains_key("deletionTimestamp"))
}

/// Decides what deleting `current` does; `now` (RFC 3339) becomes its `deletionTimestamp` when
/// it is marked for the first time.
pub fn deletion_plan(current: &Value, propagation: Option<Propagation>, now: &str) -> DeletionPlan {
    let mut finalizers = current.finalizers();
    let gc_finalizer = match propagation {
        Some(Propagation::Orphan) => Some("orphan"),
        Some(Propagation::Foreground) => Some("foregroundDeletion"),
        _ => None,
    };
    let deleting = is_deleting(current);
    let mut added = false;
    if let Some(f) = gc_finalizer {
        if !finalizers.iter().any(|x| x == f) && !deleting {
            finalizers.push(f.to_string());
            added = true;
        }
    }
    if finalizers.is_empty() {
        return DeletionPlan::Immediately;
    }
    if deleting && !added {
        return DeletionPlan::AlreadyDeleting;
    }
    let mut marked = current.clone();
    let meta = meta_mut(&mut marked);
    meta.insert("finalizers".into(), json!(finalizers));
    meta.entry("deletionTimestamp").or_insert_with(|| Value::String(now.to_string()));
    meta.entry("deletionGracePeriodSeconds").or_insert(json!(0));
    DeletionPlan::MarkDeleting(marked)
}

/// An update that removes the last finalizer of an object being deleted deletes it (kube's
/// `ShouldDeleteDuringUpdate`).
pub fn update_completes_deletion(current: &Value, updated: &Value) -> bool {
    is_deleting(current) && updated.finalizers().is_empty()
}

/// The delete preconditions (`preconditions.uid`, `preconditions.resourceVersion`) against the
/// stored object's uid and RV: 409 Conflict naming both values when one does not hold.
pub fn check_preconditions(
    options: &DeleteOptions,
    kind: &ResourceKind,
    name: &str,
    uid: &str,
    rv: u64,
) -> Result<(), ApiError> {
    if let Some(expected) = &options.precondition_uid {
        if expected != uid {
            return Err(ApiError::conflict(
                kind,
                name,
                &format!("Precondition failed: UID in precondition: {expected}, UID in object meta: {uid}"),
            ));
        }
    }
    if let Some(expected) = &options.precondition_rv {
        if *expected != rv.to_string() {
            return Err(ApiError::conflict(
                kind,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {expected}, ResourceVersion in object meta: {rv}"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finalizers_and_propagation_decide_between_deleting_and_marking() {
        let now = "2026-01-01T00:00:00Z";
        let plain = json!({"metadata": {"name": "a"}});
        assert_eq!(deletion_plan(&plain, None, now), DeletionPlan::Immediately);
        assert_eq!(deletion_plan(&plain, Some(Propagation::Background), now), DeletionPlan::Immediately);
        let DeletionPlan::MarkDeleting(orphaned) = deletion_plan(&plain, Some(Propagation::Orphan), now)
        else {
            panic!("Orphan marks");
        };
        assert_eq!(orphaned["metadata"]["finalizers"], json!(["orphan"]));
        assert_eq!(orphaned["metadata"]["deletionTimestamp"], now);
        assert_eq!(orphaned["metadata"]["deletionGracePeriodSeconds"], 0);
        assert!(is_deleting(&orphaned));
        assert_eq!(
            deletion_plan(&orphaned, Some(Propagation::Orphan), "later"),
            DeletionPlan::AlreadyDeleting
        );
        assert_eq!(
            deletion_plan(&orphaned, Some(Propagation::Foreground), "later"),
            DeletionPlan::AlreadyDeleting,
            "no finalizer is added to an object being deleted"
        );
        let finalized = json!({"metadata": {"name": "a", "finalizers": ["x"]}});
        let DeletionPlan::MarkDeleting(marked) = deletion_plan(&finalized, None, now) else {
            panic!("finalizers mark");
        };
        assert_eq!(marked["metadata"]["finalizers"], json!(["x"]));
        assert_eq!(marked["metadata"]["deletionTimestamp"], now);
        let mut done = orphaned.clone();
        done["metadata"]["finalizers"] = json!([]);
        assert!(update_completes_deletion(&orphaned, &done));
        assert!(!update_completes_deletion(&plain, &done));
    }
}
