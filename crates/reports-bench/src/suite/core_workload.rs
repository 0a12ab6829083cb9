//! The core workload on our server: 6 KB Kyverno PolicyReports created, updated, read by name and
//! listed, with the storage they take.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use serde_json::json;

use super::{updates::is_stale, Prepared, Run, StoreKind};
use crate::{
    api::{self, Api},
    load::{closed_loop, op},
    procs::ServerProcess,
};

/// The first object at or after `from` (wrapping) whose create succeeded.
fn created(rvs: &[AtomicU64], from: usize) -> Option<usize> {
    (0..rvs.len()).map(|k| (from + k) % rvs.len()).find(|&j| rvs[j].load(Ordering::Relaxed) != 0)
}

impl Run {
    /// The core workload on our server on `store`, on a fresh database: creates (a rate sweep, then
    /// the rest, then a retry of refused ones), storage, updates and rescans, GETs, lists, and
    /// storage again after compaction.
    pub(super) async fn server_core(
        &mut self,
        store: StoreKind,
        docs: &Arc<Vec<Prepared>>,
    ) -> anyhow::Result<()> {
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
                    let stale = is_stale(i, stale_every);
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
}
