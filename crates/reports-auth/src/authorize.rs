//! Authorization: a SubjectAccessReview per (user, request attributes), cached briefly.
//!
//! The attributes are the request info kube-apiserver would compute for the same request, so an
//! RBAC rule written for the CRDs (`list` vs `watch`, `deletecollection`, a named `get`) means the
//! same for us. Two kinds of request skip the review, as in k8s.io/apiserver: members of
//! `system:masters`, and non-resource requests to the always-allowed paths (health checks by
//! default). Allowed and denied answers are cached for their TTLs (10 s each by default) under
//! the user and the attributes; a review that could not be made is not cached and fails the
//! request with 500, as kube-apiserver does.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use reports_core::{request_info::RequestInfo, ApiError, StatusDetails};
use sha2::{Digest, Sha256};

use crate::{cache::TtlCache, AuthError, UserInfo};

/// The cluster's answer to an access review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Not allowed; the reason, when the authorizer gave one, is shown to the client.
    Deny {
        /// Why, as the authorizer words it (often empty).
        reason: String,
    },
}

/// Asks the cluster whether a user may make a request.
#[async_trait::async_trait]
pub trait AccessReviewer: Send + Sync {
    /// The decision for `user` making the request described by `info`.
    async fn review_access(&self, user: &UserInfo, info: &RequestInfo) -> Result<Decision, AuthError>;
}

/// TTLs, bound and exemptions.
#[derive(Debug, Clone)]
pub struct AuthorizerSettings {
    /// How long an allowed answer is kept.
    pub allow_ttl: Duration,
    /// How long a denied answer is kept.
    pub deny_ttl: Duration,
    /// Most answers remembered.
    pub capacity: usize,
    /// Non-resource paths allowed to everyone (`--authorization-always-allow-paths`); a trailing
    /// `*` matches any suffix.
    pub always_allow_paths: Vec<String>,
}

impl Default for AuthorizerSettings {
    fn default() -> Self {
        Self {
            allow_ttl: Duration::from_secs(10),
            deny_ttl: Duration::from_secs(10),
            capacity: 8192,
            always_allow_paths: vec!["/healthz".into(), "/readyz".into(), "/livez".into()],
        }
    }
}

/// Authorization with exemptions and a cache in front of the reviewer.
pub struct Authorizer {
    /// The cluster's SubjectAccessReview endpoint.
    reviewer: Arc<dyn AccessReviewer>,
    /// Decisions by hash of user and attributes.
    cache: TtlCache<[u8; 32], Decision>,
    /// TTLs and exemptions.
    settings: AuthorizerSettings,
}

impl Authorizer {
    /// An authorizer asking `reviewer`.
    pub fn new(reviewer: Arc<dyn AccessReviewer>, settings: AuthorizerSettings) -> Self {
        Self { reviewer, cache: TtlCache::new(settings.capacity), settings }
    }

    /// Ok when `user` may make the request; kube's 403 Forbidden Status when not; 500 when the
    /// cluster could not be asked.
    pub async fn authorize(&self, user: &UserInfo, info: &RequestInfo) -> Result<(), ApiError> {
        if user.is_master() || (!info.is_resource_request && self.always_allowed(&info.path)) {
            return Ok(());
        }
        let key = cache_key(user, info);
        let decision = match self.cache.get(&key, Instant::now()) {
            Some(decision) => decision,
            None => {
                let decision = self
                    .reviewer
                    .review_access(user, info)
                    .await
                    .map_err(|e| ApiError::internal(format!("authorization: {e}")))?;
                let ttl = match decision {
                    Decision::Allow => self.settings.allow_ttl,
                    Decision::Deny { .. } => self.settings.deny_ttl,
                };
                self.cache.insert(key, decision.clone(), ttl, Instant::now());
                decision
            }
        };
        match decision {
            Decision::Allow => Ok(()),
            Decision::Deny { reason } => Err(forbidden(user, info, &reason)),
        }
    }

    fn always_allowed(&self, path: &str) -> bool {
        self.settings.always_allow_paths.iter().any(|allowed| match allowed.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == allowed,
        })
    }
}

/// Everything a decision depends on, hashed: user, groups, uid, extra and every attribute.
fn cache_key(user: &UserInfo, info: &RequestInfo) -> [u8; 32] {
    let mut hash = Sha256::new();
    let mut field = |text: &str| {
        hash.update((text.len() as u64).to_le_bytes());
        hash.update(text.as_bytes());
    };
    field(&user.name);
    field(&user.uid);
    for group in &user.groups {
        field("g");
        field(group);
    }
    for (key, values) in &user.extra {
        field("x");
        field(key);
        for value in values {
            field(value);
        }
    }
    field(if info.is_resource_request { "resource" } else { "path" });
    for part in [
        &info.verb,
        &info.api_group,
        &info.api_version,
        &info.namespace,
        &info.resource,
        &info.subresource,
        &info.name,
    ] {
        field(part);
    }
    if !info.is_resource_request {
        field(&info.path);
    }
    hash.finalize().into()
}

