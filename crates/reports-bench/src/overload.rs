//! Overload: does one client's flood of lists and writes hurt another client's small GETs?
//!
//! One flooding client runs `lists` loops, each listing a namespace of `items` 6 KB reports
//! over and over, and `writes` loops creating reports, all over HTTP/1.1 connections of its
//! own, and it ignores `Retry-After` (a hostile or broken client retries at once). Another
//! client, on its own HTTP/2 connection from another address, GETs one small report at a fixed rate (open loop: each
//! GET is timed from when it was due, so a stalled server cannot hide its stall). The probe's
//! latencies are reported alone first, then under the flood, with the server's limits on (its
//! defaults) or off (`--unlimited`), with the flood's 429 counts and the process's peak RSS.
//!
//! The server is the `reports-server` binary built beside this one, in its own process on a
//! temporary SQLite file (its RSS is the server's alone); the probe runs on a thread and runtime
//! of its own, so the flooding client's tasks cannot delay it on the client side.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{
    api,
    load::{percentile, round3},
    shapes,
};

/// What one run of the flood was.
pub struct Flood {
    /// Concurrent list loops.
    pub lists: usize,
    /// Concurrent create loops.
    pub writes: usize,
    /// Reports in the listed namespace.
    pub items: usize,
    /// Probe GETs per second.
    pub probe_rate: f64,
    /// Seconds of flood (the probe alone runs a third of that first).
    pub seconds: f64,
    /// Serve without in-flight limits.
    pub unlimited: bool,
    /// Further server flags.
    pub server_args: Vec<String>,
}

/// Outcome counts of one kind of flood request.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

