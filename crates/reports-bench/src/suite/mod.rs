//! The benchmark suite: every workload against the server on each store, and the baselines (raw
//! PostgreSQL, etcd) on the same documents in the same run. [`Settings`] holds the sizes; the
//! `quick`, `pg` and `full` commands are presets of it.
//!
//! One file per workload family; this one holds the settings, the shared [`Run`] (stores,
//! probes, the recorded results) and the entry point [`run`], which calls the workloads in order.

mod baselines;
mod churn;
mod core_workload;
mod creates;
mod gets;
mod lists;
mod storage;
mod tiers;
mod updates;
mod watch_fan_out;

use std::{sync::Arc, time::Instant};

use anyhow::Context as _;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::{
    api,
    load::{CpuProbe, Measured},
    procs::{cpu_seconds, Durability, Postgres, ServerProcess},
    shapes,
};

/// Which store the server runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// The embedded SQLite store.
    Sqlite,
    /// PostgreSQL (a throwaway cluster started by the harness).
    Postgres,
}

impl StoreKind {
    /// The system name of the server on this store in the results.
    fn label(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "ours/sqlite",
            StoreKind::Postgres => "ours/postgres",
        }
    }
}

/// Sizes and rates of one run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The preset's name (it names the docs section too).
    pub name: String,
    /// Stores to run the server on.
    pub stores: Vec<StoreKind>,
    /// PostgreSQL durability.
    pub durability: Durability,
    /// 6 KB Kyverno PolicyReports created, updated, read and listed (the PostgreSQL store workload).
    pub core_reports: usize,
    /// Clients of the closed-loop probes (and connections of the open-loop runs).
    pub concurrency: usize,
    /// Seconds of each open-loop step of a rate sweep.
    pub open_seconds: f64,
    /// Open-loop create rates (per second), one step each, before the closed-loop bulk load.
    pub create_rates: Vec<f64>,
    /// Open-loop rates of the background rescan (updates with RV preconditions, 1 % stale).
    pub update_rates: Vec<f64>,
    /// Updates in the closed-loop run.
    pub update_count: usize,
    /// Open-loop GET rate.
    pub get_rate: f64,
    /// GETs in each of the open and closed runs.
    pub get_count: usize,
    /// Admission churn rates in events per second (create EphemeralReport, label patch, delete).
    pub churn_rates: Vec<f64>,
    /// Ephemeral reports in the flood before the label deletecollection.
    pub flood: usize,
    /// Watch fan-out: watchers, writes per second, seconds.
    pub watch: (usize, u64, u64),
    /// Mixed datasets, by number of results, each loaded and listed on a fresh store.
    pub tiers: Vec<usize>,
    /// Run the raw PostgreSQL baseline.
    pub raw_postgres: bool,
    /// Run the etcd baseline (skipped with a note when etcd is absent).
    pub etcd: bool,
}

impl Settings {
    /// The CI smoke run: tiny, seconds, both stores, no etcd.
    pub fn quick() -> Self {
        Self {
            name: "quick".into(),
            stores: vec![StoreKind::Sqlite, StoreKind::Postgres],
            durability: Durability::Fast,
            core_reports: 150,
            concurrency: 4,
            open_seconds: 0.5,
            create_rates: vec![100.0],
            update_rates: vec![100.0],
            update_count: 50,
            get_rate: 200.0,
            get_count: 100,
            churn_rates: vec![100.0],
            flood: 100,
            watch: (3, 50, 1),
            tiers: vec![5_000],
            raw_postgres: true,
            etcd: false,
        }
    }

    /// The PostgreSQL store figures: (durable), 100k 6 KB reports, both baselines.
    pub fn pg() -> Self {
        Self {
            name: "pg".into(),
            stores: vec![StoreKind::Postgres],
            durability: Durability::Durable,
            core_reports: 100_000,
            concurrency: 8,
            open_seconds: 10.0,
            create_rates: vec![500.0, 1000.0, 1500.0],
            update_rates: vec![500.0, 1500.0],
            update_count: 20_000,
            get_rate: 4000.0,
            get_count: 40_000,
            churn_rates: vec![100.0, 300.0],
            flood: 20_000,
            watch: (10, 500, 10),
            tiers: vec![],
            raw_postgres: true,
            etcd: true,
        }
    }

    /// Everything: both stores, the 10k/100k/1M-result tiers, both baselines.
    pub fn full() -> Self {
        Self {
            name: "full".into(),
            stores: vec![StoreKind::Postgres, StoreKind::Sqlite],
            tiers: vec![10_000, 100_000, 1_000_000],
            ..Self::pg()
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "stores": self.stores.iter().map(|s| s.label()).collect::<Vec<_>>(),
            "postgres_durability": format!("{:?}", self.durability).to_lowercase(),
            "core_reports": self.core_reports,
            "concurrency": self.concurrency,
            "open_seconds": self.open_seconds,
            "create_rates": self.create_rates,
            "update_rates": self.update_rates,
            "update_count": self.update_count,
            "get_rate": self.get_rate,
            "get_count": self.get_count,
            "churn_rates": self.churn_rates,
            "flood": self.flood,
            "watch": {"watchers": self.watch.0, "writes_per_s": self.watch.1, "seconds": self.watch.2},
            "tiers_results": self.tiers,
        })
    }
}

/// A prepared 6 KB report of the core workload.
struct Prepared {
    namespace: String,
    name: String,
    body: Bytes,
}

