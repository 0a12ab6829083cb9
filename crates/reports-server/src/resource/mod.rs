//! The one generic handler for every report kind: path parsing, verb dispatch, and the verbs.
//!
//! Nothing here knows a particular kind. The path names a [`ResourceKind`] from the catalogue and
//! every verb works from its data, as kube-apiserver's generic registry does for CRDs. Object
//! semantics live in `reports_core` (object, deletion, patch, watch rules), storage in the
//! `Store`; this module wires requests to them, supplies what core takes from the world (the
//! time, uids, generateName randomness) and applies kube's retry rules (generateName
//! collisions, read-modify-write of patches and deletes). The verbs are in [`reads`] (get, list,
//! watch), [`writes`] (create, update, patch) and [`deletes`] (delete, deletecollection).

mod deletes;
mod reads;
mod writes;

use axum::{
    body::Body,
    extract::{Path, State},
    http::{header, HeaderMap, HeaderValue, Method, Uri},
    response::IntoResponse,
};
use reports_core::{
    field_validation::{unknown_fields_outcome, warning_headers, DecodeIssue, WriteVerb},
    negotiate::{self, decode_body, negotiate, BodyType, Endpoint},
    options::{DeleteOptions, Query, WriteOptions},
    time::format_time,
    ApiError, ResourceKind,
};
use reports_store::StoredObject;
use serde_json::Value;

use crate::{
    render::Renderer,
    response::{store_error, ApiResult},
    state::AppState,
};

/// Read-modify-write attempts for patches and deletes racing other writers.
const WRITE_ATTEMPTS: usize = 16;

/// What a resource path names.
type Target<'a> = reports_core::catalogue::ResourcePath<'a>;

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `pretty` query parameter, or implied by a human-looking user agent (as k8s.io/apiserver does).
pub(crate) fn wants_pretty(query: &Query, headers: &HeaderMap) -> bool {
    match query.get("pretty") {
        Some(_) => query.flag("pretty"),
        None => header_str(headers, header::USER_AGENT).is_some_and(|ua| {
            ua.starts_with("curl") || ua.starts_with("Wget") || ua.starts_with("Mozilla/5.0")
        }),
    }
}