impl Counts {
    fn record(&self, status: Option<u16>) {
        let counter = match status {
            Some(200..=299) => &self.ok,
            Some(429) => &self.refused,
            _ => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn summary(&self, seconds: f64) -> Value {
        let ok = self.ok.load(Ordering::Relaxed);
        json!({
            "ok": ok,
            "ok_per_s": round3(ok as f64 / seconds),
            "refused_429": self.refused.load(Ordering::Relaxed),
            "failed": self.failed.load(Ordering::Relaxed),
        })
    }
}

/// Runs the probe alone, then under the flood; returns the figures.
pub async fn overload(flood: Flood) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let mut server_args =
        vec!["--storage".to_string(), format!("sqlite://{}", dir.path().join("reports.db").display())];
    if flood.unlimited {
        server_args.extend(
            ["--max-requests-inflight", "0", "--max-mutating-requests-inflight", "0"].map(String::from),
        );
    }
    server_args.extend(flood.server_args.iter().cloned());
    let server = crate::procs::ReleaseServer::start(&server_args)?;
    let base = server.base.clone();
    let seeding = api::Api::connect(&base, 4).await?;
    let flood_collection = seeding.collection("policyreports", Some("flood"));
    // Four at a time: within one client's share of even a small write limit.
    for chunk in (0..flood.items).collect::<Vec<_>>().chunks(4) {
        let creates = chunk.iter().map(|&i| {
            let body =
                api::to_bytes(&shapes::kyverno_policy_report(Some("flood"), &format!("r{i}"), i as u64, 10));
            seeding.create(i, &flood_collection, body)
        });
        for created in futures::future::join_all(creates).await {
            created.map_err(|status| anyhow::anyhow!("seeding: HTTP {status}"))?;
        }
    }
    let quiet = seeding.collection("policyreports", Some("quiet"));
    let small = json!({"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
        "metadata": {"name": "probe", "namespace": "quiet"}, "summary": {"pass": 1}});
    seeding
        .create(0, &quiet, api::to_bytes(&small))
        .await
        .map_err(|s| anyhow::anyhow!("probe report: {s}"))?;
    let probe_url = format!("{quiet}/probe");

    let alone = probe_on_own_thread(&probe_url, flood.probe_rate, flood.seconds / 3.0).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let (list_counts, write_counts) = (Arc::new(Counts::default()), Arc::new(Counts::default()));
    let flooder = api::http1_client()?;
    let mut tasks = Vec::new();
    for _ in 0..flood.lists {
        let (client, url, stop, counts) =
            (flooder.clone(), flood_collection.clone(), stop.clone(), list_counts.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                counts.record(drain(client.get(&url).send().await).await);
            }
        }));
    }
    let writes_collection = seeding.collection("policyreports", Some("flood-writes"));
    for task in 0..flood.writes {
        let (client, url, stop, counts) =
            (flooder.clone(), writes_collection.clone(), stop.clone(), write_counts.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w{task}-{i}");
                let body = api::to_bytes(&shapes::kyverno_policy_report(Some("flood-writes"), &name, i, 10));
                counts.record(
                    drain(
                        client.post(&url).header("content-type", "application/json").body(body).send().await,
                    )
                    .await,
                );
                i += 1;
            }
        }));
    }
    let peak_rss = Arc::new(AtomicU64::new(0));
    let server_pid = server.pid();
    let sampler = {
        let (stop, peak) = (stop.clone(), peak_rss.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(crate::procs::rss_bytes(server_pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let flooded = probe_on_own_thread(&probe_url, flood.probe_rate, flood.seconds).await?;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let _ = sampler.await;
    drop(server);
    Ok(json!({
        "benchmark": "overload",
        "limits": if flood.unlimited { "off".to_string() } else { format!("a quarter per client of {:?}", flood.server_args) },
        "flood": {"list_loops": flood.lists, "write_loops": flood.writes, "items_per_list": flood.items,
                  "seconds": flood.seconds},
        "probe_alone": alone,
        "probe_under_flood": flooded,
        "flood_lists": list_counts.summary(flood.seconds),
        "flood_writes": write_counts.summary(flood.seconds),
        "server_peak_rss_mib": peak_rss.load(Ordering::Relaxed) / (1 << 20),
    }))
}

/// [`probe`] from a client of its own, on a thread and runtime of its own (its connection is
/// driven there too). Another address (127.0.0.2 is loopback too) makes it another client to a
/// standalone server, which tells clients apart by address (in a cluster, by user).
async fn probe_on_own_thread(url: &str, rate: f64, seconds: f64) -> anyhow::Result<Value> {
    let url = url.to_string();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let client = reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .http2_prior_knowledge()
                .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
                .build()?;
            client.get(&url).send().await?.error_for_status()?;
            anyhow::Ok(probe(&client, &url, rate, seconds).await)
        })
    });
    tokio::task::spawn_blocking(move || {
        thread.join().map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
    })
    .await?
}

/// Reads a response to its end, discarding it; its status, or None when the request failed.
async fn drain(response: reqwest::Result<reqwest::Response>) -> Option<u16> {
    let mut response = response.ok()?;
    let status = response.status().as_u16();
    while let Ok(Some(_)) = response.chunk().await {}
    Some(status)
}

/// GETs `url` at `rate` per second for `seconds`, each timed from when it was due.
async fn probe(client: &reqwest::Client, url: &str, rate: f64, seconds: f64) -> Value {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let count = (rate * seconds).ceil() as usize;
    let start = Instant::now();
    let mut pending = Vec::with_capacity(count);
    for i in 0..count {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let (client, url) = (client.clone(), url.to_string());
        pending.push(tokio::spawn(async move {
            let status = drain(client.get(&url).send().await).await;
            (due.elapsed(), status)
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    let mut failures = 0;
    for task in pending {
        if let Ok((latency, status)) = task.await {
            latencies.push(latency);
            if status != Some(200) {
                failures += 1;
            }
        }
    }
    latencies.sort();
    let ms = |d: Duration| round3(d.as_secs_f64() * 1000.0);
    json!({
        "gets": latencies.len(),
        "not_200": failures,
        "p50_ms": ms(percentile(&latencies, 0.5)),
        "p99_ms": ms(percentile(&latencies, 0.99)),
        "max_ms": ms(latencies.last().copied().unwrap_or_default()),
    })
}
