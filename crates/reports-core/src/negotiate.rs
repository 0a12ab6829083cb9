//! Content negotiation: which representation a client gets (Accept) and which request bodies we
//! take (Content-Type), following k8s.io/apiserver's rules for custom resources.
//!
//! Accept clauses are tried in order of `q` (stable). A clause is *skipped*, not failed, when it
//! names a media type we do not serve (protobuf, CBOR) or a transform that does not fit the
//! endpoint, so the metadata client's `protobuf;as=PartialObjectMetadata, json;as=..., json` lands
//! on JSON. 406 is answered only when no clause is satisfiable.

use serde_json::Value;

use crate::{error::ApiError, field_validation::DecodeIssue};

/// Serialization of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/json`.
    Json,
    /// `application/yaml`.
    Yaml,
}

impl Encoding {
    /// The Content-Type header value.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Yaml => "application/yaml",
        }
    }
}

/// The shape of a response: the resource itself or one of the meta.k8s.io transforms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The object (or list of objects) as stored.
    Object,
    /// `meta.k8s.io` Table in the given version (`v1` or `v1beta1`).
    Table(&'static str),
    /// `PartialObjectMetadata` (single objects and watch events).
    Metadata(&'static str),
    /// `PartialObjectMetadataList`.
    MetadataList(&'static str),
}

/// What kind of endpoint is answering; decides which transforms are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// A single object (get, create, update, patch, delete).
    Object,
    /// A collection (list, deletecollection).
    List,
    /// A watch stream.
    Watch,
}

/// The outcome of negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Serialization.
    pub encoding: Encoding,
    /// Representation.
    pub shape: Shape,
    /// Indented output requested by the clause (`pretty=1`).
    pub pretty: bool,
}

const ACCEPTED: &str = "application/json, application/yaml";

struct Clause<'a> {
    media: &'a str,
    params: Vec<(&'a str, &'a str)>,
    q: f32,
}

impl<'a> Clause<'a> {
    fn param(&self, key: &str) -> Option<&'a str> {
        self.params.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| *v)
    }
}

fn parse_clauses(accept: &str) -> Vec<Clause<'_>> {
    let mut clauses: Vec<Clause<'_>> = accept
        .split(',')
        .filter_map(|raw| {
            let mut parts = raw.split(';').map(str::trim);
            let media = parts.next().filter(|m| !m.is_empty())?;
            let params: Vec<(&str, &str)> = parts
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
                .collect();
            let q = params.iter().find(|(k, _)| *k == "q").and_then(|(_, v)| v.parse().ok()).unwrap_or(1.0);
            Some(Clause { media, params, q })
        })
        .filter(|c| c.q > 0.0)
        .collect();
    // Stable: equal q keeps the client's order; wildcards rank after concrete types.
    clauses.sort_by(|a, b| {
        b.q.partial_cmp(&a.q)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| wildness(a.media).cmp(&wildness(b.media)))
    });
    clauses
}

fn wildness(media: &str) -> u8 {
    match media {
        "*/*" => 2,
        m if m.ends_with("/*") => 1,
        _ => 0,
    }
}

fn known_version(v: Option<&str>) -> Option<&'static str> {
    match v {
        Some("v1") => Some("v1"),
        Some("v1beta1") => Some("v1beta1"),
        _ => None,
    }
}

/// Picks the representation for `accept` on an endpoint of the given kind.
pub fn negotiate(accept: Option<&str>, endpoint: Endpoint) -> Result<Negotiated, ApiError> {
    let accept = accept.unwrap_or_default().trim();
    if accept.is_empty() {
        return Ok(Negotiated { encoding: Encoding::Json, shape: Shape::Object, pretty: false });
    }
    for clause in parse_clauses(accept) {
        let encoding = match clause.media.to_ascii_lowercase().as_str() {
            json if is_json_media(json) => Encoding::Json,
            "application/yaml" if endpoint != Endpoint::Watch => Encoding::Yaml,
            _ => continue,
        };
        let shape = match clause.param("as") {
            None | Some("") => Shape::Object,
            Some(transform) => {
                if clause.param("g") != Some("meta.k8s.io") {
                    continue;
                }
                let Some(version) = known_version(clause.param("v")) else { continue };
                match (transform, endpoint) {
                    ("Table", _) => Shape::Table(version),
                    ("PartialObjectMetadata", Endpoint::Object | Endpoint::Watch) => Shape::Metadata(version),
                    ("PartialObjectMetadataList", Endpoint::List) => Shape::MetadataList(version),
                    _ => continue,
                }
            }
        };
        let pretty = clause.param("pretty").is_some_and(|p| p != "0" && !p.eq_ignore_ascii_case("false"));
        return Ok(Negotiated { encoding, shape, pretty });
    }
    Err(ApiError::not_acceptable(ACCEPTED))
}

