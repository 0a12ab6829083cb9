//! The findings benchmark: the question the product exists for, "every vulnerability with a CVSS
//! score of 8 or more", asked of a PostgreSQL store holding a million results, through HTTPS,
//! against the only way a consumer has without the query API (list every report through the API
//! and filter on the client), and what indexing the results costs the writes.
//!
//! One run, one throwaway PostgreSQL (durable), release server binaries:
//! 1. write cost: two fresh databases, one server with findings indexed (the default) and one
//!    with indexing off; the same Trivy-shaped reports created by closed-loop clients on each,
//!    alternating rounds so drift hits both alike;
//! 2. the indexed database is filled up to the target number of results, and analyzed (as
//!    autovacuum does on a database that has been up a while);
//! 3. the questions, each timed over HTTPS from the first byte sent to the last byte read:
//!    the first page (500) of `properties.score>=8`, the counts of those per severity, every
//!    page of the answer, and the client-side alternative (every PolicyReport, pages of 500,
//!    parsed and filtered), whose answer must have the same size;
//! 4. the table's size per finding, read from PostgreSQL.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::{
    api::{self, Api},
    load::{self, closed_loop, op, round3},
    procs::{Durability, Postgres, ReleaseServer},
    shapes,
};

/// The benchmark's sizes.
pub struct FindingsRun {
    /// Results in the queried database.
    pub results: usize,
    /// Results per report.
    pub per_report: usize,
    /// Reports created per server and round of the write-cost comparison.
    pub write_reports: usize,
    /// Rounds of the write-cost comparison.
    pub write_rounds: usize,
    /// Closed-loop clients.
    pub concurrency: usize,
    /// Repetitions of each quick question.
    pub repeats: usize,
    /// Repetitions of the full answers (the whole list, and the client-side alternative).
    pub full_repeats: usize,
}

/// The server flag that turns result indexing off.
const INDEX_OFF: &str = "--index-findings=off";

const QUESTION: &str = "properties.score>=8";

/// The path of the query resources.
const QUERY: &str = "/apis/query.reports-server.io/v1alpha1";

/// Creates reports `from..to` (Trivy shape, `per_report` results) through `api`.
async fn create_reports(
    api: &Api,
    concurrency: usize,
    from: usize,
    to: usize,
    per_report: usize,
) -> load::Measured {
    let bodies: Vec<(String, bytes::Bytes)> = (from..to)
        .map(|i| {
            let ns = shapes::namespace_of(i as u64);
            let body = shapes::trivy_vulnerability_report(&ns, &format!("vuln-{i}"), i as u64, per_report);
            (api.collection("policyreports", Some(&ns)), api::to_bytes(&body))
        })
        .collect();
    let bodies = std::sync::Arc::new(bodies);
    let api = api.clone();
    closed_loop(
        concurrency,
        to - from,
        op(move |i| {
            let (api, bodies) = (api.clone(), bodies.clone());
            async move {
                let (url, body) = &bodies[i];
                api.create(i, url, body.clone()).await.map(drop)
            }
        }),
    )
    .await
}

/// GETs `url` and reads it whole; the body and the time.
async fn timed_get(client: &reqwest::Client, url: &str) -> anyhow::Result<(Value, Duration)> {
    let start = Instant::now();
    let response = client.get(url).send().await?;
    let status = response.status();
    let bytes = response.bytes().await?;
    let elapsed = start.elapsed();
    anyhow::ensure!(status.is_success(), "GET {url}: {status}: {}", String::from_utf8_lossy(&bytes));
    Ok((serde_json::from_slice(&bytes)?, elapsed))
}

/// Every page of a list from `first` on, following `continue`; calls `each` with each page.
async fn all_pages(
    client: &reqwest::Client,
    first: &str,
    mut each: impl FnMut(&Value),
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut url = first.to_string();
    loop {
        let (page, _) = timed_get(client, &url).await?;
        each(&page);
        match page["metadata"]["continue"].as_str().filter(|t| !t.is_empty()) {
            Some(token) => url = format!("{first}&continue={token}"),
            None => return Ok(start.elapsed()),
        }
    }
}

/// Latency figures of repeated requests, in milliseconds.
fn latency_summary(mut samples: Vec<Duration>) -> Value {
    samples.sort();
    json!({
        "runs": samples.len(),
        "p50_ms": round3(load::percentile(&samples, 0.5).as_secs_f64() * 1e3),
        "p90_ms": round3(load::percentile(&samples, 0.9).as_secs_f64() * 1e3),
        "max_ms": round3(samples.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)),
    })
}

/// Whether a result's `score` property reads as a number of at least 8.
fn scores_high(result: &Value) -> bool {
    result["properties"]["score"].as_str().and_then(reports_core::findings::numeric).is_some_and(|s| s >= 8.0)
}

