//! Watch fan-out: W watchers on one collection, an open-loop writer creating Kyverno-sized
//! ephemeral reports (19 results, about 6 KB) at a fixed rate; event delivery lag to the moment
//! each watcher read the event, and the server's resident memory per idle watcher.
//!
//! The writer is open-loop: write `i` is due `i / rate` seconds after the start whatever the
//! server does, and its latency runs from that intended send time. A writer that falls behind
//! (the load generator shares the cores) skips the slots it missed and counts them, instead of
//! sending them together to catch up. Failed writes are counted by status, never dropped.
//!
//! The lag is measured from the commit: the server records the wall-clock instant of each of its
//! commits (`--commit-trace`), and each watcher's read is stamped on the same clock. As cross-
//! checks, the lag is also reported from both ends of the write: from its request's intended
//! send time (an upper bound that includes the whole write) and from its answer (a lower bound,
//! zero when the event arrived first).

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use futures::StreamExt as _;
use serde_json::{json, Value};

use crate::{
    api::client,
    load::{percentile, send_slot},
    procs::{cpu_seconds, Durability, ServerProcess},
};

/// How the watchers reach the server.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Connections {
    /// One HTTP/2 connection per watcher, as separate client-go processes talking to the server
    /// directly.
    #[default]
    H2Each,
    /// One HTTP/1.1 connection per watcher, as separate kube-rs processes.
    Http1Each,
    /// Every watcher a stream of one HTTP/2 connection, as kube-apiserver's aggregator proxies
    /// every client's watch to an aggregated API server.
    H2Shared,
}

impl Connections {
    fn describe(self) -> &'static str {
        match self {
            Connections::H2Each => "h2 each",
            Connections::Http1Each => "http/1.1 each",
            Connections::H2Shared => "h2 shared",
        }
    }
}

/// A Kyverno-shaped ephemeral report: 19 PSS results, about 6 KB of JSON.
fn ephemeral_report(name: &str) -> Value {
    let mut report = crate::shapes::kyverno_policy_report(Some("bench"), name, 0, 19);
    report["apiVersion"] = json!("reports.kyverno.io/v1");
    report["kind"] = json!("EphemeralReport");
    let results = report.as_object_mut().and_then(|r| r.remove("results")).unwrap_or_default();
    let summary = report.as_object_mut().and_then(|r| r.remove("summary")).unwrap_or_default();
    if let Some(object) = report.as_object_mut() {
        object.remove("scope");
    }
    let owner = report["metadata"]["ownerReferences"][0].clone();
    report["spec"] = json!({"owner": owner, "results": results, "summary": summary});
    report
}

/// The `metadata.resourceVersion` of a watch event line, found without parsing the whole event.
fn event_rv(finder: &memchr::memmem::Finder<'_>, line: &[u8]) -> Option<u64> {
    // metadata comes first in stored objects; scanning or parsing the whole 6 KB line would make
    // the load generator, which shares the machine's two cores, the bottleneck.
    let head = &line[..line.len().min(2048)];
    let at = finder.find(head)? + finder.needle().len();
    let digits: Vec<u8> = line[at..].iter().take_while(|b| b.is_ascii_digit()).copied().collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// When each RV was committed, from a server's commit trace: lines `RV MICROSECONDS`, one per
/// commit, each covering every RV up to its own that no earlier line covered.
struct CommitTimes {
    /// (newest RV of a commit, the earliest instant at which it and every RV below it down to
    /// the previous entry were committed), sorted by RV.
    commits: Vec<(u64, u128)>,
}

impl CommitTimes {
    fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut commits = reports_store::commits::parse_trace(&text)
            .with_context(|| format!("malformed commit trace {}", path.display()))?;
        commits.sort_unstable();
        // With concurrent committers (PostgreSQL), a later line may carry a lower RV; an RV was
        // committed no later than the earliest line at or above it.
        for i in (0..commits.len().saturating_sub(1)).rev() {
            commits[i].1 = commits[i].1.min(commits[i + 1].1);
        }
        Ok(Self { commits })
    }

    /// Microseconds since the Unix epoch at which `rv` was committed.
    fn of(&self, rv: u64) -> Option<u128> {
        let at = self.commits.partition_point(|(committed, _)| *committed < rv);
        self.commits.get(at).map(|(_, micros)| *micros)
    }
}