/// Entry point for `/apis/{group}/{version}/{*rest}`.
pub(crate) async fn handle(
    State(state): State<AppState>,
    Path((group, version, rest)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    user: Option<axum::Extension<reports_auth::UserInfo>>,
    body: Body,
) -> ApiResult {
    // Deprecated `/watch/...` paths, which kube-apiserver still serves: a watch of the collection,
    // or of one object through a name field selector.
    let (rest, legacy_watch) = match rest.strip_prefix("watch/") {
        Some(rest) => (rest, true),
        None => (rest.as_str(), false),
    };
    let mut target = state.catalogue.resolve_path(&group, &version, rest)?;
    if target.kind.query {
        let request = crate::query::QueryRequest {
            state: &state,
            target,
            method,
            query: Query::parse(uri.query()),
            headers: &headers,
            user: user.map(|axum::Extension(user)| user),
        };
        return request.serve().await;
    }
    // No name or namespace holds a NUL byte (neither is valid with one, and PostgreSQL cannot
    // even compare with one), so both stores give the same answer without being asked.
    // A create reaches the namespace and name validation, which refuses it with 422.
    let has_nul = |part: &Option<String>| part.as_deref().is_some_and(|p| p.contains('\0'));
    if method != Method::POST {
        if let Some(name) = target.name.as_deref() {
            if name.contains('\0') || has_nul(&target.namespace) {
                return Err(ApiError::not_found(target.kind, name).into());
            }
        } else if has_nul(&target.namespace) {
            return Err(ApiError::bad_request("invalid namespace: it contains a NUL byte").into());
        }
    }
    let mut query = Query::parse(uri.query());
    if legacy_watch {
        if method != Method::GET {
            return Err(ApiError::method_not_allowed(method.as_str(), target.kind).into());
        }
        query.set("watch", "true");
        if let Some(name) = target.name.take() {
            let selector = match query.get("fieldSelector").filter(|s| !s.is_empty()) {
                Some(existing) => format!("{existing},metadata.name={name}"),
                None => format!("metadata.name={name}"),
            };
            query.set("fieldSelector", &selector);
        }
    }
    let endpoint = match (&method, &target.name) {
        (&Method::GET | &Method::HEAD, None) if query.flag("watch") => Endpoint::Watch,
        (&Method::GET | &Method::HEAD, None) | (&Method::DELETE, None) => Endpoint::List,
        _ => Endpoint::Object,
    };
    let mut negotiated = negotiate(header_str(&headers, header::ACCEPT), endpoint)?;
    negotiated.pretty |= wants_pretty(&query, &headers) && endpoint != Endpoint::Watch;
    let renderer = Renderer::new(target.kind, negotiated, query.get("includeObject"))?;
    let request = Request {
        state: &state,
        target,
        query,
        headers: &headers,
        renderer,
        user: user.map(|axum::Extension(user)| user),
        warnings: Default::default(),
    };
    let outcome = match (method, request.target.name.is_some()) {
        (Method::GET | Method::HEAD, true) => request.get().await,
        (Method::GET | Method::HEAD, false) => request.list().await,
        (Method::POST, false) => request.create(body).await,
        (Method::PUT, true) => request.update(body).await,
        (Method::PATCH, true) => request.patch(body).await,
        (Method::DELETE, true) => request.delete(body).await,
        (Method::DELETE, false) => request.delete_collection(body).await,
        (method, _) => {
            let verb = match method {
                Method::POST => "create",
                Method::PUT => "update",
                Method::PATCH => "patch",
                _ => method.as_str(),
            };
            return Err(ApiError::method_not_allowed(verb, request.target.kind).into());
        }
    };
    // Warnings travel on error responses too: kube writes them as soon as they are recorded.
    let warnings = std::mem::take(&mut *request.warnings.lock().unwrap_or_else(|e| e.into_inner()));
    if warnings.is_empty() {
        return outcome;
    }
    let mut response = outcome.unwrap_or_else(IntoResponse::into_response);
    for value in warning_headers(warnings.iter().map(String::as_str)) {
        if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    Ok(response)
}

/// One parsed request on a resource path.
struct Request<'a> {
    state: &'a AppState,
    target: Target<'a>,
    query: Query,
    headers: &'a HeaderMap,
    renderer: Renderer,
    /// The caller, when the server authenticates (in a cluster).
    user: Option<reports_auth::UserInfo>,
    /// `Warning` header texts recorded while serving (unknown fields under `fieldValidation=Warn`).
    warnings: std::sync::Mutex<Vec<String>>,
}

impl Request<'_> {
    fn kind(&self) -> &ResourceKind {
        self.target.kind
    }

    fn name(&self) -> &str {
        self.target.name.as_deref().unwrap_or_default()
    }

    async fn read_body(&self, body: Body) -> Result<bytes::Bytes, ApiError> {
        let limit = self.state.max_body_bytes;
        axum::body::to_bytes(body, limit).await.map_err(|e| {
            if exceeds_length_limit(&e) {
                ApiError::too_large(limit)
            } else {
                ApiError::bad_request(format!("reading the request body: {e}"))
            }
        })
    }

    /// Reads the optional `DeleteOptions` body of a delete or deletecollection (an empty body is
    /// none) together with the query's options.
    async fn read_delete_options(&self, body: Body) -> Result<DeleteOptions, ApiError> {
        let bytes = self.read_body(body).await?;
        let body_value = if bytes.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(decode_body(&bytes, BodyType::Json)?)
        };
        DeleteOptions::parse(&self.query, body_value.as_ref())
    }

    /// Reads a whole object (create, update) and prunes it like kube's decoder, applying
    /// `fieldValidation` to what was pruned.
    async fn read_object(&self, body: Body, options: &WriteOptions) -> Result<Value, ApiError> {
        let body_type = negotiate::object_body_type(header_str(self.headers, header::CONTENT_TYPE))?;
        let bytes = self.read_body(body).await?;
        let (mut object, duplicates) = negotiate::decode_body_with_duplicates(&bytes, body_type)?;
        let unknown = self.kind().validator.prune(&mut object);
        self.field_validation(&duplicates, &unknown, options, WriteVerb::CreateOrUpdate)?;
        Ok(object)
    }

    /// Records the warnings for duplicate keys and pruned unknown fields, or fails, per
    /// `fieldValidation`.
    fn field_validation(
        &self,
        duplicates: &[DecodeIssue],
        unknown: &[String],
        options: &WriteOptions,
        verb: WriteVerb<'_>,
    ) -> Result<(), ApiError> {
        let warnings =
            unknown_fields_outcome(self.kind(), options.field_validation, duplicates, unknown, verb)?;
        *self.warnings.lock().unwrap_or_else(|e| e.into_inner()) = warnings;
        Ok(())
    }

    async fn load(&self) -> Result<StoredObject, ApiError> {
        self.state
            .store
            .get(self.kind().storage_key(), self.target.storage_namespace(), self.name())
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::not_found(self.kind(), self.name()))
    }

    fn parse_stored(&self, stored: &StoredObject) -> Result<Value, ApiError> {
        stored.parse().map_err(store_error)
    }
}

/// True when reading a body failed because it passed the size limit: a
/// [`http_body_util::LengthLimitError`] somewhere in the error's source chain.
fn exceeds_length_limit(error: &axum::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The current time in the wire format, for `creationTimestamp` and `deletionTimestamp`.
fn now() -> String {
    format_time(jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_body_over_the_limit_is_told_apart_from_other_read_errors() {
        let body = axum::body::Body::from(vec![b'x'; 100]);
        let error = axum::body::to_bytes(body, 10).await.unwrap_err();
        assert!(super::exceeds_length_limit(&error));
        let failing = axum::body::Body::from_stream(futures::stream::iter([Err::<bytes::Bytes, _>(
            std::io::Error::other("connection reset"),
        )]));
        let error = axum::body::to_bytes(failing, 10).await.unwrap_err();
        assert!(!super::exceeds_length_limit(&error));
    }
}
