//! The findings query language: a field selector with more operators.
//!
//! It travels in `fieldSelector` (so `kubectl get findings --field-selector ...` works) and keeps
//! that parameter's shape: terms joined by commas, all of which must hold. A term is
//! `field=value`, `field==value`, `field!=value`, `field<value` (also `<=`, `>`, `>=`), or
//! `field in (a,b)` / `field notin (a,b)`. Blanks around fields and values are ignored, and
//! `\,`, `\=`, `\!`, `\<`, `\>`, `\(`, `\)` and `\\` escape those characters inside a value.
//!
//! Fields: `namespace` (the report's; also `metadata.namespace`), `report.name`, `report.kind`
//! (kind, plural or `plural.group` of a report kind), `policy`, `rule`, `result` (or `status`),
//! `severity`, `category`, `source`, `scored` (`true`/`false`), `resource.apiVersion`,
//! `resource.kind`, `resource.namespace`, `resource.name`, `resource.uid`, `timestamp`
//! (RFC 3339 or Unix seconds), `properties.<key>` (the key may itself contain dots), and
//! `search` (an ASCII-case-insensitive substring of the policy, rule, message or resource name).
//!
//! Text fields compare exactly. Order comparisons exist for `timestamp` and properties; on a
//! property they compare numbers (see [`super::numeric`]), so the value must be a number, and a
//! property that is missing or not numeric matches none of them. A property's `=` matches the
//! same text or, when both sides are numbers, the same number (`score=8` matches "8.0"). As in
//! label selectors, `!=` and `notin` also match findings that lack the property.
//!
//! `groupBy=field` (or `groupBy in (f1,f2)`) names the grouping of `findingcounts`; it is parsed
//! here with the rest and refused by `findings`.

use crate::{catalogue::Catalogue, error::ApiError};

/// A field of a finding that a condition or a grouping names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FindingField {
    /// The report's namespace ("" for the cluster kinds).
    Namespace,
    /// The report's name.
    ReportName,
    /// The report's resource plural (the storage key of its kind).
    ReportResource,
    /// `policy`.
    Policy,
    /// `rule`.
    Rule,
    /// `result`.
    Result,
    /// `severity`.
    Severity,
    /// `category`.
    Category,
    /// `source`.
    Source,
    /// `scored`.
    Scored,
    /// The resource's `apiVersion`.
    ResourceApiVersion,
    /// The resource's `kind`.
    ResourceKind,
    /// The resource's `namespace`.
    ResourceNamespace,
    /// The resource's `name`.
    ResourceName,
    /// The resource's `uid`.
    ResourceUid,
    /// `timestamp.seconds`.
    Timestamp,
    /// One key of `properties`.
    Property(String),
    /// Substring search over policy, rule, message and resource name.
    Search,
}

impl FindingField {
    /// The name a client writes (the first spelling when there are two).
    pub fn name(&self) -> String {
        match self {
            FindingField::Namespace => "namespace".into(),
            FindingField::ReportName => "report.name".into(),
            FindingField::ReportResource => "report.kind".into(),
            FindingField::Policy => "policy".into(),
            FindingField::Rule => "rule".into(),
            FindingField::Result => "result".into(),
            FindingField::Severity => "severity".into(),
            FindingField::Category => "category".into(),
            FindingField::Source => "source".into(),
            FindingField::Scored => "scored".into(),
            FindingField::ResourceApiVersion => "resource.apiVersion".into(),
            FindingField::ResourceKind => "resource.kind".into(),
            FindingField::ResourceNamespace => "resource.namespace".into(),
            FindingField::ResourceName => "resource.name".into(),
            FindingField::ResourceUid => "resource.uid".into(),
            FindingField::Timestamp => "timestamp".into(),
            FindingField::Property(key) => format!("properties.{key}"),
            FindingField::Search => "search".into(),
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "namespace" | "metadata.namespace" => FindingField::Namespace,
            "report.name" => FindingField::ReportName,
            "report.kind" => FindingField::ReportResource,
            "policy" => FindingField::Policy,
            "rule" => FindingField::Rule,
            "result" | "status" => FindingField::Result,
            "severity" => FindingField::Severity,
            "category" => FindingField::Category,
            "source" => FindingField::Source,
            "scored" => FindingField::Scored,
            "resource.apiVersion" => FindingField::ResourceApiVersion,
            "resource.kind" => FindingField::ResourceKind,
            "resource.namespace" => FindingField::ResourceNamespace,
            "resource.name" => FindingField::ResourceName,
            "resource.uid" => FindingField::ResourceUid,
            "timestamp" => FindingField::Timestamp,
            "search" => FindingField::Search,
            other => match other.strip_prefix("properties.") {
                Some(key) if !key.is_empty() => FindingField::Property(key.to_string()),
                _ => return None,
            },
        })
    }

    /// Whether findings can be grouped by this field.
    fn groupable(&self) -> bool {
        !matches!(self, FindingField::Search | FindingField::Timestamp | FindingField::Scored)
    }
}

