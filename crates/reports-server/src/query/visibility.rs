//! Who may see which findings: the caller's RBAC on the reports, turned into the query's
//! [`Visibility`].
//!
//! A finding is as visible as the report it comes from. For each report kind the caller may
//! `list` cluster-wide, every report of that kind is visible (for the cluster kinds, that is the
//! only way to see them). For a namespaced kind the caller may not list cluster-wide, we ask the
//! authorizer about each namespace that holds reports of that kind (the store names them) and
//! keep those it allows, so a tenant sees exactly its namespaces. A request under
//! `/namespaces/NS/` only asks about NS. The decisions go through the same cached authorizer as
//! every request, so a dashboard asking again within the cache's lifetime costs no review; the
//! reviews of one request run a few at a time.
//!
//! The answer is part of the query: the store reads rows only from the visible (kind, namespace)
//! pairs, and counts are counts of what the caller may see.

use futures::{stream, StreamExt, TryStreamExt};
use reports_auth::UserInfo;
use reports_core::{
    findings::query::{Visibility, VisibleResource},
    request_info::RequestInfo,
    ApiError, ResourceKind,
};

use crate::{auth::Guard, response::store_error, state::AppState};

/// Reviews of one request in flight at once.
const CONCURRENT_REVIEWS: usize = 8;

/// Whether `user` may list `kind` in `namespace` ("" for cluster-wide). A denial is `false`;
/// failing to ask is an error.
async fn may_list(
    guard: &Guard,
    user: &UserInfo,
    kind: &ResourceKind,
    namespace: &str,
) -> Result<bool, ApiError> {
    let info = RequestInfo {
        is_resource_request: true,
        path: String::new(),
        verb: "list".into(),
        api_prefix: "apis".into(),
        api_group: kind.group.clone(),
        api_version: kind.version.clone(),
        namespace: namespace.to_string(),
        resource: kind.plural.clone(),
        subresource: String::new(),
        name: String::new(),
    };
    match guard.authorizer.authorize(user, &info).await {
        Ok(()) => Ok(true),
        Err(denied) if denied.code == 403 => Ok(false),
        Err(failed) => Err(failed),
    }
}

/// The visibility of a findings request by `user` (None on a standalone server, which has no
/// authorization: everything is visible), limited to `namespace` when the path names one.
pub(crate) async fn visibility(
    state: &AppState,
    user: Option<&UserInfo>,
    namespace: Option<&str>,
) -> Result<Visibility, ApiError> {
    let (Some(guard), Some(user)) = (state.guard.as_deref(), user) else {
        return Ok(Visibility::Everything);
    };
    let mut visible = Vec::new();
    for kind in state.catalogue.kinds() {
        let resource = kind.storage_key().to_string();
        if let Some(namespace) = namespace {
            // A namespace's findings come from its own reports only.
            if kind.namespaced && may_list(guard, user, kind, namespace).await? {
                visible.push(VisibleResource { resource, namespaces: Some(vec![namespace.to_string()]) });
            }
            continue;
        }
        if may_list(guard, user, kind, "").await? {
            visible.push(VisibleResource { resource, namespaces: None });
            continue;
        }
        if !kind.namespaced {
            continue;
        }
        let candidates = state.store.namespaces_of(&resource).await.map_err(store_error)?;
        let allowed: Vec<String> = stream::iter(candidates)
            .map(|ns| async move { may_list(guard, user, kind, &ns).await.map(|ok| ok.then_some(ns)) })
            .buffered(CONCURRENT_REVIEWS)
            .try_filter_map(|ns| async move { Ok(ns) })
            .try_collect()
            .await?;
        if !allowed.is_empty() {
            visible.push(VisibleResource { resource, namespaces: Some(allowed) });
        }
    }
    Ok(Visibility::Only(visible))
}
