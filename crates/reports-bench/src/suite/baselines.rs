//! The baselines: the core workload's documents created, updated, read and listed on raw
//! PostgreSQL (the floor, in the store's own object table) and on etcd, and created with the
//! store's own create statement (counter, change log, NOTIFY) issued directly, in the same run
//! as our server.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use serde_json::json;

use super::{updates::is_stale, Prepared, Run, StoreKind};
use crate::{
    etcd::{self, Etcd},
    load::{closed_loop, op, CpuProbe},
    procs::cpu_seconds,
    raw_pg::{RawPg, StoredShape, Work},
    report::RAW_COUNTER_AND_LOG,
};

impl Run {
    /// The raw PostgreSQL baselines on the core workload's documents, each in a fresh database
    /// with the store's tables: the floor (object rows only) through the whole workload, then
    /// the store's create statement (counter, change log, NOTIFY) for the creates.
    pub(super) async fn raw_postgres(&mut self, docs: &Arc<Vec<Prepared>>) -> anyhow::Result<()> {
        // Before the clock, as the server's bodies are.
        let shapes: Arc<Vec<StoredShape>> =
            Arc::new(docs.iter().map(|d| StoredShape::of(&d.body)).collect::<anyhow::Result<_>>()?);
        self.raw_floor(docs, &shapes).await?;
        self.raw_counter_and_log(docs, &shapes).await
    }

    /// Creates of `docs` by `raw`, in the same sweep as the server's, then bytes per report.
    async fn raw_creates(
        &mut self,
        system: &str,
        raw: &RawPg,
        url: &str,
        docs: &Arc<Vec<Prepared>>,
        shapes: &Arc<Vec<StoredShape>>,
    ) -> anyhow::Result<()> {
        let probe = self.probe(None);
        let insert = {
            let (raw, docs, shapes) = (raw.clone(), docs.clone(), shapes.clone());
            op(move |i| {
                let (raw, docs, shapes) = (raw.clone(), docs.clone(), shapes.clone());
                async move { raw.insert(i, &docs[i].namespace, &docs[i].name, &shapes[i]).await }
            })
        };
        self.create_sweep(system, &probe, insert, docs.len(), json!({})).await;
        self.storage_per_report(StoreKind::Postgres, system, url, "after the creates", docs.len(), false)
            .await
    }

    /// The floor: the core workload as plain SQL on the object table alone.
    async fn raw_floor(
        &mut self,
        docs: &Arc<Vec<Prepared>>,
        shapes: &Arc<Vec<StoredShape>>,
    ) -> anyhow::Result<()> {
        let system = "raw-postgres";
        let url = self.pg()?.database("raw")?;
        let raw = RawPg::open(&url, self.settings.concurrency, Work::Floor).await?;
        self.raw_creates(system, &raw, &url, docs, shapes).await?;
        let probe = self.probe(None);
        let rvs: Arc<Vec<AtomicU64>> = Arc::new((0..docs.len()).map(|_| AtomicU64::new(1)).collect());
        let concurrency = self.settings.concurrency;
        let next_rv = Arc::new(AtomicU64::new(10));
        let update = |stale_every: usize| {
            let (raw, docs, shapes, rvs, next_rv) =
                (raw.clone(), docs.clone(), shapes.clone(), rvs.clone(), next_rv.clone());
            op(move |i| {
                let (raw, docs, shapes, rvs, next_rv) =
                    (raw.clone(), docs.clone(), shapes.clone(), rvs.clone(), next_rv.clone());
                async move {
                    let index = i % docs.len();
                    let d = &docs[index];
                    let current = rvs[index].load(Ordering::Relaxed);
                    let stale = is_stale(i, stale_every);
                    let expected = if stale { current + 1_000_000_000 } else { current };
                    let rv = next_rv.fetch_add(1, Ordering::Relaxed);
                    raw.update(i, (&d.namespace, &d.name), (expected as i64, rv as i64), &shapes[index])
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
        self.storage_per_report(
            StoreKind::Postgres,
            system,
            &url,
            "after updates and lists",
            docs.len(),
            false,
        )
        .await
    }

    /// The store's create statement issued directly: what the database charges for a create
    /// with its counter, change row and NOTIFY, apart from the server's work.
    async fn raw_counter_and_log(
        &mut self,
        docs: &Arc<Vec<Prepared>>,
        shapes: &Arc<Vec<StoredShape>>,
    ) -> anyhow::Result<()> {
        let url = self.pg()?.database("rawlog")?;
        let raw = RawPg::open(&url, self.settings.concurrency, Work::CounterAndLog).await?;
        self.raw_creates(RAW_COUNTER_AND_LOG, &raw, &url, docs, shapes).await
    }

    /// The core workload on etcd's JSON gateway, under the keys the Kubernetes API server would use
    /// (skipped with a note when etcd is absent).
    pub(super) async fn etcd(&mut self, docs: &Arc<Vec<Prepared>>) -> anyhow::Result<()> {
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
                    let stale = is_stale(i, stale_every);
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
