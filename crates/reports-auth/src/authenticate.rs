//! Authentication of one request: front proxy, then client certificate, then bearer token, then
//! anonymous, in k8s.io/apiserver's order and with its rule for failures.
//!
//! Each method either names a user, has nothing to say (no certificate, no header, no token), or
//! fails (a certificate that does not verify, a token the cluster refuses). The first user named
//! wins. If none is named and some method failed, the request is refused with 401: credentials
//! that do not verify never fall back to anonymous. If no method had anything to say, the caller
//! is anonymous and authorization decides.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::{header, HeaderMap};
use reports_core::ApiError;
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;

use crate::{
    certs::subject_names, config::ClientAuthConfig, front_proxy::user_from_headers,
    token::TokenAuthenticator, UserInfo,
};

/// How long a connection's certificate checks are reused: a certificate that expires, or a CA
/// that is rotated, takes effect within this time even on a connection that stays open.
const CHECK_REUSE: Duration = Duration::from_secs(10);

/// The certificates a client presented on its connection (leaf first; empty when none), with the
/// outcome of checking them, shared by the connection's requests: verifying a chain costs a
/// signature check, and a front proxy sends every request of many users on a few connections.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificates {
    /// The chain as presented.
    chain: Arc<[CertificateDer<'static>]>,
    /// The last check, with the settings it was made against.
    checked: Arc<Mutex<Option<Checked>>>,
}

/// What a connection's certificate is, against one version of the settings.
#[derive(Debug, Clone)]
struct Checked {
    /// The settings checked against (compared by identity).
    config: Arc<ClientAuthConfig>,
    /// When.
    at: Instant,
    /// The front proxy's common name when the chain verifies against the request-header CA
    /// (None without one configured).
    proxy: Option<Result<String, String>>,
    /// User and groups when the chain verifies against the client CA (None without one).
    client: Option<Result<(String, Vec<String>), String>>,
}

impl PeerCertificates {
    /// The chain a client presented.
    pub fn new(chain: Vec<CertificateDer<'static>>) -> Self {
        Self { chain: chain.into(), checked: Arc::default() }
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The chain checked against `config`, reusing this connection's last check when it is
    /// recent and was made against the same settings.
    fn check(&self, config: &Arc<ClientAuthConfig>) -> Checked {
        let mut last = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(checked) = last.as_ref() {
            if Arc::ptr_eq(&checked.config, config) && checked.at.elapsed() < CHECK_REUSE {
                return checked.clone();
            }
        }
        let chain = &self.chain[..];
        let proxy = config.request_header.as_ref().map(|rh| {
            rh.ca.verify(chain).map(|()| subject_names(&chain[0]).map(|(cn, _)| cn).unwrap_or_default())
        });
        let client =
            config.client_ca.as_ref().map(|ca| ca.verify(chain).and_then(|()| subject_names(&chain[0])));
        let checked = Checked { config: config.clone(), at: Instant::now(), proxy, client };
        *last = Some(checked.clone());
        checked
    }
}

/// Who a request comes from, decided once per request.
pub struct Authenticator {
    /// The settings in force, replaced when the cluster publishes new ones.
    config: watch::Receiver<Arc<ClientAuthConfig>>,
    /// TokenReview, when a cluster is configured.
    tokens: Option<TokenAuthenticator>,
}

/// Why a method could not name the user (kept for the server's log, never sent to the client).
#[derive(Debug, Default)]
pub struct Failures(Vec<String>);

impl std::fmt::Display for Failures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl Authenticator {
    /// An authenticator reading the settings from `config`, with token reviews when `tokens` is
    /// given.
    pub fn new(config: watch::Receiver<Arc<ClientAuthConfig>>, tokens: Option<TokenAuthenticator>) -> Self {
        Self { config, tokens }
    }

    /// The request's user, or the reasons every offered credential failed.
    pub async fn authenticate(
        &self,
        peer: &PeerCertificates,
        headers: &HeaderMap,
    ) -> Result<UserInfo, Failures> {
        let config = self.config.borrow().clone();
        let mut failures = Failures::default();
        if !peer.chain.is_empty() {
            let checked = peer.check(&config);
            if let (Some(request_header), Some(proxy)) = (&config.request_header, checked.proxy) {
                match proxy {
                    Ok(name) => {
                        let allowed = request_header.allowed_names.is_empty()
                            || request_header.allowed_names.contains(&name);
                        if !allowed {
                            failures.0.push(format!(
                                "front-proxy certificate common name {name:?} is not one of the allowed names"
                            ));
                        } else if let Some(user) = user_from_headers(request_header, headers) {
                            return Ok(user.with_authenticated_group());
                        }
                    }
                    Err(e) => failures.0.push(format!("not a front-proxy certificate: {e}")),
                }
            }
            if let Some(client) = checked.client {
                match client {
                    Ok((name, groups)) if !name.is_empty() => {
                        return Ok(UserInfo { name, groups, ..Default::default() }.with_authenticated_group());
                    }
                    Ok(_) => failures.0.push("client certificate has no common name".into()),
                    Err(e) => failures.0.push(format!("client certificate: {e}")),
                }
            }
        }
        // Without token authentication a token is not a credential at all, as in kube.
        if let (Some(token), Some(tokens)) = (bearer_token(headers), &self.tokens) {
            match tokens.authenticate(token).await {
                Ok(Some(user)) => return Ok(user.with_authenticated_group()),
                Ok(None) => failures.0.push("invalid bearer token".into()),
                Err(e) => failures.0.push(format!("token review: {e}")),
            }
        }
        if failures.0.is_empty() {
            Ok(UserInfo::anonymous())
        } else {
            Err(failures)
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// kube-apiserver's answer to a request whose credentials do not verify.
pub fn unauthorized() -> ApiError {
    ApiError::new(401, "Unauthorized", "Unauthorized")
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc.def"));
        assert_eq!(bearer_token(&headers), Some("abc.def"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer   xyz "));
        assert_eq!(bearer_token(&headers), Some("xyz"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic dXNlcjpwYXNz"));
        assert_eq!(bearer_token(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&headers), None);
    }
}
