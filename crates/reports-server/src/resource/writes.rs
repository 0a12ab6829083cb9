//! The write verbs: create (with generateName retries), update and patch (read-modify-write,
//! retried when another writer gets in between).

use axum::{
    body::Body,
    http::{header, StatusCode},
    response::Response,
};
use reports_core::{
    deletion::{is_deleting, update_completes_deletion},
    field_validation::WriteVerb,
    negotiate,
    object::{self, generate_name, ObjectExt},
    options::{FieldValidation, WriteOptions},
    patch::{apply_patch, json_size_up_to, patch_sets_resource_version},
    ApiError,
};
use reports_store::{StoreError, StoredObject};
use serde_json::Value;

use super::{header_str, now, Request, WRITE_ATTEMPTS};
use crate::response::{store_error, ApiResult};

/// kube-apiserver retries generateName collisions this many times.
const GENERATE_NAME_ATTEMPTS: usize = 8;

/// Why a prepared update was not stored.
enum WriteFailure {
    /// The stored object is no longer the version the update was prepared from.
    Stale,
    /// The object is gone.
    Gone,
    /// Anything else, for the client as it is.
    Api(ApiError),
}

impl From<ApiError> for WriteFailure {
    fn from(e: ApiError) -> Self {
        WriteFailure::Api(e)
    }
}

