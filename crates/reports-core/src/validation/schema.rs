//! The compiled form of an `openAPIV3Schema`: one [`Node`] per schema node, with the few
//! keywords the served CRDs use parsed once, so a write never looks at the schema's JSON.

use serde_json::Value;

/// A JSON type a schema node admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JsonType {
    Object,
    Array,
    String,
    Integer,
    Number,
    Boolean,
}

impl JsonType {
    pub(super) fn parse(name: &str) -> Option<Self> {
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
    pub(super) fn of(value: &Value) -> Option<Self> {
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

    pub(super) fn name(self) -> &'static str {
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
pub(super) enum StringFormat {
    DateTime,
    Date,
    Byte,
    Uuid,
}

impl StringFormat {
    pub(super) fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "date-time" => Self::DateTime,
            "date" => Self::Date,
            "byte" => Self::Byte,
            "uuid" => Self::Uuid,
            _ => return None,
        })
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::DateTime => "date-time",
            Self::Date => "date",
            Self::Byte => "byte",
            Self::Uuid => "uuid",
        }
    }

    pub(super) fn accepts(self, text: &str) -> bool {
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
pub(super) struct Bound {
    pub(super) limit: f64,
    pub(super) exclusive: bool,
}

/// One compiled schema node.
#[derive(Debug, Default)]
pub(super) struct Node {
    /// Admitted types; empty admits anything.
    pub(super) types: Vec<JsonType>,
    /// `x-kubernetes-int-or-string`.
    pub(super) int_or_string: bool,
    pub(super) nullable: bool,
    /// A defaulted null is not pruned (kube defaults it instead).
    pub(super) has_default: bool,
    pub(super) format: Option<StringFormat>,
    pub(super) enumeration: Vec<Value>,
    /// Declared fields; a short list beats hashing for the dozen fields a report node has.
    pub(super) properties: Vec<(String, Node)>,
    pub(super) additional_properties: Option<Box<Node>>,
    pub(super) items: Option<Box<Node>>,
    pub(super) required: Vec<String>,
    pub(super) preserve_unknown_fields: bool,
    pub(super) max_length: Option<u64>,
    pub(super) min_length: Option<u64>,
    pub(super) max_items: Option<u64>,
    pub(super) min_items: Option<u64>,
    pub(super) max_properties: Option<u64>,
    pub(super) min_properties: Option<u64>,
    pub(super) minimum: Option<Bound>,
    pub(super) maximum: Option<Bound>,
}

impl Node {
    pub(super) fn compile(schema: &Value, path: &str) -> Result<Self, String> {
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
    pub(super) fn field(&self, key: &str) -> Option<&Node> {
        self.properties
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, node)| node)
            .or(self.additional_properties.as_deref())
    }

    pub(super) fn type_names(&self) -> String {
        self.types.iter().map(|t| t.name()).collect::<Vec<_>>().join(",")
    }

    /// kube-openapi's type rule: an integral float passes as an integer (within the range where
    /// floats hold integers exactly), an integer as a number.
    pub(super) fn admits(&self, value: &Value, actual: JsonType) -> bool {
        self.types.is_empty()
            || self.types.contains(&actual)
            || (actual == JsonType::Integer && self.types.contains(&JsonType::Number))
            || (actual == JsonType::Number
                && self.types.contains(&JsonType::Integer)
                && value.as_f64().is_some_and(is_json_integer))
    }

    /// True when values of this node are integers (`type: integer`, or int-or-string).
    pub(super) fn holds_integers(&self) -> bool {
        self.types.contains(&JsonType::Integer) && !self.types.contains(&JsonType::Number)
    }
}

/// The largest integer every float up to which is exact (2^53 - 1), kube-openapi's bound for a
/// float that passes as an integer.
const MAX_JSON_INTEGER: f64 = 9_007_199_254_740_991.0;

/// kube-openapi's test for a float that stands for an integer.
pub(super) fn is_json_integer(f: f64) -> bool {
    f.is_finite() && f.fract() == 0.0 && f.abs() <= MAX_JSON_INTEGER
}

/// The integer a float in an integer field stands for, as kube stores it (`1e2` is `100`, `-0`
/// is `0`); `None` leaves the value for validation to refuse.
pub(super) fn as_stored_integer(value: &Value) -> Option<Value> {
    match value {
        Value::Number(n) if !n.is_i64() => {
            // A u64 above i64::MAX reads as a float past the exact range and stays as it is.
            n.as_f64().filter(|f| is_json_integer(*f)).map(|f| Value::from(f as i64))
        }
        _ => None,
    }
}

/// Root fields that belong to the object-meta rules, not to the schema.
pub(super) const META_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

/// The fields kube keeps in `metadata` (its ObjectMeta type); anything else is pruned. Only the
/// shape matters here: values are checked by the object-meta rules.
pub(super) fn object_meta_schema() -> Value {
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
