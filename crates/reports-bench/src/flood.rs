//! Flood: Kyverno's admission reports arriving all at once, then cleaned up.
//!
//! Creates `reports` EphemeralReports of about 6 KB (the admission report's labels and owner, with
//! a background scan's 19 Pod Security results) through the HTTPS API from `clients` closed
//! loops, spread over `namespaces` namespaces and labelled `flood=run`; then deletes them with one
//! label deletecollection per namespace, as a controller cleaning up would. Every `interval`
//! seconds it prints the phase, the progress, the disk the store uses (the SQLite file with its
//! WAL, or PostgreSQL's database size and its whole data directory) and the server's RSS; the
//! result has the largest disk use beyond 3 KiB per live report seen in any sample (the issue's
//! bound: 3 KiB per live report at any moment, plus a fixed allowance).
//!
//! Between the phases it times list pages of 500 at that size: the first page of an unfiltered
//! list (which counts what remains, `remainingItemCount`), the same page with a field selector
//! (no count: kube gives none with selectors), and a continue page read at its snapshot after a
//! few thousand more creates (the change log supplies what changed since).
//!
//! The server is the `reports-server` binary built beside this one, in its own process; after the
//! deletes it is stopped with SIGTERM (a clean shutdown) and the disk measured once more.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use serde_json::{json, Value};

use crate::{api, load::round3, procs, shapes};

/// The bound: disk per live report at any moment, beyond a fixed allowance. Each sample
/// measures what the disk holds beyond it; the largest is the allowance the run needed.
const TARGET_BYTES_PER_LIVE_REPORT: u64 = 3 * 1024;

/// Which store the flood runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FloodStore {
    /// A temporary SQLite file.
    Sqlite,
    /// A throwaway PostgreSQL cluster (durable settings).
    Postgres,
}

/// One flood run (the `flood` subcommand's arguments).
#[derive(clap::Args)]
pub struct FloodRun {
    /// The store to run on.
    #[arg(long, value_enum, default_value = "sqlite")]
    pub store: FloodStore,
    /// Reports to create, then delete.
    #[arg(long, default_value_t = 1_000_000)]
    pub reports: usize,
    /// Concurrent creating clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Namespaces the reports are spread over (one deletecollection each).
    #[arg(long, default_value_t = 20)]
    pub namespaces: usize,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5.0)]
    pub interval: f64,
    /// The server's change-log retention in seconds (deleted bodies stay in the log as long).
    #[arg(long, default_value_t = 60)]
    pub retention_seconds: u64,
    /// A further flag for the server (repeatable), e.g. `--server-arg=--sqlite-wal-bytes=268435456`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// A further `postgresql.conf` line for `--store postgres` (repeatable), e.g.
    /// `--pg-setting 'wal_compression = lz4'`; later lines win over the harness's own.
    #[arg(long = "pg-setting")]
    pub pg_settings: Vec<String>,
}

/// Where the store keeps its bytes.
enum Disk {
    Sqlite(PathBuf),
    Postgres { data_dir: PathBuf, url: String },
}

impl Disk {
    /// (bytes of the database, bytes of everything the store keeps on disk).
    async fn bytes(&self) -> (u64, u64) {
        match self {
            Disk::Sqlite(file) => {
                let size = |suffix: &str| {
                    let mut path = file.clone().into_os_string();
                    path.push(suffix);
                    std::fs::metadata(path).map_or(0, |m| m.len())
                };
                (size(""), size("") + size("-wal") + size("-shm"))
            }
            Disk::Postgres { data_dir, url } => {
                let database = match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
                    Ok((client, connection)) => {
                        let driver = tokio::spawn(connection);
                        let size = client
                            .query_one("SELECT pg_database_size(current_database())", &[])
                            .await
                            .map_or(0, |r| r.get::<_, i64>(0) as u64);
                        drop(client);
                        let _ = driver.await;
                        size
                    }
                    Err(_) => 0,
                };
                (database, dir_bytes(data_dir))
            }
        }
    }
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// A ~6 KB admission EphemeralReport: the admission report's metadata with a background scan's
/// 19 Pod Security results.
fn report(namespace: &str, index: u64) -> Value {
    let name = format!("e{index:07}");
    let mut object = shapes::ephemeral_report(namespace, &name, index, Some(("flood", "run")));
    let scan = shapes::kyverno_policy_report(Some(namespace), &name, index, 19);
    object["spec"]["results"] = scan["results"].clone();
    object["spec"]["summary"] = scan["summary"].clone();
    object
}

const MIB: f64 = (1u64 << 20) as f64;

