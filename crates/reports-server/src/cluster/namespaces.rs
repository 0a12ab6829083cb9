//! Namespace lifecycle admission, which kube-apiserver applies to CRDs and not to aggregated
//! servers: a namespaced report may be created only in a namespace that exists and is not being
//! terminated.
//!
//! Namespaces are mirrored from a watch, so a create costs no call to the cluster. A namespace
//! missing from the mirror is looked up once more directly before refusing, as kube-apiserver
//! does, so a report written right after its namespace was created is not refused because the
//! watch had not delivered the namespace yet.

use k8s_openapi::api::core::v1::Namespace;
use kube::{runtime::reflector, Api, Client};
use reports_core::{ApiError, ResourceKind, StatusCause, StatusDetails};
use tokio::sync::watch;

/// The cluster's namespaces, as admission needs them.
#[derive(Clone)]
pub struct NamespaceLifecycle {
    /// The mirror of every namespace.
    mirror: reflector::Store<Namespace>,
    /// For the direct look-up of a namespace the mirror does not have.
    api: Api<Namespace>,
}

impl NamespaceLifecycle {
    /// Starts mirroring the namespaces and waits for the first complete list, so that admission
    /// never answers from an empty mirror.
    pub async fn start(client: Client, shutdown: watch::Receiver<bool>) -> Result<Self, ApiError> {
        let api = Api::<Namespace>::all(client);
        let mirror = super::mirror(api.clone(), "namespaces", shutdown);
        // Serving before the first list would only cost direct look-ups, so a cluster that is slow
        // to list namespaces delays the start a little, not for ever.
        match tokio::time::timeout(super::INITIAL_SYNC, mirror.wait_until_ready()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ApiError::internal(format!("namespace mirror: {e}"))),
            Err(_) => tracing::warn!("namespaces not listed yet; admission looks each one up until they are"),
        }
        Ok(Self { mirror, api })
    }

    /// The labels of `namespace`, from the mirror (None when it is not mirrored).
    pub fn labels(&self, namespace: &str) -> Option<std::collections::BTreeMap<String, String>> {
        let found = self.mirror.get(&reflector::ObjectRef::<Namespace>::new(namespace))?;
        Some(found.metadata.labels.clone().unwrap_or_default())
    }

    /// Ok when an object of `kind` may be created in `namespace`; kube's 404 for a namespace
    /// that does not exist and 403 for one being terminated.
    pub async fn admit_create(
        &self,
        kind: &ResourceKind,
        name: &str,
        namespace: &str,
    ) -> Result<(), ApiError> {
        let key = reflector::ObjectRef::<Namespace>::new(namespace);
        let found = match self.mirror.get(&key) {
            Some(ns) => Some((*ns).clone()),
            None => self
                .api
                .get_opt(namespace)
                .await
                .map_err(|e| ApiError::internal(format!("looking up namespace {namespace}: {e}")))?,
        };
        let Some(found) = found else {
            return Err(ApiError::new(404, "NotFound", format!("namespaces \"{namespace}\" not found"))
                .with_details(StatusDetails {
                    name: namespace.to_string(),
                    kind: "namespaces".into(),
                    ..Default::default()
                }));
        };
        let terminating = found.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
        if terminating {
            let why = format!(
                "unable to create new content in namespace {namespace} because it is being terminated"
            );
            let message = if name.is_empty() {
                format!("{} is forbidden: {why}", kind.qualified_resource())
            } else {
                format!("{} \"{name}\" is forbidden: {why}", kind.qualified_resource())
            };
            return Err(ApiError::new(403, "Forbidden", message).with_details(StatusDetails {
                name: name.to_string(),
                group: kind.group.clone(),
                kind: kind.plural.clone(),
                causes: vec![StatusCause {
                    reason: "NamespaceTerminating".into(),
                    message: format!("namespace {namespace} is being terminated"),
                    field: "metadata.namespace".into(),
                }],
                ..Default::default()
            }));
        }
        Ok(())
    }
}
