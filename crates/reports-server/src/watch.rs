//! Watch: exact, resumable change streams built on the store's change log.
//!
//! # Where events come from
//!
//! Every write appends to the change log in the same transaction that changes the object, with
//! resourceVersions assigned in commit order (ARCHITECTURE invariants 3 and 4). So "every change
//! after X, in order" is always just `changes_since(X)`: the log is the single source of truth and
//! nothing held in memory can lose or reorder an event.
//!
//! Reading the database once per watcher per write would not scale to hundreds of watchers, so
//! one [`ChangeFeed`] task per process tails the log (woken by the store after each commit, which
//! for PostgreSQL includes commits made by other replicas) and keeps the most recent changes in
//! memory, in a window bounded by bytes. The window's one invariant is that it holds **every**
//! change above its floor RV up to its newest RV. A watcher whose cursor (the highest RV it has
//! accounted for) is at or above the floor takes the rest from the window; one below it (it
//! started from an older RV, or fell behind while its client was slow) reads the database up to
//! the window's newest RV, which is committed and therefore in that read, and returns to the
//! window. Neither source can skip a change, and the cursor drops duplicates from the overlap.
//!
//! # Batches, rendered once
//!
//! Under load the feed pauses between publications, 50 µs per watcher up to
//! [`MAX_PUBLISH_PAUSE`]: commits that land in the meantime leave together as one batch (one timer
//! for the whole process; a write after a quiet moment is published at once). Each batch renders, per resource and event shape (object or
//! PartialObjectMetadata), the event lines of all its changes into one buffer, once; every watcher
//! that takes all of them (no selector excludes one) sends that same buffer. So a write watched by
//! 100 clients is rendered once, and a client costs one queue item, one wake-up and one body
//! frame per batch, not per event.
//!
//! # Slow watchers
//!
//! The feed never waits for anyone, so writers and fast watchers are never slowed by a slow one.
//! A watcher whose client stops reading fills its bounded response queue; after
//! [`STALLED_CLIENT_GRACE`] without progress its stream is closed and the client re-watches from
//! its last resourceVersion, as informers do after any disconnect. A watcher that is merely behind
//! finds its changes in the window, or in the database once the window has moved past it.
//!
//! # Start points
//!
//! - RV unset or `0` (or `sendInitialEvents=true`): ADDED for every matching object of a list
//!   snapshot at RV S, then (with bookmarks allowed) the BOOKMARK annotated
//!   `k8s.io/initial-events-end`, then changes after S.
//! - RV X: changes after X. If the log no longer reaches back to X the stream carries one ERROR
//!   event with a 410 Expired Status (kube-rs only re-lists on that event, never on an HTTP 410).
//!   If X is ahead of every commit, the watch waits up to 3 s for it, then sends the 504
//!   "Too large resource version" ERROR event, as kube's watch cache does.
//!
//! # Selectors
//!
//! Label and field selectors are applied to every change with the labels before and after the
//! write, as kube's cacher does: an object that starts matching arrives as ADDED, one that stops
//! matching as DELETED, so filtered informers never keep ghosts.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use axum::{body::Body, http::StatusCode, response::Response};
use bytes::Bytes;
use rand::Rng as _;
use reports_core::{
    negotiate::Shape,
    options::{ListOptions, RvParam},
    selector::{FieldSelector, LabelSelector},
    ApiError, ResourceKind,
};
use reports_store::{Change, ChangeType, DynStore, ListChunk, ListQuery, StoreError};
use tokio::sync::{mpsc, watch};

use crate::{
    render::{append_shared_event, event_line, Renderer},
    response::bytes_response,
};

/// The default of `--watch-window-bytes`: most bytes of recent changes the feed keeps in memory
/// (stored bodies plus their rendered lines, estimated as twice the bodies). About 5 s of 500
/// writes/s of 6 KB reports: enough for a watcher that is briefly behind to catch up without the
/// database, small next to the server.
pub const DEFAULT_WINDOW_BYTES: usize = 32 * 1024 * 1024;
/// About how many bytes of batches a watcher takes from the window at a time.
const FOLLOW_BYTES: usize = 1024 * 1024;
/// Most changes the window keeps, whatever their size.
const WINDOW_CHANGES: usize = 16 * 1024;
/// The pause between two publications, per watcher: a publication costs every watcher a wake-up
/// and a frame, so spacing them in proportion to the watchers bounds the share of the server
/// that fan-out overhead can take, while one or a few watchers get every commit at once.
const PUBLISH_PAUSE_PER_WATCHER: Duration = Duration::from_micros(50);
/// The longest pause between two publications (reached at 100 watchers), bounding the latency
/// it adds. A write that follows a quiet moment is published at once, whatever the watchers.
pub const MAX_PUBLISH_PAUSE: Duration = Duration::from_millis(5);
/// How many changes one database read returns (feed tailing and watcher catch-up).
const CATCH_UP_BATCH: usize = 500;
/// Response chunks buffered per watcher before it waits for its client.
const CLIENT_BUFFER: usize = 64;
/// How many bytes a watcher gathers before it queues them (catch-up and initial events).
const SEND_CHUNK: usize = 64 * 1024;
/// How long a client may not read at all before its watch is closed.
pub const STALLED_CLIENT_GRACE: Duration = Duration::from_secs(30);
/// Bookmark cadence when bookmarks are allowed (kube's cacher: about every minute).
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);
/// How long a watch from a future RV waits for it to be committed (kube: 3 s).
const TOO_LARGE_WAIT: Duration = Duration::from_secs(3);
/// Without `timeoutSeconds`, watches end after a random time in [this, 2 × this), like
/// kube-apiserver's `--min-request-timeout`, so clients spread their reconnects.
const DEFAULT_MIN_REQUEST_TIMEOUT: u64 = 1800;

