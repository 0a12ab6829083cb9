//! The values the stores hand out and take in: stored objects, list queries and their streamed
//! chunks, change-log entries, and the label and metadata readers both stores share.

use reports_core::selector::{Field, FieldOp, FieldRequirement, FieldSelector, LabelSelector};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::{StoreError, StoreResult};

/// One stored object, as served.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    /// Namespace ("" for cluster-scoped kinds).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.resourceVersion`.
    pub rv: u64,
    /// The object's JSON text, with `metadata.resourceVersion` already set to `rv`.
    pub body: String,
}

impl StoredObject {
    /// Parses the stored JSON (only write paths and transforms need this).
    pub fn parse(&self) -> StoreResult<Value> {
        parse_body(&self.body)
    }
}

/// The top-level `metadata` object of a stored body, read without scanning past it.
///
/// Deleting a report needs its metadata (the deletion plan, its RV, its labels), which comes
/// before the results a stored report is mostly made of; reading each 6 KB body to its end three
/// times was an eighth of a PostgreSQL deletecollection's CPU. The rest of the body is not
/// checked: stored bodies were validated when written. `None` when the body is not a JSON object
/// or has no `metadata` object.
pub fn raw_metadata(body: &str) -> Option<&serde_json::value::RawValue> {
    use serde::de::{Deserializer as _, Error as _, IgnoredAny, MapAccess, Visitor};
    use serde_json::value::RawValue;

    /// A top-level key: only `metadata` matters (matched after unescaping, as serde does).
    #[derive(serde::Deserialize)]
    enum Key {
        #[serde(rename = "metadata")]
        Metadata,
        #[serde(other)]
        Other,
    }
    /// Walks the top-level keys until `metadata`, keeps its raw text and stops there: stopping
    /// is an error to serde, so the found value travels in `found` instead.
    struct Seek<'a, 'de>(&'a mut Option<&'de RawValue>);
    impl<'de> Visitor<'de> for Seek<'_, 'de> {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<Key>()? {
                match key {
                    Key::Metadata => {
                        *self.0 = Some(map.next_value::<&'de RawValue>()?);
                        return Err(A::Error::custom("stopped at metadata"));
                    }
                    Key::Other => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(())
        }
    }
    let mut found = None;
    let _stopped = serde_json::Deserializer::from_str(body).deserialize_map(Seek(&mut found));
    found.filter(|raw| raw.get().starts_with('{'))
}

/// Parses a stored object's JSON; a failure means the stored data is corrupt.
pub(crate) fn parse_body(body: &str) -> StoreResult<Value> {
    serde_json::from_str(body).map_err(|e| StoreError::backend_caused("stored JSON is corrupt", e))
}

/// Which objects a list (or deletecollection) returns.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Resource plural (the storage key of the kind).
    pub resource: String,
    /// Restrict to one namespace.
    pub namespace: Option<String>,
    /// Label selector, evaluated in the database.
    pub labels: LabelSelector,
    /// Field selector, evaluated in the database.
    pub fields: FieldSelector,
    /// Return only objects whose (namespace, name) is greater than this key.
    pub after: Option<(String, String)>,
    /// At most this many objects.
    pub limit: Option<u64>,
    /// Read the objects as they were at this RV (a later page of a paged list, or an exact-RV
    /// list) instead of the current ones; [`crate::StoreError::Expired`] when the change log no
    /// longer covers it. An RV at or above the newest commit reads the current objects (the
    /// stream's `snapshot_rv` then tells which).
    pub at: Option<u64>,
    /// Count the objects left after a full page ([`ListChunk::End::remaining`]); ignored with a
    /// label selector (kube gives `remainingItemCount` for unfiltered lists only).
    pub count_remaining: bool,
}

/// A piece of a streamed list.
#[derive(Debug)]
pub enum ListChunk {
    /// Objects in key order.
    Items(Vec<StoredObject>),
    /// The end; `more` is true when objects beyond `limit` exist.
    End {
        /// More objects match after the last one sent.
        more: bool,
        /// How many objects follow the last one sent, at the snapshot RV (only when `more` and
        /// [`ListQuery::count_remaining`]).
        remaining: Option<u64>,
    },
}

/// A list being read: the snapshot RV is known up front, objects arrive in bounded chunks.
pub struct ListStream {
    /// The RV the objects are read at: [`ListQuery::at`] when it is below the newest commit,
    /// else the counter value in the same snapshot as the rows.
    pub snapshot_rv: u64,
    /// Chunks, ending with [`ListChunk::End`] (or an error).
    pub chunks: mpsc::Receiver<StoreResult<ListChunk>>,
}

/// A piece of a streamed findings list.
#[derive(Debug)]
pub enum FindingChunk {
    /// Findings in key order.
    Items(Vec<reports_core::findings::query::FindingRecord>),
    /// The end; `more` is true when findings beyond `limit` exist.
    End {
        /// More findings match after the last one sent.
        more: bool,
    },
}

/// A findings list being read: the RV it reflects is known up front, findings arrive in bounded
/// chunks (as [`ListStream`]).
pub struct FindingStream {
    /// The counter value in the same snapshot as the rows.
    pub snapshot_rv: u64,
    /// Chunks, ending with [`FindingChunk::End`] (or an error).
    pub chunks: mpsc::Receiver<StoreResult<FindingChunk>>,
}

/// Type of a change-log entry, as watch events name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    /// The object was created.
    Added,
    /// The object was updated.
    Modified,
    /// The object was deleted; the body is its final state.
    Deleted,
}

