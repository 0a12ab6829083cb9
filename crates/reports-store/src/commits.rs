//! The newest committed resourceVersion, as the committing code announces it, and the commit
//! trace that can listen to it.
//!
//! Both stores announce each commit through a [`CommitSignal`]: the watch feed waits on it
//! instead of polling, and every announced RV only grows. A [`CommitObserver`] attached to the
//! signal hears of each of this process's commits with its instant; [`CommitTrace`] is the one
//! that writes them to a file (`--commit-trace`), so that the watch benchmark can measure
//! delivery lag from that instant, which no client can see, instead of from the write request
//! (which also counts the whole write) or from its answer (which comes after the commit).

use std::{
    fmt,
    fs::File,
    io::Write as _,
    path::Path,
    sync::{mpsc as std_mpsc, Arc, OnceLock},
    time::{SystemTime, UNIX_EPOCH},
};

use tokio::sync::watch;

/// Hears of every commit this process makes.
pub trait CommitObserver: Send + Sync + 'static {
    /// Every RV up to `rv` was committed by this process at `at`. Called right after the commit
    /// and before its writes are answered, on the committing thread: it must not block.
    fn committed(&self, rv: u64, at: SystemTime);
}

/// Announces commits: the newest committed RV, and each commit of this process to an observer
/// when one is attached.
pub struct CommitSignal {
    /// The newest committed RV known here; the watch feed waits on it.
    newest: watch::Sender<u64>,
    /// Set at most once, after the store is built, because the signal is already shared by the
    /// store's tasks by then.
    observer: OnceLock<Arc<dyn CommitObserver>>,
}

impl fmt::Debug for CommitSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommitSignal")
            .field("newest", &self.newest())
            .field("observed", &self.observer.get().is_some())
            .finish()
    }
}

impl CommitSignal {
    /// A signal starting at `rv`, the newest RV committed before this process started.
    pub fn new(rv: u64) -> Self {
        Self { newest: watch::channel(rv).0, observer: OnceLock::new() }
    }

    /// From now on, tells `observer` of every commit this process makes. Only the first observer
    /// is kept; returns whether this one was.
    pub fn observe(&self, observer: Arc<dyn CommitObserver>) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// This process committed every RV up to `rv`: tells the observer (with the instant) and
    /// wakes whoever waits. Called right after the commit, before the writes are answered.
    pub fn committed(&self, rv: u64) {
        if let Some(observer) = self.observer.get() {
            observer.committed(rv, SystemTime::now());
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

/// What the trace's writing thread is asked to do.
enum TraceMessage {
    /// Append `RV MICROSECONDS`.
    Line(u64, u128),
    /// Answer once every line sent before has been written.
    Flush(std_mpsc::SyncSender<()>),
}

/// A [`CommitObserver`] that appends a line `RV MICROSECONDS` (newest RV of the commit,
/// wall-clock time since the Unix epoch) to a file for every commit. The file is written by a
/// thread of its own, so a commit only queues its line and never waits for the disk; the instant
/// is the commit's, taken before the line is queued.
pub struct CommitTrace {
    lines: std_mpsc::Sender<TraceMessage>,
}

impl CommitTrace {
    /// Opens `path` for appending (creating it) and starts the writing thread, which ends when
    /// the trace is dropped.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let (lines, queue) = std_mpsc::channel();
        std::thread::Builder::new().name("commit-trace".into()).spawn(move || write_lines(file, queue))?;
        Ok(Self { lines })
    }

    /// Waits until every commit recorded so far is written to the file.
    pub fn flush(&self) {
        let (done, written) = std_mpsc::sync_channel(1);
        if self.lines.send(TraceMessage::Flush(done)).is_ok() {
            let _ = written.recv();
        }
    }
}

impl CommitObserver for CommitTrace {
    fn committed(&self, rv: u64, at: SystemTime) {
        let micros = at.duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
        let _ = self.lines.send(TraceMessage::Line(rv, micros));
    }
}

/// The trace's writing thread: one unbuffered write per line, so a killed server leaves no
/// half-kept record.
fn write_lines(mut file: File, queue: std_mpsc::Receiver<TraceMessage>) {
    for message in queue {
        match message {
            TraceMessage::Line(rv, micros) => {
                if let Err(e) = file.write_all(format!("{rv} {micros}\n").as_bytes()) {
                    tracing::warn!(error = %e, "writing the commit trace failed");
                }
            }
            TraceMessage::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Reads a commit trace written by [`CommitTrace`]: `(RV, microseconds since the Unix epoch)` per
/// line, in the order written. None if a line is not of that form.
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
        let trace = Arc::new(CommitTrace::create(&path).unwrap());
        assert!(signal.observe(trace.clone()));
        signal.committed(4);
        signal.learned(6);
        signal.committed(8);
        trace.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines = parse_trace(&text).expect("well-formed lines");
        assert_eq!(lines.iter().map(|(rv, _)| *rv).collect::<Vec<_>>(), [4, 8]);
        for (_, micros) in lines {
            assert!(micros > 1_700_000_000_000_000, "wall-clock microseconds: {text}");
        }
    }
}
