//! The query API: `findings` and `findingcounts` in `query.reports-server.io/v1alpha1`.
//!
//! Both are read-only, computed resources listed like any other (`kubectl get findings -A`,
//! `-n NS`, `-o json|yaml|wide`, `--chunk-size`), so every client that can list a CRD can ask
//! them, through the aggregation layer and with the caller's authentication. The question goes
//! in `fieldSelector` in the findings language (`reports_core::findings::filter`); the
//! caller's RBAC on the reports becomes part of the query ([`visibility`]). `findings` streams
//! one `Finding` per result and resource in key order, in pages resumed after the last key;
//! `findingcounts` answers a grouped count (`groupBy=...`), largest group first, in pages by
//! position. Objects go through the same renderer as reports, so Table, YAML, pretty JSON and
//! metadata-only answers work as they do for the report kinds.
//!
//! Findings have no labels: a label selector matches all of them or none, as it would match an
//! object without labels. Watches and every other verb are 405, as discovery says `list` only.

pub mod client;
mod visibility;

use std::sync::{Arc, Mutex};

use axum::http::{header, HeaderMap, Method};
use reports_auth::UserInfo;
use reports_core::{
    catalogue::{Catalogue, ResourcePath},
    findings::{
        filter::FindingFilter,
        query::{CountQuery, FindingKey, FindingQuery, FindingRecord, FindingsToken, Visibility},
        render::{count_object, finding_name, finding_object},
    },
    negotiate::{negotiate, Endpoint},
    options::Query,
    selector::LabelSelector,
    ApiError, ResourceKind,
};
use reports_store::{FindingChunk, ListChunk, ListStream, StoredObject};
use serde_json::json;
use tokio::sync::mpsc;

use crate::{
    render::Renderer,
    response::{store_error, ApiResult},
    state::AppState,
};

/// Objects per chunk handed to the renderer.
const CHUNK: usize = 256;

/// A request on a query resource.
pub(crate) struct QueryRequest<'a> {
    /// The shared state.
    pub(crate) state: &'a AppState,
    /// The resource and namespace the path names.
    pub(crate) target: ResourcePath<'a>,
    /// The HTTP method.
    pub(crate) method: Method,
    /// The query string.
    pub(crate) query: Query,
    /// The request headers (Accept, User-Agent).
    pub(crate) headers: &'a HeaderMap,
    /// The caller, when the server authenticates.
    pub(crate) user: Option<UserInfo>,
}

/// What a list asks, once parsed.
struct Parsed {
    filter: FindingFilter,
    token: Option<FindingsToken>,
    limit: Option<u64>,
    /// False when the label selector cannot match an object without labels.
    labels_match: bool,
}

