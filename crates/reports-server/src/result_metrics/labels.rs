//! Which labels the gauges carry, and from a stored report to the label values of its results,
//! as Policy Reporter computes them.
//!
//! # Label sets
//!
//! Each mode is a [`LabelSet`]: a list of labels, each a name and the [`Field`] its value is read
//! from. `detailed` and `simple` are fixed lists; `custom` is the operator's list, in Policy
//! Reporter's syntax (its `metrics.customLabels`):
//!
//! - the plain names `namespace`, `report`, `policy`, `rule`, `kind`, `name`, `status`,
//!   `severity`, `category`, `source` and `message` (the result's message, which only this mode
//!   offers);
//! - `label:<key>`, the value of the report's metadata label `<key>`;
//! - `property:<key>`, the value of the result's property `<key>`.
//!
//! A `label:` or `property:` label is named after its key with `.`, `/`, `:`, `-` and `;` turned
//! into `_` (`label:app.kubernetes.io/name` is `app_kubernetes_io_name`), and is empty when the
//! report has no such label or the result no such property. The cluster gauge leaves out the
//! label written `namespace`, and only that one (`label:namespace` stays). The list is checked at
//! start-up, where Policy Reporter would fail at its first result instead: an unknown name, a
//! name Prometheus does not accept, or two labels with the same name are refused.
//!
//! # Values
//!
//! Policy Reporter prepares every report before its metrics see it: a result with no
//! `resources` takes the report's `scope` as its resource, an empty `category` becomes
//! `Other`, and an empty `source` becomes the report's source (an openreports report's
//! top-level `source`, else the first result's). Only the first resource of a result is used,
//! so a result naming three resources is one result about the first. The rules here are those,
//! read off the stored JSON without building anything but borrowed strings.

use serde_json::Value;

use super::{Mode, Settings};

/// The category Policy Reporter gives a result without one.
const DEFAULT_CATEGORY: &str = "Other";

/// The prefix of a label read from the report's metadata labels.
const REPORT_LABEL_PREFIX: &str = "label:";

/// The prefix of a label read from the result's properties.
const PROPERTY_PREFIX: &str = "property:";

/// Where a label's value is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Field {
    /// The report's namespace (empty for cluster reports, whose gauge leaves the label out).
    Namespace,
    /// The report's name.
    Report,
    /// The result's `policy`.
    Policy,
    /// The result's `rule`.
    Rule,
    /// The kind of the result's first resource, else of the report's scope.
    Kind,
    /// The name of the result's first resource, else of the report's scope.
    Name,
    /// The result's `result`.
    Status,
    /// The result's `severity`.
    Severity,
    /// The result's `category`, `Other` when empty.
    Category,
    /// The result's `source`, else the report's.
    Source,
    /// The result's `message`.
    Message,
    /// One of the report's metadata labels (`label:<key>`).
    ReportLabel(String),
    /// One of the result's properties (`property:<key>`).
    Property(String),
}

impl Field {
    /// The field a plain label name stands for, with the names Policy Reporter gives them.
    const PLAIN: [(&'static str, Field); 11] = [
        ("namespace", Field::Namespace),
        ("report", Field::Report),
        ("policy", Field::Policy),
        ("rule", Field::Rule),
        ("kind", Field::Kind),
        ("name", Field::Name),
        ("status", Field::Status),
        ("severity", Field::Severity),
        ("category", Field::Category),
        ("source", Field::Source),
        ("message", Field::Message),
    ];
}

/// One label of a set: its name in the exposition and where its value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Label {
    /// The label name.
    pub(crate) name: String,
    /// Where the value is read from.
    pub(crate) field: Field,
}

/// The labels of the gauges, sorted by name (the order Prometheus' Go client writes them in), and
/// what a series is worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LabelSet {
    /// Never empty, sorted by name, names unique.
    labels: Vec<Label>,
    /// A series is worth the number of results it counts (`simple`, `custom`), rather than 1
    /// (`detailed`, where Policy Reporter sets each result's series to 1).
    counts: bool,
}

