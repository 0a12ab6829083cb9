//! Fuzz targets: every parser of client input, driven with arbitrary bytes.
//!
//! Each function here takes the raw input a fuzzer produces and hands it to the same entry points
//! the server calls with what a client sent (query strings, selectors, continue tokens, Accept
//! and Content-Type headers, paths, request bodies, patches), in the order the server calls
//! them, so a panic found here is a panic of the server. Where it costs little, a target also
//! checks an invariant: a parsed selector or token renders to text that parses back to the same
//! thing, a patch cannot grow an object by more than its own size and the copy budget, every
//! refusal is a 4xx.
//!
//! The functions live in the main workspace rather than in the fuzz crate so that the
//! cargo-fuzz targets (`fuzz/fuzz_targets/`, nightly only) and the smoke test that runs in the
//! ordinary test suite (`tests/fuzz_smoke.rs`, over the corpora in `fuzz/corpus/`) run the very
//! same code. Nothing here does IO.
//!
//! Inputs with more than one part are framed so that the corpus files stay readable:
//! [`request_path`] takes `METHOD target`, [`request_body`] a first byte choosing JSON or YAML,
//! [`patch`] a first byte choosing the patch type, then the stored object (JSON), a NUL byte and
//! the patch.

use std::sync::LazyLock;

use base64::Engine as _;
use serde_json::Value;

use crate::{
    error::ApiError,
    field_validation::{unknown_fields_outcome, warning_headers, WriteVerb},
    negotiate::{self, BodyType, Encoding, Endpoint, Shape},
    object::{self, ObjectExt as _},
    options::{self, DeleteOptions, FieldValidation, ListOptions, Query, RvParam, WriteOptions},
    paging::ContinueToken,
    patch::{apply_patch, json_size_up_to, patch_sets_resource_version},
    request_info::RequestInfo,
    selector::{FieldSelector, LabelSelector, Operator},
    table::{IncludeObject, TableRenderer},
    Catalogue, ResourceKind,
};

/// The size limit of bodies and patched objects in the targets. The server's default is a few
/// MB; a smaller one keeps each execution fast while exercising the same checks.
pub const BODY_LIMIT: usize = 256 * 1024;

/// The fixed clock and uid of creates: the targets must be deterministic.
const NOW: &str = "2026-01-01T00:00:00Z";
const UID: &str = "00000000-0000-4000-8000-000000000000";

static CATALOGUE: LazyLock<Catalogue> =
    LazyLock::new(|| Catalogue::embedded().expect("the embedded CRDs compile"));

/// A fuzz target: takes any bytes, panics only on a bug.
pub type Target = fn(&[u8]);

/// Every target by name; the names are those of `fuzz/fuzz_targets/*.rs` and `fuzz/corpus/*`.
pub const TARGETS: &[(&str, Target)] = &[
    ("label_selector", label_selector),
    ("field_selector", field_selector),
    ("continue_token", continue_token),
    ("list_options", list_options),
    ("accept_header", accept_header),
    ("request_path", request_path),
    ("request_body", request_body),
    ("patch", patch),
];

/// A refusal must be a client error (or kube's reason-less 500 for a create naming a
/// resourceVersion), never a server failure.
fn assert_client_error(error: &ApiError) {
    let allowed = (400..500).contains(&error.code) || (error.code == 500 && error.reason.is_empty());
    assert!(allowed, "a client's input gave {} {}: {}", error.code, error.reason, error.message);
}

/// `labelSelector`: parses, renders back to the same selector, and matches consistently.
pub fn label_selector(data: &[u8]) {
    // The server decodes the query with replacement characters for invalid UTF-8.
    let text = String::from_utf8_lossy(data);
    let Ok(selector) = LabelSelector::parse(&text) else { return };
    let rendered = selector.to_string();
    let again = LabelSelector::parse(&rendered)
        .unwrap_or_else(|e| panic!("{text:?} rendered as {rendered:?}, which does not parse: {e}"));
    assert_eq!(again, selector, "{text:?} rendered as {rendered:?}");
    for requirement in &selector.requirements {
        let value = requirement.values.first().map(String::as_str);
        let with_own_value = requirement.matches(&|key: &str| value.filter(|_| key == requirement.key));
        let absent = requirement.matches(&|_: &str| None);
        let expected = match requirement.op {
            Operator::Exists | Operator::Equals | Operator::In => (value.is_some(), false),
            Operator::DoesNotExist => (true, true),
            Operator::NotEquals | Operator::NotIn => (false, true),
            // `n>n` and `n<n` are both false.
            Operator::GreaterThan | Operator::LessThan => (false, false),
        };
        assert_eq!((with_own_value, absent), expected, "{requirement} on its own value / no label");
    }
}

