//! Creates: a warm-up, an open-loop sweep of create rates, then a closed-loop bulk load of the rest
//! (the same for our server and the baselines).

use serde_json::Value;

use super::Run;
use crate::load::{closed_loop, open_loop, shifted, CpuProbe, Op};

impl Run {
    /// Creates objects `0..total`: a warm-up second at the first rate (recorded, but apart), one
    /// open-loop step per configured rate, then the rest from N concurrent clients (closed loop).
    ///
    /// The warm-up keeps a process's first moments out of the first step: a fresh server or
    /// database pays one-off costs on its first writes (caches, plans, first pages of empty tables)
    /// that queue a few hundred requests at 1,500/s, which alone decides a step's p99.
    pub(super) async fn create_sweep(
        &mut self,
        system: &str,
        probe: &CpuProbe,
        create: Op,
        total: usize,
        extra: Value,
    ) {
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
            let before = probe.read();
            let measured = open_loop(rate, count, shifted(&create, next)).await;
            let cpu = probe.per_1k_ops(&before, measured.ok);
            self.record(system, "create", &format!("open {rate}/s"), &measured, cpu, extra.clone());
            next += count;
        }
        let concurrency = self.settings.concurrency;
        let before = probe.read();
        let measured = closed_loop(concurrency, total - next, shifted(&create, next)).await;
        let cpu = probe.per_1k_ops(&before, measured.ok);
        self.record(system, "create", &format!("closed c={concurrency}"), &measured, cpu, extra);
    }
}
