//! The delete verbs: delete (preconditions, finalizers, garbage-collector propagation) and
//! deletecollection (streamed: each chunk of the list is deleted in one transaction and
//! returned).

use axum::{body::Body, http::StatusCode, response::Response};
use reports_core::{
    deletion::{check_preconditions, deletion_plan, DeletionPlan},
    options::{DeleteOptions, ListOptions},
    ApiError, StatusDetails,
};
use reports_store::{ListQuery, StoreError, StoredObject};
use serde_json::{json, Value};

use super::{now, Request, WRITE_ATTEMPTS};
use crate::{
    render::Renderer,
    response::{store_error, ApiResult},
};

impl Request<'_> {
    pub(super) async fn delete(&self, body: Body) -> ApiResult {
        let options = self.read_delete_options(body).await?;
        let kind = self.kind();
        for _ in 0..WRITE_ATTEMPTS {
            let stored = self.load().await?;
            let current = self.parse_stored(&stored)?;
            check_preconditions(&options, kind, self.name(), &stored.uid, stored.rv)?;
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
        self.validating_webhooks("DELETE", &name, None, Some(&current), options.dry_run)
            .await
            .map_err(DeleteFailure::Api)?;
        match deletion_plan(&current, options.propagation, &now()) {
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

    pub(super) async fn delete_collection(&self, body: Body) -> ApiResult {
        let kind = self.kind();
        if kind.namespaced && self.target.namespace.is_none() {
            return Err(ApiError::bad_request("Namespace parameter required.").into());
        }
        let delete_options = self.read_delete_options(body).await?;
        let list_options = ListOptions::parse(&self.query, kind)?;
        let query = ListQuery {
            resource: kind.storage_key().to_string(),
            namespace: self.target.namespace.clone(),
            labels: list_options.label_selector,
            fields: list_options.field_selector,
            limit: Some(LIST_PAGE),
            ..Default::default()
        };
        // The first page here, so a refused query is this request's error.
        let first = self.state.store.list(query.clone()).await.map_err(store_error)?;
        let store = self.state.store.clone();
        let stream = listed_in_pages(store.clone(), query, first);
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let resource = kind.storage_key().to_string();
        // Deleting runs beside the response: a chunk read, then deleted in one transaction, then
        // its items streamed out as the returned list, so memory stays bounded by a few chunks.
        tokio::spawn(delete_collection_task(store, resource, stream, delete_options, tx));
        let deleted = reports_store::ListStream { snapshot_rv: 0, chunks: rx };
        let renderer = Renderer::new(kind, self.renderer.negotiated, None)?;
        let store = self.state.store.clone();
        let current = store.current_rv().await.map_err(store_error)?;
        Ok(renderer.list(deleted, move |_, last, _, _| {
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

/// Objects a deletecollection lists per read. Each page is its own short read of the current
/// objects after the last key: one read held open for a million deletes kept SQLite from
/// checkpointing its WAL, which grew to gigabytes. (kube's deletecollection does not promise a
/// snapshot either: objects created meanwhile may or may not be deleted.)
const LIST_PAGE: u64 = 1000;

/// The objects `query` selects, read a page at a time from `first` on, as one stream of chunks.
fn listed_in_pages(
    store: reports_store::DynStore,
    mut query: ListQuery,
    first: reports_store::ListStream,
) -> reports_store::ListStream {
    use reports_store::ListChunk;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let mut page = first;
        loop {
            let mut last = None;
            let mut more = false;
            while let Some(chunk) = page.chunks.recv().await {
                match chunk {
                    Ok(ListChunk::Items(items)) => {
                        last = items.last().map(|o| (o.namespace.clone(), o.name.clone()));
                        if tx.send(Ok(ListChunk::Items(items))).await.is_err() {
                            return;
                        }
                    }
                    Ok(ListChunk::End { more: m, .. }) => more = m,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            let (true, Some(after)) = (more, last) else { break };
            query.after = Some(after);
            page = match store.list(query.clone()).await {
                Ok(page) => page,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
        }
        let _ = tx.send(Ok(ListChunk::End { more: false, remaining: None })).await;
    });
    reports_store::ListStream { snapshot_rv: 0, chunks: rx }
}

/// Chunks of one deletecollection being deleted at once: while one chunk's deletes wait for
/// their commit, the next is planned and submitted, and the store commits them together (a
/// label deletecollection of a million reports spent half its time waiting with one in flight).
const CHUNKS_IN_FLIGHT: usize = 3;

async fn delete_collection_task(
    store: reports_store::DynStore,
    resource: String,
    mut stream: reports_store::ListStream,
    options: DeleteOptions,
    tx: tokio::sync::mpsc::Sender<reports_store::StoreResult<reports_store::ListChunk>>,
) {
    use futures::StreamExt as _;
    use reports_store::ListChunk;
    let mut in_flight = futures::stream::FuturesOrdered::new();
    let mut listed_all = false;
    loop {
        // Keep the pipeline full while the list has chunks; then drain it in order.
        if !listed_all && in_flight.len() < CHUNKS_IN_FLIGHT {
            match stream.chunks.recv().await {
                Some(Ok(ListChunk::Items(items))) => {
                    in_flight.push_back(delete_chunk(&store, &resource, &options, items));
                    continue;
                }
                Some(Ok(ListChunk::End { .. })) | None => listed_all = true,
                Some(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
        let Some(done) = in_flight.next().await else { break };
        match done {
            // A client that hangs up does not stop the deletion: kube finishes a
            // deletecollection it has accepted, and a half-deleted namespace would otherwise
            // wait for the next sweep.
            Ok(out) => {
                if !tx.is_closed() {
                    let _ = tx.send(Ok(ListChunk::Items(out))).await;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
    let _ = tx.send(Ok(reports_store::ListChunk::End { more: false, remaining: None })).await;
}

/// Deletes (or marks) the objects of one listed chunk; the objects as deleted, in list order
/// where nothing raced.
async fn delete_chunk(
    store: &reports_store::DynStore,
    resource: &str,
    options: &DeleteOptions,
    items: Vec<StoredObject>,
) -> reports_store::StoreResult<Vec<StoredObject>> {
    let mut immediate = Vec::new();
    let mut out = Vec::new();
    // Objects another writer changed since the list: kube deletes them all the same (its
    // deletecollection deletes each listed name without an RV precondition), so they are
    // loaded again and deleted one by one.
    let mut raced = Vec::new();
    for item in items {
        // A plan reads only metadata; the whole object is parsed only to mark it.
        let plan = match deletion_plan(&metadata_only(&item.body)?, options.propagation, &now()) {
            DeletionPlan::MarkDeleting(_) => deletion_plan(&item.parse()?, options.propagation, &now()),
            plan => plan,
        };
        match plan {
            DeletionPlan::Immediately if options.dry_run => out.push(item),
            DeletionPlan::Immediately => immediate.push(item),
            DeletionPlan::AlreadyDeleting => out.push(item),
            DeletionPlan::MarkDeleting(marked) if options.dry_run => {
                out.push(StoredObject { body: marked.to_string(), ..item })
            }
            DeletionPlan::MarkDeleting(marked) => match store.update(resource, marked, item.rv).await {
                Ok(updated) => out.push(updated),
                Err(StoreError::Conflict) => raced.push((item.namespace, item.name)),
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            },
        }
    }
    if !immediate.is_empty() {
        let keys: Vec<(String, String)> =
            immediate.iter().map(|o| (o.namespace.clone(), o.name.clone())).collect();
        let deleted = store.delete_batch(resource, immediate).await?;
        for (key, deleted) in keys.into_iter().zip(deleted) {
            match deleted {
                Some(object) => out.push(object),
                None => raced.push(key),
            }
        }
    }
    for (namespace, name) in raced {
        if let Some(object) = delete_changed(store, resource, &namespace, &name, options).await? {
            out.push(object);
        }
    }
    Ok(out)
}

/// The object's `metadata` alone, which is all a deletion plan reads, and the body is read no
/// further (parsing each 6 KB report whole was most of a deletecollection's CPU).
fn metadata_only(body: &str) -> reports_store::StoreResult<serde_json::Value> {
    let raw = reports_store::raw_metadata(body)
        .ok_or_else(|| StoreError::backend("stored JSON has no metadata"))?;
    serde_json::from_str::<serde_json::Value>(raw.get())
        .map(|metadata| serde_json::json!({ "metadata": metadata }))
        .map_err(|e| StoreError::backend_caused("stored JSON is corrupt", e))
}

/// Deletes (or marks) one object of a deletecollection that changed after it was listed, from
/// its current state; None when it is gone already. Like a single delete, it retries a bounded
/// number of times while other writers keep changing it.
async fn delete_changed(
    store: &reports_store::DynStore,
    resource: &str,
    namespace: &str,
    name: &str,
    options: &DeleteOptions,
) -> reports_store::StoreResult<Option<StoredObject>> {
    for _ in 0..WRITE_ATTEMPTS {
        let Some(stored) = store.get(resource, namespace, name).await? else { return Ok(None) };
        let outcome = match deletion_plan(&stored.parse()?, options.propagation, &now()) {
            DeletionPlan::AlreadyDeleting => return Ok(Some(stored)),
            DeletionPlan::Immediately => store.delete(resource, namespace, name, stored.rv).await,
            DeletionPlan::MarkDeleting(marked) => store.update(resource, marked, stored.rv).await,
        };
        match outcome {
            Ok(object) => return Ok(Some(object)),
            Err(StoreError::Conflict) => continue,
            Err(StoreError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict)
}
