//! Schema validation and pruning of written objects, compiled from the CRDs' `openAPIV3Schema`.
//!
//! kube-apiserver treats the body of a create, update or patch of a custom resource in two
//! steps, and clients see the difference, so we keep both:
//!
//! 1. **Decoding** prunes. Every field the schema does not declare is dropped (a node marked
//!    `x-kubernetes-preserve-unknown-fields` keeps its undeclared fields), as are `null` values
//!    of fields that are neither `nullable` nor defaulted. Unknown fields of `metadata` are dropped
//!    too, because kube round-trips metadata through its ObjectMeta type. The dropped paths
//!    (`results[0].foo`, `metadata.bar`) drive `fieldValidation`: `Ignore` says nothing, `Warn`
//!    (the default) sends one `Warning` header per path, and `Strict` refuses the request, with
//!    400 on create and update and 422 on patch, exactly as the CRD handler does.
//! 2. **Validation** of the pruned object, with the registry's other checks. Type, `enum`,
//!    `required`, `format`, length, bound and item-count violations each become one
//!    `details.causes` entry of a 422 Invalid, named by JSON path (`results[0].result`) and
//!    worded like kube-openapi's errors after apiextensions turns them into field errors.
//!
//! The schema is compiled once at start-up into a tree of [`Node`]s (no IO, no regular
//! expressions), so a write costs one walk to prune and one walk to validate, without copying
//! the object. `metadata`, `apiVersion` and `kind` at the root are not the schema's business:
//! kube validates them with its object-meta rules, which live in [`crate::object`].
//!
//! Not covered, because none of the served CRDs uses them: `pattern`, `uniqueItems`,
//! `multipleOf`, `allOf`/`anyOf`/`oneOf`/`not`, CEL rules (`x-kubernetes-validations`) and the
//! map/set invariants of `x-kubernetes-list-type`. String formats other than `date-time`,
//! `date`, `byte` and `uuid` are accepted unchecked.

use serde_json::{Map, Value};

use crate::{
    error::{ApiError, StatusCause},
    options::FieldValidation,
    ResourceKind,
};

/// A JSON type a schema node admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonType {
    Object,
    Array,
    String,
    Integer,
    Number,
    Boolean,
}

impl JsonType {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "object" => Self::Object,
            "array" => Self::Array,
            "string" => Self::String,
            "integer" => Self::Integer,
            "number" => Self::Number,
            "boolean" => Self::Boolean,
            _ => return None,
        })
    }

    /// The JSON type of a value, as kube-openapi names it in type errors (integers decode as
    /// int64 in Go, anything with a fraction or exponent as float64).
    fn of(value: &Value) -> Option<Self> {
        Some(match value {
            Value::Null => return None,
            Value::Bool(_) => Self::Boolean,
            Value::Number(n) if n.is_i64() => Self::Integer,
            Value::Number(_) => Self::Number,
            Value::String(_) => Self::String,
            Value::Array(_) => Self::Array,
            Value::Object(_) => Self::Object,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Object => "object",
            Self::Array => "array",
            Self::String => "string",
            Self::Integer => "integer",
            Self::Number => "number",
            Self::Boolean => "boolean",
        }
    }
}

/// A string format kube-apiserver checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StringFormat {
    DateTime,
    Date,
    Byte,
    Uuid,
}

impl StringFormat {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "date-time" => Self::DateTime,
            "date" => Self::Date,
            "byte" => Self::Byte,
            "uuid" => Self::Uuid,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::DateTime => "date-time",
            Self::Date => "date",
            Self::Byte => "byte",
            Self::Uuid => "uuid",
        }
    }

    fn accepts(self, text: &str) -> bool {
        match self {
            Self::DateTime => text.parse::<jiff::Timestamp>().is_ok(),
            Self::Date => text.parse::<jiff::civil::Date>().is_ok() && text.len() == 10,
            Self::Byte => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.decode(text).is_ok()
            }
            Self::Uuid => uuid::Uuid::try_parse(text).is_ok() && text.len() == 36,
        }
    }
}

/// A numeric bound: the limit and whether it is exclusive.
#[derive(Debug, Clone, Copy)]
struct Bound {
    limit: f64,
    exclusive: bool,
}

