//! Discovery and OpenAPI endpoints: documents rendered once at start-up ([`crate::state`]),
//! served with kube's ETags, conditional requests and caching headers.

use axum::{
    extract::{Path, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use reports_core::{
    discovery,
    negotiate::{accepts_json, negotiate_discovery, Discovery},
    ApiError,
};

use crate::{
    response::{bytes_response, json_response, ApiResult},
    state::{AppState, CachedDoc},
};

fn accept(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())
}

/// The discovery representation the request asks for (see [`negotiate_discovery`]).
fn choose_discovery(headers: &HeaderMap, allow_aggregated: bool) -> Result<Discovery, ApiError> {
    negotiate_discovery(accept(headers), allow_aggregated)
}

/// 304 when `If-None-Match` names the document's ETag, else 200 with the document; says which.
fn conditional(doc: &CachedDoc, headers: &HeaderMap, content_type: &str) -> (Response, bool) {
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == doc.etag));
    let response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        bytes_response(StatusCode::OK, content_type, doc.body.clone())
    };
    (response, not_modified)
}

fn aggregated_response(doc: &CachedDoc, version: &str, headers: &HeaderMap) -> Response {
    let content_type = format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList");
    let (mut response, not_modified) = conditional(doc, headers, &content_type);
    let h = response.headers_mut();
    if not_modified {
        if let Ok(v) = HeaderValue::from_str(&content_type) {
            h.insert(header::CONTENT_TYPE, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&doc.etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public"));
    response
}

/// A cached JSON document with its ETag, 304 on a matching `If-None-Match`, and the immutable
/// caching kube sends when the request names the document's current `hash`.
fn cached_json(doc: &CachedDoc, headers: &HeaderMap, hash_matches: bool) -> Response {
    let (mut response, _) = conditional(doc, headers, "application/json");
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&doc.etag) {
        h.insert(header::ETAG, v);
    }
    let cache = if hash_matches { "public, immutable" } else { "no-cache, private" };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

/// `/openapi/v2`: JSON only. Clients asking for nothing but the protobuf encoding get 406, as
/// kube-openapi answers any Accept it cannot serve.
pub(crate) async fn openapi_v2(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    require_json(&headers)?;
    let docs = &state.discovery;
    let (mut response, _) = conditional(&docs.openapi_v2, &headers, "application/json");
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&docs.openapi_v2.etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&docs.openapi_last_modified) {
        h.insert(header::LAST_MODIFIED, v);
    }
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    Ok(response)
}

/// OpenAPI documents are served as JSON only; an Accept that excludes JSON (the protobuf
/// encodings) is 406, as kube-openapi answers what it cannot serve.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    if accepts_json(accept(headers)) {
        Ok(())
    } else {
        Err(ApiError::not_acceptable("application/json"))
    }
}

pub(crate) async fn openapi_index(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    require_json(&headers)?;
    Ok(cached_json(&state.discovery.openapi_index, &headers, false))
}

pub(crate) async fn openapi_group_version(
    State(state): State<AppState>,
    Path((group, version)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> ApiResult {
    let doc =
        state.discovery.openapi.get(&format!("{group}/{version}")).ok_or_else(ApiError::path_not_found)?;
    require_json(&headers)?;
    let hash = doc.etag.trim_matches('"');
    let requested = reports_core::options::Query::parse(uri.query()).get("hash").map(str::to_string);
    match requested {
        // An outdated hash: send the client to the current document, as kube-openapi does.
        Some(old) if old != hash => {
            let mut response = StatusCode::MOVED_PERMANENTLY.into_response();
            let location = format!("/openapi/v3/apis/{group}/{version}?hash={hash}");
            if let Ok(v) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            Ok(response)
        }
        Some(_) => Ok(cached_json(doc, &headers, true)),
        None => Ok(cached_json(doc, &headers, false)),
    }
}

pub(crate) async fn apis(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    Ok(match choose_discovery(&headers, true)? {
        Discovery::Aggregated("v2beta1") => {
            aggregated_response(&state.discovery.v2beta1, "v2beta1", &headers)
        }
        Discovery::Aggregated(_) => aggregated_response(&state.discovery.v2, "v2", &headers),
        Discovery::Legacy => {
            bytes_response(StatusCode::OK, "application/json", state.discovery.group_list.body.clone())
        }
    })
}

/// `/api`: no legacy core group here. 404 for plain clients (client-go tolerates it from
/// aggregated servers); an empty aggregated list for clients that ask for one (kube-rs).
pub(crate) async fn legacy_api(headers: HeaderMap) -> ApiResult {
    match choose_discovery(&headers, true) {
        Ok(Discovery::Aggregated(version)) => {
            let doc = CachedDoc::new(&discovery::empty_aggregated_discovery(version));
            Ok(aggregated_response(&doc, version, &headers))
        }
        _ => Err(ApiError::path_not_found().into()),
    }
}

pub(crate) async fn api_group(
    State(state): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    choose_discovery(&headers, false)?;
    let doc = discovery::api_group_doc(&state.catalogue, &group).ok_or_else(ApiError::path_not_found)?;
    Ok(json_response(StatusCode::OK, &doc))
}

pub(crate) async fn api_resources(
    State(state): State<AppState>,
    Path((group, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    choose_discovery(&headers, false)?;
    let doc = discovery::api_resource_list(&state.catalogue, &group, &version)
        .ok_or_else(ApiError::path_not_found)?;
    Ok(json_response(StatusCode::OK, &doc))
}
