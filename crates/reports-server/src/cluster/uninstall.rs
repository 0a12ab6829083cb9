//! `reports-server uninstall`: hand the report groups back to their CRDs, on purpose.
//!
//! A server never removes its APIServices when it stops (a rollout must not take the API away).
//! Giving the groups back is this explicit step instead: it deletes the APIServices (kube-apiserver
//! then serves the groups from the CRDs again, if they are installed) and, with `copy_back`,
//! copies every report from the store into CRD objects, so that nothing is lost on the way out.
//!
//! It refuses while a replica still holds the APIService Lease: that replica would register the
//! APIServices again at once. Scale the server to zero first (or pass `force`). The copy is
//! idempotent: a report that already exists as a CRD object is left alone, so the command can be
//! run again after a failure.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::Lease,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition, jiff::Timestamp,
    kube_aggregator::pkg::apis::apiregistration::v1::APIService,
};
use kube::{
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams},
    Api, Client,
};
use reports_core::Catalogue;
use reports_store::{DynStore, ListChunk, ListQuery};
use serde_json::Value;

/// What to hand back.
#[derive(Debug, Clone)]
pub struct UninstallOptions {
    /// `(group, version)` pairs whose APIServices to delete.
    pub group_versions: Vec<(String, String)>,
    /// Namespace of the APIService Lease (the Service's namespace).
    pub lease_namespace: String,
    /// Copy every stored report into a CRD object.
    pub copy_back: bool,
    /// Go on even though a replica holds the Lease.
    pub force: bool,
}

/// What the uninstall did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UninstallSummary {
    /// APIServices deleted.
    pub apiservices_deleted: Vec<String>,
    /// Reports created as CRD objects.
    pub copied: u64,
    /// Reports that already existed as CRD objects.
    pub already_present: u64,
}

/// Hands the groups back (see the module notes).
pub async fn uninstall(
    client: &Client,
    store: Option<&DynStore>,
    catalogue: &Catalogue,
    options: &UninstallOptions,
) -> anyhow::Result<UninstallSummary> {
    if !options.force {
        let leases = Api::<Lease>::namespaced(client.clone(), &options.lease_namespace);
        if let Some(holder) = active_holder(leases.get_opt("reports-server-apiservices").await?) {
            anyhow::bail!(
                "replica {holder} holds the APIService Lease and would register the APIServices again: scale \
                 reports-server to zero first (or pass --force)"
            );
        }
    }
    let kinds: Vec<_> = catalogue
        .kinds()
        .iter()
        .filter(|k| options.group_versions.iter().any(|(g, v)| *g == k.group && *v == k.version))
        .collect();
    if options.copy_back {
        let crds = Api::<CustomResourceDefinition>::all(client.clone());
        for kind in &kinds {
            anyhow::ensure!(
                crds.get_opt(&kind.qualified_resource()).await?.is_some(),
                "the CRD {} is not installed: install the report CRDs before copying the reports back",
                kind.qualified_resource()
            );
        }
        anyhow::ensure!(store.is_some(), "copying back needs the store (--storage or DB_*)");
    }
    let mut summary = UninstallSummary::default();
    let apiservices = Api::<APIService>::all(client.clone());
    for (group, version) in &options.group_versions {
        let name = format!("{version}.{group}");
        if apiservices.get_opt(&name).await?.is_some_and(|a| a.spec.is_some_and(|s| s.service.is_some())) {
            apiservices.delete(&name, &DeleteParams::default()).await?;
            tracing::info!(apiservice = %name, "deleted: the group is served from its CRD again");
            summary.apiservices_deleted.push(name);
        }
    }
    if let (true, Some(store)) = (options.copy_back, store) {
        for kind in kinds {
            let resource = ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(&kind.group, &kind.version, &kind.kind),
                &kind.plural,
            );
            let mut stream = store
                .list(ListQuery { resource: kind.storage_key().to_string(), ..Default::default() })
                .await?;
            while let Some(chunk) = stream.chunks.recv().await {
                let items = match chunk? {
                    ListChunk::Items(items) => items,
                    ListChunk::End { .. } => break,
                };
                for item in items {
                    let mut object: Value = serde_json::from_str(&item.body)?;
                    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                        // kube assigns these on create.
                        for key in
                            ["resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"]
                        {
                            metadata.remove(key);
                        }
                    }
                    let api = if kind.namespaced {
                        Api::<DynamicObject>::namespaced_with(client.clone(), &item.namespace, &resource)
                    } else {
                        Api::<DynamicObject>::all_with(client.clone(), &resource)
                    };
                    let object: DynamicObject = serde_json::from_value(object)?;
                    match create_when_local(&api, &object).await {
                        Ok(true) => summary.copied += 1,
                        Ok(false) => summary.already_present += 1,
                        Err(e) => {
                            return Err(
                                e.context(format!("copying {} {}/{}", kind.kind, item.namespace, item.name))
                            )
                        }
                    }
                }
            }
            tracing::info!(resource = %kind.qualified_resource(), copied = summary.copied, "copied back into CRD objects");
        }
    }
    Ok(summary)
}

/// Creates `object`; true when created, false when it already existed. kube-apiserver may take a
/// moment to serve a group from its CRD again after the APIService is gone (a 503 or 404 until
/// then), so those are retried for a while.
async fn create_when_local(api: &Api<DynamicObject>, object: &DynamicObject) -> anyhow::Result<bool> {
    let mut delay = Duration::from_millis(100);
    for _ in 0..30 {
        match api.create(&PostParams::default(), object).await {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(false),
            Err(kube::Error::Api(e)) if e.code == 503 || e.code == 404 => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("kube-apiserver does not serve the group from its CRD")
}

/// The holder of a Lease that has been renewed within its duration.
fn active_holder(lease: Option<Lease>) -> Option<String> {
    let spec = lease?.spec?;
    let holder = spec.holder_identity.filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time?.0;
    let lasts = i64::from(spec.lease_duration_seconds.unwrap_or(15).max(0));
    let age = Timestamp::now().as_second() - renewed.as_second();
    (age < lasts).then_some(holder)
}