/// Why the result-metrics settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A custom label that is neither a known name nor a `label:` or `property:` form.
    #[error(
        "--result-metrics-labels: {0:?} is not a label; the labels are namespace, report, policy, rule, \
         kind, name, status, severity, category, source, message, label:<report label key> and \
         property:<result property key>"
    )]
    UnknownLabel(String),
    /// A `label:` or `property:` label whose name, once sanitised, Prometheus does not accept.
    #[error(
        "--result-metrics-labels: {label:?} would be named {name:?}, which is not a Prometheus label name \
         (after `.`, `/`, `:`, `-` and `;` become `_`, it must be letters, digits and `_`, not start with a \
         digit, and not start with `__`)"
    )]
    InvalidName {
        /// The label as given.
        label: String,
        /// The name it would have.
        name: String,
    },
    /// Two labels with the same name.
    #[error("--result-metrics-labels: {label:?} is named {name:?}, as an earlier label is")]
    DuplicateName {
        /// The second label as given.
        label: String,
        /// The name both would have.
        name: String,
    },
    /// Custom labels given with another mode.
    #[error("--result-metrics-labels is only read with --result-metrics custom, not {0}")]
    LabelsWithoutCustom(Mode),
    /// The custom mode without labels.
    #[error(
        "--result-metrics custom needs its labels: give --result-metrics-labels, such as \
         namespace,policy,status,severity"
    )]
    CustomWithoutLabels,
}

/// The name Policy Reporter gives a `label:` or `property:` label: its key with `.`, `/`, `:`,
/// `-` and `;` replaced by `_`.
fn sanitise(key: &str) -> String {
    key.chars().map(|c| if matches!(c, '.' | '/' | ':' | '-' | ';') { '_' } else { c }).collect()
}

/// Whether Prometheus accepts `name` as a label name: `[a-zA-Z_][a-zA-Z0-9_]*`, without the
/// reserved `__` prefix.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

impl LabelSet {
    /// The label set of `settings`, or None when the mode is off; refuses custom labels that
    /// Policy Reporter would not export, and labels given with another mode.
    pub(crate) fn of(settings: &Settings) -> Result<Option<Self>, SettingsError> {
        if settings.mode != Mode::Custom && !settings.labels.is_empty() {
            return Err(SettingsError::LabelsWithoutCustom(settings.mode));
        }
        match settings.mode {
            Mode::Detailed => Ok(Some(Self::fixed(
                &[
                    "namespace",
                    "rule",
                    "policy",
                    "report",
                    "kind",
                    "name",
                    "status",
                    "severity",
                    "category",
                    "source",
                ],
                false,
            ))),
            Mode::Simple => Ok(Some(Self::fixed(
                &["namespace", "policy", "status", "severity", "category", "source"],
                true,
            ))),
            Mode::Custom => Self::custom(&settings.labels).map(Some),
            Mode::Off => Ok(None),
        }
    }

    /// A set of known plain names.
    fn fixed(names: &[&str], counts: bool) -> Self {
        let labels: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut set = Self::custom(&labels).expect("the fixed label sets are valid");
        set.counts = counts;
        set
    }

    /// The custom set `labels`, in Policy Reporter's syntax (see the module notes).
    fn custom(labels: &[String]) -> Result<Self, SettingsError> {
        if labels.is_empty() {
            return Err(SettingsError::CustomWithoutLabels);
        }
        let mut set: Vec<Label> = Vec::with_capacity(labels.len());
        for given in labels {
            let (name, field) = if let Some(key) = given.strip_prefix(REPORT_LABEL_PREFIX) {
                (sanitise(key), Field::ReportLabel(key.to_string()))
            } else if let Some(key) = given.strip_prefix(PROPERTY_PREFIX) {
                (sanitise(key), Field::Property(key.to_string()))
            } else {
                match Field::PLAIN.iter().find(|(plain, _)| plain == given) {
                    Some((plain, field)) => (plain.to_string(), field.clone()),
                    None => return Err(SettingsError::UnknownLabel(given.clone())),
                }
            };
            if !valid_name(&name) {
                return Err(SettingsError::InvalidName { label: given.clone(), name });
            }
            if set.iter().any(|l| l.name == name) {
                return Err(SettingsError::DuplicateName { label: given.clone(), name });
            }
            set.push(Label { name, field });
        }
        set.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self { labels: set, counts: true })
    }

    /// The labels, sorted by name.
    pub(crate) fn labels(&self) -> &[Label] {
        &self.labels
    }

    /// Label values per result (never 0).
    pub(crate) fn width(&self) -> usize {
        self.labels.len()
    }

    /// Whether a series is worth its count rather than 1.
    pub(crate) fn counts(&self) -> bool {
        self.counts
    }
}

/// The label values of a report's results: `width` values per result, in the set's order,
/// borrowed from the report.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Rows<'a> {
    /// Values per row.
    width: usize,
    /// Every row's values, one row after the other.
    values: Vec<&'a str>,
}

impl<'a> Rows<'a> {
    /// No rows (a deleted report; tests).
    #[cfg(test)]
    pub(crate) fn none() -> Self {
        Self::default()
    }

