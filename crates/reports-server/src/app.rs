//! Application state and the one place where the HTTP routes are assembled ([`router`]).

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use axum::{
    extract::{Path, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{any, get},
    Router,
};
use reports_core::{discovery, openapi, ApiError, Catalogue};
use reports_store::DynStore;
use serde_json::{json, Value};
use sha2::{Digest, Sha512};
use tokio::sync::watch;

use crate::{
    resource,
    response::{json_response, ApiResult, ErrorResponse},
    watch::ChangeFeed,
};

/// Shared state of every request handler. Cheap to clone: one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// What the handlers share, and why each piece is shared rather than rebuilt per request.
pub struct Shared {
    /// The six kinds, derived once from the embedded CRDs.
    pub catalogue: Catalogue,
    /// The database; every request reads or writes through it.
    pub store: DynStore,
    /// The tail of the change log shared by every watch, so each change is read once per
    /// process instead of once per watcher.
    pub changes: Arc<ChangeFeed>,
    /// Discovery documents rendered once (they only change with the binary), with their ETags.
    pub discovery: DiscoveryDocs,
    /// Largest request body accepted (413 beyond it).
    pub max_body_bytes: usize,
    /// Flips to true when the server starts shutting down, so long-running responses end cleanly
    /// and `/readyz` fails.
    pub shutting_down: watch::Receiver<bool>,
    /// Set once the listener is up; `/readyz` fails before.
    pub ready: AtomicBool,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Builds the state.
    pub fn new(
        catalogue: Catalogue,
        store: DynStore,
        changes: Arc<ChangeFeed>,
        max_body_bytes: usize,
        shutting_down: watch::Receiver<bool>,
    ) -> Self {
        let discovery = DiscoveryDocs::new(&catalogue);
        Self(Arc::new(Shared {
            catalogue,
            store,
            changes,
            discovery,
            max_body_bytes,
            shutting_down,
            ready: AtomicBool::new(false),
        }))
    }

    /// Marks the server ready to serve.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }
}

/// A rendered document and its quoted ETag.
pub struct CachedDoc {
    /// The JSON bytes.
    pub body: Vec<u8>,
    /// `"<uppercase hex sha512>"`, as k8s.io/apiserver computes discovery ETags.
    pub etag: String,
}

impl CachedDoc {
    fn new(value: &Value) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_default();
        let etag = format!("\"{:X}\"", Sha512::digest(&body));
        Self { body, etag }
    }
}

/// Discovery documents, rendered at start-up.
pub struct DiscoveryDocs {
    /// Legacy `APIGroupList`.
    pub group_list: CachedDoc,
    /// Aggregated discovery v2.
    pub v2: CachedDoc,
    /// Aggregated discovery v2beta1.
    pub v2beta1: CachedDoc,
    /// `/openapi/v3`: the index naming each group/version document with its hash.
    pub openapi_index: CachedDoc,
    /// `/openapi/v3/apis/<group>/<version>` documents, keyed by `group/version`.
    pub openapi: std::collections::BTreeMap<String, CachedDoc>,
    /// `/openapi/v2`, the Swagger 2.0 document the aggregator merges.
    pub openapi_v2: CachedDoc,
    /// `Last-Modified` of the OpenAPI documents: they are built once, at start-up.
    pub openapi_last_modified: String,
}

impl DiscoveryDocs {
    fn new(catalogue: &Catalogue) -> Self {
        let mut openapi = std::collections::BTreeMap::new();
        let mut index = serde_json::Map::new();
        for (group, version) in openapi::group_versions(catalogue) {
            let Some(doc) = openapi::group_version_doc(catalogue, &group, &version) else { continue };
            let doc = CachedDoc::new(&doc);
            let hash = doc.etag.trim_matches('"').to_string();
            index.insert(
                format!("apis/{group}/{version}"),
                json!({"serverRelativeURL": format!("/openapi/v3/apis/{group}/{version}?hash={hash}")}),
            );
            openapi.insert(format!("{group}/{version}"), doc);
        }
        Self {
            group_list: CachedDoc::new(&discovery::api_group_list(catalogue)),
            v2: CachedDoc::new(&discovery::aggregated_discovery(catalogue, "v2")),
            v2beta1: CachedDoc::new(&discovery::aggregated_discovery(catalogue, "v2beta1")),
            openapi_index: CachedDoc::new(&json!({"paths": index})),
            openapi,
            openapi_v2: CachedDoc::new(&openapi::v2_doc(catalogue)),
            openapi_last_modified: jiff::Timestamp::now().strftime("%a, %d %b %Y %H:%M:%S GMT").to_string(),
        }
    }
}

/// Assembles every route of the server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(root_paths))
        .route("/version", get(version))
        .route("/openapi/v2", get(openapi_v2))
        .route("/openapi/v3", get(openapi_index))
        .route("/openapi/v3/apis/{group}/{version}", get(openapi_group_version))
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(health))
        .route("/api", get(legacy_api))
        .route("/apis", get(apis))
        .route("/apis/{group}", get(api_group))
        .route("/apis/{group}/{version}", get(api_resources))
        .route("/apis/{group}/{version}/{*rest}", any(resource::handle))
        .fallback(|| async { ErrorResponse(ApiError::path_not_found()) })
        .with_state(state)
}

async fn root_paths(State(state): State<AppState>) -> Response {
    let mut paths = vec![
        "/api".to_string(),
        "/apis".into(),
        "/healthz".into(),
        "/livez".into(),
        "/openapi/v2".into(),
        "/openapi/v3".into(),
        "/readyz".into(),
        "/version".into(),
    ];
    for g in state.catalogue.groups() {
        paths.push(format!("/apis/{}", g.group));
        paths.push(format!("/apis/{}/{}", g.group, g.version));
    }
    json_response(StatusCode::OK, &json!({ "paths": paths }))
}

