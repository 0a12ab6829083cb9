//! A count of writes that shared their commit with others. Only tests read it (they check that
//! combining happens at all), so it counts only with the `testing` feature; without it the type
//! is empty and counting costs nothing.

#[cfg(feature = "testing")]
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

/// A shared counter of combined writes (see the module notes).
#[derive(Clone, Default)]
pub(crate) struct CombinedWrites {
    #[cfg(feature = "testing")]
    count: Arc<AtomicU64>,
}

impl CombinedWrites {
    /// Counts `n` more writes that shared a commit.
    #[cfg_attr(not(feature = "testing"), allow(unused_variables))]
    pub fn add(&self, n: u64) {
        #[cfg(feature = "testing")]
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    /// How many writes so far shared a commit.
    #[cfg(feature = "testing")]
    pub fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}
