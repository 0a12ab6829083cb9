//! The one generic handler for every report kind: path parsing, verb dispatch, and the verbs.
//!
//! Nothing here knows a particular kind. The path names a [`ResourceKind`] from the catalogue and
//! every verb works from its data, as kube-apiserver's generic registry does for CRDs. Object
//! semantics live in `reports_core::object`, storage in the `Store`; this module wires requests
//! to them and applies kube's retry rules (generateName collisions, patch read-modify-write).

use axum::{
    body::Body,
    extract::{Path, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use reports_core::{
    negotiate::{self, decode_body, negotiate, BodyType, Endpoint},
    object::{self, generate_name, ObjectExt},
    options::{
        DeleteOptions, FieldValidation, ListOptions, Propagation, Query, RvMatch, RvParam, WriteOptions,
    },
    paging::{expired_token, ContinueToken},
    patch::apply_patch,
    time::now_rfc3339,
    validation::{unknown_fields_outcome, warning_headers, DecodeIssue, WriteVerb},
    ApiError, ResourceKind, StatusDetails,
};
use reports_store::{ListQuery, StoreError, StoredObject};
use serde_json::{json, Value};

use crate::{
    app::AppState,
    render::Renderer,
    response::{store_error, ApiResult},
    watch::{self, WatchRequest},
};

/// kube-apiserver retries generateName collisions this many times.
const GENERATE_NAME_ATTEMPTS: usize = 8;
/// Read-modify-write attempts for patches and deletes racing other writers.
const WRITE_ATTEMPTS: usize = 16;

/// What a resource path names.
struct Target<'a> {
    kind: &'a ResourceKind,
    /// Namespace from the URL (None on cluster-scope and all-namespaces paths).
    namespace: Option<String>,
    /// Object name, for item paths.
    name: Option<String>,
}

impl Target<'_> {
    /// The namespace column value of the object ("" for cluster-scoped kinds).
    fn storage_namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or_default()
    }
}

fn parse_target<'a>(
    state: &'a AppState,
    group: &str,
    version: &str,
    rest: &str,
) -> Result<Target<'a>, ApiError> {
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(ApiError::path_not_found());
    }
    let (namespace, tail) = match segments.as_slice() {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
        tail => (None, tail),
    };
    let (plural, name) = match tail {
        [plural] => (*plural, None),
        [plural, name] => (*plural, Some(name.to_string())),
        // No subresources: the CRDs declare none (no /status, no /scale).
        _ => return Err(ApiError::path_not_found()),
    };
    let kind = state.catalogue.find(group, version, plural).ok_or_else(ApiError::path_not_found)?;
    if namespace.is_some() && !kind.namespaced {
        return Err(ApiError::path_not_found());
    }
    Ok(Target { kind, namespace, name })
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `pretty` query parameter, or implied by a human-looking user agent (as k8s.io/apiserver does).
fn wants_pretty(query: &Query, headers: &HeaderMap) -> bool {
    match query.get("pretty") {
        Some(_) => query.flag("pretty"),
        None => header_str(headers, header::USER_AGENT).is_some_and(|ua| {
            ua.starts_with("curl") || ua.starts_with("Wget") || ua.starts_with("Mozilla/5.0")
        }),
    }
}