async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": "33",
            "gitVersion": concat!("v", env!("CARGO_PKG_VERSION"), "-reports-server"),
            "gitCommit": "",
            "gitTreeState": "",
            "buildDate": "",
            "goVersion": "",
            "compiler": "rustc",
            "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        }),
    )
}

/// `/healthz`, `/livez`, `/readyz`. Liveness only needs the process; readiness also needs the
/// store and fails while starting or shutting down.
async fn health(State(state): State<AppState>, uri: axum::http::Uri) -> Response {
    let endpoint = uri.path().trim_start_matches('/').to_string();
    let verbose =
        uri.query().is_some_and(|q| q.split('&').any(|p| p == "verbose" || p.starts_with("verbose=")));
    let mut checks: Vec<(&str, bool)> = vec![("ping", true)];
    if endpoint != "livez" {
        let store_ok = match tokio::time::timeout(std::time::Duration::from_secs(5), state.store.ping()).await
        {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "{endpoint}: storage check failed");
                false
            }
            Err(_) => {
                tracing::warn!("{endpoint}: storage check timed out");
                false
            }
        };
        checks.push(("storage", store_ok));
    }
    if endpoint == "readyz" {
        checks.push(("started", state.ready.load(Ordering::SeqCst)));
        checks.push(("shutdown", !*state.shutting_down.borrow()));
    }
    let ok = checks.iter().all(|(_, ok)| *ok);
    let body = if verbose || !ok {
        let mut text: String =
            checks
                .iter()
                .map(|(name, ok)| {
                    if *ok {
                        format!("[+]{name} ok\n")
                    } else {
                        format!("[-]{name} failed: reason withheld\n")
                    }
                })
                .collect();
        text.push_str(&format!("{endpoint} check {}\n", if ok { "passed" } else { "failed" }));
        text
    } else {
        "ok".to_string()
    };
    let status = if ok { StatusCode::OK } else { StatusCode::INTERNAL_SERVER_ERROR };
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// Which aggregated discovery version an Accept header asks for, if any, else whether it accepts
/// plain JSON. Clauses are taken in order; the first one we can serve wins.
enum DiscoveryChoice {
    Aggregated(&'static str),
    Legacy,
}

fn choose_discovery(headers: &HeaderMap, allow_aggregated: bool) -> Result<DiscoveryChoice, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if accept.trim().is_empty() {
        return Ok(DiscoveryChoice::Legacy);
    }
    for clause in accept.split(',') {
        let mut parts = clause.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let params: Vec<(String, String)> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let param = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        if !matches!(media.as_str(), "application/json" | "application/*" | "*/*") {
            continue;
        }
        match param("as") {
            None => return Ok(DiscoveryChoice::Legacy),
            Some("APIGroupDiscoveryList")
                if allow_aggregated && param("g") == Some("apidiscovery.k8s.io") =>
            {
                match param("v") {
                    Some("v2") => return Ok(DiscoveryChoice::Aggregated("v2")),
                    Some("v2beta1") => return Ok(DiscoveryChoice::Aggregated("v2beta1")),
                    _ => continue,
                }
            }
            _ => continue,
        }
    }
    Err(ApiError::not_acceptable("application/json"))
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
        crate::response::bytes_response(StatusCode::OK, content_type, doc.body.clone())
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
async fn openapi_v2(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
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
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let json_ok = accept.trim().is_empty()
        || accept.split(',').any(|clause| {
            let media = clause.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
            matches!(media.as_str(), "application/json" | "application/*" | "*/*")
        });
    if json_ok {
        Ok(())
    } else {
        Err(ApiError::not_acceptable("application/json"))
    }
}

async fn openapi_index(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    require_json(&headers)?;
    Ok(cached_json(&state.discovery.openapi_index, &headers, false))
}

async fn openapi_group_version(
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

async fn apis(State(state): State<AppState>, headers: HeaderMap) -> ApiResult {
    Ok(match choose_discovery(&headers, true)? {
        DiscoveryChoice::Aggregated("v2beta1") => {
            aggregated_response(&state.discovery.v2beta1, "v2beta1", &headers)
        }
        DiscoveryChoice::Aggregated(_) => aggregated_response(&state.discovery.v2, "v2", &headers),
        DiscoveryChoice::Legacy => crate::response::bytes_response(
            StatusCode::OK,
            "application/json",
            state.discovery.group_list.body.clone(),
        ),
    })
}

/// `/api`: no legacy core group here. 404 for plain clients (client-go tolerates it from
/// aggregated servers); an empty aggregated list for clients that ask for one (kube-rs).
async fn legacy_api(headers: HeaderMap) -> ApiResult {
    match choose_discovery(&headers, true) {
        Ok(DiscoveryChoice::Aggregated(version)) => {
            let doc = CachedDoc::new(&discovery::empty_aggregated_discovery(version));
            Ok(aggregated_response(&doc, version, &headers))
        }
        _ => Err(ApiError::path_not_found().into()),
    }
}

async fn api_group(
    State(state): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    choose_discovery(&headers, false)?;
    let doc = discovery::api_group_doc(&state.catalogue, &group).ok_or_else(ApiError::path_not_found)?;
    Ok(json_response(StatusCode::OK, &doc))
}

async fn api_resources(
    State(state): State<AppState>,
    Path((group, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    choose_discovery(&headers, false)?;
    let doc = discovery::api_resource_list(&state.catalogue, &group, &version)
        .ok_or_else(ApiError::path_not_found)?;
    Ok(json_response(StatusCode::OK, &doc))
}
