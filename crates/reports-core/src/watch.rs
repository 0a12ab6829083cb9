//! Which watch events a write produces for one watcher: kube's cacher rules.
//!
//! A watcher names a namespace (or all), a label selector and a field selector. A write reaches
//! it only inside its namespace and field selector. Labels are judged before and after the write,
//! so an object that starts matching the label selector arrives as ADDED, one that stops
//! matching as DELETED, and filtered informers never keep ghosts. A delete is judged on the
//! labels the object had (its last labels when the previous ones are unknown). kube's DELETED
//! for an object leaving a selector carries the previous body; ours carries the new one, which
//! only matters to clients reading labels off a delete.
//!
//! Where a watch starts is decided here too ([`sends_initial_events`]).

use crate::{
    options::{ListOptions, RvParam},
    selector::{FieldSelector, LabelSelector},
};

/// The type of a watch event that carries an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// The object entered the watcher's view (created, or now matching its selector).
    Added,
    /// The object changed and is still in view.
    Modified,
    /// The object left the watcher's view (deleted, or no longer matching its selector).
    Deleted,
}

impl EventType {
    /// The `type` field of the event.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed write, as a watch filter sees it.
#[derive(Debug, Clone, Copy)]
pub struct WatchedWrite<'a> {
    /// Namespace of the object ("" for cluster-scoped kinds).
    pub namespace: &'a str,
    /// Name of the object.
    pub name: &'a str,
    /// True when the write deleted the object.
    pub deleted: bool,
    /// Labels after the write (for a delete, the object's last labels).
    pub labels: &'a [(String, String)],
    /// Labels before the write, when the write changed an existing object and they are known.
    pub prev_labels: Option<&'a [(String, String)]>,
}

/// What one watcher wants of a resource's writes.
#[derive(Debug, Clone)]
pub struct WatchFilter {
    /// The watched namespace; `None` watches all namespaces (or a cluster-scoped kind).
    pub namespace: Option<String>,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

impl WatchFilter {
    fn labels_match(&self, labels: &[(String, String)]) -> bool {
        self.labels.matches(|key| labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()))
    }

    /// The event this watcher sees for a write of its resource, if any.
    pub fn event_for(&self, write: &WatchedWrite<'_>) -> Option<EventType> {
        if self.namespace.as_deref().is_some_and(|ns| ns != write.namespace)
            || !self.fields.matches(write.namespace, write.name)
        {
            return None;
        }
        let now = !write.deleted && self.labels_match(write.labels);
        let before = match write.prev_labels {
            Some(prev) => self.labels_match(prev),
            None if write.deleted => self.labels_match(write.labels),
            None => false,
        };
        match (before, now) {
            (false, true) => Some(EventType::Added),
            (true, true) => Some(EventType::Modified),
            (true, false) => Some(EventType::Deleted),
            (false, false) => None,
        }
    }
}

/// Whether a watch starts with the current state (ADDED for every matching object, then the
/// `k8s.io/initial-events-end` bookmark when bookmarks are allowed): as asked by
/// `sendInitialEvents`, else when no resourceVersion (or `0`) is given, as kube's legacy watch
/// does. A watch from an RV X starts with the changes after X.
pub fn sends_initial_events(options: &ListOptions) -> bool {
    match (options.send_initial_events, options.resource_version) {
        (Some(send), _) => send,
        (None, RvParam::Unset | RvParam::Any) => true,
        (None, RvParam::At(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn objects_entering_and_leaving_a_selector_are_added_and_deleted() {
        let filter = WatchFilter {
            namespace: Some("a".into()),
            labels: LabelSelector::parse("app=x").unwrap(),
            fields: FieldSelector::default(),
        };
        let x = labels(&[("app", "x")]);
        let y = labels(&[("app", "y")]);
        let write = |labels: &[(String, String)], prev: Option<&[(String, String)]>, deleted: bool| {
            let write = WatchedWrite { namespace: "a", name: "r", deleted, labels, prev_labels: prev };
            filter.event_for(&write)
        };
        assert_eq!(write(&x, None, false), Some(EventType::Added), "created matching");
        assert_eq!(write(&y, None, false), None, "created elsewhere");
        assert_eq!(write(&x, Some(&y), false), Some(EventType::Added), "entering");
        assert_eq!(write(&x, Some(&x), false), Some(EventType::Modified));
        assert_eq!(write(&y, Some(&x), false), Some(EventType::Deleted), "leaving");
        assert_eq!(write(&x, None, true), Some(EventType::Deleted), "deleted while matching");
        assert_eq!(write(&y, None, true), None);
        let other_namespace =
            WatchedWrite { namespace: "b", name: "r", deleted: false, labels: &x, prev_labels: None };
        assert_eq!(filter.event_for(&other_namespace), None);
    }
}