/// One compiled schema node.
#[derive(Debug, Default)]
struct Node {
    /// Admitted types; empty admits anything.
    types: Vec<JsonType>,
    /// `x-kubernetes-int-or-string`.
    int_or_string: bool,
    nullable: bool,
    /// A defaulted null is not pruned (kube defaults it instead).
    has_default: bool,
    format: Option<StringFormat>,
    enumeration: Vec<Value>,
    /// Declared fields; a short list beats hashing for the dozen fields a report node has.
    properties: Vec<(String, Node)>,
    additional_properties: Option<Box<Node>>,
    items: Option<Box<Node>>,
    required: Vec<String>,
    preserve_unknown_fields: bool,
    max_length: Option<u64>,
    min_length: Option<u64>,
    max_items: Option<u64>,
    min_items: Option<u64>,
    max_properties: Option<u64>,
    min_properties: Option<u64>,
    minimum: Option<Bound>,
    maximum: Option<Bound>,
}

impl Node {
    fn compile(schema: &Value, path: &str) -> Result<Self, String> {
        let map = schema.as_object().ok_or_else(|| format!("{path}: schema is not an object"))?;
        let mut node = Node::default();
        let flag = |key: &str| map.get(key).and_then(Value::as_bool).unwrap_or(false);
        let count = |key: &str| map.get(key).and_then(Value::as_u64);
        if let Some(name) = map.get("type").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            node.types.push(JsonType::parse(name).ok_or_else(|| format!("{path}: unknown type {name}"))?);
        }
        node.int_or_string = flag("x-kubernetes-int-or-string");
        if node.int_or_string {
            node.types = vec![JsonType::Integer, JsonType::String];
        }
        node.nullable = flag("nullable");
        node.has_default = map.contains_key("default");
        node.preserve_unknown_fields = flag("x-kubernetes-preserve-unknown-fields");
        node.format = map.get("format").and_then(Value::as_str).and_then(StringFormat::parse);
        node.enumeration = map.get("enum").and_then(Value::as_array).cloned().unwrap_or_default();
        node.required = map
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        node.max_length = count("maxLength");
        node.min_length = count("minLength");
        node.max_items = count("maxItems");
        node.min_items = count("minItems");
        node.max_properties = count("maxProperties");
        node.min_properties = count("minProperties");
        let bound = |key: &str, exclusive: &str| {
            map.get(key).and_then(Value::as_f64).map(|limit| Bound { limit, exclusive: flag(exclusive) })
        };
        node.minimum = bound("minimum", "exclusiveMinimum");
        node.maximum = bound("maximum", "exclusiveMaximum");
        if let Some(properties) = map.get("properties").and_then(Value::as_object) {
            for (name, child) in properties {
                node.properties.push((name.clone(), Node::compile(child, &format!("{path}.{name}"))?));
            }
        }
        match map.get("additionalProperties") {
            Some(child @ Value::Object(_)) => {
                node.additional_properties =
                    Some(Box::new(Node::compile(child, &format!("{path}.additionalProperties"))?))
            }
            // `true`: anything goes below, which for pruning means "keep it".
            Some(Value::Bool(true)) => {
                node.additional_properties =
                    Some(Box::new(Node { preserve_unknown_fields: true, ..Node::default() }))
            }
            _ => {}
        }
        if let Some(items) = map.get("items") {
            node.items = Some(Box::new(Node::compile(items, &format!("{path}[*]"))?));
        }
        Ok(node)
    }

    /// The schema of field `key` of an object this node describes.
    fn field(&self, key: &str) -> Option<&Node> {
        self.properties
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, node)| node)
            .or(self.additional_properties.as_deref())
    }

    fn type_names(&self) -> String {
        self.types.iter().map(|t| t.name()).collect::<Vec<_>>().join(",")
    }

    /// kube-openapi's type rule: an integral float passes as an integer, an integer as a number.
    fn admits(&self, value: &Value, actual: JsonType) -> bool {
        self.types.is_empty()
            || self.types.contains(&actual)
            || (actual == JsonType::Integer && self.types.contains(&JsonType::Number))
            || (actual == JsonType::Number
                && self.types.contains(&JsonType::Integer)
                && value.as_f64().is_some_and(|f| f.fract() == 0.0 && f.is_finite()))
    }
}

