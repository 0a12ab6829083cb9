//! Load generation: open loop at a fixed arrival rate (latency measured from each request's
//! *scheduled* send time, so a slow server cannot hide its queueing: no coordinated omission) and
//! closed loop with N concurrent clients (for maximum-throughput probes), plus the CPU accounting
//! of every process involved.

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Value};

/// One operation: `Err(status)` for an HTTP error status, `Err(0)` for a transport failure.
pub type OpResult = Result<(), u16>;

/// A boxed future of one operation.
pub type OpFuture = Pin<Box<dyn Future<Output = OpResult> + Send>>;

/// The operation number `i` of a run.
pub type Op = Arc<dyn Fn(usize) -> OpFuture + Send + Sync>;

/// Wraps a closure as an [`Op`].
pub fn op<F, Fut>(f: F) -> Op
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = OpResult> + Send + 'static,
{
    Arc::new(move |i| Box::pin(f(i)))
}

/// `operation` with its operation numbers moved up by `offset`: a later step of a sweep calls
/// it with numbers the earlier steps did not use.
pub fn shifted(operation: &Op, offset: usize) -> Op {
    let operation = operation.clone();
    op(move |i| operation(i + offset))
}

/// What a run measured.
#[derive(Default)]
pub struct Measured {
    /// Successful operations.
    pub ok: usize,
    /// Failed operations by status (0: transport).
    pub errors: BTreeMap<u16, usize>,
    /// Wall time from the first send to the last completion.
    pub seconds: f64,
    /// Latencies of successful operations, sorted.
    pub latencies: Vec<Duration>,
}

impl Measured {
    fn from_outcomes(outcomes: Vec<(OpResult, Duration)>, seconds: f64) -> Self {
        let mut measured = Measured { seconds, ..Default::default() };
        for (result, latency) in outcomes {
            match result {
                Ok(()) => {
                    measured.ok += 1;
                    measured.latencies.push(latency);
                }
                Err(status) => *measured.errors.entry(status).or_default() += 1,
            }
        }
        measured.latencies.sort();
        measured
    }

    /// Successful operations per second.
    pub fn ops_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ok as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The latency at quantile `q` (0–1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        percentile(&self.latencies, q).as_secs_f64() * 1e3
    }

    /// The figures as JSON: ops, ops/s, p50/p90/p99/max in ms, errors by status.
    pub fn summary(&self) -> Value {
        let errors: serde_json::Map<String, Value> =
            self.errors.iter().map(|(status, count)| (status.to_string(), json!(count))).collect();
        json!({
            "ops": self.ok,
            "seconds": round3(self.seconds),
            "ops_per_s": self.ops_per_s().round(),
            "p50_ms": round3(self.quantile_ms(0.50)),
            "p90_ms": round3(self.quantile_ms(0.90)),
            "p99_ms": round3(self.quantile_ms(0.99)),
            "max_ms": round3(self.latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)),
            "errors": errors,
        })
    }
}

/// Rounds to three decimals (for readable JSON).
pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// The element at quantile `q` of sorted durations.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// How late an open-loop writer may reach a slot and still send it: one period, and never less
/// than 5 ms. Tokio's timer wakes up to a millisecond after its deadline, and a thread woken on
/// two cores shared with the server, the database and the watchers often waits a few more; a
/// writer later than that was stalled. At 500/s this sends at most three writes together.
pub fn late_tolerance(period: Duration) -> Duration {
    period.max(Duration::from_millis(5))
}

/// Whether an open-loop writer that reaches a slot `late` after its intended send time still
/// sends it. A writer that fell behind (descheduled on the shared cores) skips the slots it
/// missed, and counts them, rather than sending them together to catch up: a burst is load the
/// target rate does not describe.
pub fn send_slot(late: Duration, period: Duration) -> bool {
    late <= late_tolerance(period)
}

/// Sends `count` operations at `rate` per second whatever the responses do; latency runs from
/// each operation's scheduled send time to its completion.
pub async fn open_loop(rate: f64, count: usize, operation: Op) -> Measured {
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(scheduled).await;
        let operation = operation.clone();
        tasks.push(tokio::spawn(async move {
            let result = operation(i).await;
            (result, scheduled.elapsed())
        }));
    }
    let mut outcomes = Vec::with_capacity(count);
    for task in tasks {
        outcomes.push(task.await.unwrap_or((Err(0), Duration::ZERO)));
    }
    Measured::from_outcomes(outcomes, start.elapsed().as_secs_f64())
}

/// Runs `count` operations from `concurrency` clients, each sending its next request when the
/// previous one completes (maximum throughput; latency is per request).
pub async fn closed_loop(concurrency: usize, count: usize, operation: Op) -> Measured {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (next, operation) = (next.clone(), operation.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return outcomes;
                    }
                    let sent = Instant::now();
                    let result = operation(i).await;
                    outcomes.push((result, sent.elapsed()));
                }
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(count);
    for worker in workers {
        outcomes.extend(worker.await.unwrap_or_default());
    }
    Measured::from_outcomes(outcomes, start.elapsed().as_secs_f64())
}

/// A CPU-seconds source: a component name and how to read its CPU seconds so far.
type CpuSource = (&'static str, Arc<dyn Fn() -> f64 + Send + Sync>);

/// Reads the CPU seconds of every component of a run (server, PostgreSQL, etcd, generator).
#[derive(Clone, Default)]
pub struct CpuProbe {
    sources: Vec<CpuSource>,
}

impl CpuProbe {
    /// A probe that always includes the load generator (this process).
    pub fn new() -> Self {
        let me = std::process::id();
        Self { sources: vec![("generator", Arc::new(move || crate::procs::cpu_seconds(me)))] }
    }

    /// Adds a component.
    pub fn with(mut self, name: &'static str, read: impl Fn() -> f64 + Send + Sync + 'static) -> Self {
        self.sources.push((name, Arc::new(read)));
        self
    }

    /// The current CPU seconds of every component.
    pub fn read(&self) -> Vec<f64> {
        self.sources.iter().map(|(_, read)| read()).collect()
    }

    /// CPU seconds per 1,000 operations of each component since `before`.
    pub fn per_1k_ops(&self, before: &[f64], ops: usize) -> Value {
        let now = self.read();
        let per: serde_json::Map<String, Value> = self
            .sources
            .iter()
            .zip(now.iter().zip(before))
            .map(|((name, _), (now, before))| {
                let seconds = now - before;
                (name.to_string(), json!(round3(seconds * 1000.0 / ops.max(1) as f64)))
            })
            .collect();
        Value::Object(per)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_sent_up_to_one_period_late_and_skipped_after() {
        let ms = Duration::from_millis;
        // 100/s: 10 ms periods.
        assert!(send_slot(Duration::ZERO, ms(10)));
        assert!(send_slot(ms(10), ms(10)));
        assert!(!send_slot(ms(11), ms(10)));
        // 500/s: scheduling jitter of a few milliseconds is not a stall.
        assert!(send_slot(ms(5), ms(2)));
        assert!(!send_slot(ms(6), ms(2)));
    }
}
