//! The HTTPS accept loop: TCP accept within the connection limit, TLS handshake on the
//! connection's own task (a slow client never holds up others), HTTP/1.1 and HTTP/2 on one port,
//! idle and header timeouts, graceful shutdown. The limits are described in [`crate::limits`].

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{extract::Request, Router};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    net::TcpListener,
    sync::{watch, OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::limits::ServingLimits;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections may take to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest pause of the accept loop after an accept error (out of file descriptors, say): long
/// enough not to spin, short enough to resume soon after descriptors free up.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutting_down` becomes true, then drains.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    limits: ServingLimits,
    mut shutting_down: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder.http2().max_concurrent_streams(limits.http2_max_streams);
    let max_connections = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    // Every open connection holds a permit; the drain waits until all are back.
    let connections = Arc::new(Semaphore::new(max_connections));
    let mut backoff = Duration::ZERO;
    let mut at_limit_logged = false;
    loop {
        if connections.available_permits() == 0 && !at_limit_logged {
            tracing::warn!(max_connections, "at the connection limit; new clients wait until one closes");
            at_limit_logged = true;
        }
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shutting_down.changed() => break,
        };
        if connections.available_permits() > 0 {
            at_limit_logged = false;
        }
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE) or a connection reset before it was
                    // accepted: pause, doubling up to a bound, rather than spinning on the error.
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                    tracing::warn!(error = %e, retry_in = ?backoff, "accept failed");
                    drop(permit);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => continue,
                        _ = shutting_down.changed() => break,
                    }
                }
            },
            _ = shutting_down.changed() => break,
        };
        backoff = Duration::ZERO;
        let _ = tcp.set_nodelay(true);
        let connection = Connection {
            acceptor: acceptor.clone(),
            router: router.clone(),
            builder: builder.clone(),
            idle_timeout: limits.idle_timeout,
            shutting_down: shutting_down.clone(),
            _permit: permit,
        };
        tokio::spawn(connection.serve(tcp, peer));
    }
    drop(listener);
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.acquire_many(all)).await.is_err() {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
}

/// One accepted connection and what serving it needs.
struct Connection {
    acceptor: TlsAcceptor,
    router: Router,
    builder: auto::Builder<TokioExecutor>,
    idle_timeout: Duration,
    shutting_down: watch::Receiver<bool>,
    /// This connection's place under the connection limit, given back when it ends.
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn serve(mut self, tcp: tokio::net::TcpStream, peer: std::net::SocketAddr) {
        let tls_stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        // What the client presented, for authentication of each request on this connection.
        let peer_certificates = reports_auth::authenticate::PeerCertificates::new(
            tls_stream.get_ref().1.peer_certificates().map(|c| c.to_vec()).unwrap_or_default(),
        );
        // Requests in progress on this connection, response bodies included: the connection is
        // idle only when this is zero.
        let (active, mut activity) = watch::channel(0usize);
        let active = Arc::new(active);
        let router = self.router.clone();
        let service = tower::service_fn(move |mut request: Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(peer_certificates.clone());
            let router = router.clone();
            let in_progress = InProgress::start(Arc::clone(&active));
            async move {
                let response = router.oneshot(request.map(axum::body::Body::new)).await?;
                Ok::<_, Infallible>(crate::response::hold_until_sent(response, in_progress))
            }
        });
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(tls_stream), TowerToHyperService::new(service));
        tokio::pin!(connection);
        let mut closing = false;
        loop {
            let idle = *activity.borrow_and_update() == 0;
            if !closing && *self.shutting_down.borrow() {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            tokio::select! {
                ended = connection.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = activity.changed() => {}
                _ = tokio::time::sleep(self.idle_timeout), if idle && !closing => {
                    tracing::debug!(%peer, "closing an idle connection");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                changed = self.shutting_down.changed(), if !closing => {
                    if changed.is_err() {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
    }
}

/// One request in progress on a connection: counted from its arrival until its response body
/// has been sent or dropped.
struct InProgress(Arc<watch::Sender<usize>>);

impl InProgress {
    fn start(active: Arc<watch::Sender<usize>>) -> Self {
        active.send_modify(|n| *n += 1);
        Self(active)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}
