//! Watch: exact, resumable change streams built on the store's change log.
//!
//! # Where events come from
//!
//! Every write appends to the change log in the same transaction that changes the object, with
//! resourceVersions assigned in commit order, so the log never disagrees with the objects and
//! its order is the order of commits. So "every change
//! after X, in order" is always just `changes_since(X)`: the log is the single source of truth and
//! nothing held in memory can lose or reorder an event.
//!
//! Reading the database once per watcher per write would not scale to hundreds of watchers, so
//! one `ChangeFeed` task per process tails the log (woken by the store after each commit, which
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
//! `MAX_PUBLISH_PAUSE`: commits that land in the meantime leave together as one batch (one timer
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
//! `STALLED_CLIENT_GRACE` without progress its stream is closed and the client re-watches from
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
//! matching as DELETED, so filtered informers never keep ghosts. The rules are API semantics and
//! live in `reports_core::watch`.
//!
//! # The parts
//!
//! - `feed`: the process-wide change feed, its window and batches;
//! - `stream`: one watcher, from its start point to the end of its response;
//! - `body`: the response body that joins queued items into frames.

mod body;
mod feed;
mod stream;

pub(crate) use feed::ChangeFeed;
pub(crate) use stream::{serve, WatchRequest};

/// The default of `--watch-window-bytes`: most bytes of recent changes the feed keeps in memory
/// (stored bodies plus their rendered lines, estimated as twice the bodies). About 5 s of 500
/// writes/s of 6 KB reports: enough for a watcher that is briefly behind to catch up without the
/// database, small next to the server.
pub const DEFAULT_WINDOW_BYTES: usize = 32 * 1024 * 1024;
/// How many changes one database read returns (feed tailing and watcher catch-up).
const CATCH_UP_BATCH: usize = 500;
