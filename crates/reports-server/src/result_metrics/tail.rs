//! The task that keeps the tally in step with the store: one full read, then the change log.

use std::{sync::Arc, time::Duration};

use reports_store::{Change, ChangeType, DynStore, ListChunk, ListQuery, StoreResult};
use tokio::sync::watch;

use super::{
    labels::{rows, RESOURCES},
    ResultMetrics,
};

/// Changes read from the log at a time.
const BATCH: usize = 500;
/// Reports read per chunk of the initial list (bounds what is held at once).
const LIST_CHUNK: u64 = 200;
/// Pause before retrying after the store failed.
const RETRY: Duration = Duration::from_secs(1);
/// Least time between two reads of the log (the gauges lag the writes by at most about this).
const MIN_PAUSE: Duration = Duration::from_millis(100);

/// Why the tailing loop stopped reading incrementally.
enum Stop {
    /// The server is shutting down.
    Shutdown,
    /// The log no longer reaches back to a cursor: read everything again.
    Expired,
    /// The store failed; retry after a pause.
    Failed(reports_store::StoreError),
}

impl From<reports_store::StoreError> for Stop {
    fn from(e: reports_store::StoreError) -> Self {
        Stop::Failed(e)
    }
}

/// Builds the tally from a full read, then follows the log until `shutting_down` flips; reads
/// everything again whenever the log was compacted past a cursor.
pub(super) async fn run(
    store: DynStore,
    metrics: Arc<ResultMetrics>,
    mut shutting_down: watch::Receiver<bool>,
) {
    let mut commits = store.subscribe();
    loop {
        let outcome = tokio::select! {
            outcome = follow(&store, &metrics, &mut commits) => outcome,
            _ = shutting_down.wait_for(|stop| *stop) => Stop::Shutdown,
        };
        match outcome {
            Stop::Shutdown => return,
            Stop::Expired => {
                tracing::info!(
                    "the change log was compacted past the result metrics; reading every report again"
                );
            }
            Stop::Failed(e) => {
                tracing::warn!(error = %e, "updating the result metrics failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = shutting_down.wait_for(|stop| *stop) => return,
                }
            }
        }
    }
}

/// One full read, swapped in whole, then the log from each resource's snapshot onwards. A failed
/// read is retried from the same cursors; only a gap in the log calls for another full read.
async fn follow(store: &DynStore, metrics: &ResultMetrics, commits: &mut watch::Receiver<u64>) -> Stop {
    let mut cursors = match rebuild(store, metrics).await {
        Ok(cursors) => cursors,
        Err(e) => return Stop::Failed(e),
    };
    loop {
        let started = tokio::time::Instant::now();
        // Taken before the reads: every change up to it is committed (see `step`).
        let committed = *commits.borrow_and_update();
        match step(store, metrics, &mut cursors, committed).await {
            Ok(()) => {}
            Err(Stop::Failed(e)) => {
                tracing::warn!(error = %e, "reading the change log for the result metrics failed; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
            Err(stop) => return stop,
        }
        if commits.changed().await.is_err() {
            // The store is gone; nothing more will change.
            std::future::pending::<()>().await;
        }
        // Commits that land meanwhile are read together: under a write flood the tail costs a
        // few reads a second, not several per commit.
        tokio::time::sleep_until(started + MIN_PAUSE).await;
    }
}

/// Reads and applies every change after the cursors. `committed` is an RV committed before the
/// first read, so a resource whose read comes back short has nothing more up to it, and its
/// cursor moves there (an idle resource's cursor would otherwise fall behind compaction).
async fn step(
    store: &DynStore,
    metrics: &ResultMetrics,
    cursors: &mut [u64; RESOURCES.len()],
    committed: u64,
) -> Result<(), Stop> {
    let before = *cursors;
    for (index, (resource, top_level_source)) in RESOURCES.iter().enumerate() {
        loop {
            let changes = store.changes_since(Some(resource), cursors[index], BATCH).await?;
            apply(metrics, index as u8, *top_level_source, &changes);
            if let Some(last) = changes.last() {
                cursors[index] = last.rv;
            }
            if changes.len() < BATCH {
                cursors[index] = cursors[index].max(committed);
                break;
            }
        }
    }
    // Read after the changes: compaction only moves forward, so a compacted RV still at or
    // below a cursor now was so during that resource's read, which therefore missed nothing.
    let compacted = store.compacted_rv().await?;
    if before.iter().any(|c| compacted > *c) {
        return Err(Stop::Expired);
    }
    metrics.reached(cursors.iter().copied().min().unwrap_or_default());
    Ok(())
}

/// Applies changes of one resource to the live tally, one report at a time (each takes the
/// lock briefly, so scrapes are not held up by a long batch).
fn apply(metrics: &ResultMetrics, resource: u8, top_level_source: bool, changes: &[Change]) {
    for change in changes {
        let object = &change.object;
        let report = match change.change_type {
            ChangeType::Deleted => serde_json::Value::Null,
            ChangeType::Added | ChangeType::Modified => parse(&object.body),
        };
        let rows = rows(&report, top_level_source, metrics.labels());
        metrics.tally().set(resource, &object.namespace, &object.name, &rows);
    }
}

/// A stored body as JSON; a corrupt one counts as no results (and is logged), never stops the
/// tailer.
fn parse(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "a stored report is not JSON; its results are not counted");
        serde_json::Value::Null
    })
}

