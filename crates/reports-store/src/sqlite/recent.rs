//! The newest committed changes, kept in memory so the watch feed reads what it was just told
//! about without touching the file.

use std::{collections::VecDeque, sync::Mutex};

use crate::model::Change;

/// Changes kept in memory after commit (about 1,000, the feed's working set).
const RECENT_CHANGES: usize = 1024;

/// A window over the newest committed changes. Every change enters it in RV order under the
/// writer lock, and RVs are consecutive in this store (each write takes exactly one RV and
/// appends exactly one change, and a rolled-back write takes none), so the window holds
/// *every* change from its first RV on: a read after an RV inside it needs no database.
#[derive(Default)]
pub(super) struct RecentChanges {
    window: Mutex<VecDeque<Change>>,
}

impl RecentChanges {
    /// Adds committed changes, in RV order.
    pub fn record(&self, changes: Vec<Change>) {
        let Ok(mut window) = self.window.lock() else { return };
        for change in changes {
            // A gap (a write before this process, or a failed read) restarts the window.
            if window.back().is_some_and(|last| last.rv + 1 != change.rv) {
                window.clear();
            }
            window.push_back(change);
        }
        while window.len() > RECENT_CHANGES {
            window.pop_front();
        }
    }

    /// Drops what compaction removed from the log, so the window never serves it.
    pub fn forget_through(&self, rv: u64) {
        if let Ok(mut window) = self.window.lock() {
            while window.front().is_some_and(|c| c.rv <= rv) {
                window.pop_front();
            }
        }
    }

    /// Changes after `after` (of `resource`, or all), if the window reaches back that far.
    pub fn since(&self, resource: Option<&str>, after: u64, limit: usize) -> Option<Vec<Change>> {
        let window = self.window.lock().ok()?;
        let first = window.front()?.rv;
        let next = after.saturating_add(1);
        if next < first {
            return None;
        }
        Some(
            window
                .iter()
                .skip(usize::try_from(next - first).unwrap_or(usize::MAX))
                .filter(|c| resource.is_none_or(|r| c.resource == r))
                .take(limit)
                .cloned()
                .collect(),
        )
    }
}
