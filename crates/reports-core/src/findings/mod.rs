//! Findings: the results inside reports, as rows that can be queried.
//!
//! A report holds a list of results (`results`, or `spec.results` in the ephemeral kinds); each
//! result names a policy and rule, an outcome, a severity, free-form string `properties` (where
//! scanners put CVSS scores) and the resources it is about (`resources[]`, or the report's
//! `scope` when the result names none). A *finding* is one result about one resource: a result
//! naming three resources is three findings, so "everything about this workload" finds them all,
//! and a result naming none (and a report without scope) is one finding with an empty resource.
//! Findings are numbered in report order by `ordinal`, which with the report's key makes the
//! finding's identity and sort order.
//!
//! Properties are strings on the wire. A value that reads as a decimal number ("8", "8.0",
//! "1e1", " 9.8 ") is also kept as a number, computed once here so that every store and every
//! comparison agrees: `score>=8` compares numbers, so "10.0" is above "9.9" and "8" equals
//! "8.0", while "n/a", "", "inf" and a missing key match no numeric comparison at all.
//!
//! This module extracts findings from a report ([`extract`]); [`filter`] parses the query
//! language, [`query`] holds what a store is asked and answers, and [`render`] turns a finding
//! into the `Finding` object the API serves.

pub mod filter;
pub mod query;
pub mod render;

use serde_json::{Map, Value};

/// The property whose numeric value every store keeps in a column of its own: the CVSS score the
/// Trivy adapters write, the question asked most.
pub const SCORE_PROPERTY: &str = "score";

/// What a finding is about: a reference to one Kubernetes object (every part may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `namespace`.
    pub namespace: String,
    /// `name`.
    pub name: String,
    /// `uid`.
    pub uid: String,
}

/// One result of a report about one resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Position among the report's findings, from 0.
    pub ordinal: u32,
    /// `policy`.
    pub policy: String,
    /// `rule`.
    pub rule: String,
    /// `result`: pass, fail, warn, error or skip.
    pub result: String,
    /// `severity`: critical, high, medium, low, info, or empty.
    pub severity: String,
    /// `category`.
    pub category: String,
    /// The result's `source`, or the report's when the result has none.
    pub source: String,
    /// `scored`.
    pub scored: bool,
    /// `timestamp.seconds`, when set and not zero.
    pub timestamp: Option<i64>,
    /// `message` (openreports calls the field `description` in Go, `message` on the wire).
    pub message: String,
    /// The resource the finding is about.
    pub subject: Subject,
    /// The string-valued `properties`, as a JSON object (other values are dropped: the schema
    /// allows only strings).
    pub properties: Map<String, Value>,
    /// The properties whose value reads as a finite decimal number, with that number.
    pub numbers: Map<String, Value>,
}

impl Finding {
    /// The numeric value of [`SCORE_PROPERTY`], when it has one.
    pub fn score(&self) -> Option<f64> {
        self.numbers.get(SCORE_PROPERTY).and_then(Value::as_f64)
    }
}