/// How a condition compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterOp {
    /// `=` or `==`.
    Equals,
    /// `!=` (also true when a property is missing).
    NotEquals,
    /// `<`.
    Less,
    /// `<=`.
    LessOrEqual,
    /// `>`.
    Greater,
    /// `>=`.
    GreaterOrEqual,
    /// `in (...)`: equal to one of the values.
    In,
    /// `notin (...)`: equal to none of the values (true when a property is missing).
    NotIn,
}

impl FilterOp {
    /// Whether this is one of the four order comparisons.
    pub fn is_order(self) -> bool {
        matches!(self, FilterOp::Less | FilterOp::LessOrEqual | FilterOp::Greater | FilterOp::GreaterOrEqual)
    }

    /// The SQL operator of an order comparison or an equality (`IN`/`NOT IN` are spelled by the
    /// stores).
    pub fn sql(self) -> &'static str {
        match self {
            FilterOp::Equals | FilterOp::In => "=",
            FilterOp::NotEquals | FilterOp::NotIn => "<>",
            FilterOp::Less => "<",
            FilterOp::LessOrEqual => "<=",
            FilterOp::Greater => ">",
            FilterOp::GreaterOrEqual => ">=",
        }
    }
}

/// One condition of a filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// What it looks at.
    pub field: FindingField,
    /// How it compares.
    pub op: FilterOp,
    /// The values as written (one, except for `in`/`notin`); for `report.kind`, the resource
    /// plurals they name; for `timestamp`, Unix seconds; for `scored`, `true` or `false`.
    pub values: Vec<String>,
    /// The numeric reading of each value (see [`super::numeric`]), same order: what order
    /// comparisons use, and what a property's equality also accepts.
    pub numbers: Vec<Option<f64>>,
}

