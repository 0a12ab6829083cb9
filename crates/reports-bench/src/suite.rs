//! The benchmark suite: every workload against the server on each store, and the baselines (raw
//! PostgreSQL, etcd) on the same documents in the same run. [`Settings`] holds the sizes; the
//! `quick`, `pg` and `full` commands are presets of it.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    api::{self, Api},
    etcd::{self, Etcd},
    load::{closed_loop, op, open_loop, round3, CpuProbe, Measured, Op},
    procs::{cpu_seconds, Durability, Postgres, ServerProcess},
    raw_pg::RawPg,
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

/// The first object at or after `from` (wrapping) whose create succeeded.
fn created(rvs: &[AtomicU64], from: usize) -> Option<usize> {
    (0..rvs.len()).map(|k| (from + k) % rvs.len()).find(|&j| rvs[j].load(Ordering::Relaxed) != 0)
}

/// Sizes and row counts of the store's two tables.
const SIZES_SQL: &str =
    "SELECT pg_total_relation_size('report_objects')::float8, (SELECT count(*) FROM report_objects),
    pg_total_relation_size('report_changes')::float8, (SELECT count(*) FROM report_changes),
    (SELECT coalesce(avg(pg_column_size(body)), 0)::float8 FROM report_objects),
    (SELECT coalesce(avg(octet_length(body)), 0)::float8 FROM report_objects)";

/// A prepared 6 KB report of the core workload.
struct Prepared {
    namespace: String,
    name: String,
    body: Bytes,
    labels: String,
}

