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
//! for PostgreSQL includes commits made by other replicas) and broadcasts each change once to
//! every watcher in memory. A watcher therefore has two sources, and the rule that joins them
//! without a gap is: **subscribe to the broadcast first, then read the database**. Anything
//! committed before the read is in the read; anything committed after it is published after the
//! subscription, so it arrives on the broadcast. Duplicates from the overlap are dropped by RV
//! (`rv <= cursor`). Each broadcast entry renders its plain-JSON event line once, on first use,
//! and every plain-JSON watcher sends that same buffer.
//!
//! # Slow watchers
//!
//! The broadcast is a bounded ring shared by all watchers; the feed never waits for anyone, so
//! writers and fast watchers are never slowed by a slow one. A watcher that falls off the ring
//! (`Lagged`) resubscribes and catches up from the database, which is exactly the start-up path
//! again. A client that stops reading altogether fills its bounded response channel; after
//! [`STALLED_CLIENT_GRACE`] without progress its stream is closed and it re-watches from its last
//! resourceVersion, as informers do after any disconnect.
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
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::{body::Body, http::StatusCode, response::Response};
use bytes::Bytes;
use rand::Rng as _;
use reports_core::{
    options::{ListOptions, RvParam},
    selector::{FieldSelector, LabelSelector},
    ApiError, ResourceKind,
};
use reports_store::{Change, ChangeType, DynStore, ListChunk, ListQuery, StoreError};
use tokio::sync::{broadcast, mpsc, watch};

use crate::{
    render::{event_line, Renderer},
    response::bytes_response,
};

/// How many changes the in-memory broadcast keeps for watchers that are briefly behind; beyond
/// it they catch up from the database. Small, because entries hold whole objects.
const FEED_CAPACITY: usize = 256;
/// How many changes one database read returns (feed tailing and watcher catch-up).
const CATCH_UP_BATCH: usize = 500;
/// Response chunks buffered per watcher before it waits for its client.
const CLIENT_BUFFER: usize = 64;
/// How long a client may not read at all before its watch is closed.
pub const STALLED_CLIENT_GRACE: Duration = Duration::from_secs(30);
/// Bookmark cadence when bookmarks are allowed (kube's cacher: about every minute).
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);
/// How long a watch from a future RV waits for it to be committed (kube: 3 s).
const TOO_LARGE_WAIT: Duration = Duration::from_secs(3);
/// Without `timeoutSeconds`, watches end after a random time in [this, 2 × this), like
/// kube-apiserver's `--min-request-timeout`, so clients spread their reconnects.
const DEFAULT_MIN_REQUEST_TIMEOUT: u64 = 1800;

/// One change as broadcast to watchers, with its event lines for plain JSON watchers rendered
/// at most once and shared (100 watchers of a 6 KB report would otherwise make 100 copies).
pub struct FeedEntry {
    /// The change.
    change: Change,
    /// `{"type":T,"object":<stored JSON>}\n` for ADDED, MODIFIED and DELETED, built on first use.
    object_lines: [OnceLock<Bytes>; 3],
}

impl FeedEntry {
    fn new(change: Change) -> Self {
        Self { change, object_lines: Default::default() }
    }

