//! One watch: its start point, then every change its filter takes, from the window or the
//! database, until its deadline, the client leaving or the server shutting down.

use std::{sync::Arc, time::Duration};

use axum::{body::Body, http::StatusCode, response::Response};
use bytes::Bytes;
use rand::Rng as _;
use reports_core::{
    negotiate::Shape,
    options::{ListOptions, RvParam},
    watch::{sends_initial_events, EventType, WatchFilter, WatchedWrite},
    ApiError, ResourceKind,
};
use reports_store::{Change, ChangeType, DynStore, ListChunk, ListQuery, StoreError};
use tokio::sync::{mpsc, watch};

use super::{
    body::CoalescingBody,
    feed::{ChangeFeed, FeedBatch, Scope, Since},
    CATCH_UP_BATCH,
};
use crate::{
    render::{event_line, Renderer},
    response::bytes_response,
};

/// Response chunks buffered per watcher before it waits for its client.
const CLIENT_BUFFER: usize = 64;
/// How many bytes a watcher gathers before it queues them (catch-up and initial events).
const SEND_CHUNK: usize = 64 * 1024;
/// How long a client may not read at all before its watch is closed.
const STALLED_CLIENT_GRACE: Duration = Duration::from_secs(30);
/// Bookmark cadence when bookmarks are allowed (kube's cacher: about every minute).
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);
/// How long a watch from a future RV waits for it to be committed (kube: 3 s).
const TOO_LARGE_WAIT: Duration = Duration::from_secs(3);
/// A deadline that never comes, for timeouts too large to add to the clock (about 30 years,
/// which every platform's `Instant` holds).
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
/// Without `timeoutSeconds`, watches end after a random time in [this, 2 × this), like
/// kube-apiserver's `--min-request-timeout`, so clients spread their reconnects.
const DEFAULT_MIN_REQUEST_TIMEOUT: u64 = 1800;

/// Everything one watch needs, taken from the request.
pub(crate) struct WatchRequest {
    /// The kind watched.
    pub(crate) kind: ResourceKind,
    /// The namespace of a namespaced URL (None: all namespaces or cluster-scoped).
    pub(crate) namespace: Option<String>,
    /// Validated list/watch options.
    pub(crate) options: ListOptions,
    /// Renders events in the negotiated shape.
    pub(crate) renderer: Renderer,
}

/// Serves a watch: parameters are already validated, so from here on every problem is an ERROR
/// event on a 200 stream.
pub(crate) fn serve(
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

/// Which changes a watcher wants: its resource, then core's rules for its namespace and
/// selectors.
struct Filter {
    resource: String,
    rules: WatchFilter,
}

impl Filter {
    fn new(request: &WatchRequest) -> Self {
        Self {
            resource: request.kind.storage_key().to_string(),
            rules: WatchFilter {
                namespace: request.namespace.clone(),
                labels: request.options.label_selector.clone(),
                fields: request.options.field_selector.clone(),
            },
        }
    }

    fn list_query(&self) -> ListQuery {
        ListQuery {
            resource: self.resource.clone(),
            namespace: self.rules.namespace.clone(),
            labels: self.rules.labels.clone(),
            fields: self.rules.fields.clone(),
            ..Default::default()
        }
    }

    /// The resource and namespace this watcher follows, before selectors.
    fn scope(&self) -> Scope<'_> {
        Scope { resource: &self.resource, namespace: self.rules.namespace.as_deref() }
    }

    /// The event this watcher sees for a change, if any.
    fn event_for(&self, change: &Change) -> Option<EventType> {
        if change.resource != self.resource {
            return None;
        }
        self.rules.event_for(&WatchedWrite {
            namespace: &change.object.namespace,
            name: &change.object.name,
            deleted: change.change_type == ChangeType::Deleted,
            labels: &change.labels,
            prev_labels: change.prev_labels.as_deref(),
        })
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
        // A client's timeoutSeconds can be any i64: past what an Instant holds, it never expires.
        let now = tokio::time::Instant::now();
        let deadline = now.checked_add(timeout).unwrap_or_else(|| now + FAR_FUTURE);
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
        let initial = sends_initial_events(&options);
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
                    #[cfg(test)]
                    self.feed.database_catch_ups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        // Shared lines carry each change's own type: usable only if this watcher sees exactly that.
        if !in_scope.all(|c| self.filter.event_for(c).map(EventType::as_str) == Some(c.change_type.as_str()))
        {
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
                    .append_watch_event(event_type.as_str(), &change.object.body, &mut out)
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
    use futures::StreamExt as _;
    use reports_core::{
        negotiate::{Encoding, Shape},
        options::ListOptions,
    };

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
}
