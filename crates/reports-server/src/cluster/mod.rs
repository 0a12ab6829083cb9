//! What the server does in and to the cluster it serves: delegated authentication and
//! authorization (with `reports-auth`), leader election, APIService registration, namespace
//! lifecycle admission.

pub mod admission;
pub mod apiservices;
pub mod lease;
pub mod migration;
pub mod namespaces;
pub mod uninstall;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use reports_auth::{
    authenticate::Authenticator,
    authorize::{Authorizer, AuthorizerSettings},
    cluster::{self as remote, ClusterReviews},
    config::ClientAuthFlags,
    token::{TokenAuthenticator, TokenCacheSettings},
};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use tokio::sync::watch;

use crate::{auth::Guard, state::InCluster, tls::CertificatePem};

/// How long start-up waits for the first complete list of a mirrored resource (namespaces,
/// webhook configurations) before serving anyway.
const INITIAL_SYNC: Duration = Duration::from_secs(10);

/// How the server joins a cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterConfig {
    /// Credentials for the cluster's API; None uses the pod's service account.
    pub kubeconfig: Option<PathBuf>,
    /// `--client-ca-file` and `--requestheader-*`, over the cluster's published settings.
    pub client_auth: ClientAuthFlags,
    /// `--authentication-skip-lookup`: ignore the cluster's published settings.
    pub skip_lookup: bool,
    /// `--authorization-always-allow-paths`.
    pub always_allow_paths: Vec<String>,
    /// How long TokenReview answers are cached (default 10 s).
    pub token_cache_ttl: Option<Duration>,
    /// How long allowed SubjectAccessReview answers are cached (default 10 s).
    pub authorized_ttl: Option<Duration>,
    /// How long denied SubjectAccessReview answers are cached (default 10 s).
    pub unauthorized_ttl: Option<Duration>,
    /// Refuse creates in namespaces that do not exist or are terminating.
    pub namespace_lifecycle: bool,
    /// Copy reports still stored as CRD objects into the store before registering the
    /// APIServices (`--skipmigration=false`, the default).
    pub migrate: bool,
    /// Register and keep the APIServices (None: someone else manages them).
    pub apiservices: Option<ApiServiceRegistration>,
}

/// Where the APIServices must point, and who may reconcile them.
#[derive(Debug, Clone)]
pub struct ApiServiceRegistration {
    /// `(group, version)` pairs to register.
    pub group_versions: Vec<(String, String)>,
    /// The Service in front of the server (`--servicename`).
    pub service_name: String,
    /// Its namespace (`--servicens`).
    pub service_namespace: String,
    /// Its port.
    pub service_port: i32,
    /// Safety-net interval between reconciliations.
    pub reconcile_interval: Duration,
    /// Namespace of the leader-election Lease (the Service's namespace in practice).
    pub lease_namespace: String,
    /// This replica's identity in the Lease.
    pub identity: String,
    /// PEM of the CA the aggregator should trust for our serving certificate, when known.
    pub ca_bundle: Option<String>,
}

/// Mirrors every `what` of `api` until `shutdown`: a watch that lists again after any failure
/// (with backoff) and keeps the returned store complete.
pub(crate) fn mirror<K>(
    api: kube::Api<K>,
    what: &'static str,
    mut shutdown: watch::Receiver<bool>,
) -> kube::runtime::reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    use futures::StreamExt as _;
    use kube::runtime::{reflector, watcher, WatchStreamExt as _};

    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default()).default_backoff().reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                event = stream.next() => match event {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::warn!(error = %e, "watching {what}; retrying"),
                    None => break,
                },
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
    });
    store
}

/// The cluster's identity: the UID of its kube-system namespace, which a PostgreSQL database
/// shared by several clusters keys their reports by (kube-system is never recreated, so the UID
/// lasts as long as the cluster).
pub async fn cluster_uid(config: &ClusterConfig) -> anyhow::Result<String> {
    let client = remote::client(config.kubeconfig.as_deref())
        .await?
        .context("no cluster to join: give --kubeconfig, or run in a pod with a service account")?;
    let namespace = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
        .get("kube-system")
        .await
        .context("reading the kube-system namespace (its UID names the cluster)")?;
    namespace.metadata.uid.context("the kube-system namespace has no uid")
}

