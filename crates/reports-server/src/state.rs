//! The state every request handler shares, built once at start-up.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use reports_core::{discovery, openapi, Catalogue};
use reports_store::DynStore;
use serde_json::{json, Value};
use sha2::{Digest, Sha512};
use tokio::sync::watch;

use crate::watch::ChangeFeed;

/// Shared state of every request handler. Cheap to clone: one `Arc`.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

/// What the handlers share, and why each piece is shared rather than rebuilt per request.
pub(crate) struct Shared {
    /// The six kinds, derived once from the embedded CRDs.
    pub(crate) catalogue: Catalogue,
    /// The database; every request reads or writes through it.
    pub(crate) store: DynStore,
    /// The tail of the change log shared by every watch, so each change is read once per
    /// process instead of once per watcher.
    pub(crate) changes: Arc<ChangeFeed>,
    /// Discovery documents rendered once (they only change with the binary), with their ETags.
    pub(crate) discovery: DiscoveryDocs,
    /// Largest request body accepted (413 beyond it).
    pub(crate) max_body_bytes: usize,
    /// Slots for requests in flight and the request timeout, checked before any handler runs.
    pub(crate) admission: Arc<crate::limits::Admission>,
    /// Flips to true when the server starts shutting down, so long-running responses end cleanly
    /// and `/readyz` fails.
    pub(crate) shutting_down: watch::Receiver<bool>,
    /// Set once the listener is up; `/readyz` fails before.
    pub(crate) ready: AtomicBool,
    /// Request counts and latencies, and the other figures `/metrics` shows.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Authentication and authorization, when a cluster is configured (None: standalone).
    pub(crate) guard: Option<Arc<crate::auth::Guard>>,
    /// The cluster's namespaces, for namespace lifecycle admission (None: standalone).
    pub(crate) namespaces: Option<crate::cluster::namespaces::NamespaceLifecycle>,
    /// The cluster's validating admission webhooks (None: standalone).
    pub(crate) webhooks: Option<crate::cluster::admission::Webhooks>,
}

/// What a server running in a cluster adds to the state.
#[derive(Default)]
pub(crate) struct InCluster {
    /// See [`Shared::guard`].
    pub(crate) guard: Option<Arc<crate::auth::Guard>>,
    /// See [`Shared::namespaces`].
    pub(crate) namespaces: Option<crate::cluster::namespaces::NamespaceLifecycle>,
    /// See [`Shared::webhooks`].
    pub(crate) webhooks: Option<crate::cluster::admission::Webhooks>,
    /// Tasks a clean shutdown waits for (the Lease release).
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Builds the state.
    pub(crate) fn new(
        catalogue: Catalogue,
        store: DynStore,
        changes: Arc<ChangeFeed>,
        limits: &crate::limits::ServingLimits,
        shutting_down: watch::Receiver<bool>,
        metrics: Arc<crate::metrics::Metrics>,
        in_cluster: InCluster,
    ) -> Self {
        let admission = Arc::new(crate::limits::Admission::new(limits));
        metrics.add_source(admission.clone());
        let discovery = DiscoveryDocs::new(&catalogue);
        Self(Arc::new(Shared {
            catalogue,
            store,
            changes,
            discovery,
            max_body_bytes: limits.max_body_bytes,
            admission,
            shutting_down,
            ready: AtomicBool::new(false),
            metrics,
            guard: in_cluster.guard,
            namespaces: in_cluster.namespaces,
            webhooks: in_cluster.webhooks,
        }))
    }

    /// Marks the server ready to serve.
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }
}

/// A rendered document and its quoted ETag.
pub(crate) struct CachedDoc {
    /// The JSON bytes.
    pub(crate) body: Vec<u8>,
    /// `"<uppercase hex sha512>"`, as k8s.io/apiserver computes discovery ETags.
    pub(crate) etag: String,
}

impl CachedDoc {
    pub(crate) fn new(value: &Value) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_default();
        let etag = format!("\"{:X}\"", Sha512::digest(&body));
        Self { body, etag }
    }
}

/// Discovery documents, rendered at start-up.
pub(crate) struct DiscoveryDocs {
    /// Legacy `APIGroupList`.
    pub(crate) group_list: CachedDoc,
    /// Aggregated discovery v2.
    pub(crate) v2: CachedDoc,
    /// Aggregated discovery v2beta1.
    pub(crate) v2beta1: CachedDoc,
    /// `/openapi/v3`: the index naming each group/version document with its hash.
    pub(crate) openapi_index: CachedDoc,
    /// `/openapi/v3/apis/<group>/<version>` documents, keyed by `group/version`.
    pub(crate) openapi: std::collections::BTreeMap<String, CachedDoc>,
    /// `/openapi/v2`, the Swagger 2.0 document the aggregator merges.
    pub(crate) openapi_v2: CachedDoc,
    /// `Last-Modified` of the OpenAPI documents: they are built once, at start-up.
    pub(crate) openapi_last_modified: String,
}

impl DiscoveryDocs {
    fn new(catalogue: &Catalogue) -> Self {
        let mut openapi = std::collections::BTreeMap::new();
        let mut index = serde_json::Map::new();
        for (group, version) in openapi::group_versions(catalogue) {
            let Some(doc) = openapi::group_version_doc(catalogue, &group, &version) else { continue };
            let doc = CachedDoc::new(&doc);
            let hash = doc.etag.trim_matches('"').to_string();
            index.insert(
                format!("apis/{group}/{version}"),
                json!({"serverRelativeURL": format!("/openapi/v3/apis/{group}/{version}?hash={hash}")}),
            );
            openapi.insert(format!("{group}/{version}"), doc);
        }
        Self {
            group_list: CachedDoc::new(&discovery::api_group_list(catalogue)),
            v2: CachedDoc::new(&discovery::aggregated_discovery(catalogue, "v2")),
            v2beta1: CachedDoc::new(&discovery::aggregated_discovery(catalogue, "v2beta1")),
            openapi_index: CachedDoc::new(&json!({"paths": index})),
            openapi,
            openapi_v2: CachedDoc::new(&openapi::v2_doc(catalogue)),
            openapi_last_modified: jiff::Timestamp::now().strftime("%a, %d %b %Y %H:%M:%S GMT").to_string(),
        }
    }
}
