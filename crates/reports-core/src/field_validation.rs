//! `fieldValidation`: what the decoder tolerated (duplicate keys) and what pruning dropped
//! (unknown fields) become warnings (`Warn`, the default), nothing (`Ignore`) or an error
//! (`Strict`), worded as kube-apiserver's CRD handler words them.
//!
//! Duplicate keys are found while the body is parsed (JSON and YAML), since a parsed value no
//! longer shows them; unknown fields come from [`crate::validation::SchemaValidator::prune`].

use serde_json::{Map, Value};

use crate::{
    error::{ApiError, StatusCause},
    options::FieldValidation,
    validation::go_quote,
    ResourceKind,
};

/// Something kube's strict decoder reports but its lenient decoder tolerates; under
/// `fieldValidation` it is treated like an unknown field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeIssue {
    /// A JSON key repeated in one object, by path: `duplicate field "metadata.name"`.
    DuplicateField(String),
    /// YAML keys repeated in their mapping, one entry per repetition in goyaml's words:
    /// `line 3: key "name" already set in map`.
    YamlDuplicateKeys(Vec<String>),
}

impl DecodeIssue {
    /// The text inside `strict decoding error: ...`.
    fn strict_text(&self) -> String {
        match self {
            Self::DuplicateField(path) => format!("duplicate field \"{path}\""),
            Self::YamlDuplicateKeys(lines) => format!("yaml: unmarshal errors:\n  {}", lines.join("\n  ")),
        }
    }

    /// The `Warning` texts under `Warn`: kube splits a YAML error into one warning per line.
    fn warnings(&self) -> Vec<String> {
        match self {
            Self::DuplicateField(_) => vec![self.strict_text()],
            Self::YamlDuplicateKeys(lines) => lines.clone(),
        }
    }
}

/// Parses a YAML body, also returning its repeated keys as a [`DecodeIssue`]; the last value of
/// a repeated key wins, as in kube's lenient YAML conversion.
pub fn parse_yaml_with_duplicates(text: &str) -> Result<(Value, Vec<DecodeIssue>), serde_saphyr::Error> {
    let mut options = serde_saphyr::Options::default();
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    let tracked: YamlTracked = serde_saphyr::from_str_with_options(text, options)?;
    let issues = if tracked.repeated.is_empty() {
        Vec::new()
    } else {
        vec![DecodeIssue::YamlDuplicateKeys(tracked.repeated)]
    };
    Ok((tracked.value, issues))
}

/// A YAML value and goyaml's message for each key repeated inside it, in document order.
struct YamlTracked {
    value: Value,
    repeated: Vec<String>,
}

impl From<Value> for YamlTracked {
    fn from(value: Value) -> Self {
        Self { value, repeated: Vec::new() }
    }
}

impl<'de> serde::Deserialize<'de> for YamlTracked {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(YamlVisitor)
    }
}

struct YamlVisitor;