/// The numeric value of a property string, if it reads as a finite decimal number: optional
/// sign, digits with an optional fraction (or a fraction alone), an optional exponent, and ASCII
/// blanks around. Hex, `inf`, `nan` and anything out of `f64`'s range are not numbers.
pub fn numeric(text: &str) -> Option<f64> {
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let bytes = t.as_bytes();
    let mut i = 0;
    if matches!(bytes.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let int_digits = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    i += int_digits;
    let mut frac_digits = 0;
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        frac_digits = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        i += frac_digits;
    }
    if int_digits + frac_digits == 0 {
        return None;
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_digits = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if exp_digits == 0 {
            return None;
        }
        i += exp_digits;
    }
    if i != bytes.len() {
        return None;
    }
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// The properties whose value reads as a number (see [`numeric`]), with that number: what
/// [`Finding::numbers`] holds, and what a store reading a finding back works out again.
pub fn numeric_readings(properties: &Map<String, Value>) -> Map<String, Value> {
    properties
        .iter()
        .filter_map(|(key, value)| {
            let number = value.as_str().and_then(numeric).and_then(serde_json::Number::from_f64)?;
            Some((key.clone(), Value::Number(number)))
        })
        .collect()
}

/// The results of a report: `results`, or `spec.results` (the ephemeral kinds).
fn results_of(report: &Value) -> &[Value] {
    report
        .get("results")
        .or_else(|| report.get("spec").and_then(|s| s.get("results")))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// A string field of a JSON object ("" when absent or not a string).
fn text(value: &Value, key: &str) -> String {
    value.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

/// Reads an ObjectReference.
fn subject(reference: &Value) -> Subject {
    Subject {
        api_version: text(reference, "apiVersion"),
        kind: text(reference, "kind"),
        namespace: text(reference, "namespace"),
        name: text(reference, "name"),
        uid: text(reference, "uid"),
    }
}

/// The findings of a report, in order. Never fails: a report that passed schema validation has
/// well-typed results, and anything odd (a result that is not an object, a property that is not
/// a string) is skipped rather than refused, as the report itself was accepted.
pub fn extract(report: &Value) -> Vec<Finding> {
    let report_source = text(report, "source");
    let scope = report.get("scope").filter(|s| s.is_object()).map(subject).unwrap_or_default();
    let mut findings = Vec::new();
    for result in results_of(report).iter().filter(|r| r.is_object()) {
        let properties: Map<String, Value> = result
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(_, value)| value.is_string())
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let numbers = numeric_readings(&properties);
        let source = match text(result, "source") {
            s if s.is_empty() => report_source.clone(),
            s => s,
        };
        let timestamp = result
            .get("timestamp")
            .and_then(|t| t.get("seconds"))
            .and_then(Value::as_i64)
            .filter(|s| *s != 0);
        let subjects: Vec<Subject> = match result.get("resources").and_then(Value::as_array) {
            Some(list) if !list.is_empty() => list.iter().filter(|r| r.is_object()).map(subject).collect(),
            _ => vec![scope.clone()],
        };
        for subject in subjects {
            findings.push(Finding {
                ordinal: findings.len() as u32,
                policy: text(result, "policy"),
                rule: text(result, "rule"),
                result: text(result, "result"),
                severity: text(result, "severity"),
                category: text(result, "category"),
                source: source.clone(),
                scored: result.get("scored").and_then(Value::as_bool).unwrap_or(false),
                timestamp,
                message: text(result, "message"),
                subject,
                properties: properties.clone(),
                numbers: numbers.clone(),
            });
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn numbers_are_decimal_and_finite() {
        for (text, want) in [
            ("8", Some(8.0)),
            ("8.0", Some(8.0)),
            (" 9.8 ", Some(9.8)),
            ("10.0", Some(10.0)),
            ("-1.5e1", Some(-15.0)),
            (".5", Some(0.5)),
            ("5.", Some(5.0)),
            ("+3", Some(3.0)),
        ] {
            assert_eq!(numeric(text), want, "{text:?}");
        }
        for text in ["", "n/a", "inf", "NaN", "0x10", "1e", "1e999", "8.0.1", "--1", ".", "e5", "8 %", "１"]
        {
            assert_eq!(numeric(text), None, "{text:?}");
        }
    }

    #[test]
    fn one_finding_per_result_and_resource_with_scope_as_default() {
        let report = json!({
            "scope": {"apiVersion": "v1", "kind": "Pod", "namespace": "ns", "name": "web", "uid": "u1"},
            "source": "report-wide",
            "results": [
                {"policy": "p1", "result": "fail", "severity": "high", "source": "trivy",
                 "properties": {"score": "9.8", "nvd.v3_score": "9.8", "note": "n/a", "odd": 3},
                 "timestamp": {"seconds": 1700000000, "nanos": 0}},
                {"policy": "p2", "result": "pass", "resources": [
                    {"kind": "Deployment", "name": "a"}, {"kind": "Deployment", "name": "b"}]},
                "not an object",
                {"policy": "p3", "timestamp": {"seconds": 0, "nanos": 0}, "scored": true}
            ]
        });
        let findings = extract(&report);
        assert_eq!(findings.len(), 4);
        assert_eq!(findings.iter().map(|f| f.ordinal).collect::<Vec<_>>(), [0, 1, 2, 3]);
        let first = &findings[0];
        assert_eq!((first.policy.as_str(), first.source.as_str()), ("p1", "trivy"));
        assert_eq!(first.subject.name, "web");
        assert_eq!(first.score(), Some(9.8));
        assert_eq!(first.timestamp, Some(1_700_000_000));
        assert_eq!(first.properties.len(), 3, "the non-string property is dropped");
        assert_eq!(first.numbers.len(), 2, "only the numeric strings are numbers");
        assert_eq!((findings[1].subject.name.as_str(), findings[2].subject.name.as_str()), ("a", "b"));
        assert_eq!(findings[1].source, "report-wide");
        assert_eq!(findings[3].timestamp, None, "a zero timestamp is no timestamp");
        assert!(findings[3].scored);
        assert_eq!(findings[3].subject.name, "web");
    }

    #[test]
    fn ephemeral_reports_keep_results_under_spec() {
        let report = json!({"spec": {"results": [{"policy": "p", "result": "fail"}]}});
        assert_eq!(extract(&report).len(), 1);
        assert!(extract(&json!({"spec": {}})).is_empty());
        assert!(extract(&json!({"results": "nonsense"})).is_empty());
    }

    #[test]
    fn every_sample_report_gives_at_least_one_finding_per_result() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/samples");
        let mut reports = 0;
        for entry in std::fs::read_dir(dir).expect("samples").flatten() {
            let text = std::fs::read_to_string(entry.path()).expect("sample");
            for doc in serde_saphyr::from_multiple::<Value>(&text).unwrap_or_default() {
                let items = match doc.get("items").and_then(Value::as_array) {
                    Some(items) => items.clone(),
                    None => vec![doc],
                };
                for report in items {
                    let results = results_of(&report).len();
                    assert!(extract(&report).len() >= results, "{:?}", entry.path());
                    reports += usize::from(results > 0);
                }
            }
        }
        assert!(reports > 10, "the samples hold reports with results");
    }
}