/// The representation of a discovery document (`/apis`, `/api`, a group or group/version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    /// Aggregated discovery (`as=APIGroupDiscoveryList;g=apidiscovery.k8s.io`) in this version,
    /// `v2` or `v2beta1`.
    Aggregated(&'static str),
    /// The legacy documents (`APIGroupList`, `APIGroup`, `APIResourceList`) as plain JSON.
    Legacy,
}

fn is_json_media(media: &str) -> bool {
    matches!(media.to_ascii_lowercase().as_str(), "application/json" | "application/*" | "*/*")
}

/// Picks the discovery representation for `accept`: aggregated discovery only where
/// `allow_aggregated` (the root `/apis` and `/api`), else the legacy JSON document; 406 when
/// no clause asks for either.
pub fn negotiate_discovery(accept: Option<&str>, allow_aggregated: bool) -> Result<Discovery, ApiError> {
    let accept = accept.unwrap_or_default().trim();
    if accept.is_empty() {
        return Ok(Discovery::Legacy);
    }
    for clause in parse_clauses(accept) {
        if !is_json_media(clause.media) {
            continue;
        }
        match clause.param("as") {
            None => return Ok(Discovery::Legacy),
            Some("APIGroupDiscoveryList")
                if allow_aggregated && clause.param("g") == Some("apidiscovery.k8s.io") =>
            {
                match clause.param("v") {
                    Some("v2") => return Ok(Discovery::Aggregated("v2")),
                    Some("v2beta1") => return Ok(Discovery::Aggregated("v2beta1")),
                    _ => continue,
                }
            }
            _ => continue,
        }
    }
    Err(ApiError::not_acceptable("application/json"))
}

/// Whether `accept` admits plain JSON (OpenAPI documents are served as JSON only): no header, or
/// a JSON or wildcard clause whatever its parameters.
pub fn accepts_json(accept: Option<&str>) -> bool {
    let accept = accept.unwrap_or_default().trim();
    accept.is_empty() || parse_clauses(accept).iter().any(|clause| is_json_media(clause.media))
}

/// The kind of a request body, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    /// `application/json` (or no Content-Type).
    Json,
    /// `application/yaml`.
    Yaml,
    /// `application/json-patch+json` (RFC 6902).
    JsonPatch,
    /// `application/merge-patch+json` (RFC 7386).
    MergePatch,
}

/// Media types accepted for patches. Strategic merge patch is refused like a CRD does; server-side
/// apply is not offered (yet), so kubectl reports it as unavailable instead of misapplying it.
pub const PATCH_TYPES: &str = "application/json-patch+json, application/merge-patch+json";

fn media_type(content_type: Option<&str>) -> String {
    content_type.unwrap_or_default().split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// Classifies the body of a POST or PUT; anything but JSON or YAML is 415.
pub fn object_body_type(content_type: Option<&str>) -> Result<BodyType, ApiError> {
    match media_type(content_type).as_str() {
        "" | "application/json" => Ok(BodyType::Json),
        "application/yaml" => Ok(BodyType::Yaml),
        _ => Err(ApiError::unsupported_media_type(ACCEPTED)),
    }
}

/// Classifies the body of a PATCH; strategic merge, apply and unknown types are 415.
pub fn patch_body_type(content_type: Option<&str>) -> Result<BodyType, ApiError> {
    match media_type(content_type).as_str() {
        "application/json-patch+json" => Ok(BodyType::JsonPatch),
        "application/merge-patch+json" => Ok(BodyType::MergePatch),
        _ => Err(ApiError::unsupported_media_type(PATCH_TYPES)),
    }
}

/// Parses a JSON or YAML request body into a value; a decode failure is 400 and names the cause.
pub fn decode_body(bytes: &[u8], body_type: BodyType) -> Result<Value, ApiError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match body_type {
        BodyType::Yaml => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| ApiError::bad_request("the request body is not valid UTF-8"))?;
            serde_saphyr::from_str::<Value>(text)
                .map_err(|e| ApiError::bad_request(format!("couldn't decode the request body as YAML: {e}")))
        }
        _ => serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("couldn't decode the request body as JSON: {e}"))),
    }
}

/// Parses a whole-object body (create, update) or a patch, also returning the duplicate keys
/// kube's strict decoder reports, which `fieldValidation` treats like unknown fields. Duplicates
/// inside a JSON patch document are not reported.
pub fn decode_body_with_duplicates(
    bytes: &[u8],
    body_type: BodyType,
) -> Result<(Value, Vec<DecodeIssue>), ApiError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match body_type {
        BodyType::JsonPatch => Ok((decode_body(bytes, body_type)?, Vec::new())),
        BodyType::Yaml => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| ApiError::bad_request("the request body is not valid UTF-8"))?;
            crate::field_validation::parse_yaml_with_duplicates(text)
                .map_err(|e| ApiError::bad_request(format!("couldn't decode the request body as YAML: {e}")))
        }
        BodyType::Json | BodyType::MergePatch => crate::field_validation::parse_json_with_duplicates(bytes)
            .map_err(|e| ApiError::bad_request(format!("couldn't decode the request body as JSON: {e}"))),
    }
}