impl ChangeType {
    /// The watch event type.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }

    /// Parses the stored text.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ADDED" => Some(ChangeType::Added),
            "MODIFIED" => Some(ChangeType::Modified),
            "DELETED" => Some(ChangeType::Deleted),
            _ => None,
        }
    }
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The write's RV.
    pub rv: u64,
    /// Resource plural.
    pub resource: String,
    /// What happened.
    pub change_type: ChangeType,
    /// The object at `rv` (its final state for deletes).
    pub object: StoredObject,
    /// Labels of the object at `rv`.
    pub labels: Vec<(String, String)>,
    /// Labels before the write (None for creates); lets a filtered watch see an object leave its
    /// selector.
    pub prev_labels: Option<Vec<(String, String)>>,
}

/// A change-log row as both stores read it, before its type text is checked.
pub(crate) struct ChangeRow {
    /// The write's RV.
    pub rv: u64,
    /// Resource plural.
    pub resource: String,
    /// Namespace, name and uid of the object.
    pub key: (String, String, String),
    /// The stored type text.
    pub change_type: String,
    /// The object's JSON at `rv`, if the row (or the object row or later change it shares it
    /// with) still has it.
    pub body: Option<String>,
    /// The JSON of the version this change replaced (updates and deletes); a delete's final
    /// state is this with the deletion's RV written in.
    pub prev_body: Option<String>,
    /// Labels at `rv` as JSON text.
    pub labels: String,
    /// Labels before the write as JSON text.
    pub prev_labels: Option<String>,
}

impl ChangeRow {
    /// The change this row records; an unknown type or a missing body is corrupt data.
    pub fn into_change(self) -> StoreResult<Change> {
        let ChangeRow {
            rv,
            resource,
            key: (namespace, name, uid),
            change_type,
            body,
            prev_body,
            labels,
            prev_labels,
        } = self;
        let change_type = ChangeType::parse(&change_type)
            .ok_or_else(|| StoreError::backend(format!("unknown change type {change_type}")))?;
        let body = match (body, prev_body, change_type) {
            (Some(body), _, _) => Some(body),
            (None, Some(prev), ChangeType::Deleted) => Some(crate::snapshot::with_rv(&prev, rv)?),
            _ => None,
        };
        Ok(Change {
            rv,
            resource,
            change_type,
            object: StoredObject {
                namespace,
                name,
                uid,
                rv,
                body: body.ok_or_else(|| StoreError::backend(format!("change {rv} has no object body")))?,
            },
            labels: parse_labels(&labels),
            prev_labels: prev_labels.as_deref().map(parse_labels),
        })
    }
}

