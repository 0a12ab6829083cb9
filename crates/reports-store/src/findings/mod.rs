//! What both stores share about findings: which report kinds are indexed ([`FindingsIndex`]),
//! a finding as the columns of its row ([`FindingRow`]), reading a row back into a
//! [`FindingRecord`], and the translation of the query language into SQL ([`sql`]), which the
//! two dialects differ in only at a few seams (placeholders, JSON access, sets).

pub(crate) mod sql;

use reports_core::findings::{extract, numeric_readings, Finding, Subject, SCORE_PROPERTY};
use serde_json::{Map, Value};

/// The report kinds whose results are kept as findings rows, by resource plural (storage key).
///
/// The set is part of a store's open options: the default indexes the four report kinds that
/// hold lasting results; the ephemeral kinds (admission and background-scan reports) can be
/// added; [`FindingsIndex::off`] indexes nothing and makes writes skip the findings table
/// entirely. A store records the set it indexed, and rebuilds the kinds that differ when it is
/// opened with another one. Every replica on one database must be configured alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindingsIndex {
    /// Indexed resource plurals.
    pub resources: Vec<String>,
}

/// The lasting report kinds, indexed by default.
pub const DEFAULT_INDEXED: [&str; 4] = ["policyreports", "clusterpolicyreports", "reports", "clusterreports"];

/// The ephemeral report kinds (Kyverno's intermediate reports), off by default.
pub const EPHEMERAL: [&str; 2] = ["ephemeralreports", "clusterephemeralreports"];

impl Default for FindingsIndex {
    fn default() -> Self {
        Self { resources: DEFAULT_INDEXED.iter().map(|r| r.to_string()).collect() }
    }
}

impl FindingsIndex {
    /// Indexes nothing: no findings rows are written and queries find nothing.
    pub fn off() -> Self {
        Self { resources: Vec::new() }
    }

    /// The default kinds plus the ephemeral ones.
    pub fn with_ephemeral() -> Self {
        let mut index = Self::default();
        index.resources.extend(EPHEMERAL.iter().map(|r| r.to_string()));
        index
    }

    /// Whether results of `resource` are indexed.
    pub fn indexes(&self, resource: &str) -> bool {
        self.resources.iter().any(|r| r == resource)
    }

    /// Whether anything is indexed (when not, writes leave the findings table alone).
    pub fn is_on(&self) -> bool {
        !self.resources.is_empty()
    }

    /// The set in a canonical text form, as stores record it: sorted, deduplicated, comma
    /// separated.
    pub fn recorded(&self) -> String {
        let mut resources = self.resources.clone();
        resources.sort();
        resources.dedup();
        resources.join(",")
    }

    /// Reads [`recorded`](Self::recorded) text back.
    pub fn from_recorded(text: &str) -> Self {
        Self { resources: text.split(',').filter(|r| !r.is_empty()).map(str::to_string).collect() }
    }

    /// What opening a store with this set has to do to the findings it holds, given the set it
    /// recorded (`None` when it never recorded one): nothing when the sets are the same, else
    /// the kinds whose findings go (they left the set) and those rebuilt from their reports
    /// (they joined it; their leftover rows, from an open that stopped halfway, go first).
    pub fn backfill_from(&self, recorded: Option<&str>) -> Option<Backfill> {
        let wanted = self.recorded();
        if recorded == Some(wanted.as_str()) {
            return None;
        }
        let before = Self::from_recorded(recorded.unwrap_or_default());
        let after = Self::from_recorded(&wanted);
        Some(Backfill {
            dropped: before.resources.iter().filter(|r| !after.indexes(r)).cloned().collect(),
            rebuilt: after.resources.iter().filter(|r| !before.indexes(r)).cloned().collect(),
            recorded: wanted,
        })
    }

    /// The rows a report of `resource` gets: its findings when the kind is indexed, else none.
    pub fn rows(&self, resource: &str, report: &Value) -> Vec<FindingRow> {
        if !self.indexes(resource) {
            return Vec::new();
        }
        extract(report).into_iter().map(FindingRow::from).collect()
    }
}

/// The work of [`FindingsIndex::backfill_from`].
#[derive(Debug, PartialEq, Eq)]
pub struct Backfill {
    /// Kinds whose findings are deleted.
    pub dropped: Vec<String>,
    /// Kinds whose findings are deleted and written again from their reports.
    pub rebuilt: Vec<String>,
    /// The set to record once done.
    pub recorded: String,
}

/// A finding as its row stores it: the text columns (empty, never NULL, when absent), the
/// properties as JSON object text, the other numeric readings as JSON object text (NULL when
/// there are none) and the score in its own column.
#[derive(Debug, Clone, PartialEq)]
pub struct FindingRow {
    /// Position in the report.
    pub ordinal: i32,
    /// `policy`.
    pub policy: String,
    /// `rule`.
    pub rule: String,
    /// `result`.
    pub result: String,
    /// `severity`.
    pub severity: String,
    /// `category`.
    pub category: String,
    /// `source`.
    pub source: String,
    /// `scored`.
    pub scored: bool,
    /// `timestamp.seconds`.
    pub timestamp: Option<i64>,
    /// `message`.
    pub message: String,
    /// The subject's apiVersion, kind, namespace, name and uid.
    pub subject: [String; 5],
    /// The string properties as a JSON object.
    pub properties: String,
    /// The numeric properties other than the score as a JSON object, None when there are none
    /// (the score has its own column; most rows carry no other number).
    pub numbers: Option<String>,
    /// The score property's number.
    pub score: Option<f64>,
}

