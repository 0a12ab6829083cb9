//! `meta.k8s.io` Table rendering from a CRD's `additionalPrinterColumns`, as the apiextensions
//! table convertor does it: an implicit `Name` column first, then one cell per printer column
//! found with the CRD's simple JSONPath, typed by the column type (`date` cells become human
//! durations such as `5m` or `3d4h`). kubectl prints exactly these cells, so the typing and the
//! duration rules follow apimachinery to the letter.

use jiff::Timestamp;
use serde_json::{json, Map, Value};

use crate::catalogue::{PrinterColumn, ResourceKind};

/// A printer column that cannot be evaluated (a JSONPath outside the simple subset CRDs allow).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TableError(pub String);

/// What each Table row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// No object (`"object":null`).
    None,
    /// A `PartialObjectMetadata` (the default): kubectl needs it for namespaces and labels.
    #[default]
    Metadata,
    /// The whole object (kubectl asks for it with `--sort-by`).
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` parameter; absent or empty means `Metadata`.
    pub fn parse(value: Option<&str>) -> Result<Self, TableError> {
        match value.unwrap_or_default() {
            "" | "Metadata" => Ok(Self::Metadata),
            "None" => Ok(Self::None),
            "Object" => Ok(Self::Object),
            other => Err(TableError(format!("unrecognized includeObject value: \"{other}\""))),
        }
    }
}

/// The description kube-apiserver gives the implicit Name column (ObjectMeta's `name` doc).
const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, \
although some resources may allow a client to request the generation of an appropriate name automatically. \
Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: \
https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

/// The `columnDefinitions` array of a Table for these printer columns.
pub fn column_definitions(columns: &[PrinterColumn]) -> Value {
    let mut defs = vec![json!({
        "name": "Name", "type": "string", "format": "name", "description": NAME_DESCRIPTION, "priority": 0,
    })];
    for c in columns {
        let description = if c.description.is_empty() {
            format!("Custom resource definition column (in JSONPath format): {}", c.json_path)
        } else {
            c.description.clone()
        };
        defs.push(json!({
            "name": c.name, "type": c.type_, "format": c.format, "description": description, "priority": c.priority,
        }));
    }
    Value::Array(defs)
}

/// One step of a simple JSONPath.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Parses the simple JSONPath subset CRDs allow: `.a.b`, `.a['b\.c/d']`, `.a[0]`, where `\.` is
/// an escaped dot inside a key (a bracketed key is read as a dotted path, as in client-go).
fn parse_path(path: &str) -> Result<Vec<Step>, TableError> {
    let bad = || TableError(format!("unrecognized column definition \"{path}\""));
    let trimmed = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut steps = Vec::new();
    let mut rest = trimmed;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']').ok_or_else(bad)?;
            let inner = after[..end].trim();
            rest = &after[end + 1..];
            if let Ok(index) = inner.parse::<usize>() {
                steps.push(Step::Index(index));
                continue;
            }
            let quoted = inner
                .strip_prefix('\'')
                .and_then(|s| s.strip_suffix('\''))
                .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                .ok_or_else(bad)?;
            push_dotted(quoted, &mut steps);
        } else if let Some(after) = rest.strip_prefix('.') {
            let end = field_end(after);
            if end == 0 {
                return Err(bad());
            }
            push_dotted(&after[..end], &mut steps);
            rest = &after[end..];
        } else {
            return Err(bad());
        }
    }
    Ok(steps)
}

/// Where a dotted field name ends: at an unescaped `.` or a `[`.
fn field_end(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if i + 1 < bytes.len() => i += 2,
            b'.' | b'[' => return i,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Splits `a\.b.c` into keys `a.b` and `c`.
fn push_dotted(text: &str, steps: &mut Vec<Step>) {
    let mut key = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'.') => {
                key.push('.');
                chars.next();
            }
            '.' => steps.push(Step::Key(std::mem::take(&mut key))),
            _ => key.push(c),
        }
    }
    if !key.is_empty() {
        steps.push(Step::Key(key));
    }
}

fn lookup<'a>(value: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    steps.iter().try_fold(value, |v, step| match step {
        Step::Key(k) => v.get(k.as_str()),
        Step::Index(i) => v.get(*i),
    })
}

/// Renders Table rows for one kind at one moment (`now` anchors the `date` columns).
pub struct TableRenderer {
    /// The printer columns with their parsed paths.
    columns: Vec<(PrinterColumn, Vec<Step>)>,
    /// The instant ages are measured from.
    now: Timestamp,
    /// `meta.k8s.io` version of the Table, used for row `PartialObjectMetadata`.
    meta_version: &'static str,
}

impl TableRenderer {
    /// Prepares the columns of `kind`; fails only if a CRD column has an unsupported JSONPath.
    pub fn new(kind: &ResourceKind, now: Timestamp) -> Result<Self, TableError> {
        let columns = kind
            .printer_columns
            .iter()
            .map(|c| Ok((c.clone(), parse_path(&c.json_path)?)))
            .collect::<Result<_, TableError>>()?;
        Ok(Self { columns, now, meta_version: "v1" })
    }

    /// Moves the clock ages are measured from (long watches render rows over many minutes).
    pub fn set_now(&mut self, now: Timestamp) {
        self.now = now;
    }

    /// Sets the `meta.k8s.io` version (`v1` or `v1beta1`) used for row objects.
    pub fn with_meta_version(mut self, version: &'static str) -> Self {
        self.meta_version = version;
        self
    }

    /// The cells of one object: its name, then one per printer column.
    pub fn cells(&self, object: &Value) -> Vec<Value> {
        let mut cells = Vec::with_capacity(self.columns.len() + 1);
        cells.push(object.pointer("/metadata/name").cloned().unwrap_or(Value::Null));
        for (column, steps) in &self.columns {
            let cell = match lookup(object, steps) {
                None | Some(Value::Null) => Value::Null,
                Some(value) => self.cell(&column.type_, value),
            };
            cells.push(cell);
        }
        cells
    }

    /// Types one found value as the column type says (apiextensions' `cellForJSONValue`).
    fn cell(&self, column_type: &str, value: &Value) -> Value {
        match column_type {
            "string" => Value::String(print_value(value)),
            "integer" => match value {
                Value::Number(n) => n
                    .as_i64()
                    .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
                    .map_or(Value::Null, Value::from),
                _ => Value::Null,
            },
            "number" => match value {
                Value::Number(n) => n.as_f64().map_or(Value::Null, json_float),
                _ => Value::Null,
            },
            "boolean" => match value {
                Value::Bool(b) => Value::Bool(*b),
                _ => Value::Null,
            },
            "date" => match value {
                Value::String(s) if s.is_empty() || s == "null" => Value::String("<unknown>".into()),
                Value::String(s) => match s.parse::<Timestamp>() {
                    Ok(ts) => Value::String(human_duration(self.now.duration_since(ts).as_secs())),
                    Err(_) => Value::String("<invalid>".into()),
                },
                _ => Value::Null,
            },
            _ => Value::Null,
        }
    }

    /// One `rows[]` entry: `{"cells":[…],"object":…}`.
    pub fn row(&self, object: &Value, include: IncludeObject) -> Value {
        let embedded = match include {
            IncludeObject::None => Value::Null,
            IncludeObject::Object => object.clone(),
            IncludeObject::Metadata => {
                let mut partial = Map::new();
                partial.insert("kind".into(), "PartialObjectMetadata".into());
                partial.insert("apiVersion".into(), format!("meta.k8s.io/{}", self.meta_version).into());
                partial
                    .insert("metadata".into(), object.get("metadata").cloned().unwrap_or_else(|| json!({})));
                Value::Object(partial)
            }
        };
        json!({ "cells": self.cells(object), "object": embedded })
    }
}

/// A float as Go's JSON encoder writes it: integral values without a fraction.
fn json_float(f: f64) -> Value {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::from(f as i64)
    } else {
        serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

/// A JSON value printed as client-go's JSONPath printer prints it: strings bare, maps and arrays
/// as compact JSON, numbers and booleans in Go's `%v` form.
fn print_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => go_float(f),
            _ => n.to_string(),
        },
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Go's `%v` for a float64: shortest digits, exponent form below 1e-4 or from 1e21.
fn go_float(f: f64) -> String {
    let magnitude = f.abs();
    if magnitude != 0.0 && !(1e-4..1e21).contains(&magnitude) {
        let text = format!("{f:e}");
        let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
        let (sign, digits) = match exponent.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exponent),
        };
        format!("{mantissa}e{sign}{digits:0>2}")
    } else {
        format!("{f}")
    }
}

/// kubectl's human-readable age for a duration in whole seconds (apimachinery `HumanDuration`):
/// small clock skew reads as `0s`, larger negative ages as `<invalid>`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    // `5m`, `5m30s`: a larger unit, and the smaller one only when it is not zero.
    let two = |major: i64, major_unit: char, minor: i64, minor_unit: char| {
        if minor == 0 {
            format!("{major}{major_unit}")
        } else {
            format!("{major}{major_unit}{minor}{minor_unit}")
        }
    };
    let minutes = seconds / 60;
    if minutes < 10 {
        return two(minutes, 'm', seconds % 60, 's');
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        return two(hours, 'h', minutes % 60, 'm');
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if days < 8 {
        return two(days, 'd', hours % 24, 'h');
    }
    if days < 365 * 2 {
        return format!("{days}d");
    }
    if days < 365 * 8 {
        return two(days / 365, 'y', days % 365, 'd');
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Catalogue;

    #[test]
    fn human_durations_follow_kubectl() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (600, "10m"),
            (179 * 60, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60 * 5, "3h5m"),
            (47 * 3600, "47h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (7 * 86400, "7d"),
            (400 * 86400, "400d"),
            (3 * 365 * 86400 + 86400 * 10, "3y10d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}s");
        }
    }

    #[test]
    fn bracketed_keys_with_escaped_dots() {
        let steps = parse_path(r".metadata.labels['audit\.kyverno\.io/source']").unwrap();
        assert_eq!(
            steps,
            vec![
                Step::Key("metadata".into()),
                Step::Key("labels".into()),
                Step::Key("audit.kyverno.io/source".into())
            ]
        );
        assert_eq!(
            parse_path(".a[0].b").unwrap(),
            vec![Step::Key("a".into()), Step::Index(0), Step::Key("b".into())]
        );
        assert!(parse_path("a.b").is_err());
        assert!(parse_path(".a[").is_err());
    }

    #[test]
    fn policy_report_row_has_typed_cells() {
        let catalogue = Catalogue::embedded().unwrap();
        let kind = catalogue.find("wgpolicyk8s.io", "v1alpha2", "policyreports").unwrap();
        let now: Timestamp = "2025-01-01T00:05:00Z".parse().unwrap();
        let renderer = TableRenderer::new(kind, now).unwrap();
        let object = json!({
            "metadata": {"name": "r1", "namespace": "ns", "creationTimestamp": "2025-01-01T00:00:00Z"},
            "scope": {"kind": "Pod", "name": "nginx"},
            "summary": {"pass": 3, "fail": 1.0, "warn": "x"}
        });
        let row = renderer.row(&object, IncludeObject::Metadata);
        let names: Vec<&str> = kind.printer_columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Kind", "Name", "Pass", "Fail", "Warn", "Error", "Skip", "Age"]);
        assert_eq!(row["cells"], json!(["r1", "Pod", "nginx", 3, 1, null, null, null, "5m"]));
        assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(row["object"]["metadata"]["namespace"], "ns");
        assert_eq!(renderer.row(&object, IncludeObject::None)["object"], Value::Null);
        assert_eq!(renderer.row(&object, IncludeObject::Object)["object"], object);
    }

    #[test]
    fn date_cells_report_invalid_timestamps() {
        let renderer = TableRenderer { columns: vec![], now: Timestamp::UNIX_EPOCH, meta_version: "v1" };
        assert_eq!(renderer.cell("date", &json!("yesterday")), json!("<invalid>"));
        assert_eq!(renderer.cell("date", &json!("")), json!("<unknown>"));
        assert_eq!(renderer.cell("string", &json!({"a": 1})), json!("{\"a\":1}"));
        assert_eq!(renderer.cell("string", &json!(1.5)), json!("1.5"));
        assert_eq!(renderer.cell("number", &json!(2)), json!(2));
        assert_eq!(renderer.cell("boolean", &json!("true")), Value::Null);
    }

    #[test]
    fn include_object_values() {
        assert_eq!(IncludeObject::parse(None).unwrap(), IncludeObject::Metadata);
        assert_eq!(IncludeObject::parse(Some("None")).unwrap(), IncludeObject::None);
        assert_eq!(IncludeObject::parse(Some("Object")).unwrap(), IncludeObject::Object);
        let e = IncludeObject::parse(Some("All")).unwrap_err();
        assert_eq!(e.0, "unrecognized includeObject value: \"All\"");
    }

    #[test]
    fn column_definitions_start_with_name() {
        let defs = column_definitions(&[]);
        assert_eq!(defs[0]["name"], "Name");
        assert_eq!(defs[0]["format"], "name");
    }
}