/// Consecutive changes published together, with their event lines rendered at most once per
/// resource and shape, on first use, and shared by every watcher that takes them all.
struct FeedBatch {
    /// The changes, in RV order; never empty.
    changes: Vec<Change>,
    /// Memory the batch holds: bodies, and about as much again once rendered. Computed once,
    /// as every watcher's look into the window adds it up.
    weight: usize,
    /// Rendered lines: (resource, namespace or all, shape) -> every change of that scope in the
    /// batch, each with the event type a watcher without selectors sees (ADDED, MODIFIED,
    /// DELETED). A handful of entries at most, so a list beats a map.
    rendered: Mutex<Vec<RenderedLines>>,
}

/// One entry of [`FeedBatch::rendered`].
struct RenderedLines {
    resource: String,
    namespace: Option<String>,
    shape: Shape,
    lines: Bytes,
}

impl FeedBatch {
    fn new(changes: Vec<Change>) -> Self {
        let weight = changes.iter().map(|c| 2 * c.object.body.len() + 256).sum();
        Self { changes, weight, rendered: Mutex::new(Vec::new()) }
    }

    fn last_rv(&self) -> u64 {
        self.changes.last().map_or(0, |c| c.rv)
    }

    /// The shared event lines of every change of `scope` in this batch, in `shape`.
    fn lines(&self, scope: Scope<'_>, shape: Shape) -> Result<Bytes, ApiError> {
        // Rendering under the lock is deliberate: every other watcher asking meanwhile wants
        // exactly this result, and waiting for it is cheaper than rendering it again.
        let mut rendered = self.rendered.lock().unwrap_or_else(PoisonError::into_inner);
        let found = rendered.iter().find(|r| {
            r.shape == shape && r.resource == scope.resource && r.namespace.as_deref() == scope.namespace
        });
        if let Some(entry) = found {
            return Ok(entry.lines.clone());
        }
        let mut out = Vec::new();
        for change in self.changes.iter().filter(|c| scope.contains(c)) {
            append_shared_event(shape, natural_event_type(change), &change.object.body, &mut out)?;
        }
        let lines = Bytes::from(out);
        rendered.push(RenderedLines {
            resource: scope.resource.to_string(),
            namespace: scope.namespace.map(str::to_string),
            shape,
            lines: lines.clone(),
        });
        Ok(lines)
    }
}

/// The event type of a change for a watcher without selectors.
fn natural_event_type(change: &Change) -> &'static str {
    match change.change_type {
        ChangeType::Added => "ADDED",
        ChangeType::Modified => "MODIFIED",
        ChangeType::Deleted => "DELETED",
    }
}

/// The window of recent changes. Invariant: it holds every change with an RV in
/// `(floor, newest]`, in order.
struct Window {
    batches: VecDeque<Arc<FeedBatch>>,
    floor: u64,
    newest: u64,
    /// Sum of the batches' weights.
    bytes: usize,
    /// Changes in the batches.
    changes: usize,
}

/// What the window can tell a watcher whose cursor is at some RV.
enum Since {
    /// Batches holding every change after the cursor up to the RV given (some may hold older
    /// ones too); at most about [`FOLLOW_BYTES`] of them, so a watcher stuck on a slow client
    /// keeps little beyond the window alive. Empty when the cursor is at the window's newest RV.
    Batches(Vec<Arc<FeedBatch>>, u64),
    /// The window starts above the cursor: read the database up to at least this RV.
    Behind(u64),
}

impl Window {
    fn new(rv: u64) -> Self {
        Self { batches: VecDeque::new(), floor: rv, newest: rv, bytes: 0, changes: 0 }
    }

    fn push(&mut self, batch: Arc<FeedBatch>, max_bytes: usize, max_changes: usize) {
        self.newest = batch.last_rv();
        self.bytes += batch.weight;
        self.changes += batch.changes.len();
        self.batches.push_back(batch);
        // The newest batch always stays, whatever its size: watchers need it.
        while self.batches.len() > 1 && (self.bytes > max_bytes || self.changes > max_changes) {
            if let Some(old) = self.batches.pop_front() {
                self.floor = old.last_rv();
                self.bytes -= old.weight;
                self.changes -= old.changes.len();
            }
        }
    }