/// Runs one watch fan-out measurement on a fresh server; prints and returns the result. With
/// `replica`, the watchers read from a second server process on the same storage (PostgreSQL),
/// so the lag includes the way from one replica's commit to the other's watch. `durability`
/// says how the PostgreSQL cluster behind `storage` was started (None: not PostgreSQL), for the
/// record.
pub async fn watch_lag(
    watchers: usize,
    rate: u64,
    seconds: u64,
    storage: Option<String>,
    replica: bool,
    connections: Connections,
    durability: Option<Durability>,
) -> anyhow::Result<Value> {
    let server = ServerProcess::start_with(storage.as_deref(), true)?;
    let watched = if replica {
        anyhow::ensure!(storage.is_some(), "--replica needs shared storage: --storage or --postgres");
        Some(ServerProcess::start(storage.as_deref())?)
    } else {
        None
    };
    let watched_base = watched.as_ref().map_or(&server.base, |w| &w.base).clone();
    let http = client()?;
    let collection = format!("{}/apis/reports.kyverno.io/v1/namespaces/bench/ephemeralreports", server.base);
    let watched_collection =
        format!("{watched_base}/apis/reports.kyverno.io/v1/namespaces/bench/ephemeralreports");
    // Warm the connection and the database before measuring memory.
    http.post(&collection).json(&ephemeral_report("warm-up")).send().await?.error_for_status()?;
    let rss_before = server.rss_bytes();

    let list: Value = http.get(&collection).send().await?.json().await?;
    let start_rv = list["metadata"]["resourceVersion"].as_str().context("list rv")?.to_string();
    let total = (rate * seconds) as usize;
    // How many events each watcher waits for: every slot until the writes are done, then the
    // writes that succeeded (skipped slots and failed writes make no event).
    let (expected_tx, expected_rx) = tokio::sync::watch::channel(total);
    let mut readers = Vec::new();
    // One client keeps one connection: every watch is a stream on it.
    let shared = client()?;
    for _ in 0..watchers {
        let url = format!("{watched_collection}?watch=1&resourceVersion={start_rv}&allowWatchBookmarks=true");
        // One connection per watcher, as separate informers would have.
        let watch_client = match connections {
            Connections::H2Each => client()?,
            Connections::Http1Each => crate::api::http1_client()?,
            Connections::H2Shared => shared.clone(),
        };
        let response = watch_client.get(&url).send().await?.error_for_status()?;
        let mut expected = expected_rx.clone();
        readers.push(tokio::spawn(async move {
            let mut received: Vec<(u64, Instant)> = Vec::with_capacity(total);
            let mut stream = response.bytes_stream();
            let mut buffer: Vec<u8> = Vec::new();
            let rv_key = memchr::memmem::Finder::new(br#""resourceVersion":""#);
            while received.len() < *expected.borrow_and_update() {
                let chunk = tokio::select! {
                    chunk = stream.next() => chunk,
                    changed = expected.changed() => match changed {
                        Ok(()) => continue,
                        Err(_) => break,
                    },
                };
                let Some(Ok(chunk)) = chunk else { break };
                let now = Instant::now();
                // Complete lines are scanned where they lie; only a line cut by the chunk's end
                // is copied, to be completed by the next chunk.
                let Some(last_newline) = memchr::memrchr(b'\n', &chunk) else {
                    buffer.extend_from_slice(&chunk);
                    continue;
                };
                let complete = &chunk[..=last_newline];
                let mut record = |lines: &[u8]| {
                    let mut start = 0;
                    for end in memchr::memchr_iter(b'\n', lines) {
                        let line = &lines[start..end];
                        start = end + 1;
                        if line.starts_with(br#"{"type":"ADDED""#) {
                            if let Some(rv) = event_rv(&rv_key, line) {
                                received.push((rv, now));
                            }
                        }
                    }
                };
                if buffer.is_empty() {
                    record(complete);
                } else {
                    buffer.extend_from_slice(complete);
                    record(&buffer);
                    buffer.clear();
                }
                buffer.extend_from_slice(&chunk[last_newline + 1..]);
            }
            received
        }));
    }
    // Idle watchers are open: the memory they cost is the difference.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_watching = server.rss_bytes();

    // Bodies are built before the clock: the load generator shares the two cores with the
    // server, and building a 6 KB report costs about as much CPU as the server's create.
    let bodies: Vec<bytes::Bytes> =
        (0..total).map(|i| crate::api::to_bytes(&ephemeral_report(&format!("r-{i}")))).collect();
    // RV -> (intended send time, answer read).
    let sent: Arc<Mutex<HashMap<u64, (Instant, Instant)>>> =
        Arc::new(Mutex::new(HashMap::with_capacity(total)));
    let (server_cpu_before, bench_cpu_before) = (cpu_seconds(server.pid()), cpu_seconds(std::process::id()));
    // The writer has a thread and a runtime of its own: on the main runtime its timer waited for
    // a worker thread behind the watchers' reads (100 watchers decrypt about 300 MB/s), so it
    // kept missing its send times.
    let writer = {
        let (base, url, sent) = (server.base.clone(), collection.clone(), sent.clone());
        std::thread::Builder::new().name("watch-writer".into()).spawn(
            move || -> anyhow::Result<Written> {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(open_loop_writes(&base, &url, bodies, rate, sent))
            },
        )?
    };
    let Written { latencies: mut write_latencies, errors: write_errors, skipped, seconds: write_seconds } =
        tokio::task::spawn_blocking(move || writer.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the writer thread panicked"))??;
    let failed: usize = write_errors.values().sum();
    expected_tx.send_replace(write_latencies.len());
    let (mut lags, mut lags_after_ack, mut lags_from_commit) = (Vec::new(), Vec::new(), Vec::new());
    let mut readings = Vec::with_capacity(readers.len());
    for reader in readers {
        readings.push(tokio::time::timeout(Duration::from_secs(60), reader).await??);
    }
    let commit_times = CommitTimes::read(server.commit_trace.as_deref().context("commit trace")?)?;
    // The watchers' instants on the server's clock (wall-clock microseconds).
    let (anchor, anchor_micros) = (Instant::now(), SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros());
    let sent = sent.lock().unwrap();
    for (rv, at) in readings.iter().flatten() {
        if let Some((started, acked)) = sent.get(rv) {
            lags.push(at.saturating_duration_since(*started));
            lags_after_ack.push(at.saturating_duration_since(*acked));
            if let Some(committed) = commit_times.of(*rv) {
                let read = anchor_micros - anchor.duration_since(*at).as_micros();
                lags_from_commit.push(Duration::from_micros(read.saturating_sub(committed) as u64));
            }
        }
    }
    let server_cpu = cpu_seconds(server.pid()) - server_cpu_before;
    let bench_cpu = cpu_seconds(std::process::id()) - bench_cpu_before;
    lags.sort();
    lags_after_ack.sort();
    lags_from_commit.sort();
    write_latencies.sort();
    let per_watcher = rss_watching.saturating_sub(rss_before) / watchers.max(1) as u64;
    let write_errors: serde_json::Map<String, Value> =
        write_errors.iter().map(|(status, count)| (status.to_string(), json!(count))).collect();
    let result = json!({
        "scenario": "watch-lag",
        "watchers": watchers,
        "watch_connections": connections.describe(),
        "postgres_durability": durability.map(|d| format!("{d:?}").to_lowercase()),
        "target_writes_per_s": rate,
        "achieved_writes_per_s": (write_latencies.len() as f64 / write_seconds).round(),
        "writes_ok": write_latencies.len(),
        "writes_failed": failed,
        "write_errors": write_errors,
        "slots_skipped_generator_late": skipped,
        "events_delivered": lags.len(),
        "events_expected": watchers * write_latencies.len(),
        "events_with_commit_instant": lags_from_commit.len(),
        "lag_p50_ms": percentile(&lags_from_commit, 0.50).as_secs_f64() * 1e3,
        "lag_p99_ms": percentile(&lags_from_commit, 0.99).as_secs_f64() * 1e3,
        "lag_max_ms": lags_from_commit.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        "lag_from_request_p50_ms": percentile(&lags, 0.50).as_secs_f64() * 1e3,
        "lag_from_request_p99_ms": percentile(&lags, 0.99).as_secs_f64() * 1e3,
        "lag_after_ack_p50_ms": percentile(&lags_after_ack, 0.50).as_secs_f64() * 1e3,
        "lag_after_ack_p99_ms": percentile(&lags_after_ack, 0.99).as_secs_f64() * 1e3,
        "write_p50_ms": percentile(&write_latencies, 0.50).as_secs_f64() * 1e3,
        "write_p99_ms": percentile(&write_latencies, 0.99).as_secs_f64() * 1e3,
        "server_rss_mb": server.rss_bytes() as f64 / 1048576.0,
        "rss_per_idle_watcher_kb": per_watcher as f64 / 1024.0,
        "server_cpu_s": server_cpu,
        "load_generator_cpu_s": bench_cpu,
    });
    println!(
        "watch-lag  watchers={watchers:<4} {} writes/s={:<5} failed={} {} skipped={} delivered={}/{}  lag from commit p50={:.1}ms p99={:.1}ms max={:.1}ms \
         (from request p50={:.1}ms p99={:.1}ms; from answer p50={:.1}ms p99={:.1}ms)  \
         write p50={:.1}ms p99={:.1}ms  rss/watcher={:.0}KiB  cpu server={:.1}s client={:.1}s",
        connections.describe(),
        result["achieved_writes_per_s"],
        failed,
        result["write_errors"],
        skipped,
        result["events_delivered"],
        result["events_expected"],
        result["lag_p50_ms"].as_f64().unwrap_or_default(),
        result["lag_p99_ms"].as_f64().unwrap_or_default(),
        result["lag_max_ms"].as_f64().unwrap_or_default(),
        result["lag_from_request_p50_ms"].as_f64().unwrap_or_default(),
        result["lag_from_request_p99_ms"].as_f64().unwrap_or_default(),
        result["lag_after_ack_p50_ms"].as_f64().unwrap_or_default(),
        result["lag_after_ack_p99_ms"].as_f64().unwrap_or_default(),
        result["write_p50_ms"].as_f64().unwrap_or_default(),
        result["write_p99_ms"].as_f64().unwrap_or_default(),
        result["rss_per_idle_watcher_kb"].as_f64().unwrap_or_default(),
        server_cpu,
        bench_cpu,
    );
    println!("{result}");
    Ok(result)
}

/// What the open-loop writer did.
struct Written {
    /// Latencies of the successful writes, from their intended send times.
    latencies: Vec<Duration>,
    /// Failed writes by HTTP status (0: transport failure or an answer without an RV).
    errors: BTreeMap<u16, usize>,
    /// Slots the writer reached too late and skipped (see [`send_slot`]).
    skipped: usize,
    /// Seconds from the first intended send time to the last answer.
    seconds: f64,
}

/// Creates `bodies` at `url`, one every `1 / rate` s from the start whatever the answers do;
/// records each successful write's RV in `sent` with its intended send time and answer time.
async fn open_loop_writes(
    base: &str,
    url: &str,
    bodies: Vec<bytes::Bytes>,
    rate: u64,
    sent: Arc<Mutex<HashMap<u64, (Instant, Instant)>>>,
) -> anyhow::Result<Written> {
    // A connection of this runtime, opened before the clock starts.
    let http = client()?;
    http.get(format!("{base}/version")).send().await?.error_for_status()?;
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut writes = Vec::with_capacity(bodies.len());
    let mut skipped = 0usize;
    let began = tokio::time::Instant::now();
    for (i, body) in bodies.into_iter().enumerate() {
        let intended = began + period.mul_f64(i as f64);
        tokio::time::sleep_until(intended).await;
        if !send_slot(intended.elapsed(), period) {
            skipped += 1;
            continue;
        }
        let (http, url, sent) = (http.clone(), url.to_string(), sent.clone());
        let intended = intended.into_std();
        writes.push(tokio::spawn(async move {
            let rv = write(&http, &url, body).await?;
            let answered = Instant::now();
            sent.lock().unwrap().insert(rv, (intended, answered));
            Ok::<_, u16>(answered.duration_since(intended))
        }));
    }
    let (mut latencies, mut errors) = (Vec::new(), BTreeMap::new());
    for write in writes {
        match write.await? {
            Ok(latency) => latencies.push(latency),
            Err(status) => *errors.entry(status).or_default() += 1,
        }
    }
    Ok(Written { latencies, errors, skipped, seconds: began.elapsed().as_secs_f64() })
}

/// Sends one create; its RV, or the failure's HTTP status (0: transport, or no RV in the answer).
async fn write(http: &reqwest::Client, url: &str, body: bytes::Bytes) -> Result<u64, u16> {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|_| 0u16)?;
    let status = response.status();
    let answer = response.bytes().await.map_err(|_| 0u16)?;
    if !status.is_success() {
        return Err(status.as_u16());
    }
    crate::api::resource_version_in(&answer).ok_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_rv_takes_the_instant_of_the_earliest_commit_line_at_or_above_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("commits");
        // Two committers: RV 7's committer announced after RV 9's; RV 7 was committed first.
        std::fs::write(&path, "3 100\n9 250\n7 300\n12 400\n").unwrap();
        let times = CommitTimes::read(&path).unwrap();
        assert_eq!(times.of(1), Some(100));
        assert_eq!(times.of(3), Some(100));
        assert_eq!(times.of(4), Some(250), "a batch's RVs share its line");
        assert_eq!(times.of(7), Some(250));
        assert_eq!(times.of(12), Some(400));
        assert_eq!(times.of(13), None, "never committed");
    }

    #[test]
    fn a_malformed_trace_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("commits");
        std::fs::write(&path, "3 100\nnot a line\n").unwrap();
        assert!(CommitTimes::read(&path).is_err());
    }
}