/// Entry point for `/apis/{group}/{version}/{*rest}`.
pub async fn handle(
    State(state): State<AppState>,
    Path((group, version, rest)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    // Deprecated `/watch/...` paths, which kube-apiserver still serves: a watch of the collection,
    // or of one object through a name field selector.
    let (rest, legacy_watch) = match rest.strip_prefix("watch/") {
        Some(rest) => (rest, true),
        None => (rest.as_str(), false),
    };
    let mut target = parse_target(&state, &group, &version, rest)?;
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
    let request =
        Request { state: &state, target, query, headers: &headers, renderer, warnings: Default::default() };
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
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if too_large {
                ApiError::too_large(limit)
            } else {
                ApiError::bad_request(format!("reading the request body: {e}"))
            }
        })
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

    async fn get(&self) -> ApiResult {
        if self.query.flag("watch") {
            return Err(ApiError::method_not_allowed("watch", self.kind()).into());
        }
        let stored = self.load().await?;
        if let RvParam::At(rv) = reports_core::options::parse_rv_param(self.query.get("resourceVersion"))? {
            let current = self.state.store.current_rv().await.map_err(store_error)?;
            if rv > current {
                return Err(ApiError::too_large_resource_version(rv, current).into());
            }
        }
        Ok(self.renderer.object(StatusCode::OK, &stored.body)?)
    }

    async fn list(&self) -> ApiResult {
        let options = ListOptions::parse(&self.query, self.kind())?;
        if options.watch {
            return Ok(self.watch(options)?);
        }
        let store = &self.state.store;
        let kind = self.kind();
        let mut query = ListQuery {
            resource: kind.storage_key().to_string(),
            namespace: self.target.namespace.clone(),
            labels: options.label_selector.clone(),
            fields: options.field_selector.clone(),
            after: None,
            limit: options.limit,
        };
        // The RV every page reports: the first page's snapshot, carried in the token.
        let mut reported_rv: Option<u64> = None;
        if let Some(token) = &options.continue_token {
            if token.rv < store.compacted_rv().await.map_err(store_error)? {
                return Err(expired_token().into());
            }
            query.after = Some((token.ns.clone(), token.name.clone()));
            reported_rv = Some(token.rv);
        }
        let stream = store.list(query).await.map_err(store_error)?;
        if let (None, RvParam::At(rv)) = (&options.continue_token, options.resource_version) {
            if rv > stream.snapshot_rv {
                return Err(ApiError::too_large_resource_version(rv, stream.snapshot_rv).into());
            }
            let exact = options.rv_match == Some(RvMatch::Exact)
                || (options.rv_match.is_none() && options.limit.is_some());
            if exact && rv != stream.snapshot_rv {
                // No MVCC history: the data at `rv` is the current data only if nothing of this
                // kind changed since, which the change log can tell while it still covers `rv`.
                let covered = rv >= store.compacted_rv().await.map_err(store_error)?;
                if !covered || store.changed_since(kind.storage_key(), rv).await.map_err(store_error)? {
                    return Err(
                        ApiError::expired("The resourceVersion for the provided list is too old.").into()
                    );
                }
                reported_rv = Some(rv);
            }
        }
        let renderer = Renderer::new(kind, self.renderer.negotiated, self.query.get("includeObject"))?;
        Ok(renderer.list(stream, move |snapshot_rv, last, more| {
            let rv = reported_rv.unwrap_or(snapshot_rv);
            let mut metadata = json!({"resourceVersion": rv.to_string()});
            if let (true, Some(last)) = (more, last) {
                metadata["continue"] =
                    json!(ContinueToken::new(rv, last.namespace.clone(), last.name.clone()).encode());
            }
            metadata
        }))
    }

    fn watch(&self, options: ListOptions) -> Result<Response, ApiError> {
        // A watcher keeps per-stream rendering state (Table columns sent once), so it gets its own.
        let renderer = Renderer::new(self.kind(), self.renderer.negotiated, self.query.get("includeObject"))?;
        let request = WatchRequest {
            kind: self.kind().clone(),
            namespace: self.target.namespace.clone(),
            options,
            renderer,
        };
        Ok(watch::serve(
            request,
            self.state.store.clone(),
            &self.state.changes,
            self.state.shutting_down.clone(),
        ))
    }

    async fn create(&self, body: Body) -> ApiResult {
        let options = WriteOptions::parse(&self.query, "CreateOptions", false)?;
        let mut object = self.read_object(body, &options).await?;
        let kind = self.kind();
        object::prepare_create(kind, self.target.namespace.as_deref(), &mut object, &now_rfc3339())?;
        let generate_from = object.meta_str("generateName").to_string();
        let fixed_name = object.meta_str("name").to_string();
        let attempts = if fixed_name.is_empty() { GENERATE_NAME_ATTEMPTS } else { 1 };
        let mut name = fixed_name.clone();
        for attempt in 1..=attempts {
            if fixed_name.is_empty() {
                name = generate_name(&generate_from);
                object::meta_mut(&mut object).insert("name".into(), Value::String(name.clone()));
            }
            let namespace = object.meta_str("namespace").to_string();
            if options.dry_run {
                let existing =
                    self.state.store.get(kind.storage_key(), &namespace, &name).await.map_err(store_error)?;
                match existing {
                    Some(existing) if fixed_name.is_empty() => {
                        let _ = existing;
                        continue;
                    }
                    Some(existing) => return Err(self.already_exists(&existing, &name)?.into()),
                    None => return Ok(self.renderer.object(StatusCode::CREATED, &object.to_string())?),
                }
            }
            // Only a generated name can need another attempt, which needs the object again.
            let candidate = if attempt < attempts { object.clone() } else { std::mem::take(&mut object) };
            match self.state.store.create(kind.storage_key(), candidate).await {
                Ok(stored) => return Ok(self.renderer.object(StatusCode::CREATED, &stored.body)?),
                Err(StoreError::AlreadyExists) if fixed_name.is_empty() => continue,
                Err(StoreError::AlreadyExists) => {
                    let existing = self
                        .state
                        .store
                        .get(kind.storage_key(), &namespace, &name)
                        .await
                        .map_err(store_error)?;
                    return Err(match existing {
                        Some(existing) => self.already_exists(&existing, &name)?,
                        None => ApiError::already_exists(kind, &name),
                    }
                    .into());
                }
                Err(e) => return Err(store_error(e).into()),
            }
        }
        Err(ApiError::generate_name_conflict(kind, &name).into())
    }

    /// AlreadyExists, prefixed as kube does when the existing object is being deleted.
    fn already_exists(&self, existing: &StoredObject, name: &str) -> Result<ApiError, ApiError> {
        let mut error = ApiError::already_exists(self.kind(), name);
        let value = self.parse_stored(existing)?;
        if value.meta().is_some_and(|m| m.contains_key("deletionTimestamp")) {
            error.message = format!("object is being deleted: {}", error.message);
        }
        Ok(error)
    }

    async fn update(&self, body: Body) -> ApiResult {
        let options = WriteOptions::parse(&self.query, "UpdateOptions", false)?;
        let mut object = self.read_object(body, &options).await?;
        let stored = self.load().await?;
        let current = self.parse_stored(&stored)?;
        object::prepare_update(
            self.kind(),
            self.target.namespace.as_deref(),
            self.name(),
            &mut object,
            &current,
        )?;
        let expected: u64 = object.meta_str("resourceVersion").parse().unwrap_or(0);
        if expected != stored.rv {
            return Err(ApiError::stale(self.kind(), self.name()).into());
        }
        self.write_update(object, &current, stored.rv, options.dry_run).await
    }

    /// Stores an prepared update, or deletes the object when the update removed the last finalizer
    /// of an object that is being deleted (kube's `ShouldDeleteDuringUpdate`).
    async fn write_update(
        &self,
        object: Value,
        current: &Value,
        expected_rv: u64,
        dry_run: bool,
    ) -> ApiResult {
        let kind = self.kind();
        let deleting = current.meta().is_some_and(|m| m.contains_key("deletionTimestamp"));
        if deleting && object.finalizers().is_empty() {
            if dry_run {
                return Ok(self.renderer.object(StatusCode::OK, &object.to_string())?);
            }
            return match self
                .state
                .store
                .delete(kind.storage_key(), self.target.storage_namespace(), self.name(), expected_rv)
                .await
            {
                Ok(gone) => Ok(self.renderer.object(StatusCode::OK, &gone.body)?),
                Err(StoreError::Conflict) => Err(ApiError::stale(kind, self.name()).into()),
                Err(StoreError::NotFound) => Err(ApiError::not_found(kind, self.name()).into()),
                Err(e) => Err(store_error(e).into()),
            };
        }
        if dry_run {
            return Ok(self.renderer.object(StatusCode::OK, &object.to_string())?);
        }
        match self.state.store.update(kind.storage_key(), object, expected_rv).await {
            Ok(stored) => Ok(self.renderer.object(StatusCode::OK, &stored.body)?),
            Err(StoreError::Conflict) => Err(ApiError::stale(kind, self.name()).into()),
            Err(StoreError::NotFound) => Err(ApiError::not_found(kind, self.name()).into()),
            Err(e) => Err(store_error(e).into()),
        }
    }

    async fn patch(&self, body: Body) -> ApiResult {
        let body_type = negotiate::patch_body_type(header_str(self.headers, header::CONTENT_TYPE))?;
        let options = WriteOptions::parse(&self.query, "PatchOptions", false)?;
        let bytes = self.read_body(body).await?;
        let (patch, duplicates) = negotiate::decode_body_with_duplicates(&bytes, body_type)?;
        let kind = self.kind();
        for _ in 0..WRITE_ATTEMPTS {
            let stored = self.load().await?;
            let current = self.parse_stored(&stored)?;
            let mut patched = current.clone();
            apply_patch(&mut patched, &patch, body_type)?;
            if !patched.is_object() {
                return Err(ApiError::bad_request("the patched object is not a JSON object").into());
            }
            let unknown = kind.validator.prune(&mut patched);
            let strict = options.field_validation == FieldValidation::Strict;
            if strict && !(unknown.is_empty() && duplicates.is_empty()) {
                // The strict error quotes the patched object before pruning; rebuild it only then.
                let mut unpruned = current.clone();
                apply_patch(&mut unpruned, &patch, body_type)?;
                self.field_validation(&duplicates, &unknown, &options, WriteVerb::Patch(&unpruned))?;
            }
            self.field_validation(&duplicates, &unknown, &options, WriteVerb::Patch(&Value::Null))?;
            // A patch that names a resourceVersion is a precondition; otherwise it applies to
            // whatever is current, retrying if another writer gets in between.
            let pinned = patched.meta_str("resourceVersion").to_string();
            let explicit = !pinned.is_empty() && pinned != stored.rv.to_string();
            if explicit {
                return Err(ApiError::stale(kind, self.name()).into());
            }
            let pinned_by_patch = patch_sets_resource_version(&patch, body_type);
            if pinned.is_empty() {
                object::meta_mut(&mut patched)
                    .insert("resourceVersion".into(), Value::String(stored.rv.to_string()));
            }
            object::prepare_update(
                kind,
                self.target.namespace.as_deref(),
                self.name(),
                &mut patched,
                &current,
            )?;
            match self.write_update(patched, &current, stored.rv, options.dry_run).await {
                Err(e) if e.0.code == 409 && e.0.reason == "Conflict" && !pinned_by_patch => continue,
                Err(e) if e.0.code == 404 => continue,
                other => return other,
            }
        }
        Err(ApiError::conflict(kind, self.name(), "the object is being modified too often; please try again")
            .into())
    }

    async fn delete(&self, body: Body) -> ApiResult {
        let bytes = self.read_body(body).await?;
        let body_value = if bytes.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(decode_body(&bytes, BodyType::Json)?)
        };
        let options = DeleteOptions::parse(&self.query, body_value.as_ref())?;
        let kind = self.kind();
        for _ in 0..WRITE_ATTEMPTS {
            let stored = self.load().await?;
            let current = self.parse_stored(&stored)?;
            if let Some(uid) = &options.precondition_uid {
                if *uid != stored.uid {
                    return Err(ApiError::conflict(
                        kind,
                        self.name(),
                        &format!(
                            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                            stored.uid
                        ),
                    )
                    .into());
                }
            }
            if let Some(rv) = &options.precondition_rv {
                if *rv != stored.rv.to_string() {
                    return Err(ApiError::conflict(
                        kind,
                        self.name(),
                        &format!(
                            "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                            stored.rv
                        ),
                    )
                    .into());
                }
            }
            match self.delete_one(&stored, current, &options).await {
                Err(DeleteFailure::Raced) => continue,
                Err(DeleteFailure::Api(e)) => return Err(e.into()),
                Ok(outcome) => return Ok(outcome),
            }
        }
        Err(ApiError::conflict(kind, self.name(), "the object is being modified too often; please try again")
            .into())
    }

    /// Deletes or starts deleting (finalizers) one loaded object.
    async fn delete_one(
        &self,
        stored: &StoredObject,
        current: Value,
        options: &DeleteOptions,
    ) -> Result<Response, DeleteFailure> {
        let kind = self.kind();
        let name = stored.name.clone();
        match deletion_plan(&current, options.propagation) {
            DeletionPlan::Immediately => {
                if !options.dry_run {
                    match self
                        .state
                        .store
                        .delete(kind.storage_key(), &stored.namespace, &name, stored.rv)
                        .await
                    {
                        Ok(_) => {}
                        Err(StoreError::Conflict | StoreError::NotFound) => return Err(DeleteFailure::Raced),
                        Err(e) => return Err(DeleteFailure::Api(store_error(e))),
                    }
                }
                let status = json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": StatusDetails { name, group: kind.group.clone(), kind: kind.plural.clone(), uid: stored.uid.clone(), ..Default::default() },
                });
                Ok(self.renderer.value(StatusCode::OK, &status))
            }
            DeletionPlan::AlreadyDeleting => {
                self.renderer.object(StatusCode::OK, &stored.body).map_err(DeleteFailure::Api)
            }
            DeletionPlan::MarkDeleting(marked) => {
                // kube keeps 200 for compatibility except after an explicit orphanDependents=false.
                let status = if options.orphan_dependents == Some(false) {
                    StatusCode::ACCEPTED
                } else {
                    StatusCode::OK
                };
                if options.dry_run {
                    return self.renderer.object(status, &marked.to_string()).map_err(DeleteFailure::Api);
                }
                match self.state.store.update(kind.storage_key(), marked, stored.rv).await {
                    Ok(updated) => self.renderer.object(status, &updated.body).map_err(DeleteFailure::Api),
                    Err(StoreError::Conflict | StoreError::NotFound) => Err(DeleteFailure::Raced),
                    Err(e) => Err(DeleteFailure::Api(store_error(e))),
                }
            }
        }
    }

    async fn delete_collection(&self, body: Body) -> ApiResult {
        let kind = self.kind();
        if kind.namespaced && self.target.namespace.is_none() {
            return Err(ApiError::bad_request("Namespace parameter required.").into());
        }
        let bytes = self.read_body(body).await?;
        let body_value = if bytes.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(decode_body(&bytes, BodyType::Json)?)
        };
        let delete_options = DeleteOptions::parse(&self.query, body_value.as_ref())?;
        let list_options = ListOptions::parse(&self.query, kind)?;
        let query = ListQuery {
            resource: kind.storage_key().to_string(),
            namespace: self.target.namespace.clone(),
            labels: list_options.label_selector,
            fields: list_options.field_selector,
            after: None,
            limit: None,
        };
        let stream = self.state.store.list(query).await.map_err(store_error)?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let store = self.state.store.clone();
        let resource = kind.storage_key().to_string();
        // Deleting runs beside the response: a chunk read, then deleted in one transaction, then
        // its items streamed out as the returned list, so memory stays bounded by one chunk.
        tokio::spawn(delete_collection_task(store, resource, stream, delete_options, tx));
        let deleted = reports_store::ListStream { snapshot_rv: 0, chunks: rx };
        let renderer = Renderer::new(kind, self.renderer.negotiated, None)?;
        let store = self.state.store.clone();
        let current = store.current_rv().await.map_err(store_error)?;
        Ok(renderer.list(deleted, move |_, last, _| {
            let rv = last.map(|o| o.rv).unwrap_or(current).max(current);
            json!({"resourceVersion": rv.to_string()})
        }))
    }
}

