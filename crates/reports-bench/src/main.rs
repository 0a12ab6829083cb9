//! reports-bench: measures reports-server under traffic shaped like the real thing.
//!
//! It is a tool, not a test: nothing here asserts on timing. Each scenario starts the server in a
//! child process (this same binary, `serve` subcommand) so that the server's memory can be read
//! from `/proc` without the load generator's own allocations, drives it over HTTPS like a client
//! would, and prints a table plus a JSON line per result.
//!
//! Scenarios so far:
//! - `watch-lag`: W watchers on one collection, an open-loop writer creating Kyverno-sized
//!   ephemeral reports (19 results, about 6 KB) at a fixed rate; reports event delivery lag from
//!   the moment the write request was sent (so it includes the write itself) to the moment each
//!   watcher read the event, and the server's resident memory per idle watcher.
//! - `quick`: every scenario with small settings (CI smoke run).

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use futures::StreamExt as _;
use serde_json::{json, Value};

/// The server binary's allocator, so the child measures what production runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "reports-bench", about = "Benchmarks for reports-server")]
struct Cli {
    #[command(subcommand)]
    command: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Watch fan-out: delivery lag and memory per watcher.
    WatchLag {
        /// Watcher counts to run, one run each.
        #[arg(long, value_delimiter = ',', default_value = "10,100")]
        watchers: Vec<usize>,
        /// Writes per second (open loop).
        #[arg(long, default_value_t = 500)]
        rate: u64,
        /// Seconds of writing per run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Storage URL for the server (a fresh temporary SQLite file when absent).
        #[arg(long)]
        storage: Option<String>,
    },
    /// Every scenario with tiny settings, to keep the harness working.
    Quick,
    /// Internal: run a server on a free loopback port and print its port.
    #[command(hide = true)]
    Serve {
        /// Storage URL.
        #[arg(long)]
        storage: String,
    },
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Scenario::Serve { storage } => runtime.block_on(serve(storage)),
        Scenario::WatchLag { watchers, rate, seconds, storage } => {
            for count in watchers {
                runtime.block_on(watch_lag(count, rate, seconds, storage.clone()))?;
            }
            Ok(())
        }
        Scenario::Quick => runtime.block_on(watch_lag(5, 50, 2, None)),
    }
}

/// The child side: serve until stdin closes.
async fn serve(storage: String) -> anyhow::Result<()> {
    let config = reports_server::ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        certificate: reports_server::tls::CertificatePem::self_signed()?,
        storage,
        max_body_bytes: 3 * 1024 * 1024,
        change_log_retention_seconds: 900,
        postgres: Default::default(),
    };
    let server = reports_server::Server::start(config).await?;
    println!("READY {}", server.local_addr.port());
    std::io::stdout().flush()?;
    tokio::task::spawn_blocking(|| std::io::stdin().lines().for_each(drop)).await?;
    server.shutdown().await;
    Ok(())
}

/// A server child process and its base URL.
struct ServerProcess {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    fn start(storage: Option<String>) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let storage =
            storage.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
        let mut child = Command::new(std::env::current_exe()?)
            .args(["serve", "--storage", &storage])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut first = String::new();
        BufReader::new(child.stdout.take().context("child stdout")?).read_line(&mut first)?;
        let port = first.trim().strip_prefix("READY ").context("server did not start")?;
        Ok(Self { base: format!("https://127.0.0.1:{port}"), child, _dir: dir })
    }

    /// Resident memory of the server process, in bytes.
    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

/// CPU seconds (user + system) used so far by a process.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // the child shuts down cleanly on EOF
        let _ = self.child.wait();
    }
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().danger_accept_invalid_certs(true).build()?)
}

/// A Kyverno-shaped ephemeral report: 19 PSS results, about 6 KB of JSON.
fn ephemeral_report(name: &str) -> Value {
    let results: Vec<Value> = (0..19)
        .map(|i| {
            json!({
                "category": "Pod Security Standards (Restricted)",
                "message": format!("validation rule 'check-{i}' passed for container nginx in pod default/web-7d9c5b9f4-x2x7z; restricted profile control {i} is satisfied by the pod specification"),
                "policy": format!("restrict-policy-{}", i % 7),
                "result": if i % 5 == 0 { "fail" } else { "pass" },
                "rule": format!("check-{i}"),
                "scored": true,
                "severity": "medium",
                "source": "kyverno",
                "timestamp": {"nanos": 0, "seconds": 1_700_000_000 + i},
            })
        })
        .collect();
    json!({
        "apiVersion": "reports.kyverno.io/v1",
        "kind": "EphemeralReport",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/managed-by": "kyverno",
                "audit.kyverno.io/resource.uid": "6b6e4c4e-2f35-4d5e-9b88-3f1e33a1c2d1",
                "audit.kyverno.io/source": "admission",
            },
            "annotations": {"audit.kyverno.io/last-scan-time": "2025-01-01T00:00:00Z"},
        },
        "spec": {
            "owner": {"apiVersion": "v1", "kind": "Pod", "name": "web-7d9c5b9f4-x2x7z", "uid": "6b6e4c4e-2f35-4d5e-9b88-3f1e33a1c2d1"},
            "results": results,
            "summary": {"pass": 15, "fail": 4, "warn": 0, "error": 0, "skip": 0},
        },
    })
}

