//! Updates with resourceVersion preconditions: a closed-loop run, then open-loop background
//! rescans in which every 100th update is stale (the same for our server and the baselines).

use serde_json::Value;

use super::Run;
use crate::load::{closed_loop, open_loop, shifted, CpuProbe, Op};

/// Whether update number `i` carries a stale precondition: every `stale_every`th one, none when 0.
pub(super) fn is_stale(i: usize, stale_every: usize) -> bool {
    stale_every > 0 && i % stale_every == stale_every - 1
}

impl Run {
    /// Updates: a closed loop of `update_count`, then one open-loop rescan step per configured
    /// rate. `update` is called with operation numbers that never repeat.
    pub(super) async fn update_sweep(
        &mut self,
        system: &str,
        probe: &CpuProbe,
        closed: Op,
        rescan: Op,
        extra: Value,
    ) {
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
            let steps = (rate * self.settings.open_seconds) as usize;
            let before = probe.read();
            let measured = open_loop(rate, steps, shifted(&rescan, next)).await;
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
}