/// Connects to the cluster and starts what a server in a cluster runs: the guard, the
/// namespace mirror, and (when asked) APIService registration under a Lease.
pub(crate) async fn start(
    config: &ClusterConfig,
    certificate: &CertificatePem,
    store: &reports_store::DynStore,
    catalogue: &reports_core::Catalogue,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<InCluster> {
    let client = remote::client(config.kubeconfig.as_deref())
        .await?
        .context("no cluster to join: give --kubeconfig, or run in a pod with a service account")?;
    let settings = remote::watch_client_auth(client.clone(), config.client_auth.clone(), config.skip_lookup)
        .await
        .context("reading the cluster's authentication settings")?;
    let reviews = Arc::new(ClusterReviews::new(client.clone()));
    let mut token_settings = TokenCacheSettings::default();
    if let Some(ttl) = config.token_cache_ttl {
        token_settings.success_ttl = ttl;
        token_settings.failure_ttl = ttl;
    }
    let tokens = TokenAuthenticator::new(reviews.clone(), token_settings);
    let mut authorizer_settings = AuthorizerSettings::default();
    authorizer_settings.allow_ttl = config.authorized_ttl.unwrap_or(authorizer_settings.allow_ttl);
    authorizer_settings.deny_ttl = config.unauthorized_ttl.unwrap_or(authorizer_settings.deny_ttl);
    if !config.always_allow_paths.is_empty() {
        authorizer_settings.always_allow_paths = config.always_allow_paths.clone();
    }
    let guard = Guard {
        authenticator: Authenticator::new(settings, Some(tokens)),
        authorizer: Authorizer::new(reviews, authorizer_settings),
    };
    let namespaces = if config.namespace_lifecycle {
        Some(
            namespaces::NamespaceLifecycle::start(client.clone(), shutdown.clone())
                .await
                .map_err(|e| anyhow::anyhow!("mirroring the cluster's namespaces: {}", e.message))?,
        )
    } else {
        None
    };
    let webhooks = match &namespaces {
        Some(namespaces) => Some(
            admission::Webhooks::start(client.clone(), namespaces.clone(), shutdown.clone())
                .await
                .context("mirroring the cluster's validating webhook configurations")?,
        ),
        None => None,
    };
    let mut tasks = Vec::new();
    if let Some(registration) = &config.apiservices {
        if config.migrate {
            let summary = migration::migrate(&client, store, catalogue, &registration.group_versions)
                .await
                .context("copying reports stored as CRD objects")?;
            if summary.copied + summary.already_present > 0 {
                tracing::info!(
                    copied = summary.copied,
                    already_present = summary.already_present,
                    "migration from etcd done"
                );
            }
        }
        let (leading, election) = lease::elect(
            client.clone(),
            lease::LeaseSettings {
                namespace: registration.lease_namespace.clone(),
                name: "reports-server-apiservices".into(),
                identity: registration.identity.clone(),
                lease_duration: Duration::from_secs(15),
                retry_period: Duration::from_secs(2),
            },
            shutdown.clone(),
        );
        let target = apiservices::ApiServiceTarget {
            group_versions: registration.group_versions.clone(),
            service_name: registration.service_name.clone(),
            service_namespace: registration.service_namespace.clone(),
            service_port: registration.service_port,
            ca_bundle: registration.ca_bundle.clone().or_else(|| ca_bundle(certificate)),
            resync: registration.reconcile_interval,
        };
        apiservices::keep_registered(client, target, leading, shutdown);
        tasks.push(election);
    }
    Ok(InCluster { guard: Some(Arc::new(guard)), namespaces, webhooks, tasks })
}

/// The CA the aggregator should trust for our serving certificate: the chain's last certificate
/// when it is self-issued (a self-signed certificate, or a chain that includes its root); None
/// otherwise (the APIService then needs its caBundle from elsewhere, or skips verification).
pub fn ca_bundle(certificate: &CertificatePem) -> Option<String> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(certificate.cert_pem.as_bytes()).collect::<Result<_, _>>().ok()?;
    let last = chain.last()?;
    reports_auth::certs::is_self_issued(last).then(|| {
        let encoded = base64_pem(last.as_ref());
        format!("-----BEGIN CERTIFICATE-----\n{encoded}-----END CERTIFICATE-----\n")
    })
}

/// DER to the base64 body of a PEM block, 64 characters a line.
fn base64_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    text.as_bytes().chunks(64).map(|line| format!("{}\n", String::from_utf8_lossy(line))).collect()
}
