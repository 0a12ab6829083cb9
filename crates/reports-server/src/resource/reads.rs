//! The read verbs: get, list (streamed, paginated) and watch, and what their `resourceVersion`
//! means here.
//!
//! # resourceVersion on reads
//!
//! RVs come from one counter that every write increments inside its transaction, so they are
//! unique and in commit order across all kinds, and a list's RV is the snapshot it was read
//! from. Past states are rebuilt from the change log while it covers them (the store's snapshot
//! module), so:
//!
//! - unset or `0`, or any RV with `NotOlderThan` semantics (the legacy default without a
//!   limit): the current data, which is never older than any committed RV. An RV newer than every
//!   commit is 504 "Too large resource version", as kube's watch cache answers.
//! - an exact RV (`resourceVersionMatch=Exact`, or a legacy RV together with a `limit`): the
//!   objects as they were at that RV; 410 Expired once the change log no longer covers it,
//!   after which clients list afresh.
//! - continue tokens carry the first page's snapshot RV, which every page reports and is read
//!   at (see `reports_core::paging`); an expired one gets 410 with kube's inconsistent-continue
//!   token. `remainingItemCount` is set on pages of unfiltered lists, counted at the snapshot.

use axum::{http::StatusCode, response::Response};
use reports_core::{
    options::{parse_rv_param, ListOptions, RvMatch, RvParam},
    paging::{expired_token, ContinueToken},
    ApiError,
};
use reports_store::{ListQuery, StoreError};
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
        let unfiltered = options.label_selector.is_empty() && options.field_selector.is_empty();
        let mut query = ListQuery {
            resource: kind.storage_key().to_string(),
            namespace: self.target.namespace.clone(),
            labels: options.label_selector.clone(),
            fields: options.field_selector.clone(),
            after: None,
            limit: options.limit,
            at: None,
            // kube counts what is left of unfiltered lists only.
            count_remaining: unfiltered && options.limit.is_some(),
        };
        // The RV asked for, which the list must not be behind.
        let mut asked = None;
        if let Some(token) = &options.continue_token {
            query.after = Some((token.ns.clone(), token.name.clone()));
            query.at = token.snapshot();
            asked = token.snapshot();
        } else if let RvParam::At(rv) = options.resource_version {
            asked = Some(rv);
            let exact = options.rv_match == Some(RvMatch::Exact)
                || (options.rv_match.is_none() && options.limit.is_some());
            if exact {
                // The data at `rv`, from the change log while it covers `rv` (410 after).
                query.at = Some(rv);
            }
        }
        let stream = match store.list(query).await {
            Ok(stream) => stream,
            Err(StoreError::Expired) => return Err(expired(options.continue_token.as_ref()).into()),
            Err(e) => return Err(store_error(e).into()),
        };
        if let Some(rv) = asked.filter(|&rv| rv > stream.snapshot_rv) {
            return Err(ApiError::too_large_resource_version(rv, stream.snapshot_rv).into());
        }
        let renderer = Renderer::new(kind, self.renderer.negotiated, self.query.get("includeObject"))?;
        Ok(renderer.list(stream, move |rv, last, more, remaining| {
            let mut metadata = json!({"resourceVersion": rv.to_string()});
            if let (true, Some(last)) = (more, last) {
                metadata["continue"] =
                    json!(ContinueToken::new(rv, last.namespace.clone(), last.name.clone()).encode());
                if let Some(remaining) = remaining {
                    metadata["remainingItemCount"] = remaining.into();
                }
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

/// The 410 for a list at a past RV that the change log no longer covers. An expired continue
/// token gets kube's way on in the Status: a token for the same key at the newest RV.
fn expired(token: Option<&ContinueToken>) -> ApiError {
    match token {
        Some(token) => expired_token()
            .with_continue(ContinueToken::inconsistent(token.ns.clone(), token.name.clone()).encode()),
        None => ApiError::expired("The resourceVersion for the provided list is too old."),
    }
}
