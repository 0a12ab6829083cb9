//! Admission churn (create an EphemeralReport, patch a label, delete it) and a flood of ephemeral
//! reports cleared by one label deletecollection.

use std::time::Instant;

use serde_json::json;

use super::{
    lists::{list_all, ListHead},
    Run, StoreKind,
};
use crate::{
    api::{self, Api},
    load::{closed_loop, op, open_loop, round3, shifted},
    procs::ServerProcess,
    shapes,
};

impl Run {
    /// Admission churn at each configured rate, then a flood of ephemeral reports removed by one
    /// label deletecollection, on a fresh database.
    pub(super) async fn churn_and_flood(&mut self, store: StoreKind) -> anyhow::Result<()> {
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
            let before = probe.read();
            let measured = open_loop(rate, count, shifted(&churn, next)).await;
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
        Ok(())
    }
}
