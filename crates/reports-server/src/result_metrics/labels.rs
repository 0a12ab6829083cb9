//! From a stored report to the label values of its results, as Policy Reporter computes them.
//!
//! Policy Reporter prepares every report before its metrics see it: a result with no
//! `resources` takes the report's `scope` as its resource, an empty `category` becomes
//! `Other`, and an empty `source` becomes the report's source (an openreports report's
//! top-level `source`, else the first result's). Only the first resource of a result is used,
//! so a result naming three resources is one result about the first. The rules here are those,
//! read off the stored JSON without building anything but borrowed strings.

use serde_json::Value;

/// How many labels a series can carry (the detailed, namespaced set).
pub(crate) const LABELS: usize = 10;

/// Label names, in the order series are rendered (sorted, as Prometheus' Go client writes
/// them). The positions below index into this list.
pub(crate) const NAMES: [&str; LABELS] =
    ["category", "kind", "name", "namespace", "policy", "report", "rule", "severity", "source", "status"];

/// Position of `category` in [`NAMES`].
pub(crate) const CATEGORY: usize = 0;
/// Position of `kind`.
pub(crate) const KIND: usize = 1;
/// Position of `name`.
pub(crate) const NAME: usize = 2;
/// Position of `namespace`: empty for cluster reports, which is what puts a series in the
/// cluster gauge.
pub(crate) const NAMESPACE: usize = 3;
/// Position of `policy`.
pub(crate) const POLICY: usize = 4;
/// Position of `report`.
pub(crate) const REPORT: usize = 5;
/// Position of `rule`.
pub(crate) const RULE: usize = 6;
/// Position of `severity`.
pub(crate) const SEVERITY: usize = 7;
/// Position of `source`.
pub(crate) const SOURCE: usize = 8;
/// Position of `status`.
pub(crate) const STATUS: usize = 9;

/// The labels the `simple` mode keeps; the others are left empty and not rendered.
pub(crate) const SIMPLE: [usize; 6] = [CATEGORY, NAMESPACE, POLICY, SEVERITY, SOURCE, STATUS];

/// The category Policy Reporter gives a result without one.
const DEFAULT_CATEGORY: &str = "Other";

/// One result's label values, borrowed from the report.
pub(crate) type Row<'a> = [&'a str; LABELS];

/// The report kinds whose results are counted, by their storage key, and whether the report's
/// own `source` field exists in that kind's schema (openreports only). The ephemeral kinds are
/// Kyverno's intermediate reports, which Policy Reporter does not read.
pub(crate) const RESOURCES: [(&str, bool); 4] =
    [("policyreports", false), ("clusterpolicyreports", false), ("reports", true), ("clusterreports", true)];

/// A string field, or "" when absent or not a string (a report that passed validation has
/// strings here; anything else is counted with an empty value rather than refused).
fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// The label rows of `report`, one per result, with `simple` leaving out the labels that mode
/// does not keep. `top_level_source` says whether the kind has a report-level `source`.
pub(crate) fn rows<'a>(report: &'a Value, top_level_source: bool, simple: bool) -> Vec<Row<'a>> {
    let results = report.get("results").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let namespace = report.get("metadata").map_or("", |m| text(m, "namespace"));
    let report_name = report.get("metadata").map_or("", |m| text(m, "name"));
    let report_source = match top_level_source.then(|| text(report, "source")) {
        Some(source) if !source.is_empty() => source,
        _ => results.first().map_or("", |r| text(r, "source")),
    };
    let scope = report.get("scope").filter(|s| s.is_object());
    let mut rows = Vec::with_capacity(results.len());
    for result in results.iter().filter(|r| r.is_object()) {
        let resource = match result.get("resources").and_then(Value::as_array) {
            Some(list) if !list.is_empty() => Some(&list[0]),
            _ => scope,
        };
        let mut row: Row<'a> = [""; LABELS];
        row[CATEGORY] = match text(result, "category") {
            "" => DEFAULT_CATEGORY,
            category => category,
        };
        row[NAMESPACE] = namespace;
        row[POLICY] = text(result, "policy");
        row[SEVERITY] = text(result, "severity");
        row[SOURCE] = match text(result, "source") {
            "" => report_source,
            source => source,
        };
        row[STATUS] = text(result, "result");
        if !simple {
            row[REPORT] = report_name;
            row[RULE] = text(result, "rule");
            if let Some(resource) = resource {
                row[KIND] = text(resource, "kind");
                row[NAME] = text(resource, "name");
            }
        }
        rows.push(row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn results_take_the_first_resource_else_the_scope_and_policy_reporters_defaults() {
        let report = json!({
            "metadata": {"name": "r", "namespace": "ns"},
            "scope": {"kind": "Deployment", "name": "web"},
            "results": [
                {"policy": "p", "rule": "a", "result": "fail", "severity": "high", "source": "kyverno",
                 "category": "PSS", "resources": [{"kind": "Pod", "name": "one"}, {"kind": "Pod", "name": "two"}]},
                {"policy": "p", "rule": "b", "result": "pass", "resources": []},
                "not a result",
                {"policy": 7, "result": ["odd"]}
            ]
        });
        let rows = rows(&report, false, false);
        assert_eq!(
            rows,
            vec![
                ["PSS", "Pod", "one", "ns", "p", "r", "a", "high", "kyverno", "fail"],
                ["Other", "Deployment", "web", "ns", "p", "r", "b", "", "kyverno", "pass"],
                ["Other", "Deployment", "web", "ns", "", "r", "", "", "kyverno", ""],
            ]
        );
    }

    #[test]
    fn the_report_source_is_the_openreports_field_else_the_first_results() {
        let report = json!({
            "metadata": {"name": "c"},
            "source": "top",
            "results": [{"policy": "p", "result": "fail"}, {"policy": "q", "result": "pass", "source": "own"}]
        });
        let sources = |top| rows(&report, top, true).iter().map(|r| r[SOURCE]).collect::<Vec<_>>();
        assert_eq!(sources(true), ["top", "own"]);
        assert_eq!(sources(false), ["", "own"], "wgpolicy reports have no report-level source");
        let simple = rows(&report, true, true);
        assert_eq!(simple[0], ["Other", "", "", "", "p", "", "", "", "top", "fail"]);
        assert!(rows(&json!({"results": "none"}), true, false).is_empty());
        assert!(rows(&json!(null), true, false).is_empty());
    }
}
