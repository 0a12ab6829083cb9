//! The newest committed resourceVersion, as the committing code announces it.
//!
//! Both stores announce each commit through a [`CommitSignal`]: the watch feed waits on it
//! instead of polling, and every announced RV only grows. On request it also writes down when
//! each of this process's commits happened (`--commit-trace`): the watch benchmark measures
//! delivery lag from that instant, which no client can see, instead of from the write request
//! (which also counts the whole write) or from its answer (which comes after the commit).

use std::{
    fs::File,
    io::Write as _,
    sync::{Mutex, OnceLock},
    time::{SystemTime, UNIX_EPOCH},
};

use tokio::sync::watch;

/// Announces commits: the newest committed RV, and optionally a record of when each commit of
/// this process happened.
#[derive(Debug)]
pub struct CommitSignal {
    /// The newest committed RV known here; the watch feed waits on it.
    newest: watch::Sender<u64>,
    /// Where commit instants go, when asked for; set at most once, after the store is built,
    /// because the signal is already shared by the store's tasks by then.
    trace: OnceLock<Mutex<File>>,
}

impl CommitSignal {
    /// A signal starting at `rv`, the newest RV committed before this process started.
    pub fn new(rv: u64) -> Self {
        Self { newest: watch::channel(rv).0, trace: OnceLock::new() }
    }

    /// From now on, appends a line `RV MICROSECONDS` (newest RV of the commit, wall-clock time
    /// since the Unix epoch) to `file` for every commit this process makes. Only the first call
    /// has an effect.
    pub fn trace_to(&self, file: File) {
        let _ = self.trace.set(Mutex::new(file));
    }

    /// This process committed every RV up to `rv`: stamps the instant (when tracing) and wakes
    /// whoever waits. Called right after the commit, before the writes are answered.
    pub fn committed(&self, rv: u64) {
        if let Some(trace) = self.trace.get() {
            let micros = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
            if let Ok(mut file) = trace.lock() {
                // One write per line, unbuffered: a killed server leaves no half-kept record.
                if let Err(e) = file.write_all(format!("{rv} {micros}\n").as_bytes()) {
                    tracing::warn!(error = %e, "writing the commit trace failed");
                }
            }
        }
        self.learned(rv);
    }

    /// Every RV up to `rv` is committed, by this process or another one on the same database
    /// (a notification). Announced RVs never go backwards.
    pub fn learned(&self, rv: u64) {
        self.newest.send_if_modified(|current| {
            let newer = rv > *current;
            if newer {
                *current = rv;
            }
            newer
        });
    }

    /// The newest committed RV known here.
    pub fn newest(&self) -> u64 {
        *self.newest.borrow()
    }

    /// A receiver of the newest committed RV.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }
}

/// Reads a commit trace written by [`CommitSignal::trace_to`]: `(RV, microseconds since the Unix
/// epoch)` per line, in the order written. None if a line is not of that form.
pub fn parse_trace(text: &str) -> Option<Vec<(u64, u128)>> {
    text.lines()
        .map(|line| {
            let (rv, micros) = line.split_once(' ')?;
            Some((rv.parse().ok()?, micros.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_rvs_never_go_backwards() {
        let signal = CommitSignal::new(5);
        let watcher = signal.subscribe();
        signal.learned(3);
        assert_eq!(*watcher.borrow(), 5);
        signal.committed(9);
        signal.learned(7);
        assert_eq!(*watcher.borrow(), 9);
    }

    #[test]
    fn a_traced_signal_writes_one_line_per_commit_and_none_for_learned_rvs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("commits");
        let signal = CommitSignal::new(0);
        signal.trace_to(File::create(&path).unwrap());
        signal.committed(4);
        signal.learned(6);
        signal.committed(8);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines = parse_trace(&text).expect("well-formed lines");
        assert_eq!(lines.iter().map(|(rv, _)| *rv).collect::<Vec<_>>(), [4, 8]);
        for (_, micros) in lines {
            assert!(micros > 1_700_000_000_000_000, "wall-clock microseconds: {text}");
        }
    }
}