/// `fieldSelector`, for both scopes: parses, renders back to the same selector, and pins the
/// name it says it pins.
pub fn field_selector(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for namespaced in [true, false] {
        let Ok(selector) = FieldSelector::parse(&text, namespaced) else { continue };
        let rendered = selector.to_string();
        let again = FieldSelector::parse(&rendered, namespaced)
            .unwrap_or_else(|e| panic!("{text:?} rendered as {rendered:?}, which does not parse: {e}"));
        assert_eq!(again, selector, "{text:?} rendered as {rendered:?}");
        if let Some(name) = selector.exact_name() {
            let other = format!("{name}x");
            assert!(!selector.matches("default", &other), "{text:?} pins {name:?} but matches {other:?}");
        }
    }
}

/// `continue`: the token as sent, and the input wrapped as a token (so that mutations reach the
/// JSON inside the base64).
pub fn continue_token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    check_continue_token(&text);
    check_continue_token(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data));
}

fn check_continue_token(text: &str) {
    match ContinueToken::decode(text) {
        Ok(token) => {
            assert!(!token.name.is_empty() && !token.name.contains('\0') && !token.ns.contains('\0'));
            assert_eq!(ContinueToken::decode(&token.encode()).as_ref(), Ok(&token), "{text:?}");
        }
        Err(error) => assert_eq!(error.code, 400, "{text:?}: {}", error.message),
    }
}

/// A query string, as every verb's options parse it: list and watch options for each kind,
/// `resourceVersion` of a get, create/update/patch options, delete options and `includeObject`.
pub fn list_options(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let query = Query::parse(Some(&text));
    for kind in CATALOGUE.kinds() {
        match ListOptions::parse(&query, kind) {
            Ok(options) => {
                assert!(options.limit.is_none_or(|l| l > 0) && options.timeout_seconds.is_none_or(|t| t > 0));
                assert!(
                    options.continue_token.is_none() || !matches!(options.resource_version, RvParam::At(_)),
                    "a continue token with a resourceVersion: {text:?}"
                );
                assert!(options.field_selector.requirements.iter().all(|r| !r.value.contains('\0')));
            }
            Err(error) => assert_client_error(&error),
        }
    }
    if let Err(error) = options::parse_rv_param(query.get("resourceVersion")) {
        assert_client_error(&error);
    }
    for (options_kind, is_apply) in
        [("CreateOptions", false), ("UpdateOptions", false), ("PatchOptions", false), ("PatchOptions", true)]
    {
        if let Err(error) = WriteOptions::parse(&query, options_kind, is_apply) {
            assert_client_error(&error);
        }
    }
    if let Err(error) = DeleteOptions::parse(&query, None) {
        assert_client_error(&error);
    }
    let _ = IncludeObject::parse(query.get("includeObject"));
    let _ = query.flag("pretty");
}

/// `Accept` for every endpoint and for discovery, and the same text as a `Content-Type`.
pub fn accept_header(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let accept = Some(text.as_ref());
    for endpoint in [Endpoint::Object, Endpoint::List, Endpoint::Watch] {
        match negotiate::negotiate(accept, endpoint) {
            Ok(negotiated) => {
                match negotiated.shape {
                    Shape::Metadata(_) => assert_ne!(endpoint, Endpoint::List, "{text:?}"),
                    Shape::MetadataList(_) => assert_eq!(endpoint, Endpoint::List, "{text:?}"),
                    Shape::Object | Shape::Table(_) => {}
                }
                if endpoint == Endpoint::Watch {
                    assert_eq!(negotiated.encoding, Encoding::Json, "watches are JSON: {text:?}");
                }
                if negotiated.encoding == Encoding::Json {
                    assert!(negotiate::accepts_json(accept), "{text:?}");
                }
            }
            Err(error) => assert_eq!(error.code, 406, "{text:?}"),
        }
    }
    for allow_aggregated in [true, false] {
        match negotiate::negotiate_discovery(accept, allow_aggregated) {
            Ok(negotiate::Discovery::Aggregated(_)) => assert!(allow_aggregated, "{text:?}"),
            Ok(negotiate::Discovery::Legacy) => {}
            Err(error) => assert_eq!(error.code, 406, "{text:?}"),
        }
    }
    if let Err(error) = negotiate::object_body_type(accept) {
        assert_eq!(error.code, 415);
    }
    if let Err(error) = negotiate::patch_body_type(accept) {
        assert_eq!(error.code, 415);
    }
}

