//! What the result gauges cost: memory and scrape time with many results, per mode.
//!
//! For each mode the release `reports-server` binary starts on a fresh SQLite file, receives
//! Trivy-shaped vulnerability reports over HTTPS, and once its gauges have counted them all, its
//! resident memory is read (against the same load with the gauges off) and `/metrics` is scraped
//! repeatedly. Then it restarts on the same file, which times the full read at start.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{api, procs, shapes};

/// The sizes of a run.
pub struct Sizes {
    /// Reports created.
    pub reports: usize,
    /// Results per report.
    pub results: usize,
    /// Scrapes timed per mode.
    pub scrapes: usize,
}

/// Starts the release server on `db` with the result metrics in `mode`; returns it and its URL.
fn start(db: &std::path::Path, mode: &str) -> anyhow::Result<(procs::ReleaseServer, String)> {
    let server = procs::ReleaseServer::start(&[
        "--storage".to_string(),
        format!("sqlite://{}", db.display()),
        "--result-metrics".to_string(),
        mode.to_string(),
        "--result-metrics-max-series".to_string(),
        "10000000".to_string(),
    ])?;
    let base = server.base.clone();
    Ok((server, base))
}

/// The value of an unlabelled series in a scrape.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `ready` says the gauges hold every change up to `rv`; the last scrape.
async fn settle(client: &reqwest::Client, base: &str, rv: u64) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let text = client.get(format!("{base}/metrics")).send().await?.text().await?;
        if gauge(&text, "reports_server_result_metrics_resource_version").is_some_and(|v| v >= rv as f64) {
            return Ok(text);
        }
        anyhow::ensure!(Instant::now() < deadline, "the result metrics did not reach RV {rv}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Times `n` scrapes one after another; (median ms, p90 ms, bytes of the last).
async fn time_scrapes(client: &reqwest::Client, base: &str, n: usize) -> anyhow::Result<(f64, f64, usize)> {
    let mut times = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let started = Instant::now();
        bytes = client.get(format!("{base}/metrics")).send().await?.bytes().await?.len();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[n / 2], times[n * 9 / 10], bytes))
}

/// Runs every mode; returns the figures as JSON.
pub async fn run(sizes: Sizes) -> anyhow::Result<Value> {
    let mut rows = Vec::new();
    for mode in ["off", "detailed", "simple"] {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("reports.db");
        let (child, base) = start(&db, mode)?;
        let api = api::Api::connect(&base, 8).await?;
        let api = &api;
        let rss_empty = procs::rss_bytes(child.pid());
        let mut newest = 0;
        for chunk in (0..sizes.reports).collect::<Vec<_>>().chunks(8) {
            let creates = chunk.iter().map(|&i| {
                let namespace = shapes::namespace_of(i as u64);
                let report = shapes::trivy_vulnerability_report(
                    &namespace,
                    &format!("vuln-{i}"),
                    i as u64,
                    sizes.results,
                );
                let url = api.collection("policyreports", Some(&namespace));
                async move { api.create(i, &url, api::to_bytes(&report)).await }
            });
            for created in futures::future::join_all(creates).await {
                newest = newest.max(created.map_err(|status| anyhow::anyhow!("create: HTTP {status}"))?);
            }
        }
        let client = api.client(0).clone();
        let text = if mode == "off" {
            client.get(format!("{base}/metrics")).send().await?.text().await?
        } else {
            settle(&client, &base, newest).await?
        };
        let rss = procs::rss_bytes(child.pid());
        let (median, p90, bytes) = time_scrapes(&client, &base, sizes.scrapes).await?;
        drop(child);
        // A restart reads every report once before the gauges are ready.
        let (child, base) = start(&db, mode)?;
        let started = Instant::now();
        let initial_read = if mode == "off" {
            None
        } else {
            let client = api::client()?;
            loop {
                let text = client.get(format!("{base}/metrics")).send().await?.text().await?;
                if gauge(&text, "reports_server_result_metrics_ready") == Some(1.0) {
                    break Some(started.elapsed().as_secs_f64());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let rss_restarted = procs::rss_bytes(child.pid());
        // Again once the allocator has had time to give back what the read freed, and after
        // the timed number of scrapes.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss_restarted_settled = procs::rss_bytes(child.pid());
        let _ = time_scrapes(&api::client()?, &base, sizes.scrapes).await?;
        let rss_restarted_scraped = procs::rss_bytes(child.pid());
        drop(child);
        let row = json!({
            "mode": mode,
            "results": sizes.reports * sizes.results,
            "series": gauge(&text, "reports_server_result_metrics_series"),
            "estimated_bytes": gauge(&text, "reports_server_result_metrics_bytes"),
            "rss_empty_mib": rss_empty as f64 / 1048576.0,
            "rss_loaded_mib": rss as f64 / 1048576.0,
            "rss_after_restart_mib": rss_restarted as f64 / 1048576.0,
            "rss_after_restart_3s_mib": rss_restarted_settled as f64 / 1048576.0,
            "rss_after_restart_and_scrapes_mib": rss_restarted_scraped as f64 / 1048576.0,
            "scrape_median_ms": median,
            "scrape_p90_ms": p90,
            "scrape_bytes": bytes,
            "initial_read_seconds": initial_read,
        });
        println!("{row}");
        rows.push(row);
    }
    Ok(json!({"reports": sizes.reports, "results_per_report": sizes.results, "runs": rows}))
}
