//! reports-auth: who is calling, and may they do this? Delegated to the cluster, the way
//! k8s.io/apiserver does it for every aggregated API server.
//!
//! # Who is trusted for what
//!
//! An aggregated API server is reached in two ways. Almost every request comes *through
//! kube-apiserver*, which has already authenticated the caller and forwards the request over TLS
//! presenting its **front-proxy client certificate**, with the caller's identity in
//! `X-Remote-User`, `X-Remote-Group`, `X-Remote-Extra-*` and `X-Remote-Uid` headers. Those headers
//! are believed only on a connection whose client certificate chains to the **request-header CA**
//! and, when the cluster names allowed proxies, whose common name is one of them. Anyone else can
//! send the same headers; on any other connection they mean nothing.
//!
//! A client can also connect *directly* (a pod talking to the Service, Prometheus scraping
//! `/metrics`). Then it is authenticated on its own: a client certificate that chains to the
//! cluster's **client CA** names the user (common name) and groups (organizations), and a bearer
//! token is sent to kube-apiserver in a **TokenReview**. A request with no credentials at all is
//! `system:anonymous` (group `system:unauthenticated`) and goes on to authorization, which
//! usually denies it; a request with credentials that do not verify is refused with 401 and is
//! never treated as anonymous. Every authenticated user also gets the group
//! `system:authenticated`.
//!
//! The CAs, the allowed names and the header names are published by kube-apiserver in the
//! ConfigMap `kube-system/extension-apiserver-authentication`; [`cluster::watch_client_auth`]
//! keeps them current, so a rotated CA applies without a restart. The k8s.io/apiserver flags
//! (`--client-ca-file`, `--requestheader-*`) override what the ConfigMap says.
//!
//! # Authorization
//!
//! Every request, once its user is known, is checked by a **SubjectAccessReview** carrying the
//! request's attributes exactly as kube-apiserver computes them
//! ([`reports_core::request_info::RequestInfo`]): verb (`list` vs `get` vs `watch`,
//! `deletecollection`), group, version, resource, subresource, namespace and name, or the path
//! and verb of a non-resource request. Answers are cached briefly (allowed and denied alike), the
//! group `system:masters` is always allowed, and the `--authorization-always-allow-paths`
//! (health checks by default) skip the review. A denial is kube's 403 Forbidden Status with
//! kube's wording.

use std::collections::BTreeMap;

pub mod authenticate;
pub mod authorize;
pub mod cache;
pub mod certs;
pub mod cluster;
pub mod config;
pub mod front_proxy;
pub mod tls;
pub mod token;

/// The user every request with no credentials becomes.
pub const ANONYMOUS_USER: &str = "system:anonymous";
/// The group of [`ANONYMOUS_USER`].
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
/// The group every authenticated user is added to.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// Members of this group are allowed everything without a review, as kube-apiserver allows them.
pub const MASTERS_GROUP: &str = "system:masters";

/// An authenticated (or anonymous) caller, as a SubjectAccessReview and an admission review
/// describe it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    /// User name.
    pub name: String,
    /// Unique id of the user, when the authenticator knows one.
    pub uid: String,
    /// Groups the user belongs to.
    pub groups: Vec<String>,
    /// Further attributes (`X-Remote-Extra-*`, TokenReview `extra`).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// The anonymous user.
    pub fn anonymous() -> Self {
        Self { name: ANONYMOUS_USER.into(), groups: vec![UNAUTHENTICATED_GROUP.into()], ..Default::default() }
    }

    /// Adds [`AUTHENTICATED_GROUP`] unless the user already has it.
    pub fn with_authenticated_group(mut self) -> Self {
        if !self.groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            self.groups.push(AUTHENTICATED_GROUP.into());
        }
        self
    }

    /// True for members of [`MASTERS_GROUP`].
    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == MASTERS_GROUP)
    }
}

/// Failures of the remote reviews and of reading the cluster's authentication settings.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A CA bundle, allowed-names list or header list could not be read.
    #[error("invalid authentication configuration: {0}")]
    Config(String),
    /// kube-apiserver could not be asked (unreachable, refused, timed out).
    #[error("{what} failed: {source}")]
    Remote {
        /// Which call failed (TokenReview, SubjectAccessReview, ...).
        what: &'static str,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// kube-apiserver answered with something that is not a review.
    #[error("{what} answered without a status")]
    NoStatus {
        /// Which call.
        what: &'static str,
    },
}