impl Condition {
    /// Whether a finding matches, in memory (the stores' SQL must agree; this is its reference).
    pub fn matches(&self, finding: &super::Finding, namespace: &str, report: &str, resource: &str) -> bool {
        let equal = |candidate: Option<&str>, number: Option<f64>, i: usize| -> bool {
            let Some(candidate) = candidate else { return false };
            candidate == self.values[i]
                || matches!((number, self.numbers[i]), (Some(a), Some(b)) if a == b)
                    && matches!(self.field, FindingField::Property(_))
        };
        let (text, number): (Option<String>, Option<f64>) = match &self.field {
            FindingField::Namespace => (Some(namespace.into()), None),
            FindingField::ReportName => (Some(report.into()), None),
            FindingField::ReportResource => (Some(resource.into()), None),
            FindingField::Policy => (Some(finding.policy.clone()), None),
            FindingField::Rule => (Some(finding.rule.clone()), None),
            FindingField::Result => (Some(finding.result.clone()), None),
            FindingField::Severity => (Some(finding.severity.clone()), None),
            FindingField::Category => (Some(finding.category.clone()), None),
            FindingField::Source => (Some(finding.source.clone()), None),
            FindingField::Scored => (Some(finding.scored.to_string()), None),
            FindingField::ResourceApiVersion => (Some(finding.subject.api_version.clone()), None),
            FindingField::ResourceKind => (Some(finding.subject.kind.clone()), None),
            FindingField::ResourceNamespace => (Some(finding.subject.namespace.clone()), None),
            FindingField::ResourceName => (Some(finding.subject.name.clone()), None),
            FindingField::ResourceUid => (Some(finding.subject.uid.clone()), None),
            FindingField::Timestamp => {
                (finding.timestamp.map(|t| t.to_string()), finding.timestamp.map(|t| t as f64))
            }
            FindingField::Property(key) => (
                finding.properties.get(key).and_then(|v| v.as_str()).map(str::to_string),
                finding.numbers.get(key).and_then(|v| v.as_f64()),
            ),
            FindingField::Search => {
                // ASCII case only: what SQL's lower() does on both stores' byte-ordered text.
                let needle = self.values[0].to_ascii_lowercase();
                return [&finding.policy, &finding.rule, &finding.message, &finding.subject.name]
                    .iter()
                    .any(|hay| hay.to_ascii_lowercase().contains(&needle));
            }
        };
        let any_equal = (0..self.values.len()).any(|i| equal(text.as_deref(), number, i));
        match self.op {
            FilterOp::Equals | FilterOp::In => any_equal,
            FilterOp::NotEquals | FilterOp::NotIn => !any_equal,
            order => {
                let (Some(a), Some(b)) = (number, self.numbers[0]) else { return false };
                match order {
                    FilterOp::Less => a < b,
                    FilterOp::LessOrEqual => a <= b,
                    FilterOp::Greater => a > b,
                    _ => a >= b,
                }
            }
        }
    }
}

/// A parsed findings selector: the conditions, all of which must hold, and the grouping asked
/// for (empty when none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FindingFilter {
    /// Conditions, all of which must hold.
    pub conditions: Vec<Condition>,
    /// `groupBy` fields, in the order given.
    pub group_by: Vec<FindingField>,
}

fn invalid(text: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("invalid field selector '{text}': {why}"))
}

/// Splits on commas that are neither escaped nor inside parentheses.
fn split_terms(text: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut current = String::new();
    let (mut escaped, mut depth) = (false, 0u32);
    for c in text.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    terms.push(current);
    terms
}

/// Undoes the escapes of a value and trims the blanks around it.
fn unescape(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.trim().chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(e @ ('\\' | ',' | '=' | '!' | '<' | '>' | '(' | ')')) => out.push(e),
            Some(e) => return Err(format!("invalid escape sequence: \\{e}")),
            None => return Err("invalid escape sequence: trailing backslash".into()),
        }
    }
    Ok(out)
}

/// Splits `field in (a,b)` / `field notin (a,b)` into field, operator and raw values.
fn split_set(term: &str) -> Option<(&str, FilterOp, Vec<String>)> {
    let term = term.trim();
    let (field, rest) = term.split_once(char::is_whitespace)?;
    let rest = rest.trim_start();
    let (op, rest) = if let Some(rest) = rest.strip_prefix("notin") {
        (FilterOp::NotIn, rest)
    } else {
        (FilterOp::In, rest.strip_prefix("in")?)
    };
    let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
    let values = split_terms(inner);
    Some((field, op, values))
}

/// Finds the first unescaped operator of a term.
fn split_comparison(term: &str) -> Option<(&str, FilterOp, &str)> {
    const OPS: [(&str, FilterOp); 7] = [
        ("!=", FilterOp::NotEquals),
        ("==", FilterOp::Equals),
        ("<=", FilterOp::LessOrEqual),
        (">=", FilterOp::GreaterOrEqual),
        ("=", FilterOp::Equals),
        ("<", FilterOp::Less),
        (">", FilterOp::Greater),
    ];
    crate::selector::split_at_operator(term, &OPS)
}