/// Why one delete attempt did not finish.
enum DeleteFailure {
    /// Another writer changed or removed the object first; load it again and retry.
    Raced,
    /// A real error for the client.
    Api(ApiError),
}

/// What a delete does to an object.
enum DeletionPlan {
    /// No finalizers: remove it now.
    Immediately,
    /// Already terminating and nothing to add: return it as is.
    AlreadyDeleting,
    /// Finalizers pending: store this version carrying `deletionTimestamp`.
    MarkDeleting(Value),
}

fn deletion_plan(current: &Value, propagation: Option<Propagation>) -> DeletionPlan {
    let mut finalizers = current.finalizers();
    let gc_finalizer = match propagation {
        Some(Propagation::Orphan) => Some("orphan"),
        Some(Propagation::Foreground) => Some("foregroundDeletion"),
        _ => None,
    };
    let deleting = current.meta().is_some_and(|m| m.contains_key("deletionTimestamp"));
    let mut added = false;
    if let Some(f) = gc_finalizer {
        if !finalizers.iter().any(|x| x == f) && !deleting {
            finalizers.push(f.to_string());
            added = true;
        }
    }
    if finalizers.is_empty() {
        return DeletionPlan::Immediately;
    }
    if deleting && !added {
        return DeletionPlan::AlreadyDeleting;
    }
    let mut marked = current.clone();
    let meta = object::meta_mut(&mut marked);
    meta.insert("finalizers".into(), json!(finalizers));
    meta.entry("deletionTimestamp").or_insert_with(|| Value::String(now_rfc3339()));
    meta.entry("deletionGracePeriodSeconds").or_insert(json!(0));
    DeletionPlan::MarkDeleting(marked)
}