/// Root fields that belong to the object-meta rules, not to the schema.
const META_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

/// The fields kube keeps in `metadata` (its ObjectMeta type); anything else is pruned. Only the
/// shape matters here: values are checked by the object-meta rules.
fn object_meta_schema() -> Value {
    let string = || serde_json::json!({"type": "string"});
    let string_map = serde_json::json!({
        "type": "object", "additionalProperties": {"type": "string", "nullable": true}
    });
    serde_json::json!({
        "type": "object",
        "properties": {
            "name": string(), "generateName": string(), "namespace": string(), "selfLink": string(),
            "uid": string(), "resourceVersion": string(), "generation": {"type": "integer"},
            "creationTimestamp": string(), "deletionTimestamp": string(),
            "deletionGracePeriodSeconds": {"type": "integer"},
            "labels": string_map, "annotations": string_map,
            "finalizers": {"type": "array", "items": string()},
            "ownerReferences": {"type": "array", "items": {"type": "object", "properties": {
                "apiVersion": string(), "kind": string(), "name": string(), "uid": string(),
                "controller": {"type": "boolean"}, "blockOwnerDeletion": {"type": "boolean"},
            }}},
            "managedFields": {"type": "array", "items": {"type": "object", "properties": {
                "manager": string(), "operation": string(), "apiVersion": string(), "time": string(),
                "fieldsType": string(), "subresource": string(),
                "fieldsV1": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            }}},
        },
    })
}

/// A kind's compiled schema: prunes unknown fields and validates what remains.
#[derive(Debug)]
pub struct SchemaValidator {
    root: Node,
    metadata: Node,
}

impl SchemaValidator {
    /// Compiles a CRD version's `openAPIV3Schema`. Fails only on a malformed schema (a build
    /// defect, never user input).
    pub fn compile(schema: &Value) -> Result<Self, String> {
        Ok(Self {
            root: Node::compile(schema, "openAPIV3Schema")?,
            metadata: Node::compile(&object_meta_schema(), "metadata")?,
        })
    }

    /// Drops every field the schema does not declare, and `null`s of non-nullable fields,
    /// in place. Returns the dropped unknown paths (metadata first, then the rest in byte order,
    /// as kube reports them); dropped nulls are not reported, as in kube.
    pub fn prune(&self, object: &mut Value) -> Vec<String> {
        let mut unknown = Vec::new();
        let Some(root) = object.as_object_mut() else { return unknown };
        if let Some(meta) = root.get_mut("metadata") {
            prune(meta, Some(&self.metadata), &FieldPath::ROOT.key("metadata"), &mut unknown);
            unknown.sort_unstable();
        }
        let meta_count = unknown.len();
        prune_map(root, Some(&self.root), true, &FieldPath::ROOT, &mut unknown);
        unknown[meta_count..].sort_unstable();
        unknown
    }

    /// Checks a (pruned) object against the schema; one cause per violation, in walk order.
    pub fn validate(&self, object: &Value) -> Vec<StatusCause> {
        let mut causes = Vec::new();
        if let Some(root) = object.as_object() {
            validate_object(root, &self.root, true, &FieldPath::ROOT, &mut causes);
        }
        causes
    }
}

/// Where the walk is, as a chain of borrowed segments on the stack: nothing is allocated or
/// formatted unless a path is reported.
#[derive(Clone, Copy)]
struct FieldPath<'a> {
    parent: Option<&'a FieldPath<'a>>,
    segment: Segment<'a>,
}

#[derive(Clone, Copy)]
enum Segment<'a> {
    Root,
    Key(&'a str),
    Index(usize),
}

impl<'a> FieldPath<'a> {
    const ROOT: FieldPath<'static> = FieldPath { parent: None, segment: Segment::Root };

    fn key(&'a self, key: &'a str) -> FieldPath<'a> {
        FieldPath { parent: Some(self), segment: Segment::Key(key) }
    }

    fn index(&'a self, index: usize) -> FieldPath<'a> {
        FieldPath { parent: Some(self), segment: Segment::Index(index) }
    }
}

