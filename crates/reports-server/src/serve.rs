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

/// Largest request head, as Go's `http.DefaultMaxHeaderBytes`.
const MAX_HEADER_BYTES: usize = 1 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections may take to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// An answer given before the request body was read (413 for a declared length over the limit,
/// 401, 429...) waits until up to this many times the body limit has been read and discarded.
const DRAIN_FACTOR: usize = 4;
/// How long that discarding may take.
const DRAIN_TIMEOUT_PER_REQUEST: Duration = Duration::from_secs(10);
/// A pause of the client this long ends the discarding. Seconds, not less: a client sending a
/// large body on a busy machine can stall that long between writes and would then see its
/// connection cut instead of the answer (seen with curl on two cores running the test suite).
const DRAIN_PAUSE: Duration = Duration::from_secs(3);
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
    // Request heads up to 1 MiB on both protocols, as Go's server (kube-apiserver) accepts:
    // the aggregator forwards a user's groups as headers, and selectors can be long. (hyper's
    // own defaults are 400 KiB for HTTP/1 and 16 KiB for HTTP/2; it still caps an HTTP/1
    // request line at 64 KiB, answered with 414.)
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .max_concurrent_streams(limits.http2_max_streams)
        .max_header_list_size(MAX_HEADER_BYTES as u32);
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
            drain_limit: limits.max_body_bytes.saturating_mul(DRAIN_FACTOR),
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
    /// Request body bytes read and discarded after an early answer (see [`SharedBody`]).
    drain_limit: usize,
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
        let drain_limit = self.drain_limit;
        let service = tower::service_fn(move |request: Request<hyper::body::Incoming>| {
            let (mut parts, incoming) = request.into_parts();
            parts.extensions.insert(peer_certificates.clone());
            parts.extensions.insert(crate::limits::PeerAddress(peer.ip()));
            // A client still waiting for `100 Continue` has sent nothing to drain.
            let expects_continue = parts.headers.contains_key(http::header::EXPECT);
            let (body, unread) = SharedBody::new(incoming);
            let request = Request::from_parts(parts, axum::body::Body::new(body));
            let router = router.clone();
            let in_progress = InProgress::start(Arc::clone(&active));
            async move {
                let response = router.oneshot(request).await?;
                if !expects_continue {
                    unread.drain(drain_limit).await;
                }
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

/// A request body shared between the handler and the connection, so that what the handler left
/// unread can be drained before its answer is sent.
///
/// A client that sends its whole body before reading (most do, and HTTP/2 clients always may)
/// loses an early answer if the server stops reading: HTTP/1 closes the connection under the
/// body still arriving (the client sees a reset, not the 413), and HTTP/2 resets the stream.
/// Reading the rest of the body first, up to a bound in bytes and time, lets the answer arrive
/// as kube-apiserver's does; a body past the bound is cut off as before.
struct SharedBody(Arc<std::sync::Mutex<hyper::body::Incoming>>);

impl SharedBody {
    /// The body for the handler, and the handle that drains what it leaves.
    fn new(incoming: hyper::body::Incoming) -> (Self, Self) {
        let shared = Arc::new(std::sync::Mutex::new(incoming));
        (Self(Arc::clone(&shared)), Self(shared))
    }

    /// Reads and discards up to `limit` bytes of what is left, for at most
    /// [`DRAIN_TIMEOUT_PER_REQUEST`], and stops as soon as the client pauses for
    /// [`DRAIN_PAUSE`] (a body that stopped arriving has nothing to drain).
    async fn drain(self, limit: usize) {
        use http_body::Body as _;
        if self.is_end_stream() {
            return;
        }
        let mut body = self;
        let mut drained = 0usize;
        let _ = tokio::time::timeout(DRAIN_TIMEOUT_PER_REQUEST, async {
            while drained <= limit {
                let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx));
                match tokio::time::timeout(DRAIN_PAUSE, next).await {
                    Ok(Some(Ok(frame))) => drained += frame.data_ref().map_or(0, |d| d.len()),
                    Ok(Some(Err(_)) | None) | Err(_) => return,
                }
            }
        })
        .await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, hyper::body::Incoming> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl http_body::Body for SharedBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut *self.lock()).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.lock().is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.lock().size_hint()
    }
}