fn patch_sets_resource_version(patch: &Value, body_type: BodyType) -> bool {
    match body_type {
        BodyType::MergePatch => {
            patch.get("metadata").and_then(|m| m.get("resourceVersion")).is_some_and(|v| !v.is_null())
        }
        BodyType::JsonPatch => patch.as_array().is_some_and(|ops| {
            ops.iter().any(|op| {
                op.get("path").and_then(Value::as_str) == Some("/metadata/resourceVersion")
                    && op.get("op").and_then(Value::as_str) != Some("test")
            })
        }),
        _ => false,
    }
}

async fn delete_collection_task(
    store: reports_store::DynStore,
    resource: String,
    mut stream: reports_store::ListStream,
    options: DeleteOptions,
    tx: tokio::sync::mpsc::Sender<reports_store::StoreResult<reports_store::ListChunk>>,
) {
    use reports_store::ListChunk;
    while let Some(chunk) = stream.chunks.recv().await {
        let items = match chunk {
            Ok(ListChunk::Items(items)) => items,
            Ok(ListChunk::End { .. }) => break,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let mut immediate = Vec::new();
        let mut out = Vec::new();
        for item in items {
            let current = match item.parse() {
                Ok(v) => v,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            match deletion_plan(&current, options.propagation) {
                DeletionPlan::Immediately if options.dry_run => out.push(item),
                DeletionPlan::Immediately => immediate.push(item),
                DeletionPlan::AlreadyDeleting => out.push(item),
                DeletionPlan::MarkDeleting(marked) if options.dry_run => {
                    out.push(StoredObject { body: marked.to_string(), ..item })
                }
                DeletionPlan::MarkDeleting(marked) => match store.update(&resource, marked, item.rv).await {
                    Ok(updated) => out.push(updated),
                    Err(StoreError::Conflict | StoreError::NotFound) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                },
            }
        }
        if !immediate.is_empty() {
            let keys = immediate.iter().map(|o| (o.namespace.clone(), o.name.clone(), o.rv)).collect();
            match store.delete_batch(&resource, keys).await {
                Ok(deleted) => out.extend(deleted.into_iter().flatten()),
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
        // A client that hangs up does not stop the deletion: kube finishes a deletecollection it
        // has accepted, and a half-deleted namespace would otherwise wait for the next sweep.
        if !tx.is_closed() {
            let _ = tx.send(Ok(ListChunk::Items(out))).await;
        }
    }
    let _ = tx.send(Ok(reports_store::ListChunk::End { more: false })).await;
}