/// Reads a timestamp value: RFC 3339 or Unix seconds.
fn timestamp_seconds(value: &str) -> Option<i64> {
    if let Ok(seconds) = value.parse::<i64>() {
        return Some(seconds);
    }
    value.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

impl FindingFilter {
    /// Parses the `fieldSelector` of a findings request. `report.kind` values are resolved
    /// against `catalogue` (kind, plural or `plural.group`); an unknown kind is refused.
    pub fn parse(text: &str, catalogue: &Catalogue) -> Result<Self, ApiError> {
        let mut filter = FindingFilter::default();
        for term in split_terms(text) {
            if term.trim().is_empty() {
                continue;
            }
            let (field_text, op, raw_values) = match split_set(&term) {
                Some(set) => set,
                None => {
                    let Some((field, op, value)) = split_comparison(&term) else {
                        return Err(invalid(text, format!("can't understand '{term}'")));
                    };
                    (field, op, vec![value.to_string()])
                }
            };
            let field_text = field_text.trim();
            let mut values = Vec::with_capacity(raw_values.len());
            for raw in &raw_values {
                values.push(unescape(raw).map_err(|why| invalid(text, why))?);
            }
            if field_text == "groupBy" {
                if !matches!(op, FilterOp::Equals | FilterOp::In) {
                    return Err(invalid(text, "groupBy takes = or in (...)"));
                }
                for name in &values {
                    let field = FindingField::parse(name)
                        .filter(FindingField::groupable)
                        .ok_or_else(|| invalid(text, format!("cannot group by '{name}'")))?;
                    if !filter.group_by.contains(&field) {
                        filter.group_by.push(field);
                    }
                }
                continue;
            }
            let field = FindingField::parse(field_text)
                .ok_or_else(|| invalid(text, format!("field label not supported: {field_text}")))?;
            filter.conditions.push(Self::condition(text, field, op, values, catalogue)?);
        }
        Ok(filter)
    }

    fn condition(
        text: &str,
        field: FindingField,
        op: FilterOp,
        mut values: Vec<String>,
        catalogue: &Catalogue,
    ) -> Result<Condition, ApiError> {
        let name = field.name();
        if values.is_empty()
            || (matches!(op, FilterOp::In | FilterOp::NotIn) && values.iter().all(String::is_empty))
        {
            return Err(invalid(text, format!("{name}: a set needs at least one value")));
        }
        match &field {
            FindingField::Property(_) => {}
            FindingField::Timestamp => {
                for value in values.iter_mut() {
                    let seconds = timestamp_seconds(value).ok_or_else(|| {
                        invalid(text, format!("timestamp: '{value}' is neither RFC 3339 nor Unix seconds"))
                    })?;
                    *value = seconds.to_string();
                }
            }
            _ if op.is_order() => {
                return Err(invalid(text, format!("{name} does not support order comparisons")));
            }
            FindingField::Scored => {
                if let Some(bad) = values.iter().find(|v| !matches!(v.as_str(), "true" | "false")) {
                    return Err(invalid(text, format!("scored: '{bad}' is not true or false")));
                }
            }
            FindingField::Search if op != FilterOp::Equals || values[0].is_empty() => {
                return Err(invalid(text, "search takes = and some text"));
            }
            FindingField::ReportResource => {
                for value in values.iter_mut() {
                    let kind = catalogue
                        .kinds()
                        .iter()
                        .find(|k| {
                            *value == k.kind
                                || *value == k.plural
                                || *value == format!("{}.{}", k.plural, k.group)
                        })
                        .ok_or_else(|| {
                            invalid(text, format!("report.kind: unknown report kind '{value}'"))
                        })?;
                    *value = kind.storage_key().to_string();
                }
            }
            _ => {}
        }
        let numbers: Vec<Option<f64>> = values.iter().map(|v| super::numeric(v)).collect();
        if op.is_order() && numbers[0].is_none() {
            return Err(invalid(text, format!("{name}: '{}' is not a number", values[0])));
        }
        Ok(Condition { field, op, values, numbers })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::findings::extract;

    fn parse(text: &str) -> Result<FindingFilter, ApiError> {
        FindingFilter::parse(text, &Catalogue::embedded().unwrap())
    }

    fn matches(text: &str, properties: serde_json::Value) -> bool {
        let report = json!({"results": [{"policy": "CVE-1", "result": "fail", "properties": properties}]});
        let finding = &extract(&report)[0];
        parse(text).unwrap().conditions.iter().all(|c| c.matches(finding, "ns", "r", "policyreports"))
    }

    #[test]
    fn numeric_property_comparisons() {
        assert!(matches("properties.score>=8.0", json!({"score": "8"})));
        assert!(matches("properties.score>=8", json!({"score": "8.0"})));
        assert!(matches("properties.score > 9.9", json!({"score": "10.0"})), "numbers, not text");
        assert!(!matches("properties.score<9.9", json!({"score": "10.0"})));
        assert!(!matches("properties.score>=8", json!({"score": "n/a"})));
        assert!(!matches("properties.score<8", json!({"score": "n/a"})), "not a number: no order at all");
        assert!(!matches("properties.score>=8", json!({})));
        assert!(!matches("properties.score<8", json!({})), "missing: no order at all");
        assert!(matches("properties.score=8", json!({"score": "8.0"})), "numbers equal");
        assert!(matches("properties.score=n/a", json!({"score": "n/a"})), "text equal");
        assert!(matches("properties.score!=8", json!({})), "!= matches a missing key");
        assert!(matches("properties.nvd.v3_score>=8", json!({"nvd.v3_score": "9.1"})), "dotted keys");
        assert!(matches("properties.score notin (1,2)", json!({})));
        assert!(matches("properties.score in (9, 8)", json!({"score": "8.00"})));
    }

    #[test]
    fn terms_sets_and_escapes() {
        let f = parse(
            "severity in (critical,high),result=fail, policy != a\\,b ,groupBy in (namespace,severity)",
        )
        .unwrap();
        assert_eq!(f.conditions.len(), 3);
        assert_eq!(f.conditions[0].values, ["critical", "high"]);
        assert_eq!(f.conditions[0].op, FilterOp::In);
        assert_eq!((f.conditions[2].op, f.conditions[2].values[0].as_str()), (FilterOp::NotEquals, "a,b"));
        assert_eq!(f.group_by, [FindingField::Namespace, FindingField::Severity]);
        assert_eq!(parse("report.kind=PolicyReport").unwrap().conditions[0].values, ["policyreports"]);
        assert_eq!(parse("report.kind=reports.openreports.io").unwrap().conditions[0].values, ["reports"]);
        assert_eq!(parse("timestamp>=2026-12-04T00:00:00Z").unwrap().conditions[0].values, ["1796342400"]);
        assert!(parse("").unwrap().conditions.is_empty());
    }

    #[test]
    fn bad_selectors_are_400s_that_say_why() {
        for (text, why) in [
            ("severity>high", "does not support order"),
            ("properties.score>=high", "is not a number"),
            ("metadata.name=x", "field label not supported"),
            ("properties.=x", "field label not supported"),
            ("policy", "can't understand"),
            ("report.kind=Pod", "unknown report kind"),
            ("timestamp>=yesterday", "neither RFC 3339"),
            ("scored=yes", "not true or false"),
            ("search!=x", "search takes"),
            ("groupBy=search", "cannot group by"),
            ("policy=a\\b", "invalid escape"),
            ("severity in ()", "at least one value"),
        ] {
            let error = parse(text).expect_err(text);
            assert_eq!(error.code, 400, "{text}");
            assert!(error.message.contains(why), "{text}: {}", error.message);
        }
    }
}
