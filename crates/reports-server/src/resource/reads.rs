//! The read verbs: get, list (streamed, paginated) and watch, and what their `resourceVersion`
//! means here.
//!
//! # resourceVersion on reads
//!
//! RVs come from one counter that every write increments inside its transaction, so they are
//! unique and in commit order across all kinds, and a list's RV is the snapshot it was read
//! from. We keep no history of past versions, only the change log, so:
//!
//! - unset or `0`, or any RV with `NotOlderThan` semantics (the legacy default without a
//!   limit): the current data, which is never older than any committed RV. An RV newer than every
//!   commit is 504 "Too large resource version", as kube's watch cache answers.
//! - an exact RV (`resourceVersionMatch=Exact`, or a legacy RV together with a `limit`): only
//!   the current data can be served, which is the data at that RV exactly when nothing of the
//!   kind changed since. The change log tells, while it still reaches back to the RV; otherwise
//!   410 Expired, after which clients list afresh.
//! - continue tokens carry the first page's snapshot RV, which every page reports (see
//!   `reports_core::paging`).

use axum::{http::StatusCode, response::Response};
use reports_core::{
    options::{parse_rv_param, ListOptions, RvMatch, RvParam},
    paging::{expired_token, ContinueToken},
    ApiError,
};
use reports_store::ListQuery;
use serde_json::json;

use super::Request;
use crate::{
    render::Renderer,
    response::{store_error, ApiResult},
    watch::{self, WatchRequest},
};

impl Request<'_> {
    pub(super) async fn get(&self) -> ApiResult {
        if self.query.flag("watch") {
            return Err(ApiError::method_not_allowed("watch", self.kind()).into());
        }
        let stored = self.load().await?;
        if let RvParam::At(rv) = parse_rv_param(self.query.get("resourceVersion"))? {
            let current = self.state.store.current_rv().await.map_err(store_error)?;
            if rv > current {
                return Err(ApiError::too_large_resource_version(rv, current).into());
            }
        }
        Ok(self.renderer.object(StatusCode::OK, &stored.body)?)
    }

    pub(super) async fn list(&self) -> ApiResult {
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
}