/// `results[0].policy`: keys joined with dots, indices in brackets, as kube writes field paths.
impl std::fmt::Display for FieldPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut segments = Vec::new();
        let mut at = Some(self);
        while let Some(path) = at {
            segments.push(path.segment);
            at = path.parent;
        }
        let mut first = true;
        for segment in segments.into_iter().rev() {
            match segment {
                Segment::Root => continue,
                Segment::Key(key) if first => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

fn prune(value: &mut Value, node: Option<&Node>, path: &FieldPath<'_>, unknown: &mut Vec<String>) {
    match value {
        Value::Object(map) => prune_map(map, node, false, path, unknown),
        Value::Array(items) => {
            let item_node = node.and_then(|n| n.items.as_deref());
            // Below a preserved array, items keep unknown fields too.
            let keep = node.is_some_and(|n| n.preserve_unknown_fields);
            for (index, item) in items.iter_mut().enumerate() {
                let here = path.index(index);
                match (keep, item_node) {
                    (true, None) => {}
                    (true, Some(n)) if !n.preserve_unknown_fields => {
                        if let Value::Object(map) = item {
                            prune_map_preserving(map, n, &here, unknown);
                        }
                    }
                    _ => prune(item, item_node, &here, unknown),
                }
            }
        }
        _ => {}
    }
}

fn prune_map(
    map: &mut Map<String, Value>,
    node: Option<&Node>,
    at_root: bool,
    path: &FieldPath<'_>,
    unknown: &mut Vec<String>,
) {
    if let Some(node) = node.filter(|n| n.preserve_unknown_fields) {
        prune_map_preserving(map, node, path, unknown);
        return;
    }
    map.retain(|key, child| {
        if at_root && META_FIELDS.contains(&key.as_str()) {
            return true;
        }
        match node.and_then(|n| n.field(key)) {
            Some(schema) => {
                if child.is_null() && !schema.nullable && !schema.has_default {
                    return false;
                }
                prune(child, Some(schema), &path.key(key), unknown);
                true
            }
            None => {
                unknown.push(path.key(key).to_string());
                false
            }
        }
    });
}

/// Pruning below `x-kubernetes-preserve-unknown-fields`: undeclared fields stay, declared ones
/// are still pruned by their own schemas.
fn prune_map_preserving(
    map: &mut Map<String, Value>,
    node: &Node,
    path: &FieldPath<'_>,
    unknown: &mut Vec<String>,
) {
    map.retain(|key, child| {
        let Some(schema) = node.field(key) else { return true };
        if child.is_null() && !schema.nullable && !schema.has_default {
            return false;
        }
        prune(child, Some(schema), &path.key(key), unknown);
        true
    });
}

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

/// Go's `%q` for the strings that appear in messages (JSON escaping matches it for everything
/// a report carries).
pub fn go_quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| format!("\"{text}\""))
}

/// How a bad value is shown after `Invalid value: ` (apimachinery's field error rendering).
fn show_value(value: &Value) -> String {
    match value {
        Value::String(s) => go_quote(s),
        Value::Null => "\"null\"".into(),
        Value::Bool(_) | Value::Number(_) => value.to_string(),
        other => other.to_string(),
    }
}

fn cause(reason: &str, path: &FieldPath<'_>, message: String) -> StatusCause {
    StatusCause { reason: reason.into(), message, field: path.to_string() }
}

fn type_invalid(path: &FieldPath<'_>, shown: &str, expected: &str, got: &str) -> StatusCause {
    let detail = format!("{path} in body must be of type {expected}: {}", go_quote(got));
    cause("FieldValueTypeInvalid", path, format!("Invalid value: {}: {detail}", go_quote(shown)))
}