    /// Rows from values laid out one row after the other (tests).
    #[cfg(test)]
    pub(crate) fn from_values(width: usize, values: Vec<&'a str>) -> Self {
        assert!(width > 0 && values.len().is_multiple_of(width));
        Self { width, values }
    }

    /// Each row's values.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &[&'a str]> + '_ {
        // chunks_exact refuses a width of 0, which only the empty `none` has.
        self.values.chunks_exact(self.width.max(1))
    }

    /// How many rows.
    pub(crate) fn len(&self) -> usize {
        self.values.len().checked_div(self.width).unwrap_or(0)
    }
}

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

/// The label values of `report`'s results, one row per result, for `set`. `top_level_source`
/// says whether the kind has a report-level `source`.
pub(crate) fn rows<'a>(report: &'a Value, top_level_source: bool, set: &LabelSet) -> Rows<'a> {
    let results = report.get("results").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let metadata = report.get("metadata");
    let report_source = match top_level_source.then(|| text(report, "source")) {
        Some(source) if !source.is_empty() => source,
        _ => results.first().map_or("", |r| text(r, "source")),
    };
    let scope = report.get("scope").filter(|s| s.is_object());
    // The values that are the report's, the same in every row.
    let of_report: Vec<Option<&'a str>> = set
        .labels
        .iter()
        .map(|label| match &label.field {
            Field::Namespace => Some(metadata.map_or("", |m| text(m, "namespace"))),
            Field::Report => Some(metadata.map_or("", |m| text(m, "name"))),
            Field::ReportLabel(key) => {
                Some(metadata.and_then(|m| m.get("labels")).map_or("", |labels| text(labels, key)))
            }
            _ => None,
        })
        .collect();
    let mut values = Vec::with_capacity(results.len() * set.width());
    for result in results.iter().filter(|r| r.is_object()) {
        let resource = match result.get("resources").and_then(Value::as_array) {
            Some(list) if !list.is_empty() => Some(&list[0]),
            _ => scope,
        };
        let of_resource = |key| resource.map_or("", |r| text(r, key));
        for (label, fixed) in set.labels.iter().zip(&of_report) {
            values.push(match (fixed, &label.field) {
                (Some(value), _) => value,
                (None, Field::Policy) => text(result, "policy"),
                (None, Field::Rule) => text(result, "rule"),
                (None, Field::Kind) => of_resource("kind"),
                (None, Field::Name) => of_resource("name"),
                (None, Field::Status) => text(result, "result"),
                (None, Field::Severity) => text(result, "severity"),
                (None, Field::Category) => match text(result, "category") {
                    "" => DEFAULT_CATEGORY,
                    category => category,
                },
                (None, Field::Source) => match text(result, "source") {
                    "" => report_source,
                    source => source,
                },
                (None, Field::Message) => text(result, "message"),
                (None, Field::Property(key)) => result.get("properties").map_or("", |p| text(p, key)),
                (None, Field::Namespace | Field::Report | Field::ReportLabel(_)) => {
                    unreachable!("read once per report above")
                }
            });
        }
    }
    Rows { width: set.width(), values }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn settings(mode: Mode, labels: &[&str]) -> Settings {
        Settings { mode, labels: labels.iter().map(|l| l.to_string()).collect(), ..Default::default() }
    }

    fn set(mode: Mode, labels: &[&str]) -> LabelSet {
        LabelSet::of(&settings(mode, labels)).unwrap().unwrap()
    }

    fn names(set: &LabelSet) -> Vec<&str> {
        set.labels().iter().map(|l| l.name.as_str()).collect()
    }

    /// Each row as (label name, value) pairs.
    fn named<'a>(set: &'a LabelSet, rows: &Rows<'a>) -> Vec<Vec<(&'a str, &'a str)>> {
        rows.iter().map(|row| names(set).into_iter().zip(row.iter().copied()).collect()).collect()
    }

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
        let detailed = set(Mode::Detailed, &[]);
        assert_eq!(
            names(&detailed),
            [
                "category",
                "kind",
                "name",
                "namespace",
                "policy",
                "report",
                "rule",
                "severity",
                "source",
                "status"
            ]
        );
        let rows = rows(&report, false, &detailed);
        assert_eq!(
            rows.iter().collect::<Vec<_>>(),
            vec![
                ["PSS", "Pod", "one", "ns", "p", "r", "a", "high", "kyverno", "fail"],
                ["Other", "Deployment", "web", "ns", "p", "r", "b", "", "kyverno", "pass"],
                ["Other", "Deployment", "web", "ns", "", "r", "", "", "kyverno", ""],
            ]
        );
        assert!(!detailed.counts());
    }

    #[test]
    fn the_report_source_is_the_openreports_field_else_the_first_results() {
        let report = json!({
            "metadata": {"name": "c"},
            "source": "top",
            "results": [{"policy": "p", "result": "fail"}, {"policy": "q", "result": "pass", "source": "own"}]
        });
        let simple = set(Mode::Simple, &[]);
        assert!(simple.counts());
        let sources = |top| {
            let rows = rows(&report, top, &simple);
            named(&simple, &rows).iter().map(|r| r[4]).collect::<Vec<_>>()
        };
        assert_eq!(sources(true), [("source", "top"), ("source", "own")]);
        assert_eq!(
            sources(false),
            [("source", ""), ("source", "own")],
            "wgpolicy reports have no report-level source"
        );
        let rows = rows(&report, true, &simple);
        assert_eq!(
            named(&simple, &rows)[0],
            [
                ("category", "Other"),
                ("namespace", ""),
                ("policy", "p"),
                ("severity", ""),
                ("source", "top"),
                ("status", "fail")
            ]
        );
        assert_eq!(super::rows(&json!({"results": "none"}), true, &simple).len(), 0);
        assert_eq!(super::rows(&json!(null), true, &simple).len(), 0);
    }

    #[test]
    fn custom_labels_read_report_labels_and_result_properties_under_sanitised_names() {
        let custom = set(
            Mode::Custom,
            &[
                "status",
                "label:app.kubernetes.io/part-of",
                "property:k8s.pod.name",
                "message",
                "label:team",
                "policy",
            ],
        );
        assert_eq!(
            names(&custom),
            ["app_kubernetes_io_part_of", "k8s_pod_name", "message", "policy", "status", "team"]
        );
        let report = json!({
            "metadata": {"name": "r", "namespace": "ns",
                         "labels": {"app.kubernetes.io/part-of": "shop", "other": "x"}},
            "results": [
                {"policy": "p", "result": "fail", "message": "bad",
                 "properties": {"k8s.pod.name": "web-1", "x": "y"}},
                {"policy": "q", "result": "pass", "properties": {"k8s.pod.name": 3}},
                {"policy": "r", "result": "pass"}
            ]
        });
        let rows = rows(&report, false, &custom);
        assert_eq!(
            rows.iter().collect::<Vec<_>>(),
            vec![
                ["shop", "web-1", "bad", "p", "fail", ""],
                ["shop", "", "", "q", "pass", ""],
                ["shop", "", "", "r", "pass", ""]
            ]
        );
        // Without metadata labels, the report's labels are empty.
        let bare = json!({"metadata": {"name": "r"}, "results": [{"policy": "p", "result": "fail"}]});
        assert_eq!(super::rows(&bare, false, &custom).iter().next().unwrap()[0], "");
    }

    #[test]
    fn custom_labels_are_checked() {
        let refused = |mode, labels: &[&str]| LabelSet::of(&settings(mode, labels)).unwrap_err();
        assert_eq!(
            refused(Mode::Custom, &["policy", "Policy"]),
            SettingsError::UnknownLabel("Policy".into())
        );
        assert_eq!(refused(Mode::Custom, &[]), SettingsError::CustomWithoutLabels);
        assert_eq!(refused(Mode::Simple, &["policy"]), SettingsError::LabelsWithoutCustom(Mode::Simple));
        assert_eq!(
            refused(Mode::Custom, &["property:a.b", "property:a-b"]),
            SettingsError::DuplicateName { label: "property:a-b".into(), name: "a_b".into() }
        );
        assert_eq!(
            refused(Mode::Custom, &["policy", "label:policy"]),
            SettingsError::DuplicateName { label: "label:policy".into(), name: "policy".into() }
        );
        for (label, name) in [
            ("label:", ""),
            ("property:1st", "1st"),
            ("label:__meta", "__meta"),
            ("property:a b", "a b"),
            ("label:ü", "ü"),
        ] {
            assert_eq!(
                refused(Mode::Custom, &[label]),
                SettingsError::InvalidName { label: label.into(), name: name.into() }
            );
        }
        let message = refused(Mode::Custom, &["policy", "bogus"]).to_string();
        assert!(message.contains("\"bogus\" is not a label") && message.contains("property:<"), "{message}");
        // `label:namespace` is a report label named namespace, not the report's namespace.
        let custom = set(Mode::Custom, &["label:namespace", "policy"]);
        assert_eq!(
            custom.labels()[0],
            Label { name: "namespace".into(), field: Field::ReportLabel("namespace".into()) }
        );
        assert!(LabelSet::of(&settings(Mode::Off, &[])).unwrap().is_none());
    }
}
