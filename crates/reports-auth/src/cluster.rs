//! The calls to kube-apiserver: TokenReview, SubjectAccessReview, and a watch of the published
//! authentication settings.

use std::{path::Path, sync::Arc};

use futures::StreamExt as _;
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{
        NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    },
    core::v1::ConfigMap,
};
use kube::{
    api::PostParams,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{watcher, WatchStreamExt as _},
    Api, Client, Config,
};
use reports_core::request_info::RequestInfo;
use tokio::sync::watch;

use crate::{
    authorize::{AccessReviewer, Decision},
    config::{ClientAuthConfig, ClientAuthFlags, CONFIGMAP_NAME, CONFIGMAP_NAMESPACE},
    token::TokenReviewer,
    AuthError, UserInfo,
};

/// A client of the cluster: from `kubeconfig` when given, else the pod's service account when
/// running in a pod, else None (a standalone server).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Option<Client>, AuthError> {
    let remote = |what: &'static str| {
        move |e: Box<dyn std::error::Error + Send + Sync>| AuthError::Remote { what, source: e }
    };
    let config = match kubeconfig {
        Some(path) => {
            let file =
                Kubeconfig::read_from(path).map_err(|e| remote("reading the kubeconfig")(Box::new(e)))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| remote("loading the kubeconfig")(Box::new(e)))?
        }
        None => match Config::incluster() {
            Ok(config) => config,
            // Not in a pod: no cluster to delegate to.
            Err(_) if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() => return Ok(None),
            Err(e) => return Err(remote("reading the pod's service account")(Box::new(e))),
        },
    };
    Client::try_from(config).map(Some).map_err(|e| remote("building the cluster client")(Box::new(e)))
}

/// TokenReview and SubjectAccessReview against the cluster.
#[derive(Clone)]
pub struct ClusterReviews {
    /// The cluster's API.
    client: Client,
}

impl ClusterReviews {
    /// Reviews made with `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

#[async_trait::async_trait]
impl TokenReviewer for ClusterReviews {
    async fn review_token(&self, token: &str) -> Result<Option<UserInfo>, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: None },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Remote { what: "TokenReview", source: Box::new(e) })?;
        let status = answer.status.ok_or(AuthError::NoStatus { what: "TokenReview" })?;
        if status.authenticated != Some(true) {
            return Ok(None);
        }
        let user = status.user.unwrap_or_default();
        Ok(Some(UserInfo {
            name: user.username.unwrap_or_default(),
            uid: user.uid.unwrap_or_default(),
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        }))
    }
}

#[async_trait::async_trait]
impl AccessReviewer for ClusterReviews {
    async fn review_access(&self, user: &UserInfo, info: &RequestInfo) -> Result<Decision, AuthError> {
        let some = |s: &str| Some(s.to_string());
        let (resource_attributes, non_resource_attributes) = if info.is_resource_request {
            let attributes = ResourceAttributes {
                namespace: some(&info.namespace),
                verb: some(&info.verb),
                group: some(&info.api_group),
                version: some(&info.api_version),
                resource: some(&info.resource),
                subresource: some(&info.subresource),
                name: some(&info.name),
                ..Default::default()
            };
            (Some(attributes), None)
        } else {
            (None, Some(NonResourceAttributes { path: some(&info.path), verb: some(&info.verb) }))
        };
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: some(&user.name),
                uid: Some(user.uid.clone()).filter(|u| !u.is_empty()),
                groups: Some(user.groups.clone()),
                extra: Some(user.extra.clone()).filter(|e| !e.is_empty()),
                resource_attributes,
                non_resource_attributes,
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Remote { what: "SubjectAccessReview", source: Box::new(e) })?;
        let status = answer.status.ok_or(AuthError::NoStatus { what: "SubjectAccessReview" })?;
        Ok(if status.allowed {
            Decision::Allow
        } else {
            Decision::Deny { reason: status.reason.unwrap_or_default() }
        })
    }
}

/// Reads the cluster's published authentication settings, applies `flags` over them and keeps
/// the result current: the returned receiver always holds the settings in force. With
/// `skip_lookup` (`--authentication-skip-lookup`) only the flags count.
///
/// The ConfigMap is read once before this returns, so the server never starts serving with
/// settings it has not seen; afterwards a watch applies every change (a rotated CA), and a
/// change that does not parse is logged and ignored, keeping the last good settings.
pub async fn watch_client_auth(
    client: Client,
    flags: ClientAuthFlags,
    skip_lookup: bool,
) -> Result<watch::Receiver<Arc<ClientAuthConfig>>, AuthError> {
    let from_flags = || ClientAuthConfig::default().with_flags(&flags);
    if skip_lookup {
        let (_, receiver) = watch::channel(Arc::new(from_flags()?));
        return Ok(receiver);
    }
    let api = Api::<ConfigMap>::namespaced(client, CONFIGMAP_NAMESPACE);
    let initial = api.get_opt(CONFIGMAP_NAME).await.map_err(|e| AuthError::Remote {
        what: "reading the authentication ConfigMap",
        source: Box::new(e),
    })?;
    let settings = match initial {
        Some(map) => ClientAuthConfig::from_configmap(&map.data.unwrap_or_default())?.with_flags(&flags)?,
        None => {
            tracing::warn!(
                "ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} not found: only the flags' client CAs apply"
            );
            from_flags()?
        }
    };
    let (sender, receiver) = watch::channel(Arc::new(settings));
    tokio::spawn(async move {
        let config = watcher::Config::default().fields(&format!("metadata.name={CONFIGMAP_NAME}"));
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            let map = match event {
                Ok(watcher::Event::Apply(map) | watcher::Event::InitApply(map)) => map,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "watching the authentication ConfigMap; retrying");
                    continue;
                }
            };
            match ClientAuthConfig::from_configmap(&map.data.unwrap_or_default())
                .and_then(|c| c.with_flags(&flags))
            {
                Ok(settings) => {
                    sender.send_if_modified(|current| {
                        let changed = **current != settings;
                        if changed {
                            tracing::info!("client authentication settings changed; applying them");
                            *current = Arc::new(settings);
                        }
                        changed
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, "the authentication ConfigMap changed and cannot be read; keeping the previous settings")
                }
            }
            if sender.is_closed() {
                break;
            }
        }
    });
    Ok(receiver)
}