impl<'de> serde::de::Visitor<'de> for YamlVisitor {
    type Value = YamlTracked;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<YamlTracked, E> {
        Ok(Value::Bool(v).into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<YamlTracked, E> {
        Ok(Value::from(v).into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<YamlTracked, E> {
        Ok(Value::from(v).into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<YamlTracked, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number).into())
    }

    fn visit_str<E>(self, v: &str) -> Result<YamlTracked, E> {
        Ok(Value::String(v.to_string()).into())
    }

    fn visit_string<E>(self, v: String) -> Result<YamlTracked, E> {
        Ok(Value::String(v).into())
    }

    fn visit_unit<E>(self) -> Result<YamlTracked, E> {
        Ok(Value::Null.into())
    }

    fn visit_none<E>(self) -> Result<YamlTracked, E> {
        Ok(Value::Null.into())
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<YamlTracked, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<YamlTracked, A::Error> {
        let mut items = Vec::new();
        let mut repeated = Vec::new();
        while let Some(item) = seq.next_element::<YamlTracked>()? {
            items.push(item.value);
            repeated.extend(item.repeated);
        }
        Ok(YamlTracked { value: Value::Array(items), repeated })
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<YamlTracked, A::Error> {
        let mut map = Map::new();
        let mut repeated = Vec::new();
        while let Some(key) = access.next_key::<String>()? {
            // goyaml checks the key after decoding the value and names the value's line.
            let value = access.next_value::<serde_saphyr::Spanned<YamlTracked>>()?;
            let line = value.referenced.line();
            repeated.extend(value.value.repeated);
            if map.contains_key(&key) {
                repeated.push(format!("line {line}: key {} already set in map", go_quote(&key)));
            }
            map.insert(key, value.value.value);
        }
        Ok(YamlTracked { value: Value::Object(map), repeated })
    }
}

/// Parses a JSON body like [`serde_json::from_slice`], also returning the path of every key
/// that appears twice in one object (the last value wins, as in kube's decoder). kube's strict
/// decoder reports these as `duplicate field "<path>"` strict errors, before unknown fields.
///
/// Duplicates are rare, and keeping every value's path costs about a tenth of a create's CPU, so
/// the body is first parsed noting only whether some key repeats; only then is it parsed again
/// keeping paths.
pub fn parse_json_with_duplicates(bytes: &[u8]) -> Result<(Value, Vec<DecodeIssue>), serde_json::Error> {
    let (value, tracker) = parse_tracking(bytes, false)?;
    if !tracker.repeated {
        return Ok((value, Vec::new()));
    }
    let (value, tracker) = parse_tracking(bytes, true)?;
    Ok((value, tracker.duplicates.into_iter().map(DecodeIssue::DuplicateField).collect()))
}

fn parse_tracking(bytes: &[u8], keep_paths: bool) -> Result<(Value, DuplicateTracker), serde_json::Error> {
    use serde::de::DeserializeSeed as _;
    let mut tracker = DuplicateTracker { keep_paths, ..Default::default() };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = TrackedValue(&mut tracker).deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok((value, tracker))
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

fn push_index(path: &mut String, index: usize) {
    use std::fmt::Write as _;
    let _ = write!(path, "[{index}]");
}

#[derive(Default)]
struct DuplicateTracker {
    /// Whether `path` is kept (the second parse) or only `repeated` is noted (the first).
    keep_paths: bool,
    /// Some object had a key twice.
    repeated: bool,
    /// The path of the value being parsed (only when `keep_paths`).
    path: String,
    /// The paths of repeated keys (only when `keep_paths`).
    duplicates: Vec<String>,
}

/// Deserializes one JSON value into a [`Value`], noting duplicate keys on the way.
struct TrackedValue<'t>(&'t mut DuplicateTracker);

impl<'de> serde::de::DeserializeSeed<'de> for TrackedValue<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for TrackedValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        let len = self.0.path.len();
        loop {
            if self.0.keep_paths {
                push_index(&mut self.0.path, items.len());
            }
            let item = seq.next_element_seed(TrackedValue(&mut *self.0))?;
            self.0.path.truncate(len);
            match item {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        let len = self.0.path.len();
        while let Some(key) = access.next_key::<String>()? {
            if self.0.keep_paths {
                push_key(&mut self.0.path, &key);
            }
            let value = access.next_value_seed(TrackedValue(&mut *self.0))?;
            if map.insert(key, value).is_some() {
                self.0.repeated = true;
                if self.0.keep_paths {
                    self.0.duplicates.push(self.0.path.clone());
                }
            }
            self.0.path.truncate(len);
        }
        Ok(Value::Object(map))
    }
}

/// JSON as Go's encoder writes an unstructured object: keys sorted at every level, and `<`, `>`,
/// `&`, U+2028 and U+2029 escaped. Used only to quote an object in an error message.
fn go_json(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), sorted(v))).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    let text = sorted(value).to_string();
    // These characters can only occur inside JSON strings, so replacing them keeps the JSON valid.
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Which write met unknown fields: the strict error differs between them.
#[derive(Debug, Clone, Copy)]
pub enum WriteVerb<'a> {
    /// POST or PUT of a whole object.
    CreateOrUpdate,
    /// PATCH; carries the patched object as it was before pruning, which kube quotes in the error.
    Patch(&'a Value),
}

/// Applies `fieldValidation` to what the decoder tolerated (duplicate keys) and the unknown paths
/// [`SchemaValidator::prune`] dropped: the warning texts to send (for `Warn`), or the error
/// `Strict` gives, as kube-apiserver words it for a CRD.
pub fn unknown_fields_outcome(
    kind: &ResourceKind,
    mode: FieldValidation,
    issues: &[DecodeIssue],
    unknown: &[String],
    verb: WriteVerb<'_>,
) -> Result<Vec<String>, ApiError> {
    if (unknown.is_empty() && issues.is_empty()) || mode == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let unknown_texts = unknown.iter().map(|path| format!("unknown field \"{path}\""));
    if mode == FieldValidation::Warn {
        return Ok(issues.iter().flat_map(DecodeIssue::warnings).chain(unknown_texts).collect());
    }
    let texts: Vec<String> = issues.iter().map(DecodeIssue::strict_text).chain(unknown_texts).collect();
    let strict = format!("strict decoding error: {}", texts.join(", "));
    Err(match verb {
        WriteVerb::CreateOrUpdate => ApiError::bad_request(format!(
            "{} in version {} cannot be handled as a {}: {strict}",
            kind.kind,
            go_quote(&kind.version),
            kind.kind
        )),
        // The patch handler reports it as an invalid `patch` field of an unnamed, kindless object.
        WriteVerb::Patch(patched) => ApiError::invalid_qualified(
            "",
            "",
            "",
            "",
            vec![StatusCause {
                reason: "FieldValueInvalid".into(),
                message: format!("Invalid value: {}: {strict}", go_quote(&go_json(patched))),
                field: "patch".into(),
            }],
        ),
    })
}

/// kube-apiserver's limits on `Warning` headers: 4096 characters in all; past that, every
/// warning is cut to 256 characters and those that still do not fit are dropped.
const WARNING_TOTAL_CHARS: usize = 4 * 1024;
const WARNING_ITEM_CHARS: usize = 256;

/// Renders warning texts as `Warning` header values (`299 - "text"`), deduplicated and
/// truncated the way kube-apiserver's warning recorder does; texts with control characters are
/// skipped, as kube refuses to send them.
pub fn warning_headers<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut seen: Vec<&str> = Vec::new();
    for text in texts {
        if !text.is_empty() && !seen.contains(&text) {
            seen.push(text);
        }
    }
    let usable: Vec<&str> = seen.into_iter().filter(|t| !t.chars().any(char::is_control)).collect();
    let total: usize = usable.iter().map(|t| t.chars().count()).sum();
    let truncating = total > WARNING_TOTAL_CHARS;
    let mut written = 0;
    let mut headers = Vec::new();
    for text in usable {
        if truncating && written >= WARNING_TOTAL_CHARS {
            break;
        }
        let text: String =
            if truncating { text.chars().take(WARNING_ITEM_CHARS).collect() } else { text.to_string() };
        written += text.chars().count();
        let mut quoted = String::with_capacity(text.len() + 8);
        quoted.push_str("299 - \"");
        for c in text.chars() {
            if c == '"' || c == '\\' {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        quoted.push('"');
        headers.push(quoted);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Catalogue;
    use serde_json::json;

    #[test]
    fn field_validation_modes() {
        let catalogue = Catalogue::embedded().unwrap();
        let kind = catalogue.find("wgpolicyk8s.io", "v1alpha2", "policyreports").unwrap();
        let unknown = vec!["results[0].a".to_string(), "spec".to_string()];
        let outcome = |mode, verb| unknown_fields_outcome(kind, mode, &[], &unknown, verb);
        assert!(outcome(FieldValidation::Ignore, WriteVerb::CreateOrUpdate).unwrap().is_empty());
        assert_eq!(
            outcome(FieldValidation::Warn, WriteVerb::CreateOrUpdate).unwrap(),
            vec!["unknown field \"results[0].a\"", "unknown field \"spec\""]
        );
        let strict = outcome(FieldValidation::Strict, WriteVerb::CreateOrUpdate).unwrap_err();
        assert_eq!((strict.code, strict.reason), (400, "BadRequest"));
        assert_eq!(
            strict.message,
            "PolicyReport in version \"v1alpha2\" cannot be handled as a PolicyReport: strict decoding error: \
             unknown field \"results[0].a\", unknown field \"spec\""
        );
        let patched = json!({"spec": 1});
        assert_eq!(
            go_json(&json!({"b": {"z": 1, "a": "<&>"}, "a": [2]})),
            r#"{"a":[2],"b":{"a":"\u003c\u0026\u003e","z":1}}"#
        );
        let strict = outcome(FieldValidation::Strict, WriteVerb::Patch(&patched)).unwrap_err();
        assert_eq!((strict.code, strict.reason), (422, "Invalid"));
        assert_eq!(
            strict.message,
            " \"\" is invalid: patch: Invalid value: \"{\\\"spec\\\":1}\": strict decoding error: \
             unknown field \"results[0].a\", unknown field \"spec\""
        );
        assert!(unknown_fields_outcome(kind, FieldValidation::Strict, &[], &[], WriteVerb::CreateOrUpdate)
            .is_ok());
        let duplicate = [DecodeIssue::DuplicateField("metadata.name".into())];
        let strict = unknown_fields_outcome(
            kind,
            FieldValidation::Strict,
            &duplicate,
            &unknown[1..],
            WriteVerb::CreateOrUpdate,
        );
        assert!(strict
            .unwrap_err()
            .message
            .ends_with("strict decoding error: duplicate field \"metadata.name\", unknown field \"spec\""));
    }

    #[test]
    fn duplicate_keys_are_found_with_their_paths_and_the_last_value_wins() {
        let body = br#"{"a": 1, "results": [{"policy": "x", "policy": "y"}], "a": {"b": [1, 2]}}"#;
        let (value, duplicates) = parse_json_with_duplicates(body).unwrap();
        assert_eq!(value, json!({"a": {"b": [1, 2]}, "results": [{"policy": "y"}]}));
        assert_eq!(
            duplicates,
            vec![
                DecodeIssue::DuplicateField("results[0].policy".into()),
                DecodeIssue::DuplicateField("a".into())
            ]
        );
        assert!(parse_json_with_duplicates(b"{} trailing").is_err());
        assert!(parse_json_with_duplicates(b"[1, 2.5, null, true, \"s\"]").unwrap().1.is_empty());
    }

    #[test]
    fn yaml_duplicate_keys_are_reported_as_goyaml_does() {
        let text = "kind: A\nmetadata:\n  name: x\n  name: x2\nkind: B\nlist:\n- a: 1\n  a: 2\n";
        let (value, issues) = parse_yaml_with_duplicates(text).unwrap();
        assert_eq!(value, json!({"kind": "B", "metadata": {"name": "x2"}, "list": [{"a": 2}]}));
        let expected = vec![
            "line 4: key \"name\" already set in map".to_string(),
            "line 5: key \"kind\" already set in map".to_string(),
            "line 8: key \"a\" already set in map".to_string(),
        ];
        assert_eq!(issues, vec![DecodeIssue::YamlDuplicateKeys(expected.clone())]);
        assert_eq!(issues[0].warnings(), expected);
        assert_eq!(
            issues[0].strict_text(),
            "yaml: unmarshal errors:\n  line 4: key \"name\" already set in map\n  line 5: key \"kind\" already set in map\n  line 8: key \"a\" already set in map"
        );
        assert!(parse_yaml_with_duplicates("a: 1\nb: [1, 2.5, null, true]\n").unwrap().1.is_empty());
    }

    #[test]
    fn warning_headers_quote_dedupe_and_truncate() {
        assert_eq!(
            warning_headers(["unknown field \"spec.foo\"", "unknown field \"spec.foo\""]),
            vec![r#"299 - "unknown field \"spec.foo\"""#]
        );
        let long = "x".repeat(300);
        let many: Vec<String> = (0..40).map(|i| format!("{i}{long}")).collect();
        let headers = warning_headers(many.iter().map(String::as_str));
        assert!(headers.iter().all(|h| h.len() <= 256 + 8));
        assert_eq!(headers.len(), 16, "4096 characters of 256-character warnings");
        assert!(warning_headers(["bad\ntext"]).is_empty());
    }
}