fn validate_value(value: &Value, node: &Node, path: &FieldPath<'_>, causes: &mut Vec<StatusCause>) {
    let Some(actual) = JsonType::of(value) else {
        if !node.types.is_empty() && !node.nullable {
            causes.push(type_invalid(path, "null", &node.type_names(), "null"));
        }
        return;
    };
    if !node.admits(value, actual) {
        causes.push(type_invalid(path, actual.name(), &node.type_names(), actual.name()));
        check_enum(value, node, path, causes);
        return;
    }
    match value {
        Value::String(text) => check_string(text, node, path, causes),
        Value::Number(_) => check_number(value, node, path, causes),
        _ => {}
    }
    check_enum(value, node, path, causes);
    match value {
        Value::Object(map) => validate_object(map, node, false, path, causes),
        Value::Array(items) => {
            let count = items.len() as u64;
            if let Some(max) = node.max_items.filter(|max| count > *max) {
                let noun = if max == 1 { "item" } else { "items" };
                causes.push(cause(
                    "FieldValueTooMany",
                    path,
                    format!("Too many: {count}: must have at most {max} {noun}"),
                ));
            }
            if let Some(min) = node.min_items.filter(|min| count < *min) {
                let detail = format!("{path} in body should have at least {min} items");
                causes.push(cause("FieldValueInvalid", path, format!("Invalid value: {count}: {detail}")));
            }
            if let Some(item_node) = node.items.as_deref() {
                for (index, item) in items.iter().enumerate() {
                    validate_value(item, item_node, &path.index(index), causes);
                }
            }
        }
        _ => {}
    }
}

fn check_string(text: &str, node: &Node, path: &FieldPath<'_>, causes: &mut Vec<StatusCause>) {
    if node.max_length.is_some() || node.min_length.is_some() {
        // kube-openapi counts characters, not bytes.
        let chars = text.chars().count() as u64;
        if let Some(max) = node.max_length.filter(|max| chars > *max) {
            let noun = if max == 1 { "byte" } else { "bytes" };
            causes.push(cause(
                "FieldValueTooLong",
                path,
                format!("Too long: may not be more than {max} {noun}"),
            ));
        }
        if let Some(min) = node.min_length.filter(|min| chars < *min) {
            let detail = format!("{path} in body should be at least {min} chars long");
            causes.push(cause(
                "FieldValueInvalid",
                path,
                format!("Invalid value: {}: {detail}", go_quote(text)),
            ));
        }
    }
    if let Some(format) = node.format.filter(|f| !f.accepts(text)) {
        causes.push(type_invalid(path, text, format.name(), text));
    }
}

fn check_number(value: &Value, node: &Node, path: &FieldPath<'_>, causes: &mut Vec<StatusCause>) {
    let Some(number) = value.as_f64() else { return };
    if let Some(min) = node.minimum {
        if number < min.limit || (min.exclusive && number == min.limit) {
            let relation = if min.exclusive { "greater than" } else { "greater than or equal to" };
            let detail = format!("{path} in body should be {relation} {}", min.limit);
            causes.push(cause("FieldValueInvalid", path, format!("Invalid value: {value}: {detail}")));
        }
    }
    if let Some(max) = node.maximum {
        if number > max.limit || (max.exclusive && number == max.limit) {
            let relation = if max.exclusive { "less than" } else { "less than or equal to" };
            let detail = format!("{path} in body should be {relation} {}", max.limit);
            causes.push(cause("FieldValueInvalid", path, format!("Invalid value: {value}: {detail}")));
        }
    }
}

fn check_enum(value: &Value, node: &Node, path: &FieldPath<'_>, causes: &mut Vec<StatusCause>) {
    if node.enumeration.is_empty() || node.enumeration.iter().any(|allowed| enum_equal(allowed, value)) {
        return;
    }
    let supported = node
        .enumeration
        .iter()
        .map(|v| match v {
            Value::String(s) => go_quote(s),
            other => go_quote(&other.to_string()),
        })
        .collect::<Vec<_>>()
        .join(", ");
    causes.push(cause(
        "FieldValueNotSupported",
        path,
        format!("Unsupported value: {}: supported values: {supported}", show_value(value)),
    ));
}

/// Enum membership compares numbers by value (1 and 1.0 are the same JSON number).
fn enum_equal(allowed: &Value, value: &Value) -> bool {
    match (allowed, value) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => allowed == value,
    }
}