impl Request<'_> {
    /// The client's error for a failed update: 409 Conflict for a stale version, 404 for a
    /// vanished object.
    fn write_error(&self, failure: WriteFailure) -> ApiError {
        match failure {
            WriteFailure::Stale => ApiError::stale(self.kind(), self.name()),
            WriteFailure::Gone => ApiError::not_found(self.kind(), self.name()),
            WriteFailure::Api(e) => e,
        }
    }

    pub(super) async fn create(&self, body: Body) -> ApiResult {
        let options = WriteOptions::parse(&self.query, "CreateOptions", false)?;
        let mut object = self.read_object(body, &options).await?;
        let kind = self.kind();
        // A namespace that cannot exist is refused before anyone is asked whether it does.
        if let Some(namespace) = self.target.namespace.as_deref() {
            object::validate_create_namespace(kind, namespace, object.meta_str("name"))?;
        }
        // Namespace lifecycle admission, which kube-apiserver applies to CRDs before validation.
        if let (Some(namespaces), Some(namespace)) =
            (&self.state.namespaces, self.target.namespace.as_deref())
        {
            namespaces.admit_create(kind, object.meta_str("name"), namespace).await?;
        }
        self.mutating_webhooks("CREATE", None, &mut object, options.dry_run).await?;
        let uid = uuid::Uuid::new_v4().to_string();
        object::prepare_create(kind, self.target.namespace.as_deref(), &mut object, &now(), &uid)?;
        let generate_from = object.meta_str("generateName").to_string();
        let fixed_name = object.meta_str("name").to_string();
        let attempts = if fixed_name.is_empty() { GENERATE_NAME_ATTEMPTS } else { 1 };
        let mut name = fixed_name.clone();
        for attempt in 1..=attempts {
            if fixed_name.is_empty() {
                name = generate_name(&generate_from, rand::random());
                object::meta_mut(&mut object).insert("name".into(), Value::String(name.clone()));
            }
            let namespace = object.meta_str("namespace").to_string();
            self.validating_webhooks("CREATE", &name, Some(&object), None, options.dry_run).await?;
            if options.dry_run {
                let existing =
                    self.state.store.get(kind.storage_key(), &namespace, &name).await.map_err(store_error)?;
                match existing {
                    Some(_) if fixed_name.is_empty() => continue,
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

    /// Asks the cluster's validating admission webhooks that match this write, when there is a
    /// cluster (see `cluster::admission`).
    pub(super) async fn validating_webhooks(
        &self,
        operation: &'static str,
        name: &str,
        object: Option<&Value>,
        old_object: Option<&Value>,
        dry_run: bool,
    ) -> Result<(), ApiError> {
        let Some(webhooks) = &self.state.webhooks else { return Ok(()) };
        webhooks.validate(&self.admission(operation, name, object, old_object, dry_run)).await
    }

    /// Runs the cluster's mutating admission webhooks that match this write over `object`, then
    /// prunes what they added outside the schema (validation follows in `prepare_*`).
    pub(super) async fn mutating_webhooks(
        &self,
        operation: &'static str,
        old_object: Option<&Value>,
        object: &mut Value,
        dry_run: bool,
    ) -> Result<(), ApiError> {
        let Some(webhooks) = &self.state.webhooks else { return Ok(()) };
        let name = object.meta_str("name").to_string();
        // The webhooks are each sent the object as the previous one left it.
        webhooks.mutate(&self.admission(operation, &name, None, old_object, dry_run), object).await?;
        self.kind().validator.prune(object);
        Ok(())
    }

    /// What admission webhooks are told about this write. A request with no authenticated user
    /// (there is no guard without a cluster, and no webhooks either) is described as anonymous.
    fn admission<'a>(
        &'a self,
        operation: &'static str,
        name: &'a str,
        object: Option<&'a Value>,
        old_object: Option<&'a Value>,
        dry_run: bool,
    ) -> crate::cluster::admission::Admission<'a> {
        static ANONYMOUS: std::sync::LazyLock<reports_auth::UserInfo> =
            std::sync::LazyLock::new(reports_auth::UserInfo::anonymous);
        crate::cluster::admission::Admission {
            kind: self.kind(),
            operation,
            namespace: self.target.storage_namespace(),
            name,
            object,
            old_object,
            user: self.user.as_ref().unwrap_or(&ANONYMOUS),
            dry_run,
        }
    }

    /// AlreadyExists, prefixed as kube does when the existing object is being deleted.
    fn already_exists(&self, existing: &StoredObject, name: &str) -> Result<ApiError, ApiError> {
        let mut error = ApiError::already_exists(self.kind(), name);
        let value = self.parse_stored(existing)?;
        if is_deleting(&value) {
            error.message = format!("object is being deleted: {}", error.message);
        }
        Ok(error)
    }

    pub(super) async fn update(&self, body: Body) -> ApiResult {
        let options = WriteOptions::parse(&self.query, "UpdateOptions", false)?;
        let mut object = self.read_object(body, &options).await?;
        let stored = self.load().await?;
        let current = self.parse_stored(&stored)?;
        self.mutating_webhooks("UPDATE", Some(&current), &mut object, options.dry_run).await?;
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
        self.write_update(object, &current, stored.rv, options.dry_run)
            .await
            .map_err(|f| self.write_error(f).into())
    }

    /// Stores a prepared update, or deletes the object when the update removed the last
    /// finalizer of an object that is being deleted.
    async fn write_update(
        &self,
        object: Value,
        current: &Value,
        expected_rv: u64,
        dry_run: bool,
    ) -> Result<Response, WriteFailure> {
        let kind = self.kind();
        self.validating_webhooks("UPDATE", self.name(), Some(&object), Some(current), dry_run).await?;
        if update_completes_deletion(current, &object) {
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
                Err(StoreError::Conflict) => Err(WriteFailure::Stale),
                Err(StoreError::NotFound) => Err(WriteFailure::Gone),
                Err(e) => Err(store_error(e).into()),
            };
        }
        if dry_run {
            return Ok(self.renderer.object(StatusCode::OK, &object.to_string())?);
        }
        match self.state.store.update(kind.storage_key(), object, expected_rv).await {
            Ok(stored) => Ok(self.renderer.object(StatusCode::OK, &stored.body)?),
            Err(StoreError::Conflict) => Err(WriteFailure::Stale),
            Err(StoreError::NotFound) => Err(WriteFailure::Gone),
            Err(e) => Err(store_error(e).into()),
        }
    }

    pub(super) async fn patch(&self, body: Body) -> ApiResult {
        let body_type = negotiate::patch_body_type(header_str(self.headers, header::CONTENT_TYPE))?;
        let options = WriteOptions::parse(&self.query, "PatchOptions", false)?;
        let bytes = self.read_body(body).await?;
        let (patch, duplicates) = negotiate::decode_body_with_duplicates(&bytes, body_type)?;
        let kind = self.kind();
        for _ in 0..WRITE_ATTEMPTS {
            let stored = self.load().await?;
            let current = self.parse_stored(&stored)?;
            let mut patched = current.clone();
            let limit = self.state.max_body_bytes;
            apply_patch(&mut patched, &patch, body_type, limit)?;
            // The patched object is a body the client could not have sent: the same limit holds.
            if json_size_up_to(&patched, limit) > limit {
                return Err(ApiError::too_large(limit).into());
            }
            if !patched.is_object() {
                return Err(ApiError::bad_request("the patched object is not a JSON object").into());
            }
            let unknown = kind.validator.prune(&mut patched);
            let strict = options.field_validation == FieldValidation::Strict;
            if strict && !(unknown.is_empty() && duplicates.is_empty()) {
                // The strict error quotes the patched object before pruning; rebuild it only then.
                let mut unpruned = current.clone();
                apply_patch(&mut unpruned, &patch, body_type, limit)?;
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
            self.mutating_webhooks("UPDATE", Some(&current), &mut patched, options.dry_run).await?;
            object::prepare_update(
                kind,
                self.target.namespace.as_deref(),
                self.name(),
                &mut patched,
                &current,
            )?;
            // A patch that changes nothing writes nothing (no new resourceVersion, no event), as
            // kube's storage skips an update whose object is unchanged.
            if patched == current {
                return Ok(self.renderer.object(StatusCode::OK, &stored.body)?);
            }
            // Another writer got in between: try again on its version, unless the patch itself
            // pinned the version it applies to. A vanished object is read again, and that read
            // answers 404.
            match self.write_update(patched, &current, stored.rv, options.dry_run).await {
                Err(WriteFailure::Stale) if !pinned_by_patch => continue,
                Err(WriteFailure::Gone) => continue,
                outcome => return outcome.map_err(|f| self.write_error(f).into()),
            }
        }
        Err(ApiError::conflict(kind, self.name(), "the object is being modified too often; please try again")
            .into())
    }
}
