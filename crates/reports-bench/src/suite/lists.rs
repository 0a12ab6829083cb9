//! Lists of a whole collection: paginated by 500, unpaginated and metadata-only from our server,
//! timed per page with the server's memory growth; and the baselines' full paginated reads.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{extend, Run};
use crate::{
    api,
    load::{round3, CpuProbe, Measured},
    procs::ServerProcess,
};

/// A list response's item count and continue token, without building the items.
#[derive(Deserialize)]
pub(super) struct ListHead {
    #[serde(default)]
    metadata: ListMeta,
    pub(super) items: Vec<serde::de::IgnoredAny>,
}

/// The list metadata the harness reads: the continue token.
#[derive(Deserialize, Default)]
struct ListMeta {
    #[serde(default, rename = "continue")]
    continue_token: Option<String>,
}

/// What one full list (paginated or not) cost.
pub(super) struct ListRun {
    pub(super) items: usize,
    bytes: usize,
    measured: Measured,
    rss_growth: u64,
}

impl Run {
    /// Lists `url` paginated by 500, unpaginated, and metadata-only, each once.
    pub(super) async fn lists(
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

    /// Records a baseline's full paginated read (pages of 500), timed from `started`, as one
    /// operation; `extra` adds fields to the row.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_full_list(
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
        extend(&mut fields, extra);
        self.record(system, "list", "limit=500", &measured, probe.per_1k_ops(before, 1), fields);
    }
}

/// Lists `url` completely (following continue tokens when `page` is set), sampling the server's
/// resident memory meanwhile. Latencies are per request (per page).
pub(super) async fn list_all(
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
