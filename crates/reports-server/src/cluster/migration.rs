//! Migration from etcd: reports that still live as CRD objects are copied into the store before
//! the server takes their API over.
//!
//! While a group's APIService is absent or `Local`, kube-apiserver serves the group from its CRDs
//! and their objects can be listed; once the APIService points at us, those objects are out of
//! reach (and the copy, if there was one to make, has been made). So the copy runs at start,
//! before APIService registration, for every served kind whose group is still local, and the
//! switched APIService is the record that it has run: a later start sees it and copies nothing.
//!
//! The copy is idempotent and resumable: objects keep their uid, creation time and everything
//! else but their resourceVersion (ours are assigned by the store), and an object already in the
//! store (copied before a crash, or written since) is left as it is. Progress is logged.

use std::time::Instant;

use futures::StreamExt as _;

use k8s_openapi::{
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    kube_aggregator::pkg::apis::apiregistration::v1::APIService,
};
use kube::{
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams},
    Api, Client,
};
use reports_core::{Catalogue, ResourceKind};
use reports_store::{DynStore, StoreError};
use serde_json::Value;

/// Objects read per list request.
const PAGE: u32 = 500;
/// Creates in flight at once.
const CONCURRENT_WRITES: usize = 16;

/// What a migration did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrationSummary {
    /// Objects written into the store.
    pub copied: u64,
    /// Objects that were already there.
    pub already_present: u64,
    /// Kinds skipped because their group is already served by an aggregated server.
    pub groups_already_switched: Vec<String>,
}

/// Copies the CRD objects of every kind in `catalogue` whose group version is in
/// `group_versions` and still served locally.
pub async fn migrate(
    client: &Client,
    store: &DynStore,
    catalogue: &Catalogue,
    group_versions: &[(String, String)],
) -> anyhow::Result<MigrationSummary> {
    let mut summary = MigrationSummary::default();
    let apiservices = Api::<APIService>::all(client.clone());
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    for (group, version) in group_versions {
        let name = format!("{version}.{group}");
        let switched =
            apiservices.get_opt(&name).await?.and_then(|a| a.spec).is_some_and(|spec| spec.service.is_some());
        if switched {
            tracing::info!(apiservice = %name, "already served by an aggregated server: nothing to migrate");
            summary.groups_already_switched.push(name);
            continue;
        }
        for kind in catalogue.kinds().iter().filter(|k| &k.group == group && &k.version == version) {
            if crds.get_opt(&kind.qualified_resource()).await?.is_none() {
                continue;
            }
            copy_kind(client, store, kind, &mut summary).await?;
        }
    }
    Ok(summary)
}

async fn copy_kind(
    client: &Client,
    store: &DynStore,
    kind: &ResourceKind,
    summary: &mut MigrationSummary,
) -> anyhow::Result<()> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&kind.group, &kind.version, &kind.kind),
        &kind.plural,
    );
    let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
    let started = Instant::now();
    let (mut copied, mut present) = (0u64, 0u64);
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(PAGE);
        if let Some(token) = &token {
            params = params.continue_token(token);
        }
        let page = api.list(&params).await?;
        // A page's objects are written concurrently: both stores commit concurrent creates
        // together (SQLite's group commit, PostgreSQL's combined inserts).
        let outcomes: Vec<_> = futures::stream::iter(page.items)
            .map(|object| async move {
                let mut value = serde_json::to_value(&object)?;
                prepare(&mut value, kind);
                match store.create(kind.storage_key(), value).await {
                    Ok(_) => Ok(true),
                    Err(StoreError::AlreadyExists) => Ok(false),
                    Err(e) => Err(anyhow::Error::new(e).context(format!("copying a {}", kind.kind))),
                }
            })
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        for outcome in outcomes {
            if outcome? {
                copied += 1;
            } else {
                present += 1;
            }
        }
        if (copied + present) % 10_000 < u64::from(PAGE) && copied + present > 0 {
            tracing::info!(resource = %kind.qualified_resource(), copied, already_present = present, "migrating from etcd");
        }
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    if copied + present > 0 {
        tracing::info!(
            resource = %kind.qualified_resource(),
            copied,
            already_present = present,
            seconds = started.elapsed().as_secs_f64(),
            "migrated from etcd"
        );
    }
    summary.copied += copied;
    summary.already_present += present;
    Ok(())
}

/// The object as the store takes it: kube's identity kept, our resourceVersion to come.
fn prepare(object: &mut Value, kind: &ResourceKind) {
    object["apiVersion"] = Value::String(format!("{}/{}", kind.group, kind.version));
    object["kind"] = Value::String(kind.kind.clone());
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("resourceVersion");
        metadata.remove("selfLink");
    }
}