    /// Forgets everything up to `rv` (nobody is watching; see the tailing loop).
    fn skip_to(&mut self, rv: u64) {
        self.batches.clear();
        self.bytes = 0;
        self.changes = 0;
        self.floor = self.floor.max(rv);
        self.newest = self.newest.max(rv);
    }

    fn since(&self, cursor: u64, max_bytes: usize) -> Since {
        if cursor < self.floor {
            return Since::Behind(self.newest);
        }
        let first = self.batches.partition_point(|b| b.last_rv() <= cursor);
        let mut taken = Vec::new();
        let mut bytes = 0;
        for batch in self.batches.range(first..) {
            if bytes >= max_bytes {
                // The window is contiguous, so the batches taken reach their own last RV.
                let reach = taken.last().map_or(cursor, |b: &Arc<FeedBatch>| b.last_rv());
                return Since::Batches(taken, reach);
            }
            bytes += batch.weight;
            taken.push(batch.clone());
        }
        Since::Batches(taken, self.newest.max(cursor))
    }
}

/// The process-wide tail of the change log: a window of recent changes that every watcher reads.
pub struct ChangeFeed {
    /// Recent changes. A std mutex: it is held only to push a batch or clone a few `Arc`s.
    window: Mutex<Window>,
    /// The window's byte budget (`--watch-window-bytes`).
    window_bytes: usize,
    /// The window's newest RV; watchers wait on it, and its receiver count tells the tailing
    /// loop whether anyone is watching.
    newest: watch::Sender<u64>,
    /// How many times a watcher was behind the window and read the database: the sign that the
    /// window is too small for the clients' pace (or that a client is stuck).
    database_catch_ups: AtomicU64,
}

impl ChangeFeed {
    /// Starts tailing the log after the current RV, keeping up to `window_bytes` of recent
    /// changes in memory; stops when `shutting_down` flips.
    pub async fn start(
        store: DynStore,
        shutting_down: watch::Receiver<bool>,
        window_bytes: usize,
    ) -> Result<Arc<Self>, StoreError> {
        let start = store.current_rv().await?;
        let feed = Arc::new(Self {
            window: Mutex::new(Window::new(start)),
            window_bytes,
            newest: watch::channel(start).0,
            database_catch_ups: AtomicU64::new(0),
        });
        tokio::spawn(tail(store, feed.clone(), start, shutting_down));
        Ok(feed)
    }

    /// How many times a watcher that was behind the window caught up from the database.
    pub fn database_catch_ups(&self) -> u64 {
        self.database_catch_ups.load(Ordering::Relaxed)
    }

    /// A receiver of the window's newest RV. Holding one is what makes the feed read the log.
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, batch: FeedBatch) {
        let newest = batch.last_rv();
        self.window().push(Arc::new(batch), self.window_bytes, WINDOW_CHANGES);
        self.newest.send_replace(newest);
    }

    fn since(&self, cursor: u64) -> Since {
        self.window().since(cursor, FOLLOW_BYTES)
    }
}

/// The tailing loop: after each commit notification, publish every new change in RV order.
async fn tail(
    store: DynStore,
    feed: Arc<ChangeFeed>,
    mut published: u64,
    mut shutting_down: watch::Receiver<bool>,
) {
    let mut commits = store.subscribe();
    let mut last_publish = tokio::time::Instant::now();
    loop {
        // With nobody subscribed there is no one to publish to: skip to the newest commit
        // instead of reading every change (and its body) back from the database. The newest
        // commit is taken before the check, so a watcher that subscribes after the check finds
        // the window's floor at or below a committed RV and reads the rest from the database.
        let newest = *commits.borrow_and_update();
        if feed.newest.receiver_count() == 0 {
            if newest > published {
                published = newest;
                feed.window().skip_to(newest);
                feed.newest.send_replace(newest);
            }
        } else if newest > published {
            // Under sustained writes, let the commits of one pause leave as one batch.
            let watchers = u32::try_from(feed.newest.receiver_count()).unwrap_or(u32::MAX);
            let pause = PUBLISH_PAUSE_PER_WATCHER.saturating_mul(watchers).min(MAX_PUBLISH_PAUSE);
            let wait = pause.saturating_sub(last_publish.elapsed());
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutting_down.changed() => return,
                }
            }
            match store.changes_since(None, published, CATCH_UP_BATCH).await {
                Ok(changes) => {
                    let full = changes.len() == CATCH_UP_BATCH;
                    if let Some(last) = changes.last() {
                        published = last.rv;
                        feed.publish(FeedBatch::new(changes));
                    }
                    last_publish = tokio::time::Instant::now();
                    if full {
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the change log failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutting_down.changed() => return,
                    }
                }
            }
        }
        tokio::select! {
            changed = commits.changed() => if changed.is_err() { return },
            _ = shutting_down.changed() => return,
        }
    }
}