/// Runs the flood; prints progress lines and returns the summary.
pub async fn flood(run: FloodRun) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let postgres = match run.store {
        FloodStore::Postgres => {
            Some(procs::Postgres::start_with(procs::Durability::Durable, &run.pg_settings)?)
        }
        FloodStore::Sqlite => None,
    };
    let (storage, disk) = match &postgres {
        Some(pg) => {
            let url = pg.database("flood")?;
            (url.clone(), Disk::Postgres { data_dir: pg.cluster.data_dir().to_path_buf(), url })
        }
        None => {
            let file = dir.path().join("reports.db");
            (format!("sqlite://{}", file.display()), Disk::Sqlite(file))
        }
    };
    // One report as sent, for measuring the codec on its own (`zstd -b3 FILE`).
    std::fs::write(std::env::temp_dir().join("flood-sample.json"), api::to_bytes(&report("flood-0", 0)))?;
    let mut args = vec![
        "--storage".to_string(),
        storage.clone(),
        "--change-log-retention-seconds".to_string(),
        run.retention_seconds.to_string(),
    ];
    args.extend(run.server_args.iter().cloned());
    let server = crate::procs::ReleaseServer::start(&args)?;
    let base = server.base.clone();
    let pid = server.pid();
    let api = api::Api::connect(&base, run.clients.min(8)).await?;
    let disk = Arc::new(disk);
    let (baseline_db, baseline_disk) = disk.bytes().await;
    let start = Instant::now();

    // Progress lines from a sampler that runs through both phases.
    let done = Arc::new(AtomicU64::new(0));
    let live = Arc::new(AtomicU64::new(0));
    let phase = Arc::new(std::sync::Mutex::new("create"));
    let peak = Arc::new(AtomicU64::new(0));
    let peak_allowance = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (disk, done, live, phase, peak, peak_allowance) =
            (disk.clone(), done.clone(), live.clone(), phase.clone(), peak.clone(), peak_allowance.clone());
        let interval = Duration::from_secs_f64(run.interval);
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::time::sleep(interval).await;
                let (db, total) = disk.bytes().await;
                let rss = procs::rss_bytes(pid);
                peak.fetch_max(total, Ordering::Relaxed);
                let n = done.load(Ordering::Relaxed);
                let rate = (n.saturating_sub(last.1)) as f64 / last.0.elapsed().as_secs_f64();
                last = (Instant::now(), n);
                let live = live.load(Ordering::Relaxed);
                peak_allowance
                    .fetch_max(total.saturating_sub(TARGET_BYTES_PER_LIVE_REPORT * live), Ordering::Relaxed);
                let per_report =
                    if live > 0 { format!("{:.0} B", total as f64 / live as f64) } else { "-".into() };
                let phase = *phase.lock().unwrap_or_else(|e| e.into_inner());
                println!(
                    "t={:6.1}s {phase:7} done={n:8} rate={rate:7.0}/s live={live:8} database={:8.1} MiB disk={:8.1} MiB ({per_report}/live report) rss={:6.1} MiB",
                    start.elapsed().as_secs_f64(),
                    db as f64 / MIB,
                    total as f64 / MIB,
                    rss as f64 / MIB,
                );
            }
        })
    };

    // Creates: closed loops over a shared index.
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let create_start = Instant::now();
    let mut loops = Vec::new();
    for client in 0..run.clients {
        let (api, next, done, live, failures) =
            (api.clone(), next.clone(), done.clone(), live.clone(), failures.clone());
        let (total, namespaces) = (run.reports as u64, run.namespaces as u64);
        loops.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let ns = format!("flood-{}", i % namespaces);
                let url = api.collection("ephemeralreports", Some(&ns));
                match api.create(client, &url, api::to_bytes(&report(&ns, i))).await {
                    Ok(_) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        live.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in loops {
        task.await?;
    }
    let create_seconds = create_start.elapsed().as_secs_f64();
    let created = done.load(Ordering::Relaxed);
    let (created_db, created_disk) = disk.bytes().await;

    // List pages at this size.
    *phase.lock().unwrap_or_else(|e| e.into_inner()) = "lists";
    let all = format!("{base}/apis/reports.kyverno.io/v1/ephemeralreports");
    let client = api.client(0).clone();
    let time_page = |url: String| {
        let client = client.clone();
        async move {
            let mut times = Vec::new();
            let mut body = Value::Null;
            for _ in 0..5 {
                let t = Instant::now();
                body = client.get(&url).send().await?.error_for_status()?.json::<Value>().await?;
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            times.sort_by(f64::total_cmp);
            anyhow::Ok((round3(times[2]), body))
        }
    };
    let (counted_ms, first) = time_page(format!("{all}?limit=500")).await?;
    let (uncounted_ms, _) =
        time_page(format!("{all}?limit=500&fieldSelector=metadata.name%21%3Dnone")).await?;
    let token = first["metadata"]["continue"].as_str().unwrap_or_default().to_string();
    let extra = 2_000u64.min(run.reports as u64);
    let late = futures::stream::iter(0..extra).map(|i| {
        let (api, base, live) = (api.clone(), base.clone(), live.clone());
        let ns = format!("flood-{}", i % run.namespaces as u64);
        async move {
            let url = format!("{base}/apis/reports.kyverno.io/v1/namespaces/{ns}/ephemeralreports");
            let mut body = report(&ns, run.reports as u64 + i);
            body["metadata"]["name"] = json!(format!("late{i:05}"));
            if api.create(i as usize, &url, api::to_bytes(&body)).await.is_ok() {
                live.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    late.buffer_unordered(run.clients).collect::<Vec<()>>().await;
    // (A run slower than the retention finds the token expired: no figure then.)
    let snapshot_ms = time_page(format!("{all}?limit=500&continue={token}")).await.ok().map(|(ms, _)| ms);
    let (current_ms, _) = time_page(format!("{all}?limit=500&fieldSelector=metadata.name%21%3Dnone")).await?;

    // Deletes: one label deletecollection per namespace.
    *phase.lock().unwrap_or_else(|e| e.into_inner()) = "delete";
    done.store(0, Ordering::Relaxed);
    let delete_start = Instant::now();
    let mut deleted = 0u64;
    for ns in 0..run.namespaces {
        let url = format!("{base}/apis/reports.kyverno.io/v1/namespaces/flood-{ns}/ephemeralreports?labelSelector=flood%3Drun");
        let mut response = client.delete(&url).send().await?.error_for_status()?;
        // Count the returned items as they stream (each item's stored text starts with its
        // apiVersion and kind; the list's own kind is EphemeralReportList). The carried tail is
        // shorter than the needle, so no item is counted twice.
        const ITEM: &[u8] = b"\"kind\":\"EphemeralReport\",\"metadata\"";
        let mut carry = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            carry.extend_from_slice(&chunk);
            let n = memchr::memmem::find_iter(&carry, ITEM).count() as u64;
            let keep = carry.len().saturating_sub(ITEM.len() - 1);
            carry.drain(..keep);
            deleted += n;
            done.fetch_add(n, Ordering::Relaxed);
            live.fetch_sub(n.min(live.load(Ordering::Relaxed)), Ordering::Relaxed);
        }
    }
    let delete_seconds = delete_start.elapsed().as_secs_f64();
    let (deleted_db, deleted_disk) = disk.bytes().await;

    // The change log keeps deleted bodies for its retention; then compaction gives them back.
    *phase.lock().unwrap_or_else(|e| e.into_inner()) = "settle";
    tokio::time::sleep(Duration::from_secs(run.retention_seconds + 70)).await;
    let (settled_db, settled_disk) = disk.bytes().await;
    let settled_rss = procs::rss_bytes(pid);
    // A clean shutdown.
    let _ = tokio::task::spawn_blocking(move || server.terminate()).await;
    sampler.abort();
    let (closed_db, closed_disk) = disk.bytes().await;
    let mib = |b: u64| round3(b as f64 / MIB);
    Ok(json!({
        "benchmark": "flood",
        "store": format!("{:?}", run.store).to_lowercase(),
        "reports": run.reports,
        "server_args": run.server_args,
        "postgres_settings": postgres.as_ref().map(|pg| &pg.settings),
        "report_json_bytes": api::to_bytes(&report("flood-0", 0)).len(),
        "clients": run.clients,
        "namespaces": run.namespaces,
        "retention_seconds": run.retention_seconds,
        "created": created,
        "create_failures": failures.load(Ordering::Relaxed),
        "creates_per_s": round3(created as f64 / create_seconds),
        "deleted": deleted,
        "deletes_per_s": round3(deleted as f64 / delete_seconds),
        "page_of_500_ms": {"unfiltered_with_count": counted_ms, "field_selector_no_count": uncounted_ms,
                           "continue_at_snapshot_after_creates": snapshot_ms, "current_after_creates": current_ms},
        "disk_mib": {"empty": mib(baseline_disk), "after_creates": mib(created_disk), "after_deletes": mib(deleted_disk),
                     "after_compaction": mib(settled_disk), "after_clean_shutdown": mib(closed_disk),
                     "peak": mib(peak.load(Ordering::Relaxed)),
                     "peak_beyond_3_kib_per_live_report": mib(peak_allowance.load(Ordering::Relaxed))},
        "database_mib": {"empty": mib(baseline_db), "after_creates": mib(created_db), "after_deletes": mib(deleted_db),
                         "after_compaction": mib(settled_db), "after_clean_shutdown": mib(closed_db)},
        "disk_bytes_per_live_report_after_creates": round3(created_disk.saturating_sub(baseline_disk) as f64 / created.max(1) as f64),
        "server_rss_mib_after_compaction": mib(settled_rss),
    }))
}