fn prepare_core(count: usize, results: usize) -> Arc<Vec<Prepared>> {
    Arc::new(
        (0..count)
            .map(|i| {
                let namespace = shapes::namespace_of(i as u64);
                let name = format!("pod-{i:07}");
                let document = shapes::kyverno_policy_report(Some(&namespace), &name, i as u64, results);
                let labels = document["metadata"]["labels"].to_string();
                Prepared { body: api::to_bytes(&document), namespace, name, labels }
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
    let started = Instant::now();
    let docs = prepare_core(run.settings.core_reports, CORE_RESULTS);
    let size = docs.first().map_or(0, |d| d.body.len());
    println!("core documents: {} Kyverno PolicyReports of {size} bytes ({CORE_RESULTS} results)", docs.len());
    for store in run.settings.stores.clone() {
        run.server_core(store, &docs).await.with_context(|| format!("{store:?} core"))?;
        run.storage_at_reference_size(store).await.with_context(|| format!("{store:?} 6 KB storage"))?;
        run.churn_flood_watch(store).await.with_context(|| format!("{store:?} churn"))?;
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
        "machine": crate::report::machine(fsync),
        "settings": run.settings.to_json(),
        "postgres_settings": run.postgres.as_ref().map(|p| p.settings.clone()),
        "core_document_bytes": size,
        "wall_seconds": started.elapsed().as_secs_f64().round(),
        "results": run.results,
        "notes": run.notes,
    }))
}

/// A list response's item count and continue token, without building the items.
#[derive(Deserialize)]
struct ListHead {
    #[serde(default)]
    metadata: ListMeta,
    items: Vec<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
struct ListMeta {
    #[serde(default, rename = "continue")]
    continue_token: Option<String>,
}

/// What one full list (paginated or not) cost.
struct ListRun {
    items: usize,
    bytes: usize,
    measured: Measured,
    rss_growth: u64,
}

impl Run {
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
    /// Records a baseline's full paginated read (pages of 500), timed from `started`, as one
    /// operation; `extra` adds fields to the row.
    #[allow(clippy::too_many_arguments)]
    fn record_full_list(
        &mut self,
        system: &str,
        probe: &CpuProbe,
        before: &[f64],
        started: Instant,
        documents: usize,
        (items, bytes): (usize, usize),
        extra: Value,
    ) {
        let measured = Measured {
            ok: 1,
            seconds: started.elapsed().as_secs_f64(),
            latencies: vec![started.elapsed()],
            ..Default::default()
        };
        let mut fields = json!({
            "dataset": format!("{documents} reports"),
            "items": items,
            "mb": round3(bytes as f64 / 1e6),
            "total_s": round3(measured.seconds),
        });
        if let (Some(fields), Value::Object(extra)) = (fields.as_object_mut(), extra) {
            fields.extend(extra);
        }
        self.record(system, "list", "limit=500", &measured, probe.per_1k_ops(before, 1), fields);
    }

    /// GETs by name: a closed-loop run with `concurrency` clients, then an open-loop run at the
    /// configured rate, both recorded (the same for our server and the raw baseline).
    async fn gets_closed_then_open(&mut self, system: &str, probe: &CpuProbe, concurrency: usize, get: Op) {
        let count = self.settings.get_count;
        let before = probe.read();
        let measured = closed_loop(concurrency, count, get.clone()).await;
        let cpu = probe.per_1k_ops(&before, measured.ok);
        self.record(system, "get", &format!("closed c={concurrency}"), &measured, cpu, json!({}));
        let rate = self.settings.get_rate;
        let before = probe.read();
        let measured = open_loop(rate, count, get).await;
        let cpu = probe.per_1k_ops(&before, measured.ok);
        self.record(system, "get", &format!("open {rate}/s"), &measured, cpu, json!({}));
    }

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
        if let (Value::Object(out), Value::Object(summary)) = (&mut result, measured.summary()) {
            out.extend(summary);
        }
        result["cpu_s_per_1k_ops"] = cpu;
        if let (Value::Object(out), Value::Object(extra)) = (&mut result, extra) {
            out.extend(extra);
        }
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
        if let (Value::Object(out), Value::Object(values)) = (&mut result, values) {
            out.extend(values);
        }
        println!("{system:<14} {workload:<22} {values}", values = result);
        println!("{result}");
        self.results.push(result);
    }

    /// Creates objects `0..total`: a warm-up second at the first rate (recorded, but apart), one
    /// open-loop step per configured rate, then the rest from N concurrent clients (closed loop).
    ///
    /// The warm-up keeps a process's first moments out of the first step: a fresh server or
    /// database pays one-off costs on its first writes (caches, plans, first pages of empty tables)
    /// that queue a few hundred requests at 1,500/s, which alone decides a step's p99.
    async fn create_sweep(&mut self, system: &str, probe: &CpuProbe, create: Op, total: usize, extra: Value) {
        let mut next = 0;
        if let Some(&rate) = self.settings.create_rates.first() {
            let count = (rate as usize).min(total / 10);
            let before = probe.read();
            let measured = open_loop(rate, count, create.clone()).await;
            let cpu = probe.per_1k_ops(&before, measured.ok);
            self.record(system, "create", &format!("warm-up {rate}/s"), &measured, cpu, extra.clone());
            next = count;
        }
        for rate in self.settings.create_rates.clone() {
            let count = ((rate * self.settings.open_seconds) as usize).min(total - next);
            let offset = next;
            let shifted = {
                let create = create.clone();
                op(move |i| create(i + offset))
            };
            let before = probe.read();
            let measured = open_loop(rate, count, shifted).await;
            let cpu = probe.per_1k_ops(&before, measured.ok);
            self.record(system, "create", &format!("open {rate}/s"), &measured, cpu, extra.clone());
            next += count;
        }
        let offset = next;
        let shifted = op(move |i| create(i + offset));
        let concurrency = self.settings.concurrency;
        let before = probe.read();
        let measured = closed_loop(concurrency, total - next, shifted).await;
        let cpu = probe.per_1k_ops(&before, measured.ok);
        self.record(system, "create", &format!("closed c={concurrency}"), &measured, cpu, extra);
    }

    /// Updates: a closed loop of `update_count`, then one open-loop rescan step per configured
    /// rate. `update` is called with operation numbers that never repeat.
    async fn update_sweep(&mut self, system: &str, probe: &CpuProbe, closed: Op, rescan: Op, extra: Value) {
        let concurrency = self.settings.concurrency;
        let count = self.settings.update_count;
        let before = probe.read();
        let measured = closed_loop(concurrency, count, closed).await;
        let cpu = probe.per_1k_ops(&before, measured.ok);
        self.record(
            system,
            "update (RV precondition)",
            &format!("closed c={concurrency}"),
            &measured,
            cpu,
            extra.clone(),
        );
        let mut next = count;
        for rate in self.settings.update_rates.clone() {
            let offset = next;
            let shifted = {
                let rescan = rescan.clone();
                op(move |i| rescan(i + offset))
            };
            let steps = (rate * self.settings.open_seconds) as usize;
            let before = probe.read();
            let measured = open_loop(rate, steps, shifted).await;
            let cpu = probe.per_1k_ops(&before, measured.ok);
            self.record(
                system,
                "rescan update, 1% stale",
                &format!("open {rate}/s"),
                &measured,
                cpu,
                extra.clone(),
            );
            next += steps;
        }
    }

    /// Bytes per report at the size the storage target names (6 KB of JSON): a fifth of the core
    /// count of 16-result reports, created through the API into a fresh database.
    async fn storage_at_reference_size(&mut self, store: StoreKind) -> anyhow::Result<()> {
        let count = (self.settings.core_reports / 5).max(10);
        let docs = prepare_core(count, REFERENCE_RESULTS);
        let storage = self.storage(store, "reference")?;
        let server = ServerProcess::start(Some(&storage))?;
        let api = Api::connect(&server.base, self.settings.concurrency).await?;
        let create = {
            let (api, docs) = (api.clone(), docs.clone());
            op(move |i| {
                let (api, docs) = (api.clone(), docs.clone());
                async move {
                    let doc = &docs[i];
                    api.create(i, &api.collection("policyreports", Some(&doc.namespace)), doc.body.clone())
                        .await?;
                    Ok(())
                }
            })
        };
        let measured = closed_loop(self.settings.concurrency, count, create).await;
        let size = docs.first().map_or(0, |d| d.body.len());
        let stage = format!("{size}-byte reports ({REFERENCE_RESULTS} results)");
        self.storage_per_report(store, store.label(), &storage, &stage, measured.ok, false).await
    }

    async fn server_core(&mut self, store: StoreKind, docs: &Arc<Vec<Prepared>>) -> anyhow::Result<()> {
        let system = store.label();
        let storage = self.storage(store, "core")?;
        let server = ServerProcess::start(Some(&storage))?;
        let probe = self.probe(Some(&server));
        let api = Api::connect(&server.base, self.settings.concurrency).await?;
        let rvs: Arc<Vec<AtomicU64>> = Arc::new((0..docs.len()).map(|_| AtomicU64::new(0)).collect());
        let create = {
            let (api, docs, rvs) = (api.clone(), docs.clone(), rvs.clone());
            op(move |i| {
                let (api, docs, rvs) = (api.clone(), docs.clone(), rvs.clone());
                async move {
                    let doc = &docs[i];
                    let url = api.collection("policyreports", Some(&doc.namespace));
                    let rv = api.create(i, &url, doc.body.clone()).await?;
                    rvs[i].store(rv, Ordering::Relaxed);
                    Ok(())
                }
            })
        };
        // Creates: an open-loop sweep of rates, then the rest as fast as N clients can.
        self.create_sweep(system, &probe, create.clone(), docs.len(), json!({})).await;
        let concurrency = self.settings.concurrency;
        // Creates refused under overload (503) are sent again so later phases see every object.
        let missing: Arc<Vec<usize>> =
            Arc::new((0..docs.len()).filter(|&i| rvs[i].load(Ordering::Relaxed) == 0).collect());
        if !missing.is_empty() {
            let retry = {
                let missing = missing.clone();
                op(move |i| create(missing[i]))
            };
            let before = probe.read();
            let measured = closed_loop(concurrency, missing.len(), retry).await;
            let cpu = probe.per_1k_ops(&before, measured.ok);
            self.record(
                system,
                "create (retry of refused)",
                &format!("closed c={concurrency}"),
                &measured,
                cpu,
                json!({}),
            );
        }
        let created_count = rvs.iter().filter(|rv| rv.load(Ordering::Relaxed) != 0).count();
        self.storage_per_report(store, system, &storage, "after the creates", created_count, false).await?;

        // Updates with resourceVersion preconditions; in the open-loop rescan every 100th is stale.
        let update = |stale_every: usize| {
            let (api, docs, rvs) = (api.clone(), docs.clone(), rvs.clone());
            op(move |i| {
                let (api, docs, rvs) = (api.clone(), docs.clone(), rvs.clone());
                async move {
                    let Some(index) = created(&rvs, i) else { return Err(404) };
                    let doc = &docs[index];
                    let current = rvs[index].load(Ordering::Relaxed);
                    let stale = stale_every > 0 && i % stale_every == stale_every - 1;
                    let precondition = if stale { current.saturating_sub(1).max(1) } else { current };
                    let body = api::with_resource_version(&doc.body, precondition, i as u64);
                    let url =
                        format!("{}/{}", api.collection("policyreports", Some(&doc.namespace)), doc.name);
                    let rv = api.update(i, &url, body).await?;
                    rvs[index].store(rv, Ordering::Relaxed);
                    Ok(())
                }
            })
        };
        self.update_sweep(system, &probe, update(0), update(100), json!({})).await;

        // Gets by name, spread over the whole set.
        let get = {
            let (api, docs, rvs) = (api.clone(), docs.clone(), rvs.clone());
            op(move |i| {
                let (api, docs, rvs) = (api.clone(), docs.clone(), rvs.clone());
                async move {
                    let Some(index) = created(&rvs, (i * 7919) % docs.len()) else { return Err(404) };
                    let doc = &docs[index];
                    let url =
                        format!("{}/{}", api.collection("policyreports", Some(&doc.namespace)), doc.name);
                    api.send(api.client(i).get(url)).await
                }
            })
        };
        self.gets_closed_then_open(system, &probe, concurrency, get).await;

        // Consumers listing everything.
        let url = api.collection("policyreports", None);
        self.lists(system, &format!("{created_count} reports"), &server, &probe, &url).await?;
        self.storage_per_report(store, system, &storage, "after updates and lists", created_count, true)
            .await?;
        Ok(())
    }

    /// Lists `url` paginated by 500, unpaginated, and metadata-only, each once.
    async fn lists(
        &mut self,
        system: &str,
        dataset: &str,
        server: &ServerProcess,
        probe: &CpuProbe,
        url: &str,
    ) -> anyhow::Result<()> {
        for (mode, page, accept) in [
            ("limit=500", Some(500), None),
            ("unpaginated", None, None),
            ("metadata-only", None, Some(api::ACCEPT_METADATA)),
        ] {
            let before = probe.read();
            let list = list_all(server, url, page, accept).await?;
            let cpu = probe.per_1k_ops(&before, 1);
            let extra = json!({
                "dataset": dataset,
                "items": list.items,
                "mb": round3(list.bytes as f64 / 1e6),
                "total_s": round3(list.measured.seconds),
                "server_rss_growth_mb": round3(list.rss_growth as f64 / 1048576.0),
                "server_rss_mb": round3(server.rss_bytes() as f64 / 1048576.0),
            });
            // The per-request latencies are page latencies; CPU is per whole list (per 1k lists).
            self.record(system, "list", mode, &list.measured, cpu, extra);
        }
        Ok(())
    }

    /// Bytes per report of the store after VACUUM, and the change log before and after compaction.
    /// Bytes per report after VACUUM (PostgreSQL: `report_objects` with its indexes and TOAST;
    /// the change log `report_changes` apart, before and, when `compact`, after compaction).
    async fn storage_per_report(
        &mut self,
        store: StoreKind,
        system: &str,
        storage: &str,
        stage: &str,
        objects: usize,
        compact: bool,
    ) -> anyhow::Result<()> {
        match store {
            StoreKind::Postgres => {
                let (client, connection) = tokio_postgres::connect(storage, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client.batch_execute("VACUUM (ANALYZE) report_objects").await?;
                client.batch_execute("VACUUM (ANALYZE) report_changes").await?;
                let row = client.query_one(SIZES_SQL, &[]).await?;
                let (objects_bytes, rows, changes_before, change_rows_before): (f64, i64, f64, i64) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                let mut values = json!({
                    "stage": stage,
                    "objects": rows,
                    "report_objects_bytes_per_report": (objects_bytes / rows.max(1) as f64).round(),
                    "report_objects_mb": round3(objects_bytes / 1e6),
                    "body_bytes_stored_avg": row.get::<_, f64>(4).round(),
                    "body_bytes_json_avg": row.get::<_, f64>(5).round(),
                    "report_changes_rows": change_rows_before,
                    "report_changes_mb": round3(changes_before / 1e6),
                    "report_changes_bytes_per_report": (changes_before / rows.max(1) as f64).round(),
                });
                if compact {
                    let store_handle = reports_store::open(storage, &Default::default()).await?;
                    let dropped = store_handle.compact(0).await?;
                    client.batch_execute("VACUUM (ANALYZE) report_changes").await?;
                    let row = client.query_one(SIZES_SQL, &[]).await?;
                    let (changes_after, change_rows_after): (f64, i64) = (row.get(2), row.get(3));
                    values["compaction_dropped_rows"] = json!(dropped);
                    values["report_changes_rows_after_compaction"] = json!(change_rows_after);
                    values["report_changes_mb_after_compaction"] = json!(round3(changes_after / 1e6));
                }
                self.record_value(system, "storage", values);
            }
            StoreKind::Sqlite => {
                let path = storage.trim_start_matches("sqlite://");
                let file_bytes =
                    |suffix: &str| std::fs::metadata(format!("{path}{suffix}")).map_or(0, |m| m.len());
                let total = file_bytes("") + file_bytes("-wal");
                self.record_value(
                    system,
                    "storage",
                    json!({
                        "stage": stage,
                        "objects": objects,
                        "database_file_bytes_per_report": (total as f64 / objects.max(1) as f64).round(),
                        "note": "file plus WAL; objects, change log and indexes together",
                    }),
                );
            }
        }
        Ok(())
    }

    async fn churn_flood_watch(&mut self, store: StoreKind) -> anyhow::Result<()> {
        let system = store.label();
        let storage = self.storage(store, "churn")?;
        let server = ServerProcess::start(Some(&storage))?;
        let probe = self.probe(Some(&server));
        let api = Api::connect(&server.base, self.settings.concurrency).await?;
        // Admission churn: create an EphemeralReport, patch a label, delete it; per event.
        let churn = {
            let api = api.clone();
            op(move |i| {
                let api = api.clone();
                async move {
                    let namespace = format!("churn-{}", i % 10);
                    let name = format!("ephr-{i}");
                    let url = api.collection("ephemeralreports", Some(&namespace));
                    let body = api::to_bytes(&shapes::ephemeral_report(&namespace, &name, i as u64, None));
                    api.create(i, &url, body).await?;
                    let object = format!("{url}/{name}");
                    let patch = r#"{"metadata":{"labels":{"audit.kyverno.io/report.aggregate":"done"}}}"#;
                    api.send(
                        api.client(i)
                            .patch(&object)
                            .header("content-type", "application/merge-patch+json")
                            .body(patch),
                    )
                    .await?;
                    api.send(api.client(i).delete(&object)).await
                }
            })
        };
        let mut next = 0;
        for rate in self.settings.churn_rates.clone() {
            let count = (rate * self.settings.open_seconds) as usize;
            let offset = next;
            let shifted = {
                let churn = churn.clone();
                op(move |i| churn(i + offset))
            };
            let before = probe.read();
            let measured = open_loop(rate, count, shifted).await;
            self.record(
                system,
                "admission churn event",
                &format!("open {rate}/s"),
                &measured,
                probe.per_1k_ops(&before, measured.ok),
                json!({"calls_per_event": 3}),
            );
            next += count;
        }

        // Flood of ephemeral reports, then one label deletecollection.
        let flood = {
            let api = api.clone();
            op(move |i| {
                let api = api.clone();
                async move {
                    let url = api.collection("ephemeralreports", Some("flood"));
                    let document = shapes::ephemeral_report(
                        "flood",
                        &format!("flood-{i}"),
                        i as u64,
                        Some(("bench/flood", "yes")),
                    );
                    api.create(i, &url, api::to_bytes(&document)).await.map(drop)
                }
            })
        };
        let concurrency = self.settings.concurrency;
        let before = probe.read();
        let measured = closed_loop(concurrency, self.settings.flood, flood).await;
        self.record(
            system,
            "flood create (S)",
            &format!("closed c={concurrency}"),
            &measured,
            probe.per_1k_ops(&before, measured.ok),
            json!({}),
        );
        let url = format!(
            "{}?labelSelector=bench%2Fflood%3Dyes",
            api.collection("ephemeralreports", Some("flood"))
        );
        let before = probe.read();
        let started = Instant::now();
        let response = api.client(0).delete(&url).send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        let seconds = started.elapsed().as_secs_f64();
        let deleted = serde_json::from_slice::<ListHead>(&body).map(|l| l.items.len()).unwrap_or(0);
        let left = list_all(&server, &api.collection("ephemeralreports", Some("flood")), Some(500), None)
            .await?
            .items;
        self.record_value(
            system,
            "label deletecollection",
            json!({
                "status": status.as_u16(),
                "deleted": deleted,
                "left": left,
                "seconds": round3(seconds),
                "objects_per_s": (deleted as f64 / seconds).round(),
                "cpu_s_per_1k_ops": probe.per_1k_ops(&before, deleted),
            }),
        );
        drop(server);

        // Watch fan-out on its own fresh store.
        let (watchers, rate, seconds) = self.settings.watch;
        let storage = self.storage(store, "watch")?;
        let result =
            crate::watch::watch_lag(watchers, rate, seconds, Some(storage), false, Default::default())
                .await?;
        let mut result = result;
        result["system"] = json!(system);
        result["workload"] = json!("watch fan-out");
        self.results.push(result);
        Ok(())
    }

    async fn tier(&mut self, store: StoreKind, results: usize) -> anyhow::Result<()> {
        let system = store.label();
        let storage = self.storage(store, &format!("tier_{results}"))?;
        let server = ServerProcess::start(Some(&storage))?;
        let probe = self.probe(Some(&server));
        let api = Api::connect(&server.base, self.settings.concurrency).await?;
        let mut total_results = 0;
        let items: Arc<Vec<(String, Bytes)>> = Arc::new(
            shapes::mixed_dataset(results)
                .map(|item| {
                    total_results += item.results;
                    let resource =
                        if item.namespace.is_some() { "policyreports" } else { "clusterpolicyreports" };
                    (api.collection(resource, item.namespace.as_deref()), api::to_bytes(&item.document))
                })
                .collect(),
        );
        let bytes: usize = items.iter().map(|(_, b)| b.len()).sum();
        let dataset =
            format!("{total_results} results, {} reports, {:.0} MB", items.len(), bytes as f64 / 1e6);
        let load = {
            let (api, items) = (api.clone(), items.clone());
            op(move |i| {
                let (api, items) = (api.clone(), items.clone());
                async move { api.create(i, &items[i].0, items[i].1.clone()).await.map(drop) }
            })
        };
        let concurrency = self.settings.concurrency;
        let before = probe.read();
        let measured = closed_loop(concurrency, items.len(), load).await;
        self.record(
            system,
            "ingest mixed dataset",
            &format!("closed c={concurrency}"),
            &measured,
            probe.per_1k_ops(&before, measured.ok),
            json!({"dataset": dataset}),
        );
        let url = api.collection("policyreports", None);
        self.lists(system, &dataset, &server, &probe, &url).await?;
        self.storage_per_report(store, system, &storage, "after the load", items.len(), true).await?;
        Ok(())
    }

    async fn raw_postgres(&mut self, docs: &Arc<Vec<Prepared>>) -> anyhow::Result<()> {
        let system = "raw-postgres";
        let url = self.pg()?.database("raw")?;
        let raw = RawPg::open(&url, self.settings.concurrency).await?;
        let probe = self.probe(None);
        let rvs: Arc<Vec<AtomicU64>> = Arc::new((0..docs.len()).map(|_| AtomicU64::new(1)).collect());
        let insert = {
            let (raw, docs) = (raw.clone(), docs.clone());
            op(move |i| {
                let (raw, docs) = (raw.clone(), docs.clone());
                async move {
                    let d = &docs[i];
                    let body = std::str::from_utf8(&d.body).unwrap_or_default();
                    if raw.insert(i, &d.namespace, &d.name, 1, &d.labels, body).await {
                        Ok(())
                    } else {
                        Err(0)
                    }
                }
            })
        };
        self.create_sweep(system, &probe, insert, docs.len(), json!({})).await;
        let (per_row, rows) = raw.bytes_per_row().await?;
        self.record_value(
            system,
            "storage",
            json!({"stage": "after the creates", "objects": rows, "table_bytes_per_report": per_row.round()}),
        );
        let concurrency = self.settings.concurrency;
        let next_rv = Arc::new(AtomicU64::new(10));
        let update = |stale_every: usize| {
            let (raw, docs, rvs, next_rv) = (raw.clone(), docs.clone(), rvs.clone(), next_rv.clone());
            op(move |i| {
                let (raw, docs, rvs, next_rv) = (raw.clone(), docs.clone(), rvs.clone(), next_rv.clone());
                async move {
                    let index = i % docs.len();
                    let d = &docs[index];
                    let current = rvs[index].load(Ordering::Relaxed);
                    let stale = stale_every > 0 && i % stale_every == stale_every - 1;
                    let expected = if stale { current + 1_000_000_000 } else { current };
                    let rv = next_rv.fetch_add(1, Ordering::Relaxed);
                    let body = api::with_resource_version(&d.body, rv, i as u64);
                    let body = std::str::from_utf8(&body).unwrap_or_default();
                    raw.update(i, (&d.namespace, &d.name), (expected as i64, rv as i64), &d.labels, body)
                        .await?;
                    rvs[index].store(rv, Ordering::Relaxed);
                    Ok(())
                }
            })
        };
        self.update_sweep(system, &probe, update(0), update(100), json!({})).await;
        let get = {
            let (raw, docs) = (raw.clone(), docs.clone());
            op(move |i| {
                let (raw, docs) = (raw.clone(), docs.clone());
                async move {
                    let d = &docs[(i * 7919) % docs.len()];
                    if raw.get(i, &d.namespace, &d.name).await {
                        Ok(())
                    } else {
                        Err(0)
                    }
                }
            })
        };
        self.gets_closed_then_open(system, &probe, concurrency, get).await;
        let before = probe.read();
        let started = Instant::now();
        let (items, bytes) = raw.list_all(500).await?;
        self.record_full_list(system, &probe, &before, started, docs.len(), (items, bytes), json!({}));
        let (per_row, rows) = raw.bytes_per_row().await?;
        self.record_value(
            system,
            "storage",
            json!({"objects": rows, "table_bytes_per_report": per_row.round()}),
        );
        Ok(())
    }

    async fn etcd(&mut self, docs: &Arc<Vec<Prepared>>) -> anyhow::Result<()> {
        let system = "etcd";
        let etcd = match Etcd::start().await? {
            Ok(etcd) => Arc::new(etcd),
            Err(reason) => {
                println!("{reason}");
                self.notes.push(reason);
                return Ok(());
            }
        };
        let pid = etcd.pid();
        let probe = CpuProbe::new().with("etcd", move || cpu_seconds(pid));
        let keys: Arc<Vec<(String, String)>> = Arc::new(
            docs.iter()
                .map(|d| {
                    let key = format!("/registry/wgpolicyk8s.io/policyreports/{}/{}", d.namespace, d.name);
                    (etcd::encode(key.as_bytes()), etcd::encode(&d.body))
                })
                .collect(),
        );
        let revisions: Arc<Vec<AtomicU64>> = Arc::new((0..docs.len()).map(|_| AtomicU64::new(0)).collect());
        let put = {
            let (etcd, keys, revisions) = (etcd.clone(), keys.clone(), revisions.clone());
            op(move |i| {
                let (etcd, keys, revisions) = (etcd.clone(), keys.clone(), revisions.clone());
                async move {
                    let revision = etcd.put(&keys[i].0, &keys[i].1).await?;
                    revisions[i].store(revision as u64, Ordering::Relaxed);
                    Ok(())
                }
            })
        };
        self.create_sweep(system, &probe, put, docs.len(), json!({"api": "put"})).await;
        let concurrency = self.settings.concurrency;
        let update = |stale_every: usize| {
            let (etcd, keys, revisions) = (etcd.clone(), keys.clone(), revisions.clone());
            op(move |i| {
                let (etcd, keys, revisions) = (etcd.clone(), keys.clone(), revisions.clone());
                async move {
                    let index = i % keys.len();
                    let current = revisions[index].load(Ordering::Relaxed) as i64;
                    let stale = stale_every > 0 && i % stale_every == stale_every - 1;
                    let expected = if stale { current - 1 } else { current };
                    let revision = etcd.guarded_update(&keys[index].0, &keys[index].1, expected).await?;
                    revisions[index].store(revision as u64, Ordering::Relaxed);
                    Ok(())
                }
            })
        };
        let api = json!({"api": "txn compare mod_revision + put"});
        self.update_sweep(system, &probe, update(0), update(100), api).await;
        let get = {
            let (etcd, keys) = (etcd.clone(), keys.clone());
            op(move |i| {
                let (etcd, keys) = (etcd.clone(), keys.clone());
                async move { etcd.get(&keys[(i * 7919) % keys.len()].0).await }
            })
        };
        let before = probe.read();
        let measured = closed_loop(concurrency, self.settings.get_count, get).await;
        self.record(
            system,
            "get",
            &format!("closed c={concurrency}"),
            &measured,
            probe.per_1k_ops(&before, measured.ok),
            json!({"api": "range one key"}),
        );
        let before = probe.read();
        let started = Instant::now();
        let (items, bytes) = etcd.range_all("/registry/wgpolicyk8s.io/policyreports/", 500).await?;
        let api = json!({"api": "paginated range"});
        self.record_full_list(system, &probe, &before, started, docs.len(), (items, bytes), api);
        let (db, directory) = etcd.compacted_size().await?;
        self.record_value(system, "storage", json!({
            "objects": docs.len(),
            "db_bytes_per_report_after_compaction_and_defrag": (db as f64 / docs.len().max(1) as f64).round(),
            "data_dir_bytes_per_report_with_wal": (directory as f64 / docs.len().max(1) as f64).round(),
            "version": Etcd::version(),
        }));
        Ok(())
    }
}

/// Lists `url` completely (following continue tokens when `page` is set), sampling the server's
/// resident memory meanwhile. Latencies are per request (per page).
async fn list_all(
    server: &ServerProcess,
    url: &str,
    page: Option<usize>,
    accept: Option<&str>,
) -> anyhow::Result<ListRun> {
    let http = api::client()?;
    let rss_before = server.rss_bytes();
    let peak = Arc::new(AtomicU64::new(rss_before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, pid) = (peak.clone(), done.clone(), server.pid());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(crate::procs::rss_bytes(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let (mut items, mut bytes) = (0, 0);
    let mut latencies = Vec::new();
    let mut token: Option<String> = None;
    let started = Instant::now();
    loop {
        let mut request_url = url.to_string();
        let mut params = Vec::new();
        if let Some(limit) = page {
            params.push(format!("limit={limit}"));
        }
        if let Some(token) = &token {
            params.push(format!("continue={}", percent_encode(token)));
        }
        if !params.is_empty() {
            request_url = format!("{request_url}?{}", params.join("&"));
        }
        let mut request = http.get(&request_url);
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let sent = Instant::now();
        let response = request.send().await?.error_for_status()?;
        let body = response.bytes().await?;
        latencies.push(sent.elapsed());
        bytes += body.len();
        let head: ListHead = serde_json::from_slice(&body).context("list response")?;
        items += head.items.len();
        token = head.metadata.continue_token.filter(|t| !t.is_empty());
        if token.is_none() || page.is_none() {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    latencies.sort();
    let measured = Measured { ok: latencies.len(), seconds, latencies, ..Default::default() };
    Ok(ListRun {
        items,
        bytes,
        measured,
        rss_growth: peak.load(Ordering::Relaxed).saturating_sub(rss_before),
    })
}

/// Percent-encodes everything but unreserved characters (for continue tokens in a query).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
