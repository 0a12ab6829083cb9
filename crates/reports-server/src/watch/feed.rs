//! The process-wide change feed: one task tails the change log and keeps the recent changes in
//! a window, published in batches, that every watcher reads (see the module notes of
//! [`crate::watch`]).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use reports_core::{negotiate::Shape, ApiError};
use reports_store::{Change, DynStore, StoreError};
use tokio::sync::watch;

use super::CATCH_UP_BATCH;
use crate::render::append_shared_event;

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
const MAX_PUBLISH_PAUSE: Duration = Duration::from_millis(5);

/// Consecutive changes published together, with their event lines rendered at most once per
/// resource and shape, on first use, and shared by every watcher that takes them all.
pub(super) struct FeedBatch {
    /// The changes, in RV order; never empty.
    pub(super) changes: Vec<Change>,
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

    pub(super) fn last_rv(&self) -> u64 {
        self.changes.last().map_or(0, |c| c.rv)
    }

    /// The shared event lines of every change of `scope` in this batch, in `shape`.
    pub(super) fn lines(&self, scope: Scope<'_>, shape: Shape) -> Result<Bytes, ApiError> {
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
            append_shared_event(shape, change.change_type.as_str(), &change.object.body, &mut out)?;
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
pub(super) enum Since {
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
pub(crate) struct ChangeFeed {
    /// Recent changes. A std mutex: it is held only to push a batch or clone a few `Arc`s.
    window: Mutex<Window>,
    /// The window's byte budget (`--watch-window-bytes`).
    window_bytes: usize,
    /// The window's newest RV; watchers wait on it, and its receiver count tells the tailing
    /// loop whether anyone is watching.
    newest: watch::Sender<u64>,
    /// How many times a watcher was behind the window and read the database (tests check that
    /// their watcher really took that path).
    #[cfg(test)]
    pub(super) database_catch_ups: std::sync::atomic::AtomicU64,
}

impl ChangeFeed {
    /// Starts tailing the log after the current RV, keeping up to `window_bytes` of recent
    /// changes in memory; stops when `shutting_down` flips.
    pub(crate) async fn start(
        store: DynStore,
        shutting_down: watch::Receiver<bool>,
        window_bytes: usize,
    ) -> Result<Arc<Self>, StoreError> {
        let start = store.current_rv().await?;
        let feed = Arc::new(Self {
            window: Mutex::new(Window::new(start)),
            window_bytes,
            newest: watch::channel(start).0,
            #[cfg(test)]
            database_catch_ups: Default::default(),
        });
        tokio::spawn(tail(store, feed.clone(), start, shutting_down));
        Ok(feed)
    }

    /// How many times a watcher that was behind the window caught up from the database.
    #[cfg(test)]
    pub(super) fn database_catch_ups(&self) -> u64 {
        self.database_catch_ups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A receiver of the window's newest RV. Holding one is what makes the feed read the log.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
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

    pub(super) fn since(&self, cursor: u64) -> Since {
        self.window().since(cursor, FOLLOW_BYTES)
    }
}

impl crate::metrics::MetricsSource for ChangeFeed {
    fn render(&self, out: &mut String) {
        let (bytes, changes, floor, newest) = {
            let window = self.window();
            (window.bytes, window.changes, window.floor, window.newest)
        };
        // Each open watch holds one receiver; the feed itself holds none.
        let watchers = self.newest.receiver_count();
        out.push_str(&format!(
            "# HELP reports_server_watch_window_bytes Bytes of recent changes held in memory for watchers.\n\
             # TYPE reports_server_watch_window_bytes gauge\nreports_server_watch_window_bytes {bytes}\n\
             # HELP reports_server_watch_window_budget_bytes The window's byte budget (--watch-window-bytes).\n\
             # TYPE reports_server_watch_window_budget_bytes gauge\nreports_server_watch_window_budget_bytes {}\n\
             # HELP reports_server_watch_window_changes Changes held in the window.\n\
             # TYPE reports_server_watch_window_changes gauge\nreports_server_watch_window_changes {changes}\n\
             # HELP reports_server_watch_window_floor_resource_version Oldest resourceVersion the window can serve a watcher from.\n\
             # TYPE reports_server_watch_window_floor_resource_version gauge\nreports_server_watch_window_floor_resource_version {floor}\n\
             # HELP reports_server_change_feed_resource_version Newest resourceVersion published to watchers.\n\
             # TYPE reports_server_change_feed_resource_version gauge\nreports_server_change_feed_resource_version {newest}\n\
             # HELP reports_server_watch_subscribers Watch streams following the feed.\n\
             # TYPE reports_server_watch_subscribers gauge\nreports_server_watch_subscribers {watchers}\n",
            self.window_bytes
        ));
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

/// A resource, in one namespace or all: what watchers without selectors can share lines for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Scope<'a> {
    pub(super) resource: &'a str,
    pub(super) namespace: Option<&'a str>,
}

impl Scope<'_> {
    pub(super) fn contains(&self, change: &Change) -> bool {
        change.resource == self.resource && self.namespace.is_none_or(|ns| ns == change.object.namespace)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use reports_core::negotiate::Shape;
    use reports_store::{Change, ChangeType, StoredObject};

    use super::{FeedBatch, Scope, Since, Window};

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
}