impl QueryRequest<'_> {
    /// Serves the request: a list, or a 405.
    pub(crate) async fn serve(self) -> ApiResult {
        let kind = self.target.kind;
        let listing = matches!(self.method, Method::GET | Method::HEAD) && self.target.name.is_none();
        if !listing || self.query.flag("watch") {
            let verb = match (&self.method, self.target.name.is_some()) {
                (&Method::GET | &Method::HEAD, _) if self.query.flag("watch") => "watch",
                (&Method::GET | &Method::HEAD, true) => "get",
                (&Method::POST, _) => "create",
                (&Method::PUT, _) => "update",
                (&Method::PATCH, _) => "patch",
                (&Method::DELETE, true) => "delete",
                (&Method::DELETE, false) => "deletecollection",
                (method, _) => method.as_str(),
            };
            return Err(ApiError::method_not_allowed(verb, kind).into());
        }
        let accept = self.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
        let mut negotiated = negotiate(accept, Endpoint::List)?;
        negotiated.pretty |= crate::resource::wants_pretty(&self.query, self.headers);
        let renderer = Renderer::new(kind, negotiated, self.query.get("includeObject"))?;
        let parsed = self.parse(&self.state.catalogue)?;
        let visibility = match parsed.labels_match {
            true => {
                visibility::visibility(self.state, self.user.as_ref(), self.target.namespace.as_deref())
                    .await?
            }
            false => Visibility::Only(Vec::new()),
        };
        if kind.plural == "findingcounts" {
            self.counts(renderer, parsed, visibility).await
        } else {
            self.findings(renderer, parsed, visibility).await
        }
    }

    fn parse(&self, catalogue: &Catalogue) -> Result<Parsed, ApiError> {
        let filter = FindingFilter::parse(self.query.get("fieldSelector").unwrap_or_default(), catalogue)?;
        let labels = LabelSelector::parse(self.query.get("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let token =
            self.query.get("continue").filter(|t| !t.is_empty()).map(FindingsToken::decode).transpose()?;
        let limit = self.query.int("limit")?.filter(|l| *l > 0).map(|l| l as u64);
        // Refused before any authorization review is spent on the question.
        let counting = self.target.kind.plural == "findingcounts";
        if counting && filter.group_by.is_empty() {
            return Err(ApiError::bad_request(
                "findingcounts needs a grouping in the field selector: groupBy=FIELD or groupBy in (FIELD,FIELD)",
            ));
        }
        if !counting && !filter.group_by.is_empty() {
            return Err(ApiError::bad_request(
                "groupBy is for findingcounts; findings lists every finding that matches",
            ));
        }
        Ok(Parsed { filter, token, limit, labels_match: labels.matches(|_| None) })
    }

    async fn findings(&self, renderer: Renderer, parsed: Parsed, visibility: Visibility) -> ApiResult {
        let (after, reported_rv) = match &parsed.token {
            Some(FindingsToken { after: Some(key), rv, .. }) => (Some(key.clone()), Some(*rv)),
            Some(_) => {
                return Err(ApiError::bad_request("invalid continue token: not a findings token").into())
            }
            None => (None, None),
        };
        let query = FindingQuery {
            namespace: self.target.namespace.clone(),
            visibility,
            conditions: parsed.filter.conditions,
            after,
            limit: parsed.limit,
        };
        let mut found = self.state.store.findings(query).await.map_err(store_error)?;
        let snapshot_rv = found.snapshot_rv;
        let (tx, rx) = mpsc::channel(2);
        let last: Arc<Mutex<Option<FindingKey>>> = Arc::default();
        let state = self.state.clone();
        let last_seen = last.clone();
        tokio::spawn(async move {
            while let Some(chunk) = found.chunks.recv().await {
                let chunk = match chunk {
                    Ok(FindingChunk::Items(records)) => {
                        if let Some(record) = records.last() {
                            *last_seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(record.key.clone());
                        }
                        Ok(ListChunk::Items(
                            records
                                .iter()
                                .map(|r| finding_stored(&state.catalogue, r, snapshot_rv))
                                .collect(),
                        ))
                    }
                    Ok(FindingChunk::End { more }) => Ok(ListChunk::End { more, remaining: None }),
                    Err(e) => Err(e),
                };
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
        });
        let stream = ListStream { snapshot_rv, chunks: rx };
        Ok(renderer.list(stream, move |snapshot_rv, _, more, _| {
            let rv = reported_rv.unwrap_or(snapshot_rv);
            let mut metadata = json!({"resourceVersion": rv.to_string()});
            let last = last.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let (true, Some(key)) = (more, last) {
                metadata["continue"] = json!(FindingsToken::after(rv, key).encode());
            }
            metadata
        }))
    }

    async fn counts(&self, renderer: Renderer, parsed: Parsed, visibility: Visibility) -> ApiResult {
        let (offset, reported_rv) = match &parsed.token {
            Some(FindingsToken { offset: Some(offset), rv, .. }) => (*offset, Some(*rv)),
            Some(_) => {
                return Err(ApiError::bad_request("invalid continue token: not a findingcounts token").into())
            }
            None => (0, None),
        };
        let group_by = parsed.filter.group_by;
        let query = CountQuery {
            namespace: self.target.namespace.clone(),
            visibility,
            conditions: parsed.filter.conditions,
            group_by: group_by.clone(),
        };
        let (snapshot_rv, groups) = self.state.store.count_findings(query).await.map_err(store_error)?;
        let start = (offset as usize).min(groups.len());
        let end = parsed.limit.map_or(groups.len(), |l| start.saturating_add(l as usize).min(groups.len()));
        let more = end < groups.len();
        let items: Vec<StoredObject> = groups[start..end]
            .iter()
            .map(|count| {
                let object = count_object(count, &group_by);
                StoredObject {
                    namespace: object["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
                    name: object["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                    uid: String::new(),
                    rv: snapshot_rv,
                    body: object.to_string(),
                }
            })
            .collect();
        let (tx, rx) = mpsc::channel(items.len() / CHUNK + 2);
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let _ = tx.try_send(Ok(ListChunk::Items(items.by_ref().take(CHUNK).collect())));
        }
        let _ = tx.try_send(Ok(ListChunk::End { more, remaining: None }));
        let stream = ListStream { snapshot_rv, chunks: rx };
        Ok(renderer.list(stream, move |snapshot_rv, _, more, _| {
            let rv = reported_rv.unwrap_or(snapshot_rv);
            let mut metadata = json!({"resourceVersion": rv.to_string()});
            if more {
                metadata["continue"] = json!(FindingsToken::offset(rv, end as u64).encode());
            }
            metadata
        }))
    }
}

/// A finding as the renderer takes objects: its `Finding` JSON.
fn finding_stored(catalogue: &Catalogue, record: &FindingRecord, rv: u64) -> StoredObject {
    let (api_version, kind) = catalogue
        .by_storage_key(&record.key.resource)
        .map(|k: &ResourceKind| (k.api_version(), k.kind.clone()))
        .unwrap_or_default();
    StoredObject {
        namespace: record.key.namespace.clone(),
        name: finding_name(&record.key.name, record.key.ordinal),
        uid: String::new(),
        rv,
        body: finding_object(record, &api_version, &kind).to_string(),
    }
}