/// A request line, `METHOD target` (a bare target is a GET): what authorization, audit and
/// metrics derive from it, the check that refuses undecodable paths, and the handler's lookup
/// of the kind, namespace and name a decoded path names ([`Catalogue::resolve_path`]).
///
/// When a list or watch is authorized as being about one name taken from a `metadata.name`
/// field selector, the selector the list then runs must not select any other valid name.
pub fn request_path(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (method, target) = text.split_once(' ').unwrap_or(("GET", &text));
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let decoded = options::percent_decode(path, false);
    assert!(decoded.len() <= path.len());
    if let Ok(decoded) = std::str::from_utf8(&decoded) {
        resource_path(decoded);
    }
    let info = RequestInfo::resolve(method, path, query);
    if !info.is_resource_request {
        assert_eq!(info.verb, method.to_ascii_lowercase());
        return;
    }
    assert!(info.api_prefix == "api" || info.api_prefix == "apis", "{text:?}");
    assert!(!info.is_long_running() || info.verb == "watch");
    // A name from the path (a legacy `/watch/.../name`) is added to the selector by the server.
    let name_from_selector =
        !info.name.is_empty() && RequestInfo::resolve(method, path, None).name.is_empty();
    if !name_from_selector || !(info.verb == "list" || info.verb == "watch") {
        return;
    }
    let query = Query::parse(query);
    let Ok(selector) = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default(), true) else {
        return;
    };
    for requirement in &selector.requirements {
        let candidate = requirement.value.as_str();
        if object::dns_subdomain_error(candidate).is_none() && selector.matches(&info.namespace, candidate) {
            assert_eq!(
                candidate, info.name,
                "authorized for {:?}, selects {candidate:?}: {text:?}",
                info.name
            );
        }
    }
}

/// The server's own lookup of a decoded `/apis/GROUP/VERSION/REST` path: what it finds is of
/// that group and version, namespaced where a namespace was given, and anything else is 404.
fn resource_path(decoded: &str) {
    let Some(under_apis) = decoded.strip_prefix("/apis/") else { return };
    let mut parts = under_apis.splitn(3, '/');
    let (Some(group), Some(version), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let rest = rest.strip_prefix("watch/").unwrap_or(rest);
    match CATALOGUE.resolve_path(group, version, rest) {
        Ok(found) => {
            assert_eq!((found.kind.group.as_str(), found.kind.version.as_str()), (group, version));
            assert!(found.namespace.is_none() || found.kind.namespaced, "{decoded:?}");
            assert!(found.name.as_deref().is_none_or(|n| !n.is_empty() && !n.contains('/')), "{decoded:?}");
        }
        Err(error) => assert_eq!(error.code, 404, "{decoded:?}"),
    }
}

/// The kind a body is about: the one its `apiVersion` and `kind` name, or one chosen by `pick`.
fn kind_of(object: &Value, pick: u8) -> &'static ResourceKind {
    let kinds = CATALOGUE.kinds();
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    kinds
        .iter()
        .find(|k| k.kind == kind && k.api_version() == api_version)
        .unwrap_or(&kinds[usize::from(pick) % kinds.len()])
}

/// The body of a create (first byte even: JSON, odd: YAML), taken through decoding, pruning,
/// `fieldValidation`, the create checks and an update by the same body; the stored result must
/// render as JSON that reads back the same, and as a Table row. The body is also read as the
/// `DeleteOptions` of a delete.
pub fn request_body(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else { return };
    let body_type = if mode % 2 == 1 { BodyType::Yaml } else { BodyType::Json };
    if let Ok(options) = negotiate::decode_body(body, BodyType::Json) {
        if let Err(error) = DeleteOptions::parse(&Query::default(), Some(&options)) {
            assert_client_error(&error);
        }
    }
    let (mut object, issues) = match negotiate::decode_body_with_duplicates(body, body_type) {
        Ok(decoded) => decoded,
        Err(error) => return assert_client_error(&error),
    };
    let kind = kind_of(&object, mode / 2);
    let unknown = kind.validator.prune(&mut object);
    for mode in [FieldValidation::Ignore, FieldValidation::Warn, FieldValidation::Strict] {
        match unknown_fields_outcome(kind, mode, &issues, &unknown, WriteVerb::CreateOrUpdate) {
            Ok(warnings) => _ = warning_headers(warnings.iter().map(String::as_str)),
            Err(error) => assert_client_error(&error),
        }
    }
    let namespace = kind.namespaced.then_some("default");
    let mut stored = object.clone();
    if let Err(error) = object::prepare_create(kind, namespace, &mut stored, NOW, UID) {
        return assert_client_error(&error);
    }
    if stored.meta_str("name").is_empty() {
        let generated = object::generate_name(stored.meta_str("generateName"), 7);
        object::meta_mut(&mut stored).insert("name".into(), Value::String(generated));
    }
    let text = negotiate::encode_value(&stored, Encoding::Json, false);
    let read_back: Value = serde_json::from_slice(&text).expect("a stored object renders as JSON");
    assert_eq!(read_back, stored, "the stored object reads back differently");
    let _ = negotiate::encode_value(&stored, Encoding::Yaml, false);
    let renderer = TableRenderer::new(kind, NOW.parse().expect("a time")).expect("the CRD columns parse");
    let _ = renderer.row(&stored, IncludeObject::Metadata);
    let name = stored.meta_str("name").to_string();
    let mut update = object;
    if update.is_object() {
        object::meta_mut(&mut update).insert("resourceVersion".into(), Value::String("1".into()));
    }
    if let Err(error) = object::prepare_update(kind, namespace, &name, &mut update, &stored) {
        assert_client_error(&error);
    }
}

