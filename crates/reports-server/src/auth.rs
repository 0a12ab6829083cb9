//! The request guard: who is calling, and may they? Delegated to the cluster (`reports-auth`).
//!
//! A standalone server (no cluster configured) has no guard: it serves loopback only unless told
//! otherwise. Once a cluster is configured, every request on every address goes through here,
//! health checks included (they are allowed to anonymous callers by the always-allow paths, as
//! in kube-apiserver): authentication names the user or refuses with 401, authorization asks
//! the cluster and refuses with 403. The user travels on with the request (admission needs it).

use std::sync::Arc;

use axum::{extract::Request, middleware::Next, response::Response};
use reports_auth::{
    authenticate::{unauthorized, Authenticator, PeerCertificates},
    authorize::Authorizer,
};
use reports_core::request_info::RequestInfo;

use crate::response::ErrorResponse;

/// Authentication and authorization of every request.
pub(crate) struct Guard {
    /// Names the caller.
    pub(crate) authenticator: Authenticator,
    /// Decides what the caller may do.
    pub(crate) authorizer: Authorizer,
}

/// Middleware: refuses the request or lets it through with its user attached.
pub(crate) async fn guard(guard: Arc<Guard>, mut request: Request, next: Next) -> Response {
    let info = match request.extensions().get::<RequestInfo>() {
        Some(info) => info.clone(),
        None => RequestInfo::resolve(request.method().as_str(), request.uri().path(), request.uri().query()),
    };
    let peer = request.extensions().get::<PeerCertificates>().cloned().unwrap_or_default();
    let user = match guard.authenticator.authenticate(&peer, request.headers()).await {
        Ok(user) => user,
        Err(failures) => {
            tracing::debug!(path = %info.path, reasons = %failures, "authentication failed");
            return axum::response::IntoResponse::into_response(ErrorResponse(unauthorized()));
        }
    };
    if let Err(denied) = guard.authorizer.authorize(&user, &info).await {
        if denied.code != 403 {
            tracing::warn!(path = %info.path, error = %denied.internal.as_deref().unwrap_or(&denied.message), "authorization failed");
        }
        return axum::response::IntoResponse::into_response(ErrorResponse(denied));
    }
    request.extensions_mut().insert(user);
    next.run(request).await
}
