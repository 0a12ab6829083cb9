//! The objects of the query API: `Finding` (one finding) and `FindingCount` (one group of a
//! grouped count), in the API group [`GROUP`].

use serde_json::{json, Map, Value};

use super::{
    filter::FindingField,
    query::{FindingCount, FindingRecord},
};

/// The API group of the query resources.
pub const GROUP: &str = "query.reports-server.io";
/// Its one version.
pub const VERSION: &str = "v1alpha1";

/// The `result` values the report schemas allow.
pub const STANDARD_RESULTS: [&str; 5] = ["pass", "fail", "warn", "error", "skip"];

/// `apiVersion` of the query objects.
pub fn api_version() -> String {
    format!("{GROUP}/{VERSION}")
}

/// The name of a finding: its report's name and its ordinal, `report.ordinal`.
pub fn finding_name(report: &str, ordinal: u32) -> String {
    format!("{report}.{ordinal}")
}

/// Inserts `value` under `key` unless it is empty (the wire form omits empty strings).
fn put(map: &mut Map<String, Value>, key: &str, value: &str) {
    if !value.is_empty() {
        map.insert(key.to_string(), Value::String(value.to_string()));
    }
}

/// The `Finding` object of a record. `report_api_version` and `report_kind` name the report's
/// kind (the record holds its resource plural).
pub fn finding_object(record: &FindingRecord, report_api_version: &str, report_kind: &str) -> Value {
    let (key, f) = (&record.key, &record.finding);
    let mut metadata = Map::new();
    metadata.insert("name".into(), Value::String(finding_name(&key.name, key.ordinal)));
    put(&mut metadata, "namespace", &key.namespace);
    let mut report = Map::new();
    put(&mut report, "apiVersion", report_api_version);
    put(&mut report, "kind", report_kind);
    put(&mut report, "namespace", &key.namespace);
    put(&mut report, "name", &key.name);
    let mut resource = Map::new();
    put(&mut resource, "apiVersion", &f.subject.api_version);
    put(&mut resource, "kind", &f.subject.kind);
    put(&mut resource, "namespace", &f.subject.namespace);
    put(&mut resource, "name", &f.subject.name);
    put(&mut resource, "uid", &f.subject.uid);
    let mut object = Map::new();
    object.insert("apiVersion".into(), Value::String(api_version()));
    object.insert("kind".into(), Value::String("Finding".into()));
    object.insert("metadata".into(), Value::Object(metadata));
    object.insert("report".into(), Value::Object(report));
    for (name, value) in [
        ("policy", &f.policy),
        ("rule", &f.rule),
        ("result", &f.result),
        ("severity", &f.severity),
        ("category", &f.category),
        ("source", &f.source),
    ] {
        put(&mut object, name, value);
    }
    if f.scored {
        object.insert("scored".into(), Value::Bool(true));
    }
    if let Some(seconds) = f.timestamp {
        if let Ok(t) = jiff::Timestamp::from_second(seconds) {
            object.insert("timestamp".into(), Value::String(crate::time::format_time(t)));
        }
    }
    put(&mut object, "message", &f.message);
    if !resource.is_empty() {
        object.insert("resource".into(), Value::Object(resource));
    }
    if !f.properties.is_empty() {
        object.insert("properties".into(), Value::Object(f.properties.clone()));
    }
    Value::Object(object)
}

/// The `FindingCount` object of one group. Grouped by namespace, the group's namespace is the
/// object's namespace (so `kubectl get -A` shows it in its column); the name is the other values
/// joined by `/` (`<none>` for an empty value or no other value).
pub fn count_object(count: &FindingCount, group_by: &[FindingField]) -> Value {
    let mut group = Map::new();
    let mut name_parts = Vec::new();
    let mut namespace = None;
    for (field, value) in group_by.iter().zip(&count.key) {
        group.insert(field.name(), Value::String(value.clone()));
        if *field == FindingField::Namespace {
            namespace = Some(value.clone());
        } else {
            name_parts.push(if value.is_empty() { "<none>".to_string() } else { value.clone() });
        }
    }
    let name = match (name_parts.is_empty(), &namespace) {
        (false, _) => name_parts.join("/"),
        (true, Some(ns)) if !ns.is_empty() => ns.clone(),
        _ => "<none>".to_string(),
    };
    let mut metadata = json!({ "name": name });
    if let Some(ns) = namespace.filter(|ns| !ns.is_empty()) {
        metadata["namespace"] = Value::String(ns);
    }
    // The five outcomes the schema knows are always there (0 rather than a missing column in a
    // table); anything else a producer wrote is counted under its own name.
    let mut results: Map<String, Value> =
        STANDARD_RESULTS.iter().map(|result| (result.to_string(), Value::from(0u64))).collect();
    for (result, n) in &count.by_result {
        results.insert(result.clone(), Value::from(*n));
    }
    json!({
        "apiVersion": api_version(),
        "kind": "FindingCount",
        "metadata": metadata,
        "group": group,
        "total": count.total,
        "results": results,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::findings::{extract, query::FindingKey};

    #[test]
    fn a_finding_object_omits_what_is_empty() {
        let report = json!({"results": [{"policy": "CVE-1", "result": "fail", "severity": "high",
            "properties": {"score": "9.8"}, "timestamp": {"seconds": 1796342400, "nanos": 5}}]});
        let finding = extract(&report).remove(0);
        let key = FindingKey {
            namespace: "ns".into(),
            name: "r".into(),
            resource: "policyreports".into(),
            ordinal: 0,
        };
        let object =
            finding_object(&FindingRecord { key, finding }, "wgpolicyk8s.io/v1alpha2", "PolicyReport");
        assert_eq!(
            object,
            json!({"apiVersion": "query.reports-server.io/v1alpha1", "kind": "Finding",
                "metadata": {"name": "r.0", "namespace": "ns"},
                "report": {"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport", "namespace": "ns", "name": "r"},
                "policy": "CVE-1", "result": "fail", "severity": "high",
                "timestamp": "2026-12-04T00:00:00Z", "properties": {"score": "9.8"}})
        );
    }

    #[test]
    fn a_count_grouped_by_namespace_is_in_that_namespace() {
        let count = FindingCount {
            key: vec!["prod".into(), "critical".into()],
            total: 3,
            by_result: vec![("fail".into(), 2), ("warn".into(), 1)],
        };
        let object = count_object(&count, &[FindingField::Namespace, FindingField::Severity]);
        assert_eq!(object["metadata"], json!({"name": "critical", "namespace": "prod"}));
        assert_eq!(object["group"], json!({"namespace": "prod", "severity": "critical"}));
        assert_eq!(object["results"], json!({"pass": 0, "fail": 2, "warn": 1, "error": 0, "skip": 0}));
        let cluster = FindingCount { key: vec!["".into()], total: 1, by_result: vec![] };
        assert_eq!(count_object(&cluster, &[FindingField::Namespace])["metadata"], json!({"name": "<none>"}));
    }
}