/// Labels of an object as a JSON object text, the form the stores keep for selector queries.
pub fn labels_json(object: &Value) -> String {
    object
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .filter(|l| l.is_object())
        .map(|l| l.to_string())
        .unwrap_or_else(|| "{}".to_string())
}

/// Parses a labels JSON text back into pairs.
pub fn parse_labels(text: &str) -> Vec<(String, String)> {
    serde_json::from_str::<serde_json::Map<String, Value>>(text)
        .map(|m| m.into_iter().filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string()))).collect())
        .unwrap_or_default()
}

/// A text field of an object's `metadata` ("" when absent).
pub(crate) fn meta_text<'a>(object: &'a Value, key: &str) -> &'a str {
    object.get("metadata").and_then(|m| m.get(key)).and_then(Value::as_str).unwrap_or_default()
}

/// Seconds since the Unix epoch, for change-log ages.
pub(crate) fn now_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A field selector requirement as SQL: the column it compares and the operator (`=` or `<>`,
/// which SQLite and PostgreSQL read alike).
pub(crate) fn field_condition(req: &FieldRequirement) -> (&'static str, &'static str) {
    let column = match req.field {
        Field::Name => "name",
        Field::Namespace => "namespace",
    };
    let op = match req.op {
        FieldOp::Equals => "=",
        FieldOp::NotEquals => "<>",
    };
    (column, op)
}

/// What compaction keeps of the change log: the changes younger than `max_age_seconds`, and of
/// those never more than the newest `max_entries` RVs' worth. The age is the promise to watchers
/// and continue tokens; the length bounds the disk under a flood of writes, when minutes of
/// history would be millions of bodies (kube-apiserver's watch cache is bounded the same way, and
/// a client beyond it gets 410 and relists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Changes at least this old are dropped (0 drops everything committed so far).
    pub max_age_seconds: u64,
    /// Changes more than this many RVs older than the newest are dropped, whatever their age.
    pub max_entries: u64,
}

impl Retention {
    /// Keeps changes younger than `max_age_seconds`, however many.
    pub fn by_age(max_age_seconds: u64) -> Self {
        Self { max_age_seconds, max_entries: u64::MAX }
    }
}

#[cfg(test)]
mod tests {
    use super::raw_metadata;

    #[test]
    fn raw_metadata_is_the_top_level_object_wherever_it_is() {
        let first = r#"{"apiVersion":"v1","metadata":{"name":"a","labels":{"x":"1"}},"results":[1,2]}"#;
        assert_eq!(raw_metadata(first).map(|r| r.get()), Some(r#"{"name":"a","labels":{"x":"1"}}"#));
        // A `metadata` nested before the top-level one is skipped, escaped keys are unescaped.
        let later = r#"{"results":[{"metadata":{"name":"inner"}}],"meta\u0064ata":{"name":"outer"}}"#;
        assert_eq!(raw_metadata(later).map(|r| r.get()), Some(r#"{"name":"outer"}"#));
    }

    #[test]
    fn raw_metadata_stops_reading_at_it() {
        // Whatever follows is not read: a body cut short after its metadata still has one, and
        // a second `metadata` further on is never reached.
        let cut = r#"{"kind":"PolicyReport","metadata":{"name":"a"},"results":[{"pol"#;
        assert_eq!(raw_metadata(cut).map(|r| r.get()), Some(r#"{"name":"a"}"#));
        let twice = r#"{"metadata":{"name":"first"},"results":[],"metadata":{"name":"second"}}"#;
        assert_eq!(raw_metadata(twice).map(|r| r.get()), Some(r#"{"name":"first"}"#));
    }

    #[test]
    fn raw_metadata_is_none_without_a_metadata_object() {
        for body in [r#"{"kind":"X"}"#, r#"{"metadata":"text"}"#, "[1]", "not json", r#"{"kind":"#, ""] {
            assert!(raw_metadata(body).is_none(), "{body}");
        }
    }
}