/// Everything one watch needs, taken from the request.
pub struct WatchRequest {
    /// The kind watched.
    pub kind: ResourceKind,
    /// The namespace of a namespaced URL (None: all namespaces or cluster-scoped).
    pub namespace: Option<String>,
    /// Validated list/watch options.
    pub options: ListOptions,
    /// Renders events in the negotiated shape.
    pub renderer: Renderer,
}

/// Serves a watch: parameters are already validated, so from here on every problem is an ERROR
/// event on a 200 stream.
pub fn serve(
    request: WatchRequest,
    store: DynStore,
    feed: &Arc<ChangeFeed>,
    shutting_down: watch::Receiver<bool>,
) -> Response {
    // Held for the watch's life: while anyone holds one, the feed keeps the window filled.
    let newest = feed.subscribe();
    let (tx, rx) = mpsc::channel::<Bytes>(CLIENT_BUFFER);
    let timeout = match request.options.timeout_seconds {
        Some(seconds) => Duration::from_secs(seconds),
        None => Duration::from_secs(
            rand::rng().random_range(DEFAULT_MIN_REQUEST_TIMEOUT..2 * DEFAULT_MIN_REQUEST_TIMEOUT),
        ),
    };
    let watcher = Watcher {
        filter: Filter::new(&request),
        allow_bookmarks: request.options.allow_bookmarks,
        shared_shape: request.renderer.shared_event_shape(),
        renderer: request.renderer,
        store,
        feed: feed.clone(),
        tx,
        cursor: 0,
    };
    tokio::spawn(watcher.run(request.options, newest, timeout, shutting_down));
    let body = Body::from_stream(CoalescingBody { events: rx, held: None });
    bytes_response(StatusCode::OK, "application/json", body)
}

/// Most bytes one body frame gathers from queued items: one HTTP/2 DATA frame of the default
/// size and one TLS record. Beyond it joining saves no frame or write; it would only copy.
const COALESCE_LIMIT: usize = 16 * 1024;

/// The watch response body. When a client falls behind, several small items wait in its queue;
/// handing them to hyper as one frame costs one TLS record and one write instead of one each.
/// An item that is alone in the queue, or large, is passed on as it is (no copy).
struct CoalescingBody {
    events: mpsc::Receiver<Bytes>,
    /// An item taken from the queue that did not fit in the previous frame.
    held: Option<Bytes>,
}

impl futures::Stream for CoalescingBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let first = match self.held.take() {
            Some(held) => held,
            None => match std::task::ready!(self.events.poll_recv(cx)) {
                Some(first) => first,
                None => return std::task::Poll::Ready(None),
            },
        };
        let mut joined: Option<bytes::BytesMut> = None;
        while first.len() < COALESCE_LIMIT {
            let gathered = joined.as_ref().map_or(first.len(), |j| j.len());
            match self.events.try_recv() {
                Ok(next) if gathered + next.len() <= COALESCE_LIMIT => joined
                    .get_or_insert_with(|| {
                        let mut buffer = bytes::BytesMut::with_capacity(COALESCE_LIMIT);
                        buffer.extend_from_slice(&first);
                        buffer
                    })
                    .extend_from_slice(&next),
                Ok(next) => {
                    self.held = Some(next);
                    break;
                }
                // Empty or closed: deliver what is gathered; the next poll sees the end.
                Err(_) => break,
            }
        }
        std::task::Poll::Ready(Some(Ok(joined.map_or(first, bytes::BytesMut::freeze))))
    }
}

/// A resource, in one namespace or all: what watchers without selectors can share lines for.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Scope<'a> {
    resource: &'a str,
    namespace: Option<&'a str>,
}

impl Scope<'_> {
    fn contains(&self, change: &Change) -> bool {
        change.resource == self.resource && self.namespace.is_none_or(|ns| ns == change.object.namespace)
    }
}

/// Which changes a watcher wants.
struct Filter {
    resource: String,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn new(request: &WatchRequest) -> Self {
        Self {
            resource: request.kind.storage_key().to_string(),
            namespace: request.namespace.clone(),
            labels: request.options.label_selector.clone(),
            fields: request.options.field_selector.clone(),
        }
    }

    fn list_query(&self) -> ListQuery {
        ListQuery {
            resource: self.resource.clone(),
            namespace: self.namespace.clone(),
            labels: self.labels.clone(),
            fields: self.fields.clone(),
            after: None,
            limit: None,
        }
    }

    /// The resource and namespace this watcher follows, before selectors.
    fn scope(&self) -> Scope<'_> {
        Scope { resource: &self.resource, namespace: self.namespace.as_deref() }
    }

    fn labels_match(&self, labels: &[(String, String)]) -> bool {
        self.labels.matches(|key| labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()))
    }

    /// The event type this watcher sees for a change, if any (kube's cacher rules).
    fn event_for(&self, change: &Change) -> Option<&'static str> {
        if change.resource != self.resource {
            return None;
        }
        let object = &change.object;
        if self.namespace.as_deref().is_some_and(|ns| ns != object.namespace)
            || !self.fields.matches(&object.namespace, &object.name)
        {
            return None;
        }
        let now = change.change_type != ChangeType::Deleted && self.labels_match(&change.labels);
        let before = match (&change.prev_labels, change.change_type) {
            (Some(prev), _) => self.labels_match(prev),
            (None, ChangeType::Deleted) => self.labels_match(&change.labels),
            (None, _) => false,
        };
        match (before, now) {
            (false, true) => Some("ADDED"),
            (true, true) => Some("MODIFIED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        }
    }
}

