//! The one place where the HTTP routes are assembled ([`router`]), and the small endpoints that
//! need nothing but the state: the root path list, `/version` and the health checks.

use std::sync::atomic::Ordering;

use axum::{
    extract::State,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{any, get},
    Router,
};
use reports_core::ApiError;
use serde_json::json;

use crate::{
    discovery, resource,
    response::{json_response, ErrorResponse},
    state::AppState,
};

/// Assembles every route of the server.
pub(crate) fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    let guard = state.guard.clone();
    let admission = state.admission.clone();
    let routes = Router::new()
        .route("/", get(root_paths))
        .route("/version", get(version))
        .route("/openapi/v2", get(discovery::openapi_v2))
        .route("/openapi/v3", get(discovery::openapi_index))
        .route("/openapi/v3/apis/{group}/{version}", get(discovery::openapi_group_version))
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(health))
        .route("/metrics", get(metrics_text))
        .route("/api", get(discovery::legacy_api))
        .route("/apis", get(discovery::apis))
        .route("/apis/{group}", get(discovery::api_group))
        .route("/apis/{group}/{version}", get(discovery::api_resources))
        .route("/apis/{group}/{version}/{*rest}", any(resource::handle))
        .fallback(|| async { ErrorResponse(ApiError::path_not_found()) })
        .layer(axum::middleware::from_fn(undecodable_path));
    // The layer added last runs first: metrics see every answer, refusals included, as
    // kube-apiserver counts them, and resolve the request info that the guard and admission
    // read; admission comes after the guard, which names the client whose share it counts.
    let routes = routes.layer(axum::middleware::from_fn(move |request, next| {
        crate::limits::admit(admission.clone(), request, next)
    }));
    let routes = match guard {
        Some(guard) => routes.layer(axum::middleware::from_fn(move |request, next| {
            crate::auth::guard(guard.clone(), request, next)
        })),
        None => routes,
    };
    routes
        .layer(axum::middleware::from_fn(move |request, next| {
            crate::metrics::track(metrics.clone(), request, next)
        }))
        .with_state(state)
}

/// `/metrics`, in Prometheus text format.
async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))],
        state.metrics.render(),
    )
        .into_response()
}

async fn root_paths(State(state): State<AppState>) -> Response {
    let mut paths = vec![
        "/api".to_string(),
        "/apis".into(),
        "/healthz".into(),
        "/livez".into(),
        "/metrics".into(),
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

/// A path whose `%XX` escapes do not decode to UTF-8 names nothing served here: 404 as a Status,
/// rather than the router's plain-text rejection.
async fn undecodable_path(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let decoded = reports_core::options::percent_decode(request.uri().path(), false);
    if std::str::from_utf8(&decoded).is_err() {
        return ErrorResponse(ApiError::path_not_found()).into_response();
    }
    next.run(request).await
}