/// Runs the benchmark.
pub async fn run(settings: FindingsRun) -> anyhow::Result<Value> {
    let postgres = Postgres::start(Durability::Durable)?;
    let indexed_url = postgres.database("findings_on")?;
    let plain_url = postgres.database("findings_off")?;
    let indexed = ReleaseServer::start(&["--storage".into(), indexed_url.clone()])?;
    let plain = ReleaseServer::start(&["--storage".into(), plain_url, INDEX_OFF.into()])?;
    let (indexed_api, plain_api) = (
        Api::connect(&indexed.base, settings.concurrency).await?,
        Api::connect(&plain.base, settings.concurrency).await?,
    );

    // 1. What indexing costs a create.
    let mut rounds = Vec::new();
    let (mut on_rate, mut off_rate) = (Vec::new(), Vec::new());
    for round in 0..settings.write_rounds {
        let (from, to) = (round * settings.write_reports, (round + 1) * settings.write_reports);
        let on = create_reports(&indexed_api, settings.concurrency, from, to, settings.per_report).await;
        let off = create_reports(&plain_api, settings.concurrency, from, to, settings.per_report).await;
        anyhow::ensure!(
            on.errors.is_empty() && off.errors.is_empty(),
            "create errors: {:?} {:?}",
            on.errors,
            off.errors
        );
        on_rate.push(on.ops_per_s());
        off_rate.push(off.ops_per_s());
        rounds.push(json!({"indexed": on.summary(), "not_indexed": off.summary()}));
    }
    drop(plain);
    let (on_mean, off_mean) = (
        on_rate.iter().sum::<f64>() / on_rate.len().max(1) as f64,
        off_rate.iter().sum::<f64>() / off_rate.len().max(1) as f64,
    );

    // 2. Fill the indexed database.
    let reports = settings.results.div_ceil(settings.per_report);
    let filled_from = settings.write_rounds * settings.write_reports;
    let fill_start = Instant::now();
    if reports > filled_from {
        let fill =
            create_reports(&indexed_api, settings.concurrency, filled_from, reports, settings.per_report)
                .await;
        anyhow::ensure!(fill.errors.is_empty(), "fill errors: {:?}", fill.errors);
    }
    let fill_seconds = fill_start.elapsed().as_secs_f64();

    // A database that has served a while has planner statistics (autovacuum analyzes tables as
    // they grow); one filled seconds ago may not have them yet, and the planner then guesses.
    let (client_pg, connection) = tokio_postgres::connect(&indexed_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client_pg.batch_execute("ANALYZE").await?;

    // 3. The question.
    let client = indexed_api.client(0).clone();
    let base = &indexed.base;
    let first_page = format!("{base}{QUERY}/findings?limit=500&fieldSelector=properties.score%3E%3D8");
    let counts =
        format!("{base}{QUERY}/findingcounts?fieldSelector=groupBy%3Dseverity%2Cproperties.score%3E%3D8");
    timed_get(&client, &first_page).await.context("the findings API")?;
    let mut page_times = Vec::new();
    let mut count_times = Vec::new();
    let mut counted = 0;
    for _ in 0..settings.repeats {
        page_times.push(timed_get(&client, &first_page).await?.1);
        let (answer, elapsed) = timed_get(&client, &counts).await?;
        count_times.push(elapsed);
        counted =
            answer["items"].as_array().map_or(0, |g| g.iter().filter_map(|g| g["total"].as_u64()).sum());
    }
    let mut full_times = Vec::new();
    let mut alternative_times = Vec::new();
    let (mut listed, mut filtered) = (0u64, 0u64);
    let reports_url = format!("{base}/apis/wgpolicyk8s.io/v1alpha2/policyreports?limit=500");
    for _ in 0..settings.full_repeats {
        listed = 0;
        full_times.push(
            all_pages(&client, &first_page, |page| {
                listed += page["items"].as_array().map_or(0, |i| i.len() as u64)
            })
            .await?,
        );
        filtered = 0;
        alternative_times.push(
            all_pages(&client, &reports_url, |page| {
                for report in page["items"].as_array().into_iter().flatten() {
                    filtered +=
                        report["results"].as_array().into_iter().flatten().filter(|r| scores_high(r)).count()
                            as u64;
                }
            })
            .await?,
        );
    }
    anyhow::ensure!(
        listed == filtered && counted == listed,
        "the answers differ: API {listed}, counts {counted}, client-side {filtered}"
    );

    // 4. Size.
    let row = client_pg
        .query_one(
            "SELECT coalesce(sum(cardinality(result)), 0)::int8, pg_total_relation_size('report_finding_sets'),
                    pg_relation_size('report_finding_sets'), pg_total_relation_size('report_objects')
             FROM report_finding_sets",
            &[],
        )
        .await?;
    let (rows, total_bytes, heap_bytes, objects_bytes): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));

    let p50 = |samples: &[Duration]| {
        let mut sorted = samples.to_vec();
        sorted.sort();
        load::percentile(&sorted, 0.5).as_secs_f64()
    };
    Ok(json!({
        "benchmark": "findings",
        "store": "postgres (durable)",
        "results": rows,
        "reports": reports,
        "results_per_report": settings.per_report,
        "fill_seconds": round3(fill_seconds),
        "write_cost": {
            "rounds": rounds,
            "indexed_creates_per_s": on_mean.round(),
            "not_indexed_creates_per_s": off_mean.round(),
            "cost_of_indexing": round3(1.0 - on_mean / off_mean.max(1e-9)),
        },
        "question": QUESTION,
        "matching_results": listed,
        "first_page_500": latency_summary(page_times.clone()),
        "counts_by_severity": latency_summary(count_times),
        "whole_answer_all_pages": latency_summary(full_times.clone()),
        "client_side_alternative": latency_summary(alternative_times.clone()),
        "alternative_over_first_page": round3(p50(&alternative_times) / p50(&page_times).max(1e-9)),
        "alternative_over_whole_answer": round3(p50(&alternative_times) / p50(&full_times).max(1e-9)),
        "bytes": {
            "findings_table_total": total_bytes,
            "findings_table_heap": heap_bytes,
            "per_finding_total": (total_bytes as f64 / rows.max(1) as f64).round(),
            "report_objects_total": objects_bytes,
        },
    }))
}