/// Why a watch stream ended early.
enum End {
    /// The client went away or stopped reading; nothing more to do.
    ClientGone,
    /// Send this Status as an ERROR event, then close.
    Error(ApiError),
}

impl From<StoreError> for End {
    fn from(e: StoreError) -> Self {
        End::Error(crate::response::store_error(e))
    }
}

/// One running watch.
struct Watcher {
    filter: Filter,
    allow_bookmarks: bool,
    renderer: Renderer,
    /// The renderer's shape when its event lines can be shared with other watchers.
    shared_shape: Option<Shape>,
    store: DynStore,
    feed: Arc<ChangeFeed>,
    /// The response body.
    tx: mpsc::Sender<Bytes>,
    /// Highest RV this watcher has accounted for (sent or filtered out).
    cursor: u64,
}

impl Watcher {
    async fn run(
        mut self,
        options: ListOptions,
        newest: watch::Receiver<u64>,
        timeout: Duration,
        mut shutting_down: watch::Receiver<bool>,
    ) {
        if *shutting_down.borrow() {
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let outcome = tokio::select! {
            outcome = self.stream(options, newest, deadline) => outcome,
            _ = tokio::time::sleep_until(deadline) => Ok(()),
            _ = shutting_down.wait_for(|down| *down) => Ok(()),
        };
        if let Err(End::Error(error)) = outcome {
            if error.code >= 500 && error.code != 504 {
                tracing::warn!(error = %error, "watch ended with an error");
            }
            let _ = self.tx.send(Bytes::from(event_line("ERROR", &error.to_status()))).await;
        }
    }

    async fn stream(
        &mut self,
        options: ListOptions,
        mut newest: watch::Receiver<u64>,
        deadline: tokio::time::Instant,
    ) -> Result<(), End> {
        let initial = match (options.send_initial_events, options.resource_version) {
            (Some(send), _) => send,
            (None, RvParam::Unset | RvParam::Any) => true,
            (None, RvParam::At(_)) => false,
        };
        let requested = match options.resource_version {
            RvParam::At(rv) => Some(rv),
            _ => None,
        };
        if let Some(rv) = requested {
            self.wait_for_rv(rv).await?;
        }
        if initial {
            self.send_initial_state().await?;
        } else {
            self.cursor = match requested {
                Some(rv) => rv,
                None => self.store.current_rv().await?,
            };
        }
        let mut bookmarks =
            tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_INTERVAL, BOOKMARK_INTERVAL);
        // kube sends a last bookmark shortly before the deadline so clients resume from a fresh RV.
        let final_bookmark =
            tokio::time::sleep_until(deadline.checked_sub(Duration::from_secs(2)).unwrap_or(deadline));
        tokio::pin!(final_bookmark);
        let mut final_sent = false;
        loop {
            // Marked seen before reading, so a batch published during the read wakes us again.
            newest.borrow_and_update();
            self.follow().await?;
            tokio::select! {
                changed = newest.changed() => if changed.is_err() { return Ok(()) },
                _ = bookmarks.tick(), if self.allow_bookmarks => self.bookmark(false).await?,
                _ = &mut final_bookmark, if self.allow_bookmarks && !final_sent => {
                    final_sent = true;
                    self.bookmark(false).await?;
                }
            }
        }
    }

    /// A watch from RV X needs X to be committed; kube waits briefly, then answers 504.
    async fn wait_for_rv(&mut self, rv: u64) -> Result<(), End> {
        let mut commits = self.store.subscribe();
        let current = self.store.current_rv().await?;
        if rv <= current {
            return Ok(());
        }
        let arrived = tokio::time::timeout(TOO_LARGE_WAIT, commits.wait_for(|latest| *latest >= rv))
            .await
            .is_ok_and(|waited| waited.is_ok());
        if arrived {
            return Ok(());
        }
        let current = self.store.current_rv().await?;
        Err(End::Error(ApiError::too_large_resource_version(rv, current)))
    }

    /// ADDED for every matching object of a snapshot, then the initial-events-end bookmark.
    async fn send_initial_state(&mut self) -> Result<(), End> {
        let mut stream = self.store.list(self.filter.list_query()).await?;
        self.cursor = stream.snapshot_rv;
        let mut out = Vec::new();
        while let Some(chunk) = stream.chunks.recv().await {
            match chunk? {
                ListChunk::Items(items) => {
                    for item in &items {
                        self.renderer
                            .append_watch_event("ADDED", &item.body, &mut out)
                            .map_err(End::Error)?;
                        if out.len() >= SEND_CHUNK {
                            self.send(std::mem::take(&mut out)).await?;
                        }
                    }
                }
                ListChunk::End { .. } => break,
            }
        }
        self.send(out).await?;
        if self.allow_bookmarks {
            self.bookmark(true).await?;
        }
        Ok(())
    }

