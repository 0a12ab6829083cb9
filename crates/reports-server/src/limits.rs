//! Limits that keep one client from hurting the others.
//!
//! An aggregated API server sits on the control path of every cluster it serves: a client that
//! floods it, dribbles bytes at it or opens connections and sends nothing must not slow down the
//! namespace controller, the garbage collector or Kyverno. Each limit answers one such client,
//! the way kube-apiserver answers it:
//!
//! - **Requests in flight** ([`admit`]): at most `max_read_only` reads and `max_mutating` writes
//!   are served at once (kube's `--max-requests-inflight` 400 and
//!   `--max-mutating-requests-inflight` 200); one more gets 429 with `Retry-After: 1` at once,
//!   which every client-go client retries, instead of everyone queueing. One client (a user; on
//!   a standalone server, an address) holds at most a quarter of each, so a flood from one
//!   client leaves slots for the others, the way kube's priority and fairness keeps flows apart;
//!   a request beyond its client's share waits up to a second for one of them (a burst queues
//!   briefly), then gets 429. A slot is
//!   held until the response body has been sent, so the memory of streamed lists is bounded by
//!   the read-only limit. Watches are long-running and counted apart (they cost a slot of the
//!   watch window, not a request), and the health endpoints and `/metrics` are exempt, so probes
//!   and scrapes keep answering under a flood (kube exempts probes the same way).
//! - **Request timeout** ([`admit`]): a request that has not produced its response head within
//!   `request_timeout` (kube's `--request-timeout`, 60 s) gets 504 Timeout; this is what ends a
//!   body that stops arriving (`Content-Length: 100` and 9 bytes sent). Watches are exempt.
//! - **Connections** (`serve`): at most `max_connections` at once; at the limit the accept loop
//!   waits for one to close, so further clients wait in the kernel's backlog instead of being
//!   accepted into a process out of file descriptors. The default is derived from the
//!   open-file limit (raised to its hard maximum at start, as Go programs do).
//! - **Slow and idle connections** (`serve`): HTTP/1 request headers must arrive within
//!   `header_read_timeout` (kube: 32 s), and a connection with no request in progress is closed
//!   after `idle_timeout` (kube: 90 s); a watch in progress keeps its connection open however
//!   quiet it is.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{
    extract::Request,
    middleware::Next,
    response::{IntoResponse, Response},
};
use reports_core::{request_info::RequestInfo, ApiError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::response::{hold_until_sent, ErrorResponse};

/// Every limit the serving path enforces; see the module documentation for what each answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingLimits {
    /// Largest request body accepted (413 beyond it; kube-apiserver's limit is 3 MiB).
    pub max_body_bytes: usize,
    /// Reads served at once (0: no limit).
    pub max_read_only: usize,
    /// Writes served at once (0: no limit).
    pub max_mutating: usize,
    /// Longest time to a response head for requests other than watches.
    pub request_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Longest time for an HTTP/1 request's headers to arrive.
    pub header_read_timeout: Duration,
    /// How long a connection with no request in progress stays open.
    pub idle_timeout: Duration,
    /// Concurrent streams per HTTP/2 connection.
    pub http2_max_streams: u32,
}

impl Default for ServingLimits {
    /// kube-apiserver's values, and a connection limit derived from the open-file limit.
    fn default() -> Self {
        Self {
            max_body_bytes: 3 * 1024 * 1024,
            max_read_only: 400,
            max_mutating: 200,
            request_timeout: Duration::from_secs(60),
            max_connections: default_max_connections(),
            header_read_timeout: Duration::from_secs(32),
            idle_timeout: Duration::from_secs(90),
            http2_max_streams: 1000,
        }
    }
}

/// The connection limit for this process's open-file limit: all of it but a reserve for the
/// database, the SQLite files and the log (a quarter, at most 256 descriptors).
pub fn default_max_connections() -> usize {
    let limit = open_file_limit().unwrap_or(1024);
    let reserve = (limit / 4).min(256);
    (limit - reserve).max(1) as usize
}

/// Raises the soft open-file limit to the hard one, as the Go runtime does at start, so a
/// server started with a small default limit (1024) can still hold thousands of connections.
/// Returns the limit in force afterwards.
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(error = %e, "could not raise the open-file limit");
        }
    }
    open_file_limit()
}

/// The soft open-file limit, if there is one.
fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// One client's share of each kind of slot: a flooding client (one user; on a standalone
/// server, one address) may hold at most this fraction of the slots, so the others always find
/// some free.
const CLIENT_SHARE_DIVISOR: usize = 4;
/// How long a request beyond its client's share waits for one of that client's slots before it
/// gets 429: a client's burst queues briefly (as kube's priority and fairness queues it) instead
/// of being refused, while a client that keeps more requests coming than its share is refused.
const CLIENT_QUEUE_WAIT: Duration = Duration::from_secs(1);

/// The address a connection comes from, for telling clients apart where no user is known.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddress(pub(crate) std::net::IpAddr);

/// A client and a kind of slot (true: mutating).
type ClientKey = (String, bool);