/// kube-apiserver's 403 for a denied request, with its wording.
pub fn forbidden(user: &UserInfo, info: &RequestInfo, reason: &str) -> ApiError {
    let mut message = if !info.is_resource_request {
        format!("User {:?} cannot {} path {:?}", user.name, info.verb, info.path)
    } else {
        let resource = if info.subresource.is_empty() {
            info.resource.clone()
        } else {
            format!("{}/{}", info.resource, info.subresource)
        };
        if info.namespace.is_empty() {
            format!(
                "User {:?} cannot {} resource {:?} in API group {:?} at the cluster scope",
                user.name, info.verb, resource, info.api_group
            )
        } else {
            format!(
                "User {:?} cannot {} resource {:?} in API group {:?} in the namespace {:?}",
                user.name, info.verb, resource, info.api_group, info.namespace
            )
        }
    };
    if !reason.is_empty() {
        message = format!("{message}: {reason}");
    }
    // kube's NewForbidden: "<resource>.<group> \"<name>\" is forbidden: <message>".
    let qualified = match (info.resource.as_str(), info.api_group.as_str()) {
        ("", _) => String::new(),
        (resource, "") => resource.to_string(),
        (resource, group) => format!("{resource}.{group}"),
    };
    let text = match (qualified.is_empty(), info.name.is_empty()) {
        (true, _) => format!("forbidden: {message}"),
        (false, true) => format!("{qualified} is forbidden: {message}"),
        (false, false) => format!("{qualified} {:?} is forbidden: {message}", info.name),
    };
    ApiError::new(403, "Forbidden", text).with_details(StatusDetails {
        name: info.name.clone(),
        group: info.api_group.clone(),
        kind: info.resource.clone(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Allows alice to list, denies everything else with a reason; counts calls.
    struct Rbac(AtomicUsize);

    #[async_trait::async_trait]
    impl AccessReviewer for Rbac {
        async fn review_access(&self, user: &UserInfo, info: &RequestInfo) -> Result<Decision, AuthError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            if user.name == "broken" {
                return Err(AuthError::NoStatus { what: "SubjectAccessReview" });
            }
            Ok(if user.name == "alice" && info.verb == "list" {
                Decision::Allow
            } else {
                Decision::Deny { reason: "no RBAC policy matched".into() }
            })
        }
    }

    fn user(name: &str) -> UserInfo {
        UserInfo { name: name.into(), groups: vec!["system:authenticated".into()], ..Default::default() }
    }

    const NS: &str = "/apis/wgpolicyk8s.io/v1alpha2/namespaces/team-a/policyreports";

    #[tokio::test]
    async fn decisions_are_cached_per_user_and_attributes() {
        let rbac = Arc::new(Rbac(AtomicUsize::new(0)));
        let authorizer = Authorizer::new(rbac.clone(), AuthorizerSettings::default());
        let list = RequestInfo::resolve("GET", NS, None);
        let watch = RequestInfo::resolve("GET", NS, Some("watch=true"));
        for _ in 0..3 {
            authorizer.authorize(&user("alice"), &list).await.expect("allowed");
            assert_eq!(authorizer.authorize(&user("alice"), &watch).await.expect_err("denied").code, 403);
            assert_eq!(authorizer.authorize(&user("bob"), &list).await.expect_err("denied").code, 403);
        }
        assert_eq!(rbac.0.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn masters_and_health_paths_skip_the_review_and_failures_are_500() {
        let rbac = Arc::new(Rbac(AtomicUsize::new(0)));
        let authorizer = Authorizer::new(rbac.clone(), AuthorizerSettings::default());
        let mut admin = user("admin");
        admin.groups.push("system:masters".into());
        authorizer.authorize(&admin, &RequestInfo::resolve("DELETE", NS, None)).await.expect("master");
        authorizer
            .authorize(&UserInfo::anonymous(), &RequestInfo::resolve("GET", "/livez", None))
            .await
            .expect("health");
        assert_eq!(rbac.0.load(Ordering::SeqCst), 0);
        let denied = authorizer
            .authorize(&UserInfo::anonymous(), &RequestInfo::resolve("GET", "/metrics", None))
            .await;
        assert_eq!(
            denied.expect_err("metrics is not open").message,
            "forbidden: User \"system:anonymous\" cannot get path \"/metrics\": no RBAC policy matched"
        );
        let failed = authorizer.authorize(&user("broken"), &RequestInfo::resolve("GET", NS, None)).await;
        assert_eq!(failed.expect_err("review failed").code, 500);
        let settings =
            AuthorizerSettings { always_allow_paths: vec!["/metrics*".into()], ..Default::default() };
        let open = Authorizer::new(rbac, settings);
        open.authorize(&UserInfo::anonymous(), &RequestInfo::resolve("GET", "/metrics/x", None))
            .await
            .expect("open");
    }

    #[test]
    fn forbidden_messages_use_kubes_wording() {
        let bob = user("bob");
        let get = RequestInfo::resolve("GET", &format!("{NS}/r1"), None);
        let e = forbidden(&bob, &get, "");
        assert_eq!(
            e.message,
            "policyreports.wgpolicyk8s.io \"r1\" is forbidden: User \"bob\" cannot get resource \"policyreports\" in API group \"wgpolicyk8s.io\" in the namespace \"team-a\""
        );
        assert_eq!((e.code, e.reason), (403, "Forbidden"));
        let cluster =
            RequestInfo::resolve("GET", "/apis/openreports.io/v1alpha1/clusterreports", Some("watch=1"));
        assert_eq!(
            forbidden(&bob, &cluster, "").message,
            "clusterreports.openreports.io is forbidden: User \"bob\" cannot watch resource \"clusterreports\" in API group \"openreports.io\" at the cluster scope"
        );
        let status = RequestInfo::resolve("PUT", &format!("{NS}/r1/status"), None);
        assert!(forbidden(&bob, &status, "")
            .message
            .contains("cannot update resource \"policyreports/status\""));
    }
}