/// Renders a value in the negotiated encoding.
pub fn encode_value(value: &Value, encoding: Encoding, pretty: bool) -> Vec<u8> {
    match encoding {
        Encoding::Yaml => serde_saphyr::to_string(value).unwrap_or_default().into_bytes(),
        Encoding::Json if pretty => serde_json::to_vec_pretty(value).unwrap_or_default(),
        Encoding::Json => serde_json::to_vec(value).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METADATA_CLIENT: &str = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
    const KUBECTL_GET: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

    #[test]
    fn negotiates_like_kube_apiserver() {
        let n = negotiate(Some(METADATA_CLIENT), Endpoint::List).unwrap();
        assert_eq!(n.shape, Shape::MetadataList("v1"));
        assert_eq!(negotiate(Some(METADATA_CLIENT), Endpoint::Object).unwrap().shape, Shape::Object);
        assert_eq!(negotiate(Some(KUBECTL_GET), Endpoint::List).unwrap().shape, Shape::Table("v1"));
        assert_eq!(
            negotiate(Some("application/json, */*"), Endpoint::List).unwrap().encoding,
            Encoding::Json
        );
        assert_eq!(negotiate(Some("application/yaml"), Endpoint::Object).unwrap().encoding, Encoding::Yaml);
        assert_eq!(
            negotiate(Some("application/vnd.kubernetes.protobuf"), Endpoint::Object).unwrap_err().code,
            406
        );
        assert_eq!(negotiate(Some("application/yaml"), Endpoint::Watch).unwrap_err().code, 406);
        assert_eq!(
            negotiate(Some("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"), Endpoint::List)
                .unwrap_err()
                .code,
            406
        );
        assert_eq!(
            negotiate(Some("application/json;as=Table;g=meta.k8s.io;v=v1beta1"), Endpoint::Watch)
                .unwrap()
                .shape,
            Shape::Table("v1beta1")
        );
        assert_eq!(
            negotiate(Some("text/html;q=0.9,application/yaml"), Endpoint::Object).unwrap().encoding,
            Encoding::Yaml
        );
        assert!(negotiate(Some("application/json;pretty=1"), Endpoint::Object).unwrap().pretty);
        assert_eq!(negotiate(None, Endpoint::Object).unwrap().encoding, Encoding::Json);
    }

    #[test]
    fn discovery_is_aggregated_only_where_offered_and_when_asked() {
        const KUBECTL: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(negotiate_discovery(Some(KUBECTL), true).unwrap(), Discovery::Aggregated("v2"));
        assert_eq!(negotiate_discovery(Some(KUBECTL), false).unwrap(), Discovery::Legacy);
        assert_eq!(negotiate_discovery(None, true).unwrap(), Discovery::Legacy);
        let beta = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";
        assert_eq!(negotiate_discovery(Some(beta), true).unwrap(), Discovery::Aggregated("v2beta1"));
        assert_eq!(negotiate_discovery(Some(beta), false).unwrap_err().code, 406);
        assert_eq!(negotiate_discovery(Some("application/yaml"), true).unwrap_err().code, 406);
        assert!(accepts_json(None));
        assert!(accepts_json(Some("application/com.github.proto-openapi.spec.v3@v1.0+protobuf, */*")));
        assert!(!accepts_json(Some("application/com.github.proto-openapi.spec.v3@v1.0+protobuf")));
    }

    #[test]
    fn body_types() {
        assert_eq!(object_body_type(Some("application/json; charset=utf-8")).unwrap(), BodyType::Json);
        assert_eq!(object_body_type(None).unwrap(), BodyType::Json);
        assert_eq!(object_body_type(Some("application/vnd.kubernetes.protobuf")).unwrap_err().code, 415);
        let smp = patch_body_type(Some("application/strategic-merge-patch+json")).unwrap_err();
        assert_eq!((smp.code, smp.reason), (415, "UnsupportedMediaType"));
        assert_eq!(patch_body_type(Some("application/merge-patch+json")).unwrap(), BodyType::MergePatch);
    }

    #[test]
    fn decodes_yaml_with_bom_and_reports_bad_json() {
        let v = decode_body(b"\xEF\xBB\xBFkind: X\nn: 1\n", BodyType::Yaml).unwrap();
        assert_eq!(v["kind"], "X");
        assert_eq!(decode_body(b"{nope", BodyType::Json).unwrap_err().code, 400);
    }
}