/// Builds `count` core reports of `results` results each (bodies serialised up front).
fn prepare_core(count: usize, results: usize) -> Arc<Vec<Prepared>> {
    Arc::new(
        (0..count)
            .map(|i| {
                let namespace = shapes::namespace_of(i as u64);
                let name = format!("pod-{i:07}");
                let document = shapes::kyverno_policy_report(Some(&namespace), &name, i as u64, results);
                Prepared { body: api::to_bytes(&document), namespace, name }
            })
            .collect(),
    )
}

/// The results and the shared pieces of a run.
struct Run {
    settings: Settings,
    postgres: Option<Postgres>,
    dir: tempfile::TempDir,
    results: Vec<Value>,
    notes: Vec<String>,
}

/// Results per core report: 19 make about 7 KB of stored JSON.
const CORE_RESULTS: usize = 19;
/// Results per report of the storage measurement at the targets' reference size (6 KB).
const REFERENCE_RESULTS: usize = 16;

/// Runs the suite and returns the result document (machine, settings, results, notes).
pub async fn run(settings: Settings) -> anyhow::Result<Value> {
    let needs_pg = settings.stores.contains(&StoreKind::Postgres) || settings.raw_postgres;
    let postgres = if needs_pg { Some(Postgres::start(settings.durability)?) } else { None };
    let mut run =
        Run { settings, postgres, dir: tempfile::tempdir()?, results: Vec::new(), notes: Vec::new() };
    // pg_test_fsync takes about 15 s; the smoke run does without it.
    let fsync = if run.settings.name == "quick" { None } else { crate::procs::fsync_rate() };
    // Taken now: the load average and the date are the start's, as the report says.
    let machine = crate::report::machine(fsync);
    let started = Instant::now();
    let docs = prepare_core(run.settings.core_reports, CORE_RESULTS);
    let size = docs.first().map_or(0, |d| d.body.len());
    println!("core documents: {} Kyverno PolicyReports of {size} bytes ({CORE_RESULTS} results)", docs.len());
    for store in run.settings.stores.clone() {
        run.server_core(store, &docs).await.with_context(|| format!("{store:?} core"))?;
        run.storage_at_reference_size(store).await.with_context(|| format!("{store:?} 6 KB storage"))?;
        run.churn_and_flood(store).await.with_context(|| format!("{store:?} churn"))?;
        run.watch_fan_out(store).await.with_context(|| format!("{store:?} watch"))?;
        for tier in run.settings.tiers.clone() {
            run.tier(store, tier).await.with_context(|| format!("{store:?} tier {tier}"))?;
        }
    }
    if run.settings.raw_postgres {
        run.raw_postgres(&docs).await.context("raw PostgreSQL baseline")?;
    }
    if run.settings.etcd {
        run.etcd(&docs).await.context("etcd baseline")?;
    }
    Ok(json!({
        "machine": machine,
        "settings": run.settings.to_json(),
        "postgres_settings": run.postgres.as_ref().map(|p| p.settings.clone()),
        "core_document_bytes": size,
        "wall_seconds": started.elapsed().as_secs_f64().round(),
        "results": run.results,
        "notes": run.notes,
    }))
}

impl Run {
    /// The throwaway PostgreSQL cluster (an error when the run did not start one).
    fn pg(&self) -> anyhow::Result<&Postgres> {
        self.postgres.as_ref().context("PostgreSQL was not started")
    }

    /// A fresh storage URL for a server run named `name`.
    fn storage(&self, store: StoreKind, name: &str) -> anyhow::Result<String> {
        match store {
            StoreKind::Sqlite => {
                Ok(format!("sqlite://{}", self.dir.path().join(format!("{name}.db")).display()))
            }
            StoreKind::Postgres => self.pg()?.database(name),
        }
    }

    /// CPU probes of `server` (when given) and of the PostgreSQL cluster (when running).
    fn probe(&self, server: Option<&ServerProcess>) -> CpuProbe {
        let mut probe = CpuProbe::new();
        if let Some(server) = server {
            let pid = server.pid();
            probe = probe.with("server", move || cpu_seconds(pid));
        }
        if let Some(pid) = self.postgres.as_ref().and_then(Postgres::postmaster_pid) {
            probe = probe.with("postgres", move || crate::procs::cpu_seconds_with_children(pid));
        }
        probe
    }

    /// Records one measurement and prints it.
    fn record(
        &mut self,
        system: &str,
        workload: &str,
        mode: &str,
        measured: &Measured,
        cpu: Value,
        extra: Value,
    ) {
        let mut result = json!({"system": system, "workload": workload, "mode": mode});
        extend(&mut result, measured.summary());
        result["cpu_s_per_1k_ops"] = cpu;
        extend(&mut result, extra);
        println!(
            "{system:<14} {workload:<22} {mode:<16} {:>8.0} ops/s  p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms  errors {}",
            measured.ops_per_s(),
            measured.quantile_ms(0.5),
            measured.quantile_ms(0.99),
            measured.latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
            result["errors"],
        );
        println!("{result}");
        self.results.push(result);
    }

    /// Records a figure that is not a rate (sizes, one-off timings).
    fn record_value(&mut self, system: &str, workload: &str, values: Value) {
        let mut result = json!({"system": system, "workload": workload});
        extend(&mut result, values);
        println!("{system:<14} {workload:<22} {values}", values = result);
        println!("{result}");
        self.results.push(result);
    }
}

/// Adds the fields of `extra` to `into` (both JSON objects; anything else adds nothing).
fn extend(into: &mut Value, extra: Value) {
    if let (Value::Object(out), Value::Object(extra)) = (into, extra) {
        out.extend(extra);
    }
}