    /// The shared event line of the plain-object shape for this event type.
    fn object_line(&self, event_type: &'static str) -> Bytes {
        let slot = match event_type {
            "ADDED" => 0,
            "MODIFIED" => 1,
            _ => 2,
        };
        self.object_lines[slot]
            .get_or_init(|| {
                let body = &self.change.object.body;
                let mut line = Vec::with_capacity(body.len() + 40);
                line.extend_from_slice(br#"{"type":""#);
                line.extend_from_slice(event_type.as_bytes());
                line.extend_from_slice(br#"","object":"#);
                line.extend_from_slice(body.as_bytes());
                line.extend_from_slice(b"}\n");
                Bytes::from(line)
            })
            .clone()
    }
}

/// The process-wide tail of the change log, broadcast to every watcher.
pub struct ChangeFeed {
    /// Where tailed changes are published; watchers subscribe here.
    sender: broadcast::Sender<Arc<FeedEntry>>,
}

impl ChangeFeed {
    /// Starts tailing the log after the current RV; stops when `shutting_down` flips.
    pub async fn start(
        store: DynStore,
        shutting_down: watch::Receiver<bool>,
    ) -> Result<Arc<Self>, StoreError> {
        let (sender, _) = broadcast::channel(FEED_CAPACITY);
        let start = store.current_rv().await?;
        let feed = Arc::new(Self { sender: sender.clone() });
        tokio::spawn(tail(store, sender, start, shutting_down));
        Ok(feed)
    }

    /// A receiver of every change published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedEntry>> {
        self.sender.subscribe()
    }
}

/// The tailing loop: after each commit notification, publish every new change in RV order.
async fn tail(
    store: DynStore,
    sender: broadcast::Sender<Arc<FeedEntry>>,
    mut published: u64,
    mut shutting_down: watch::Receiver<bool>,
) {
    let mut commits = store.subscribe();
    loop {
        // With nobody subscribed there is no one to publish to: skip to the newest commit
        // instead of reading every change (and its body) back from the database. The newest
        // commit is taken before the check, so a watcher that subscribes after the check reads
        // the database after it and finds everything skipped there (the subscribe-then-read rule).
        let newest = *commits.borrow_and_update();
        if sender.receiver_count() == 0 {
            published = published.max(newest);
            tokio::select! {
                changed = commits.changed() => if changed.is_err() { return },
                _ = shutting_down.changed() => return,
            }
            continue;
        }
        match store.changes_since(None, published, CATCH_UP_BATCH).await {
            Ok(batch) => {
                let full = batch.len() == CATCH_UP_BATCH;
                for change in batch {
                    published = change.rv;
                    // No receivers is fine: nobody is watching right now.
                    let _ = sender.send(Arc::new(FeedEntry::new(change)));
                }
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
    feed: &ChangeFeed,
    shutting_down: watch::Receiver<bool>,
) -> Response {
    // Subscribe before anything is read from the database (see the module notes).
    let live = feed.subscribe();
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
        renderer: request.renderer,
        store,
        tx,
        cursor: 0,
    };
    tokio::spawn(watcher.run(request.options, live, timeout, shutting_down));
    let body = Body::from_stream(CoalescingBody { events: rx });
    bytes_response(StatusCode::OK, "application/json", body)
}

/// Most bytes one body frame gathers from queued events.
const COALESCE_LIMIT: usize = 256 * 1024;

/// The watch response body. When a client falls behind, several events wait in its queue;
/// handing them to hyper as one frame costs one TLS record batch and one write instead of one
/// per event, which is what keeps a saturated server from spending itself on per-event overhead.
/// An event that is alone in the queue is passed on as it is (no copy).
struct CoalescingBody {
    events: mpsc::Receiver<Bytes>,
}

impl futures::Stream for CoalescingBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let Some(first) = std::task::ready!(self.events.poll_recv(cx)) else {
            return std::task::Poll::Ready(None);
        };
        let mut joined: Option<bytes::BytesMut> = None;
        while joined.as_ref().map_or(first.len(), |j| j.len()) < COALESCE_LIMIT {
            match self.events.try_recv() {
                Ok(next) => joined
                    .get_or_insert_with(|| {
                        let mut buffer = bytes::BytesMut::with_capacity(first.len() + next.len());
                        buffer.extend_from_slice(&first);
                        buffer
                    })
                    .extend_from_slice(&next),
                // Empty or closed: deliver what is gathered; the next poll sees the end.
                Err(_) => break,
            }
        }
        std::task::Poll::Ready(Some(Ok(joined.map_or(first, bytes::BytesMut::freeze))))
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
    store: DynStore,
    /// The response body.
    tx: mpsc::Sender<Bytes>,
    /// Highest RV this watcher has accounted for (sent or filtered out).
    cursor: u64,
}

impl Watcher {
    async fn run(
        mut self,
        options: ListOptions,
        live: broadcast::Receiver<Arc<FeedEntry>>,
        timeout: Duration,
        mut shutting_down: watch::Receiver<bool>,
    ) {
        if *shutting_down.borrow() {
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let outcome = tokio::select! {
            outcome = self.stream(options, live, deadline) => outcome,
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
        mut live: broadcast::Receiver<Arc<FeedEntry>>,
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
            self.catch_up().await?;
        }
        let mut bookmarks =
            tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_INTERVAL, BOOKMARK_INTERVAL);
        // kube sends a last bookmark shortly before the deadline so clients resume from a fresh RV.
        let final_bookmark =
            tokio::time::sleep_until(deadline.checked_sub(Duration::from_secs(2)).unwrap_or(deadline));
        tokio::pin!(final_bookmark);
        let mut final_sent = false;
        loop {
            tokio::select! {
                received = live.recv() => match received {
                    Ok(entry) => self.deliver(&entry.change, Some(&entry)).await?,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        live = live.resubscribe();
                        self.catch_up().await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
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
        while let Some(chunk) = stream.chunks.recv().await {
            match chunk? {
                ListChunk::Items(items) => {
                    let mut out = Vec::new();
                    for item in &items {
                        out.extend_from_slice(
                            &self.renderer.watch_event("ADDED", &item.body).map_err(End::Error)?,
                        );
                    }
                    self.send(out).await?;
                }
                ListChunk::End { .. } => break,
            }
        }
        if self.allow_bookmarks {
            self.bookmark(true).await?;
        }
        Ok(())
    }

    /// Reads the log from the cursor until it is exhausted; 410 if it no longer reaches back.
    async fn catch_up(&mut self) -> Result<(), End> {
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
            for change in &batch {
                self.deliver(change, None).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Sends one change if this watcher wants it, and moves the cursor past it either way.
    async fn deliver(&mut self, change: &Change, shared: Option<&FeedEntry>) -> Result<(), End> {
        if change.rv <= self.cursor {
            return Ok(());
        }
        self.cursor = change.rv;
        if let Some(event_type) = self.filter.event_for(change) {
            let line = match shared {
                Some(entry) if self.renderer.is_plain_object() => entry.object_line(event_type),
                _ => Bytes::from(
                    self.renderer.watch_event(event_type, &change.object.body).map_err(End::Error)?,
                ),
            };
            self.send_bytes(line).await?;
        }
        Ok(())
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
    use bytes::Bytes;
    use futures::StreamExt as _;
    use tokio::sync::mpsc;

    use super::CoalescingBody;

    #[tokio::test]
    async fn queued_events_leave_as_one_frame_and_a_lone_event_is_not_copied() {
        let (tx, rx) = mpsc::channel(8);
        let mut body = CoalescingBody { events: rx };
        let lone = Bytes::from_static(b"{\"type\":\"ADDED\"}\n");
        tx.send(lone.clone()).await.unwrap();
        let frame = body.next().await.unwrap().unwrap();
        assert_eq!(frame.as_ptr(), lone.as_ptr(), "a lone event is passed on as it is");
        for line in ["a\n", "b\n", "c\n"] {
            tx.send(Bytes::from_static(line.as_bytes())).await.unwrap();
        }
        assert_eq!(body.next().await.unwrap().unwrap(), Bytes::from_static(b"a\nb\nc\n"));
        drop(tx);
        assert!(body.next().await.is_none(), "the body ends when the watcher does");
    }
}