impl From<Finding> for FindingRow {
    fn from(finding: Finding) -> Self {
        let score = finding.score();
        let mut numbers = finding.numbers;
        numbers.remove(SCORE_PROPERTY);
        let Subject { api_version, kind, namespace, name, uid } = finding.subject;
        Self {
            ordinal: i32::try_from(finding.ordinal).unwrap_or(i32::MAX),
            policy: finding.policy,
            rule: finding.rule,
            result: finding.result,
            severity: finding.severity,
            category: finding.category,
            source: finding.source,
            scored: finding.scored,
            timestamp: finding.timestamp,
            message: finding.message,
            subject: [api_version, kind, namespace, name, uid],
            properties: Value::Object(finding.properties).to_string(),
            numbers: (!numbers.is_empty()).then(|| Value::Object(numbers).to_string()),
            score,
        }
    }
}

/// The columns a findings query reads, in this order, after the key (namespace, name,
/// resource, ordinal): what [`finding_from_columns`] takes. `properties` is read as text.
pub(crate) const FINDING_COLUMNS: &str = "f.policy, f.rule, f.result, f.severity, f.category, f.source, \
    f.scored, f.timestamp, f.message, f.subject_api_version, f.subject_kind, f.subject_namespace, \
    f.subject_name, f.subject_uid";

/// The stored parts of a finding as read back, before its properties are parsed.
pub(crate) struct StoredFinding {
    /// `ordinal`.
    pub ordinal: u32,
    /// policy, rule, result, severity, category, source.
    pub texts: [String; 6],
    /// `scored`.
    pub scored: bool,
    /// `timestamp`.
    pub timestamp: Option<i64>,
    /// `message`.
    pub message: String,
    /// The subject's apiVersion, kind, namespace, name and uid.
    pub subject: [String; 5],
    /// The properties' JSON text.
    pub properties: String,
}

impl StoredFinding {
    /// The finding; its numeric readings are worked out again from the properties, with the
    /// very function that made them, so what is read equals what was extracted.
    pub fn into_finding(self) -> Finding {
        let properties = match serde_json::from_str::<Value>(&self.properties) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        let numbers = numeric_readings(&properties);
        let [policy, rule, result, severity, category, source] = self.texts;
        let [api_version, kind, namespace, name, uid] = self.subject;
        Finding {
            ordinal: self.ordinal,
            policy,
            rule,
            result,
            severity,
            category,
            source,
            scored: self.scored,
            timestamp: self.timestamp,
            message: self.message,
            subject: Subject { api_version, kind, namespace, name, uid },
            properties,
            numbers,
        }
    }
}

/// Folds `(group values, result, count)` rows into counts per group, sorted as served.
pub(crate) fn fold_counts(
    rows: impl IntoIterator<Item = (Vec<String>, String, u64)>,
) -> Vec<reports_core::findings::query::FindingCount> {
    use reports_core::findings::query::{sort_counts, FindingCount};
    let mut groups: std::collections::BTreeMap<Vec<String>, Vec<(String, u64)>> = Default::default();
    for (key, result, count) in rows {
        groups.entry(key).or_default().push((result, count));
    }
    let mut counts: Vec<FindingCount> = groups
        .into_iter()
        .map(|(key, mut by_result)| {
            by_result.sort();
            FindingCount { key, total: by_result.iter().map(|(_, n)| n).sum(), by_result }
        })
        .collect();
    sort_counts(&mut counts);
    counts
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rows_read_back_as_the_findings_they_came_from() {
        let report = json!({"results": [
            {"policy": "p", "result": "fail", "properties": {"score": "9.8", "tag": "1.17", "id": "CVE-1"}},
            {"policy": "q", "resources": [{"kind": "Pod", "name": "a"}, {"kind": "Pod", "name": "b"}]}
        ]});
        let index = FindingsIndex::default();
        assert!(index.rows("ephemeralreports", &report).is_empty(), "not an indexed kind");
        let rows = index.rows("policyreports", &report);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].score, Some(9.8));
        assert_eq!(rows[0].numbers.as_deref(), Some(r#"{"tag":1.17}"#), "the score is not repeated");
        assert_eq!(rows[1].numbers, None);
        for (row, finding) in rows.into_iter().zip(extract(&report)) {
            let stored = StoredFinding {
                ordinal: row.ordinal as u32,
                texts: [row.policy, row.rule, row.result, row.severity, row.category, row.source],
                scored: row.scored,
                timestamp: row.timestamp,
                message: row.message,
                subject: row.subject,
                properties: row.properties,
            };
            assert_eq!(stored.into_finding(), finding);
        }
    }

    #[test]
    fn the_recorded_set_is_canonical() {
        let index = FindingsIndex { resources: vec!["b".into(), "a".into(), "b".into()] };
        assert_eq!(index.recorded(), "a,b");
        assert_eq!(FindingsIndex::from_recorded("a,b").resources, ["a", "b"]);
        assert!(FindingsIndex::from_recorded("").resources.is_empty());
        let index = FindingsIndex { resources: vec!["b".into(), "c".into()] };
        assert_eq!(index.backfill_from(Some("b,c")), None);
        let plan = index.backfill_from(Some("a,b")).unwrap();
        assert_eq!(
            (plan.dropped, plan.rebuilt, plan.recorded),
            (vec!["a".into()], vec!["c".into()], "b,c".into())
        );
        assert_eq!(index.backfill_from(None).unwrap().rebuilt, ["b", "c"]);
        assert!(!FindingsIndex::off().is_on());
    }
}