fn validate_object(
    map: &Map<String, Value>,
    node: &Node,
    at_root: bool,
    path: &FieldPath<'_>,
    causes: &mut Vec<StatusCause>,
) {
    let count = map.len() as u64;
    if let Some(max) = node.max_properties.filter(|max| count > *max) {
        let noun = if max == 1 { "item" } else { "items" };
        causes.push(cause(
            "FieldValueTooMany",
            path,
            format!("Too many: {count}: must have at most {max} {noun}"),
        ));
    }
    if let Some(min) = node.min_properties.filter(|min| count < *min) {
        let detail = format!("{path} in body should have at least {min} properties");
        causes.push(cause("FieldValueInvalid", path, format!("Invalid value: {count}: {detail}")));
    }
    for (key, child) in map {
        if at_root && META_FIELDS.contains(&key.as_str()) {
            continue;
        }
        if let Some(schema) = node.field(key) {
            validate_value(child, schema, &path.key(key), causes);
        }
    }
    for key in &node.required {
        if !map.contains_key(key) {
            causes.push(cause("FieldValueRequired", &path.key(key), "Required value".into()));
        }
    }
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
            vec![cause(
                "FieldValueInvalid",
                &FieldPath::ROOT.key("patch"),
                format!("Invalid value: {}: {strict}", go_quote(&go_json(patched))),
            )],
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

    fn validator(plural: &str) -> std::sync::Arc<SchemaValidator> {
        let catalogue = Catalogue::embedded().unwrap();
        catalogue.kinds().iter().find(|k| k.plural == plural).unwrap().validator.clone()
    }

    fn polr(results: Value) -> Value {
        json!({"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
            "metadata": {"name": "a", "namespace": "n"}, "results": results})
    }

    #[test]
    fn prunes_unknown_fields_and_reports_sorted_paths() {
        let v = validator("policyreports");
        let mut object =
            polr(json!([{"policy": "p", "zeta": 1, "alpha": {"x": 1}, "properties": {"any.key": "v"}}]));
        object["spec"] = json!({"foo": 1});
        object["metadata"]["bogus"] = json!(true);
        object["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u", "extra": 1}]);
        let unknown = v.prune(&mut object);
        assert_eq!(
            unknown,
            vec![
                "metadata.bogus",
                "metadata.ownerReferences[0].extra",
                "results[0].alpha",
                "results[0].zeta",
                "spec"
            ]
        );
        assert_eq!(object["results"][0], json!({"policy": "p", "properties": {"any.key": "v"}}));
        assert!(object.get("spec").is_none());
        assert_eq!(
            object["metadata"],
            json!({"name": "a", "namespace": "n", "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u"}]})
        );
    }

    #[test]
    fn drops_nulls_of_non_nullable_fields_silently() {
        let v = validator("policyreports");
        let mut object = polr(json!([{"policy": "p", "result": null}]));
        object["scope"] = Value::Null;
        assert!(v.prune(&mut object).is_empty());
        assert!(object.get("scope").is_none());
        assert_eq!(object["results"][0], json!({"policy": "p"}));
    }

    #[test]
    fn validation_errors_name_the_path_like_kube() {
        let v = validator("policyreports");
        let object = polr(json!([
            {"policy": "p", "result": "bad"},
            {"result": "pass"},
            {"policy": 5, "scored": "yes", "timestamp": {"seconds": 1.5, "nanos": 3}},
            null,
        ]));
        let causes = v.validate(&object);
        let rendered: Vec<(String, String, String)> =
            causes.into_iter().map(|c| (c.reason, c.field, c.message)).collect();
        assert_eq!(
            rendered,
            vec![
                (
                    "FieldValueNotSupported".into(),
                    "results[0].result".into(),
                    "Unsupported value: \"bad\": supported values: \"pass\", \"fail\", \"warn\", \"error\", \"skip\"".into()
                ),
                ("FieldValueRequired".into(), "results[1].policy".into(), "Required value".into()),
                (
                    "FieldValueTypeInvalid".into(),
                    "results[2].policy".into(),
                    "Invalid value: \"integer\": results[2].policy in body must be of type string: \"integer\"".into()
                ),
                (
                    "FieldValueTypeInvalid".into(),
                    "results[2].scored".into(),
                    "Invalid value: \"string\": results[2].scored in body must be of type boolean: \"string\"".into()
                ),
                (
                    "FieldValueTypeInvalid".into(),
                    "results[2].timestamp.seconds".into(),
                    "Invalid value: \"number\": results[2].timestamp.seconds in body must be of type integer: \"number\"".into()
                ),
                (
                    "FieldValueTypeInvalid".into(),
                    "results[3]".into(),
                    "Invalid value: \"null\": results[3] in body must be of type object: \"null\"".into()
                ),
            ]
        );
    }

    #[test]
    fn ephemeral_reports_require_spec_and_owner() {
        let v = validator("ephemeralreports");
        let bare = json!({"apiVersion": "reports.kyverno.io/v1", "kind": "EphemeralReport", "metadata": {"name": "a"}});
        let fields: Vec<String> = v.validate(&bare).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, vec!["spec"]);
        let mut no_owner = bare.clone();
        no_owner["spec"] = json!({"results": []});
        let fields: Vec<String> = v.validate(&no_owner).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, vec!["spec.owner"]);
        let mut ok = bare;
        ok["spec"] = json!({"owner": {"apiVersion": "", "kind": "", "name": "", "uid": ""}});
        assert!(v.validate(&ok).is_empty());
    }

    #[test]
    fn openreports_configuration_needs_limits_and_known_status_filters() {
        let v = validator("reports");
        let mut object = json!({"apiVersion": "openreports.io/v1alpha1", "kind": "Report",
            "metadata": {"name": "a"}, "configuration": {}});
        let causes = v.validate(&object);
        assert_eq!(causes.len(), 1);
        assert_eq!(
            (causes[0].field.as_str(), causes[0].message.as_str()),
            ("configuration.limits", "Required value")
        );
        object["configuration"] = json!({"limits": {"maxResults": 10, "statusFilter": ["fail", "bogus"]}});
        let causes = v.validate(&object);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "configuration.limits.statusFilter[1]");
        assert_eq!(causes[0].reason, "FieldValueNotSupported");
    }

    #[test]
    fn integral_floats_pass_as_integers_and_negative_nanos_are_fine() {
        let v = validator("policyreports");
        let object = polr(json!([{"policy": "p", "timestamp": {"seconds": 2.0, "nanos": -5}}]));
        assert!(v.validate(&object).is_empty());
    }

    #[test]
    fn keywords_the_crds_do_not_use_still_work() {
        let schema = json!({"type": "object", "required": ["s"], "properties": {
            "s": {"type": "string", "maxLength": 3, "format": "date-time"},
            "n": {"type": "integer", "minimum": 1},
            "io": {"x-kubernetes-int-or-string": true},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                "properties": {"known": {"type": "object", "properties": {}}}},
            "maybe": {"type": "string", "nullable": true},
            "few": {"type": "array", "maxItems": 1, "items": {"type": "string"}},
        }});
        let v = SchemaValidator::compile(&schema).unwrap();
        let mut object = json!({"s": "2026-01-01T00:00:00Z", "n": 0, "io": "50%", "maybe": null,
            "free": {"anything": {"goes": 1}, "known": {"dropped": 1}}, "few": ["a", "b"]});
        assert_eq!(v.prune(&mut object), vec!["free.known.dropped"]);
        assert_eq!(object["maybe"], Value::Null);
        assert_eq!(object["free"]["anything"], json!({"goes": 1}));
        let fields: Vec<(String, String)> =
            v.validate(&object).into_iter().map(|c| (c.field, c.reason)).collect();
        assert_eq!(
            fields,
            vec![
                ("s".into(), "FieldValueTooLong".into()),
                ("n".into(), "FieldValueInvalid".into()),
                ("few".into(), "FieldValueTooMany".into()),
            ]
        );
        let bad_time = json!({"s": "no"});
        let causes = v.validate(&bad_time);
        assert_eq!(causes[0].message, "Invalid value: \"no\": s in body must be of type date-time: \"no\"");
        assert_eq!(v.validate(&json!({"s": "x", "io": 3})).len(), 1, "int-or-string takes integers");
        assert_eq!(v.validate(&json!({}))[0].field, "s");
    }

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
