//! The [`Store`] trait every backend implements, and the shared handle the server holds.

use std::sync::Arc;

use serde_json::Value;

use crate::{
    commits::CommitSignal,
    error::StoreResult,
    model::{Change, FindingStream, ListQuery, ListStream, Retention, StoredObject},
};
use reports_core::findings::query::{CountQuery, FindingCount, FindingQuery};

/// Most changes one compaction pass drops, so a pass never holds the log (SQLite's writer, or
/// PostgreSQL's locks) for long.
pub const COMPACTION_BATCH: u64 = 10_000;

/// Durable storage of report objects.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one object.
    async fn get(&self, resource: &str, namespace: &str, name: &str) -> StoreResult<Option<StoredObject>>;

    /// Inserts a new object (never an upsert): assigns the next RV, writes it into
    /// `metadata.resourceVersion`, appends an ADDED change. [`crate::StoreError::AlreadyExists`]
    /// if the key is taken.
    async fn create(&self, resource: &str, object: Value) -> StoreResult<StoredObject>;

    /// Replaces an object whose stored RV is `expected_rv`; [`crate::StoreError::Conflict`]
    /// otherwise, [`crate::StoreError::NotFound`] if it is gone. Appends a MODIFIED change.
    async fn update(&self, resource: &str, object: Value, expected_rv: u64) -> StoreResult<StoredObject>;

    /// Deletes an object whose stored RV is `expected_rv`. The returned object is its final state,
    /// carrying the deletion's RV (as the DELETED change does).
    async fn delete(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        expected_rv: u64,
    ) -> StoreResult<StoredObject>;

    /// Deletes several objects, as read (by a list), in one transaction: each whose stored RV is
    /// still the one it was read at. An entry whose RV moved or that vanished is skipped (`None`
    /// in the result, same order as `read`). The bodies given are the stored ones at those RVs
    /// (an RV names one version), so the store does not read them again.
    async fn delete_batch(
        &self,
        resource: &str,
        read: Vec<StoredObject>,
    ) -> StoreResult<Vec<Option<StoredObject>>>;

    /// Streams the objects matching `query` with the snapshot RV.
    async fn list(&self, query: ListQuery) -> StoreResult<ListStream>;

    /// The newest committed RV.
    async fn current_rv(&self) -> StoreResult<u64>;

    /// The compacted RV: changes at or below it are gone from the log.
    async fn compacted_rv(&self) -> StoreResult<u64>;

    /// True if `resource` has any change with an RV above `rv` (exact-RV list checks).
    async fn changed_since(&self, resource: &str, rv: u64) -> StoreResult<bool>;

    /// Up to `limit` changes of `resource` (all resources when `None`) with RV above `after`, in
    /// RV order.
    async fn changes_since(
        &self,
        resource: Option<&str>,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<Change>>;

    /// Drops the changes `keep` does not keep and moves the compacted RV past them; returns how
    /// many were dropped. A pass drops a bounded batch, so one that returns
    /// [`COMPACTION_BATCH`] may have left more for the next.
    async fn compact_log(&self, keep: Retention) -> StoreResult<u64>;

    /// Drops every change `keep` does not keep, a batch per pass; returns how many were dropped.
    async fn compact_all(&self, keep: Retention) -> StoreResult<u64> {
        let mut dropped = 0;
        loop {
            let n = self.compact_log(keep).await?;
            dropped += n;
            if n < COMPACTION_BATCH {
                return Ok(dropped);
            }
        }
    }

    /// Drops changes at least `max_age_seconds` old (0 drops everything committed so far);
    /// returns how many were dropped.
    async fn compact(&self, max_age_seconds: u64) -> StoreResult<u64> {
        self.compact_all(Retention::by_age(max_age_seconds)).await
    }

    /// Where this store announces its commits: the newest committed RV, and an observer can be
    /// attached to hear of each commit this process makes (the commit trace).
    fn commits(&self) -> &CommitSignal;

    /// A receiver of the newest committed RV, updated after every commit (wakes watchers).
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits().subscribe()
    }

    /// How many objects each resource holds (resources with none are absent). A full count, for
    /// the `apiserver_storage_objects` gauge, which refreshes it about once a minute.
    async fn count_by_resource(&self) -> StoreResult<Vec<(String, u64)>>;

    /// Streams the findings matching `query` (see `reports_core::findings`), in key order, read
    /// only from where `query.visibility` allows.
    async fn findings(&self, query: FindingQuery) -> StoreResult<FindingStream>;

    /// Counts the findings matching `query` per group, largest group first (see
    /// `reports_core::findings::query::sort_counts`), with the RV they reflect.
    async fn count_findings(&self, query: CountQuery) -> StoreResult<(u64, Vec<FindingCount>)>;

    /// The namespaces that hold at least one object of `resource`, in order (what the server asks
    /// the authorizer about when a caller may not list `resource` cluster-wide).
    async fn namespaces_of(&self, resource: &str) -> StoreResult<Vec<String>>;

    /// Checks that the database answers (readiness).
    async fn ping(&self) -> StoreResult<()>;
}

/// A shared handle to a store.
pub type DynStore = Arc<dyn Store>;