/// The in-flight slots and the request timeout, shared by every request.
pub(crate) struct Admission {
    /// Slots for reads; None when unlimited.
    read_only: Option<Arc<Semaphore>>,
    /// Slots for writes; None when unlimited.
    mutating: Option<Arc<Semaphore>>,
    /// Most reads one client may have in flight.
    client_read_only: usize,
    /// Most writes one client may have in flight.
    client_mutating: usize,
    /// Each active client's share per kind; an entry goes when nobody holds or awaits it.
    clients: Mutex<HashMap<ClientKey, Arc<Semaphore>>>,
    /// See [`ServingLimits::request_timeout`].
    request_timeout: Duration,
    /// Requests waiting for one of their client's read slots, for `/metrics`.
    waiting_read_only: AtomicI64,
    /// Requests waiting for one of their client's write slots.
    waiting_mutating: AtomicI64,
}

impl crate::metrics::MetricsSource for Admission {
    fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP apiserver_current_inqueue_requests Requests waiting for one of their client's slots.\n\
             # TYPE apiserver_current_inqueue_requests gauge\n",
        );
        for (kind, waiting) in [("readOnly", &self.waiting_read_only), ("mutating", &self.waiting_mutating)] {
            let value = waiting.load(Ordering::Relaxed);
            out.push_str(&format!("apiserver_current_inqueue_requests{{request_kind=\"{kind}\"}} {value}\n"));
        }
    }
}

impl Admission {
    /// The admission rules of `limits`.
    pub(crate) fn new(limits: &ServingLimits) -> Self {
        let slots = |n: usize| (n > 0).then(|| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS))));
        let share = |n: usize| (n / CLIENT_SHARE_DIVISOR).max(1);
        Self {
            read_only: slots(limits.max_read_only),
            mutating: slots(limits.max_mutating),
            client_read_only: share(limits.max_read_only),
            client_mutating: share(limits.max_mutating),
            clients: Mutex::default(),
            request_timeout: limits.request_timeout,
            waiting_read_only: AtomicI64::new(0),
            waiting_mutating: AtomicI64::new(0),
        }
    }

    /// A slot for `client`, or None when the client stayed at its share for
    /// [`CLIENT_QUEUE_WAIT`] or the server is at its limit.
    async fn acquire(self: &Arc<Self>, client: String, mutating: bool) -> Option<Slot> {
        let (slots, share) = if mutating {
            (&self.mutating, self.client_mutating)
        } else {
            (&self.read_only, self.client_read_only)
        };
        let Some(slots) = slots else { return Some(Slot { _permit: None, _client: None }) };
        let key = (client, mutating);
        let client_slots = Arc::clone(
            self.lock_clients().entry(key.clone()).or_insert_with(|| Arc::new(Semaphore::new(share))),
        );
        let permit = match Arc::clone(&client_slots).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                let waiting = if mutating { &self.waiting_mutating } else { &self.waiting_read_only };
                waiting.fetch_add(1, Ordering::Relaxed);
                let waited =
                    tokio::time::timeout(CLIENT_QUEUE_WAIT, Arc::clone(&client_slots).acquire_owned()).await;
                waiting.fetch_sub(1, Ordering::Relaxed);
                waited.ok().and_then(Result::ok)
            }
        };
        // Before the client slot exists: dropping it (on a refusal too) removes the client's
        // entry only when no other reference to its semaphore is left.
        drop(client_slots);
        let client_slot = ClientSlot { admission: Arc::clone(self), key, permit };
        client_slot.permit.as_ref()?;
        let permit = Arc::clone(slots).try_acquire_owned().ok()?;
        Some(Slot { _permit: Some(permit), _client: Some(client_slot) })
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, Arc<Semaphore>>> {
        self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A request's place in flight: the server-wide permit and one of its client's, both given back
/// when the response has been sent.
struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    _client: Option<ClientSlot>,
}

/// One of a client's slots; the client's entry goes with the last one held or awaited.
struct ClientSlot {
    admission: Arc<Admission>,
    key: ClientKey,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut clients = self.admission.lock_clients();
        // Every holder and waiter keeps a reference: only the map's own left means neither.
        if clients.get(&self.key).is_some_and(|slots| Arc::strong_count(slots) == 1) {
            clients.remove(&self.key);
        }
    }
}

/// Request middleware: a slot in flight and a deadline for everything but watches, health
/// checks and scrapes. Runs after authentication (the user names the client, as kube's
/// priority and fairness names flows) and inside the metrics layer, which resolves the request
/// info and counts the 429s and 504s as kube-apiserver counts them.
pub(crate) async fn admit(admission: Arc<Admission>, request: Request, next: Next) -> Response {
    let info = request.extensions().get::<RequestInfo>();
    let exempt = info.is_none_or(RequestInfo::is_long_running)
        || matches!(request.uri().path(), "/healthz" | "/livez" | "/readyz" | "/metrics");
    let mutating = !info.is_some_and(RequestInfo::is_read_only);
    if exempt {
        return next.run(request).await;
    }
    let client = match (
        request.extensions().get::<reports_auth::UserInfo>(),
        request.extensions().get::<PeerAddress>(),
    ) {
        (Some(user), _) => format!("user:{}", user.name),
        (None, Some(PeerAddress(ip))) => format!("address:{ip}"),
        (None, None) => String::new(),
    };
    let Some(slot) = admission.acquire(client, mutating).await else {
        return ErrorResponse(ApiError::too_many_requests()).into_response();
    };
    match tokio::time::timeout(admission.request_timeout, next.run(request)).await {
        Ok(response) => hold_until_sent(response, slot),
        Err(_) => ErrorResponse(ApiError::request_timeout()).into_response(),
    }
}
