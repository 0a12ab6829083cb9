//! Watch fan-out: watchers on a fresh store while writes arrive at a fixed rate; the delivery lag
//! of every event (the measurement itself is [`crate::watch::watch_lag`]).

use serde_json::json;

use super::{Run, StoreKind};

impl Run {
    /// Watch fan-out on its own fresh store.
    pub(super) async fn watch_fan_out(&mut self, store: StoreKind) -> anyhow::Result<()> {
        let system = store.label();
        let (watchers, rate, seconds) = self.settings.watch;
        let storage = self.storage(store, "watch")?;
        let durability = (store == StoreKind::Postgres).then_some(self.settings.durability);
        let mut result = crate::watch::watch_lag(
            watchers,
            rate,
            seconds,
            Some(storage),
            false,
            Default::default(),
            durability,
        )
        .await?;
        result["system"] = json!(system);
        result["workload"] = json!("watch fan-out");
        self.results.push(result);
        Ok(())
    }
}