    /// Sends every change after the cursor that the window (or, below its floor, the database)
    /// holds now.
    async fn follow(&mut self) -> Result<(), End> {
        loop {
            match self.feed.since(self.cursor) {
                Since::Batches(batches, reach) => {
                    let caught_up = batches.is_empty();
                    for batch in batches {
                        self.deliver_batch(&batch).await?;
                    }
                    self.cursor = self.cursor.max(reach);
                    if caught_up {
                        return Ok(());
                    }
                }
                // Each round reaches at least the window's newest RV at its start, so this ends
                // unless the window keeps outrunning the database reads, which need no bound:
                // every round sends what it read.
                Since::Behind(newest) => {
                    self.feed.database_catch_ups.fetch_add(1, Ordering::Relaxed);
                    self.catch_up(newest).await?;
                }
            }
        }
    }

    /// Reads the log from the cursor until it is exhausted; 410 if it no longer reaches back.
    /// `committed` is an RV known to be committed before the first read, so the exhausted log
    /// holds every change up to it and the cursor moves there.
    async fn catch_up(&mut self, committed: u64) -> Result<(), End> {
        loop {
            let batch =
                self.store.changes_since(Some(&self.filter.resource), self.cursor, CATCH_UP_BATCH).await?;
            // Checked after the read: compaction only moves forward, so if it is still at or
            // below the cursor now, nothing the read needed had been removed.
            let compacted = self.store.compacted_rv().await?;
            if compacted > self.cursor {
                return Err(End::Error(ApiError::expired(format!(
                    "too old resource version: {} ({})",
                    self.cursor,
                    compacted + 1
                ))));
            }
            let full = batch.len() == CATCH_UP_BATCH;
            self.deliver_each(&batch).await?;
            if !full {
                self.cursor = self.cursor.max(committed);
                return Ok(());
            }
        }
    }

    /// Sends a published batch: its shared lines when this watcher takes every change of its
    /// resource (and namespace) in it, else the events it wants, rendered for it alone.
    async fn deliver_batch(&mut self, batch: &FeedBatch) -> Result<(), End> {
        let last = batch.last_rv();
        if last <= self.cursor {
            return Ok(());
        }
        match self.shared_lines(batch) {
            Some(lines) => {
                let lines = lines.map_err(End::Error)?;
                self.cursor = last;
                self.send_bytes(lines).await
            }
            None => self.deliver_each(&batch.changes).await,
        }
    }

    /// The batch's shared lines for this watcher (possibly empty), or `None` when it needs
    /// lines of its own: a Table, a selector that leaves something out, or a batch it has
    /// partly seen already.
    fn shared_lines(&self, batch: &FeedBatch) -> Option<Result<Bytes, ApiError>> {
        let shape = self.shared_shape?;
        if batch.changes.first().is_none_or(|c| c.rv <= self.cursor) {
            return None;
        }
        let scope = self.filter.scope();
        let mut in_scope = batch.changes.iter().filter(|c| scope.contains(c)).peekable();
        if in_scope.peek().is_none() {
            return Some(Ok(Bytes::new()));
        }
        if !in_scope.all(|c| self.filter.event_for(c) == Some(natural_event_type(c))) {
            return None;
        }
        Some(batch.lines(scope, shape))
    }

    /// Sends the events this watcher wants of `changes`, rendered for it, in chunks.
    async fn deliver_each(&mut self, changes: &[Change]) -> Result<(), End> {
        let mut out = Vec::new();
        for change in changes {
            if change.rv <= self.cursor {
                continue;
            }
            self.cursor = change.rv;
            if let Some(event_type) = self.filter.event_for(change) {
                self.renderer
                    .append_watch_event(event_type, &change.object.body, &mut out)
                    .map_err(End::Error)?;
                if out.len() >= SEND_CHUNK {
                    self.send(std::mem::take(&mut out)).await?;
                }
            }
        }
        self.send(out).await
    }

    async fn bookmark(&mut self, initial_events_end: bool) -> Result<(), End> {
        let line = self.renderer.watch_bookmark(self.cursor, initial_events_end);
        self.send(line).await
    }

    /// Queues bytes for the client; a client that reads nothing for the grace period is dropped.
    async fn send(&self, bytes: Vec<u8>) -> Result<(), End> {
        self.send_bytes(Bytes::from(bytes)).await
    }

