//! GETs by name: a closed-loop run, then an open-loop run at the configured rate.

use serde_json::json;

use super::Run;
use crate::load::{closed_loop, open_loop, CpuProbe, Op};

impl Run {
    /// GETs by name: a closed-loop run with `concurrency` clients, then an open-loop run at the
    /// configured rate, both recorded (the same for our server and the raw baseline).
    pub(super) async fn gets_closed_then_open(
        &mut self,
        system: &str,
        probe: &CpuProbe,
        concurrency: usize,
        get: Op,
    ) {
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
}
