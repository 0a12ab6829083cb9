//! Mixed datasets by size tier (10k, 100k, 1M results): ingest, lists and storage on a fresh store.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use super::{Run, StoreKind};
use crate::{
    api::{self, Api},
    load::{closed_loop, op},
    procs::ServerProcess,
    shapes,
};

impl Run {
    /// Loads the mixed dataset of `results` results into a fresh database, lists it and measures
    /// its storage.
    pub(super) async fn tier(&mut self, store: StoreKind, results: usize) -> anyhow::Result<()> {
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
}