/// A patch of a stored object: first byte even is a JSON patch, odd a merge patch; then the
/// stored object as JSON, a NUL byte, and the patch. Taken through the server's steps: decoding,
/// applying with the copy budget, the size limit, pruning, `fieldValidation` and the update
/// checks. The patched object may not outgrow the original by more than a small multiple of the
/// patch's own size plus the copy budget.
pub fn patch(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let body_type = if mode % 2 == 1 { BodyType::MergePatch } else { BodyType::JsonPatch };
    let Some(split) = rest.iter().position(|b| *b == 0) else { return };
    let (document, patch) = (&rest[..split], &rest[split + 1..]);
    let Ok(mut current) = serde_json::from_slice::<Value>(document) else { return };
    if !current.is_object() {
        return;
    }
    let kind = kind_of(&current, mode / 2);
    let namespace = kind.namespaced.then(|| current.meta_str("namespace").to_string());
    let namespace = namespace.map(|ns| if ns.is_empty() { "default".to_string() } else { ns });
    let name = match current.meta_str("name") {
        "" => "fuzz".to_string(),
        name => name.to_string(),
    };
    let meta = object::meta_mut(&mut current);
    meta.insert("name".into(), Value::String(name.clone()));
    match &namespace {
        Some(ns) => meta.insert("namespace".into(), Value::String(ns.clone())),
        None => meta.remove("namespace"),
    };
    let original_size = json_size_up_to(&current, usize::MAX);

    let (decoded, duplicates) = match negotiate::decode_body_with_duplicates(patch, body_type) {
        Ok(decoded) => decoded,
        Err(error) => return assert_client_error(&error),
    };
    let mut patched = current.clone();
    if let Err(error) = apply_patch(&mut patched, &decoded, body_type, BODY_LIMIT) {
        return assert_client_error(&error);
    }
    let bound = original_size.saturating_add(BODY_LIMIT).saturating_add(8 * patch.len() + 64);
    let size = json_size_up_to(&patched, bound);
    assert!(size <= bound, "a {}-byte patch grew a {original_size}-byte object past {bound}", patch.len());
    if size > BODY_LIMIT || !patched.is_object() {
        return;
    }
    let unpruned = patched.clone();
    let unknown = kind.validator.prune(&mut patched);
    for mode in [FieldValidation::Warn, FieldValidation::Strict] {
        let verb = WriteVerb::Patch(&unpruned);
        if let Err(error) = unknown_fields_outcome(kind, mode, &duplicates, &unknown, verb) {
            assert_client_error(&error);
        }
    }
    let _ = patch_sets_resource_version(&decoded, body_type);
    if patched.meta_str("resourceVersion").is_empty() {
        object::meta_mut(&mut patched).insert("resourceVersion".into(), Value::String("1".into()));
    }
    if let Err(error) = object::prepare_update(kind, namespace.as_deref(), &name, &mut patched, &current) {
        assert_client_error(&error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_takes_empty_and_tiny_inputs() {
        for (name, target) in TARGETS {
            for input in [&b""[..], b"\0", b"\xff", b"a", b"j{}", b"y\0{}"] {
                std::panic::catch_unwind(|| target(input))
                    .unwrap_or_else(|_| panic!("{name} panicked on {input:?}"));
            }
        }
    }
}