    async fn send_bytes(&self, bytes: Bytes) -> Result<(), End> {
        if bytes.is_empty() {
            return Ok(());
        }
        // The common case, room in the queue, needs no timer.
        let bytes = match self.tx.try_send(bytes) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(End::ClientGone),
            Err(mpsc::error::TrySendError::Full(item)) => item,
        };
        match tokio::time::timeout(STALLED_CLIENT_GRACE, self.tx.send(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::ClientGone),
            Err(_) => {
                tracing::info!(resource = %self.filter.resource, "closing a watch whose client stopped reading");
                Err(End::ClientGone)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use futures::StreamExt as _;
    use reports_core::{
        negotiate::{Encoding, Shape},
        options::ListOptions,
    };
    use reports_store::{Change, ChangeType, StoredObject};
    use tokio::sync::mpsc;

    use super::{CoalescingBody, FeedBatch, Scope, Since, Window, COALESCE_LIMIT};

    fn change(rv: u64, namespace: &str, change_type: ChangeType) -> Change {
        Change {
            rv,
            resource: "policyreports".into(),
            change_type,
            object: StoredObject {
                namespace: namespace.into(),
                name: format!("r{rv}"),
                uid: format!("u{rv}"),
                rv,
                body: format!(r#"{{"metadata":{{"name":"r{rv}","resourceVersion":"{rv}"}},"x":1}}"#),
            },
            labels: Vec::new(),
            prev_labels: None,
        }
    }

    fn batch(rvs: std::ops::RangeInclusive<u64>) -> Arc<FeedBatch> {
        Arc::new(FeedBatch::new(rvs.map(|rv| change(rv, "a", ChangeType::Added)).collect()))
    }

    fn rvs(since: Since) -> Vec<u64> {
        match since {
            Since::Batches(batches, _) => {
                batches.iter().flat_map(|b| b.changes.iter().map(|c| c.rv)).collect()
            }
            Since::Behind(_) => panic!("expected batches"),
        }
    }

    impl Window {
        fn since_all(&self, cursor: u64) -> Since {
            self.since(cursor, usize::MAX)
        }
    }

    #[test]
    fn a_watcher_takes_a_bounded_share_of_the_window_at_a_time() {
        let mut window = Window::new(0);
        for first in (1..=9).step_by(3) {
            window.push(batch(first..=first + 2), usize::MAX, usize::MAX);
        }
        let one_batch = window.batches[0].weight;
        match window.since(0, one_batch) {
            Since::Batches(b, reach) => assert_eq!((b.len(), reach), (1, 3), "one batch, reaching its end"),
            Since::Behind(_) => panic!("expected batches"),
        }
        match window.since(3, 2 * one_batch) {
            Since::Batches(b, reach) => assert_eq!((b.len(), reach), (2, 9), "the rest, to the newest"),
            Since::Behind(_) => panic!("expected batches"),
        }
    }

    #[test]
    fn the_window_answers_from_its_floor_and_sends_older_cursors_to_the_database() {
        let mut window = Window::new(10);
        assert!(matches!(window.since_all(10), Since::Batches(b, 10) if b.is_empty()));
        assert!(matches!(window.since_all(9), Since::Behind(10)), "below the floor");
        window.push(batch(11..=12), usize::MAX, usize::MAX);
        window.push(batch(13..=15), usize::MAX, usize::MAX);
        assert_eq!(rvs(window.since_all(10)), vec![11, 12, 13, 14, 15]);
        assert_eq!(rvs(window.since_all(12)), vec![13, 14, 15], "batches wholly seen are left out");
        assert_eq!(rvs(window.since_all(13)), vec![13, 14, 15], "a partly seen batch is included");
        assert!(matches!(window.since_all(15), Since::Batches(b, 15) if b.is_empty()));
        assert!(matches!(window.since_all(20), Since::Batches(b, 20) if b.is_empty()), "ahead of the window");
    }

    #[test]
    fn eviction_moves_the_floor_past_what_it_forgets_and_keeps_the_newest_batch() {
        let mut window = Window::new(0);
        let max_changes = 4;
        window.push(batch(1..=2), usize::MAX, max_changes);
        window.push(batch(3..=4), usize::MAX, max_changes);
        window.push(batch(5..=6), usize::MAX, max_changes);
        assert_eq!(window.floor, 2);
        assert!(matches!(window.since_all(1), Since::Behind(6)));
        assert_eq!(rvs(window.since_all(2)), vec![3, 4, 5, 6]);
        window.push(batch(7..=20), usize::MAX, max_changes);
        assert_eq!(window.floor, 6, "an oversized batch stays alone");
        assert_eq!(rvs(window.since_all(6)), (7..=20).collect::<Vec<_>>());
        window.skip_to(30);
        assert!(matches!(window.since_all(20), Since::Behind(30)));
        assert!(matches!(window.since_all(30), Since::Batches(b, 30) if b.is_empty()));
    }

    #[test]
    fn shared_lines_hold_each_change_of_the_scope_once_with_its_own_type() {
        let batch = FeedBatch::new(vec![
            change(1, "a", ChangeType::Added),
            change(2, "b", ChangeType::Modified),
            change(3, "a", ChangeType::Deleted),
        ]);
        let all = Scope { resource: "policyreports", namespace: None };
        let lines = batch.lines(all, Shape::Object).unwrap();
        let types: Vec<String> = lines
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_slice::<serde_json::Value>(l).unwrap()["type"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(types, ["ADDED", "MODIFIED", "DELETED"]);
        let again = batch.lines(all, Shape::Object).unwrap();
        assert_eq!(again.as_ptr(), lines.as_ptr(), "rendered once, then shared");
        let in_a =
            batch.lines(Scope { resource: "policyreports", namespace: Some("a") }, Shape::Metadata("v1"));
        let in_a = String::from_utf8(in_a.unwrap().to_vec()).unwrap();
        assert_eq!(in_a.lines().count(), 2, "{in_a}");
        assert!(in_a
            .lines()
            .all(|l| l.contains(r#""kind":"PartialObjectMetadata""#) && !l.contains(r#""x":1"#)));
    }

    /// A client that stops reading while the window moves on: its watcher waits on the full
    /// queue, writers carry on, and once the client reads again the watcher finds itself below
    /// the window's floor and takes the missed changes from the database, every one, in order.
    #[tokio::test]
    async fn a_watcher_left_behind_by_the_window_catches_up_from_the_database_without_a_gap() {
        use reports_core::{negotiate::Negotiated, options::Query, Catalogue};

        let store = reports_store::open("sqlite::memory:", &Default::default()).await.unwrap();
        let (_shutdown, shutting_down) = tokio::sync::watch::channel(false);
        // One byte: the window keeps only the newest batch.
        let feed = super::ChangeFeed::start(store.clone(), shutting_down.clone(), 1).await.unwrap();
        let catalogue = Catalogue::embedded().unwrap();
        let kind = catalogue.find("wgpolicyk8s.io", "v1alpha2", "policyreports").unwrap().clone();
        let start = store.current_rv().await.unwrap();
        let query = Query::parse(Some(&format!("watch=1&resourceVersion={start}")));
        let negotiated = Negotiated { encoding: Encoding::Json, shape: Shape::Object, pretty: false };
        let request = super::WatchRequest {
            options: ListOptions::parse(&query, &kind).unwrap(),
            renderer: crate::render::Renderer::new(&kind, negotiated, None).unwrap(),
            kind,
            namespace: Some("ns".into()),
        };
        let response = super::serve(request, store.clone(), &feed, shutting_down);

        // More batches than the watcher's queue holds, each published alone.
        let mut published = feed.subscribe();
        let mut written = Vec::new();
        for i in 0..super::CLIENT_BUFFER + 20 {
            let report = serde_json::json!({
                "apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
                "metadata": {"name": format!("r{i}"), "namespace": "ns", "uid": format!("u{i}")},
            });
            let rv = store.create("policyreports", report).await.unwrap().rv;
            published.wait_for(|newest| *newest >= rv).await.unwrap();
            written.push(rv);
        }

        let mut body = response.into_body().into_data_stream();
        let mut text = Vec::new();
        let mut seen = Vec::new();
        while seen.len() < written.len() {
            // A guard, not a synchronisation: a missing event must fail the test, not hang it.
            let frame = tokio::time::timeout(std::time::Duration::from_secs(20), body.next())
                .await
                .unwrap_or_else(|_| panic!("events missing: saw {seen:?} of {written:?}"));
            text.extend_from_slice(&frame.unwrap().unwrap());
            let complete = text.iter().rposition(|b| *b == b'\n').map_or(0, |at| at + 1);
            for line in text[..complete].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let event: serde_json::Value = serde_json::from_slice(line).unwrap();
                assert_eq!(event["type"], "ADDED", "{event}");
                seen.push(
                    event["object"]["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap(),
                );
            }
            text.drain(..complete);
        }
        assert_eq!(seen, written, "every change once, in order");
        assert!(feed.database_catch_ups() >= 1, "the watcher fell behind the window and read the database");
    }

    #[tokio::test]
    async fn queued_items_leave_as_one_frame_up_to_the_limit_and_a_lone_item_is_not_copied() {
        let (tx, rx) = mpsc::channel(8);
        let mut body = CoalescingBody { events: rx, held: None };
        let lone = Bytes::from_static(b"{\"type\":\"ADDED\"}\n");
        tx.send(lone.clone()).await.unwrap();
        let frame = body.next().await.unwrap().unwrap();
        assert_eq!(frame.as_ptr(), lone.as_ptr(), "a lone item is passed on as it is");
        for line in ["a\n", "b\n", "c\n"] {
            tx.send(Bytes::from_static(line.as_bytes())).await.unwrap();
        }
        assert_eq!(body.next().await.unwrap().unwrap(), Bytes::from_static(b"a\nb\nc\n"));
        let big = Bytes::from(vec![b'x'; COALESCE_LIMIT - 1]);
        tx.send(Bytes::from_static(b"d\n")).await.unwrap();
        tx.send(big.clone()).await.unwrap();
        assert_eq!(
            body.next().await.unwrap().unwrap(),
            Bytes::from_static(b"d\n"),
            "what does not fit waits"
        );
        let frame = body.next().await.unwrap().unwrap();
        assert_eq!(frame.as_ptr(), big.as_ptr(), "and then leaves uncopied");
        drop(tx);
        assert!(body.next().await.is_none(), "the body ends when the watcher does");
    }
}