/// Reads every report of the counted kinds into a fresh tally, in bounded chunks, and swaps it
/// in; returns each resource's snapshot RV, where its tail starts.
async fn rebuild(store: &DynStore, metrics: &ResultMetrics) -> StoreResult<[u64; RESOURCES.len()]> {
    let mut tally = metrics.fresh_tally();
    let mut cursors = [0; RESOURCES.len()];
    for (index, (resource, top_level_source)) in RESOURCES.iter().enumerate() {
        let mut after = None;
        loop {
            let query = ListQuery {
                resource: resource.to_string(),
                after: after.take(),
                limit: Some(LIST_CHUNK),
                ..Default::default()
            };
            let mut stream = store.list(query).await?;
            // Each page is its own snapshot; the first one's RV is where the tail starts, and
            // replaying the changes a later page already shows converges on the same state, as
            // each change replaces its report's whole contribution.
            if cursors[index] == 0 || stream.snapshot_rv < cursors[index] {
                cursors[index] = stream.snapshot_rv;
            }
            let mut more = false;
            while let Some(chunk) = stream.chunks.recv().await {
                match chunk? {
                    ListChunk::Items(objects) => {
                        for object in &objects {
                            let report = parse(&object.body);
                            let rows = rows(&report, *top_level_source, metrics.labels());
                            tally.set(index as u8, &object.namespace, &object.name, &rows);
                        }
                        if let Some(last) = objects.last() {
                            after = Some((last.namespace.clone(), last.name.clone()));
                        }
                    }
                    ListChunk::End { more: m, .. } => more = m,
                }
            }
            if !more {
                break;
            }
        }
    }
    metrics.replace(tally);
    Ok(cursors)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::result_metrics::{Mode, Settings};

    fn polr(name: &str, policy: &str) -> serde_json::Value {
        json!({"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
            "metadata": {"name": name, "namespace": "a"},
            "results": [{"policy": policy, "result": "fail"}]})
    }

    fn series(metrics: &ResultMetrics) -> usize {
        metrics.tally().series()
    }

    #[tokio::test]
    async fn a_tail_compacted_past_reads_everything_again() {
        let store = reports_store::open("sqlite::memory:", &Default::default()).await.unwrap();
        store.create("policyreports", polr("one", "p")).await.unwrap();
        let settings = Settings { mode: Mode::Simple, max_series: 10, ..Default::default() };
        let metrics = ResultMetrics::new(&settings).unwrap().unwrap();
        let mut cursors = rebuild(&store, &metrics).await.unwrap();
        assert_eq!(series(&metrics), 1);
        store.create("policyreports", polr("two", "q")).await.unwrap();
        step(&store, &metrics, &mut cursors, store.current_rv().await.unwrap()).await.ok().unwrap();
        assert_eq!(series(&metrics), 2, "the tail counts a new report");
        // A write the tail has not read yet, then compaction of everything committed.
        store.create("policyreports", polr("three", "r")).await.unwrap();
        store.compact(0).await.unwrap();
        let outcome = step(&store, &metrics, &mut cursors, store.current_rv().await.unwrap()).await;
        assert!(matches!(outcome, Err(Stop::Expired)), "the tail notices the gap");
        rebuild(&store, &metrics).await.unwrap();
        assert_eq!(series(&metrics), 3, "and the full read finds what the log lost");
        assert_eq!(metrics.rebuilds.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn an_idle_kind_does_not_make_compaction_look_like_a_gap() {
        let store = reports_store::open("sqlite::memory:", &Default::default()).await.unwrap();
        let metrics = ResultMetrics::new(&Settings::default()).unwrap().unwrap();
        let mut cursors = rebuild(&store, &metrics).await.unwrap();
        // Writes to one kind only; the other kinds' cursors follow the commits all the same.
        for name in ["one", "two"] {
            store.create("policyreports", polr(name, name)).await.unwrap();
        }
        step(&store, &metrics, &mut cursors, store.current_rv().await.unwrap()).await.ok().unwrap();
        store.compact(0).await.unwrap();
        let outcome = step(&store, &metrics, &mut cursors, store.current_rv().await.unwrap()).await;
        assert!(outcome.is_ok(), "nothing was missed, so no full read");
        assert_eq!(series(&metrics), 2);
    }

    #[tokio::test]
    async fn the_task_stops_on_shutdown() {
        let store = reports_store::open("sqlite::memory:", &Default::default()).await.unwrap();
        let metrics = ResultMetrics::new(&Settings::default()).unwrap().unwrap();
        let (stop, stopping) = watch::channel(false);
        let task = tokio::spawn(run(store.clone(), metrics.clone(), stopping));
        store.create("policyreports", polr("one", "p")).await.unwrap();
        while metrics.resource_version.load(std::sync::atomic::Ordering::Relaxed) < 1 {
            tokio::task::yield_now().await;
        }
        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(30), task).await.expect("the task ends").unwrap();
    }
}