/// The `metadata.resourceVersion` of a watch event line, found without parsing the whole event.
fn event_rv(line: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"resourceVersion\":\"";
    // metadata comes first in stored objects; scanning the whole 6 KB line would make the load
    // generator, not the server, the bottleneck.
    let head = &line[..line.len().min(2048)];
    let at = head.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits: Vec<u8> = line[at..].iter().take_while(|b| b.is_ascii_digit()).copied().collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn watch_lag(watchers: usize, rate: u64, seconds: u64, storage: Option<String>) -> anyhow::Result<()> {
    let server = ServerProcess::start(storage)?;
    let http = client()?;
    let collection = format!("{}/apis/reports.kyverno.io/v1/namespaces/bench/ephemeralreports", server.base);
    // Warm the connection and the database before measuring memory.
    http.post(&collection).json(&ephemeral_report("warm-up")).send().await?.error_for_status()?;
    let rss_before = server.rss_bytes();

    let list: Value = http.get(&collection).send().await?.json().await?;
    let start_rv = list["metadata"]["resourceVersion"].as_str().context("list rv")?.to_string();
    let total = (rate * seconds) as usize;
    let mut readers = Vec::new();
    for _ in 0..watchers {
        let url = format!("{collection}?watch=1&resourceVersion={start_rv}&allowWatchBookmarks=true");
        // One connection per watcher, as separate informers would have.
        let response = client()?.get(&url).send().await?.error_for_status()?;
        readers.push(tokio::spawn(async move {
            let mut received: Vec<(u64, Instant)> = Vec::with_capacity(total);
            let mut stream = response.bytes_stream();
            let mut buffer: Vec<u8> = Vec::new();
            while received.len() < total {
                let Some(Ok(chunk)) = stream.next().await else { break };
                let scanned = buffer.len();
                buffer.extend_from_slice(&chunk);
                let now = Instant::now();
                let mut start = 0;
                let mut from = scanned;
                while let Some(offset) = buffer[from..].iter().position(|b| *b == b'\n') {
                    let end = from + offset;
                    let line = &buffer[start..end];
                    if line.starts_with(br#"{"type":"ADDED""#) {
                        if let Some(rv) = event_rv(line) {
                            received.push((rv, now));
                        }
                    }
                    start = end + 1;
                    from = start;
                }
                buffer.drain(..start);
            }
            received
        }));
    }
    // Idle watchers are open: the memory they cost is the difference.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_watching = server.rss_bytes();

    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::new(Mutex::new(HashMap::with_capacity(total)));
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    let mut writes = Vec::with_capacity(total);
    let began = Instant::now();
    let (server_cpu_before, bench_cpu_before) =
        (cpu_seconds(server.child.id()), cpu_seconds(std::process::id()));
    for i in 0..total {
        ticker.tick().await;
        let (http, url, sent) = (http.clone(), collection.clone(), sent.clone());
        writes.push(tokio::spawn(async move {
            let started = Instant::now();
            let response = http.post(&url).json(&ephemeral_report(&format!("r-{i}"))).send().await.ok()?;
            let body: Value = response.json().await.ok()?;
            let rv: u64 = body["metadata"]["resourceVersion"].as_str()?.parse().ok()?;
            sent.lock().unwrap().insert(rv, started);
            Some(started.elapsed())
        }));
    }
    let mut write_latencies = Vec::new();
    for write in writes {
        if let Some(latency) = write.await? {
            write_latencies.push(latency);
        }
    }
    let write_seconds = began.elapsed().as_secs_f64();
    let mut lags = Vec::new();
    for reader in readers {
        let received = tokio::time::timeout(Duration::from_secs(60), reader).await??;
        let sent = sent.lock().unwrap();
        lags.extend(
            received.iter().filter_map(|(rv, at)| sent.get(rv).map(|s| at.saturating_duration_since(*s))),
        );
    }
    let server_cpu = cpu_seconds(server.child.id()) - server_cpu_before;
    let bench_cpu = cpu_seconds(std::process::id()) - bench_cpu_before;
    lags.sort();
    write_latencies.sort();
    let per_watcher = rss_watching.saturating_sub(rss_before) / watchers.max(1) as u64;
    let result = json!({
        "scenario": "watch-lag",
        "watchers": watchers,
        "target_writes_per_s": rate,
        "achieved_writes_per_s": (write_latencies.len() as f64 / write_seconds).round(),
        "events_delivered": lags.len(),
        "events_expected": watchers * write_latencies.len(),
        "lag_p50_ms": percentile(&lags, 0.50).as_secs_f64() * 1e3,
        "lag_p99_ms": percentile(&lags, 0.99).as_secs_f64() * 1e3,
        "lag_max_ms": lags.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        "write_p50_ms": percentile(&write_latencies, 0.50).as_secs_f64() * 1e3,
        "write_p99_ms": percentile(&write_latencies, 0.99).as_secs_f64() * 1e3,
        "server_rss_mb": server.rss_bytes() as f64 / 1048576.0,
        "rss_per_idle_watcher_kb": per_watcher as f64 / 1024.0,
        "server_cpu_s": server_cpu,
        "load_generator_cpu_s": bench_cpu,
    });
    println!(
        "watch-lag  watchers={watchers:<4} writes/s={:<5} delivered={}/{}  lag p50={:.1}ms p99={:.1}ms max={:.1}ms  \
         write p50={:.1}ms p99={:.1}ms  rss/watcher={:.0}KiB  cpu server={:.1}s client={:.1}s",
        result["achieved_writes_per_s"],
        result["events_delivered"],
        result["events_expected"],
        result["lag_p50_ms"].as_f64().unwrap_or_default(),
        result["lag_p99_ms"].as_f64().unwrap_or_default(),
        result["lag_max_ms"].as_f64().unwrap_or_default(),
        result["write_p50_ms"].as_f64().unwrap_or_default(),
        result["write_p99_ms"].as_f64().unwrap_or_default(),
        result["rss_per_idle_watcher_kb"].as_f64().unwrap_or_default(),
        server_cpu,
        bench_cpu,
    );
    println!("{result}");
    Ok(())
}
