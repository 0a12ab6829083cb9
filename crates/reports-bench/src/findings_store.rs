//! Findings on PostgreSQL, store-level (no HTTP): what indexing results costs and what it buys.
//!
//! - create throughput of Trivy-shaped reports through the store with findings indexing on and
//!   off, in alternating rounds of the same run, each round on a fresh database;
//! - bytes per finding: `pg_total_relation_size` of the findings table (heap, TOAST, every
//!   index) over its rows, next to the reports' own bytes per finding;
//! - the "CVSS >= 8" question over about a million findings: the first page of 500 in key
//!   order, and the count grouped by severity, each asked repeatedly on a warm cache.

use std::{sync::Arc, time::Instant};

use reports_core::{
    catalogue::Catalogue,
    findings::{
        filter::FindingFilter,
        query::{CountQuery, FindingQuery, Visibility},
    },
};
use reports_store::{
    postgres::{PgSettings, PgStore},
    FindingChunk, FindingsIndex, Store,
};
use serde_json::Value;

use crate::{procs, shapes};

/// What the run measures.
pub struct Plan {
    /// Reports per throughput round.
    pub reports: usize,
    /// Results per report.
    pub results: usize,
    /// Rounds per side (on and off alternate).
    pub rounds: usize,
    /// Concurrent writers.
    pub concurrency: usize,
    /// Findings in the query dataset (0 skips the queries).
    pub query_findings: usize,
    /// Repetitions of each query.
    pub repetitions: usize,
    /// PostgreSQL durability.
    pub durability: procs::Durability,
    /// SQL run on each database after its migration, to compare a variant of the schema (e.g.
    /// another `toast_tuple_target`, or an index dropped).
    pub variant: Option<String>,
}

/// Opens a store on a fresh database of `pg`, with the plan's table setting.
async fn open(
    pg: &procs::Postgres,
    name: &str,
    findings: FindingsIndex,
    plan: &Plan,
) -> anyhow::Result<(Arc<PgStore>, String)> {
    let url = pg.database(name)?;
    let store = Arc::new(PgStore::connect(&url, &PgSettings { findings, ..Default::default() }).await?);
    if let Some(variant) = &plan.variant {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client.batch_execute(variant).await?;
    }
    Ok((store, url))
}

fn document(index: usize, results: usize) -> Value {
    let namespace = shapes::namespace_of(index as u64);
    let mut report =
        shapes::trivy_vulnerability_report(&namespace, &format!("vuln-{index}"), index as u64, results);
    report["metadata"]["uid"] = Value::String(shapes::uid(7, index as u64));
    report
}

/// Creates `count` reports from `first` on with `concurrency` writers; returns creates/s.
async fn create_all(
    store: &Arc<PgStore>,
    first: usize,
    count: usize,
    results: usize,
    concurrency: usize,
) -> f64 {
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(first));
    let end = first + count;
    let mut writers = Vec::new();
    for _ in 0..concurrency {
        let (store, next) = (store.clone(), next.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= end {
                    break;
                }
                if let Err(e) = store.create("policyreports", document(i, results)).await {
                    eprintln!("create {i}: {e}");
                }
            }
        }));
    }
    for writer in writers {
        let _ = writer.await;
    }
    count as f64 / started.elapsed().as_secs_f64()
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs the plan and prints the figures as Markdown.
pub async fn run(plan: Plan) -> anyhow::Result<()> {
    let pg = procs::Postgres::start(plan.durability)?;
    let catalogue = Catalogue::embedded()?;
    let cvss =
        FindingFilter::parse("properties.score>=8", &catalogue).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    println!("### Findings (PostgreSQL, store-level, {:?})\n", plan.durability);
    println!(
        "Trivy vulnerability reports of {} results, {} writers.\n\n| round | indexing | creates/s | findings/s |\n|---|---|---:|---:|",
        plan.results, plan.concurrency
    );
    let (mut on_rates, mut off_rates) = (Vec::new(), Vec::new());
    let mut sized = None;
    for round in 0..plan.rounds * 2 {
        let on = round % 2 == 0;
        let findings = if on { FindingsIndex::default() } else { FindingsIndex::off() };
        let (store, url) = open(&pg, &format!("findings{round}"), findings, &plan).await?;
        let rate = create_all(&store, 0, plan.reports, plan.results, plan.concurrency).await;
        println!(
            "| {} | {} | {rate:.0} | {:.0} |",
            round / 2 + 1,
            if on { "on" } else { "off" },
            rate * plan.results as f64
        );
        if on {
            on_rates.push(rate);
            sized.get_or_insert(url);
        } else {
            off_rates.push(rate);
        }
    }
    let mean = |rates: &[f64]| rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    let (on, off) = (mean(&on_rates), mean(&off_rates));
    println!(
        "\nMean: {on:.0} creates/s indexed, {off:.0} not: indexing costs {:.1} %.\n",
        (1.0 - on / off) * 100.0
    );
    println!(
        "\nMedian: {on:.0} creates/s indexed, {off:.0} not: indexing costs {:.1} %.\n",
        (1.0 - on / off) * 100.0
    );
    if let Some(url) = sized {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client.batch_execute("VACUUM ANALYZE report_finding_sets").await?;
        client.batch_execute("VACUUM ANALYZE report_objects").await?;
        let row = client
            .query_one(
                "SELECT (SELECT coalesce(sum(cardinality(result)), 0)::int8 FROM report_finding_sets),
                        pg_total_relation_size('report_finding_sets'), pg_relation_size('report_finding_sets'),
                        pg_indexes_size('report_finding_sets'), pg_total_relation_size('report_objects')",
                &[],
            )
            .await?;
        let (rows, total, heap, indexes, reports): (i64, i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let per = |bytes: i64| bytes as f64 / rows.max(1) as f64;
        println!(
            "Storage after {} reports ({rows} findings): findings table {:.0} bytes per finding in all \
             ({:.0} heap, {:.0} TOAST, {:.0} indexes); the reports themselves {:.0} bytes per finding.\n",
            plan.reports,
            per(total),
            per(heap),
            per(total - heap - indexes),
            per(indexes),
            per(reports)
        );
        for row in client
            .query(
                "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index
                 WHERE indrelid = 'report_finding_sets'::regclass ORDER BY 1",
                &[],
            )
            .await?
        {
            println!("- {}: {:.0} bytes per finding", row.get::<_, String>(0), per(row.get::<_, i64>(1)));
        }
        println!();
    }
    if plan.query_findings == 0 {
        return Ok(());
    }
    let (store, url) = open(&pg, "findings_query", FindingsIndex::default(), &plan).await?;
    let reports = plan.query_findings.div_ceil(plan.results);
    let rate = create_all(&store, 0, reports, plan.results, plan.concurrency).await;
    {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client.batch_execute("VACUUM ANALYZE report_finding_sets").await?;
    }
    let (mut page, mut count) = (Vec::new(), Vec::new());
    let (mut matched, mut groups) = (0, 0);
    for _ in 0..plan.repetitions {
        let started = Instant::now();
        let query = FindingQuery {
            namespace: None,
            visibility: Visibility::Everything,
            conditions: cvss.conditions.clone(),
            after: None,
            limit: Some(500),
        };
        let mut stream = store.findings(query).await?;
        let mut got = 0;
        while let Some(chunk) = stream.chunks.recv().await {
            match chunk? {
                FindingChunk::Items(items) => got += items.len(),
                FindingChunk::End { .. } => break,
            }
        }
        page.push(started.elapsed().as_secs_f64() * 1000.0);
        matched = got;
        let started = Instant::now();
        let query = CountQuery {
            namespace: None,
            visibility: Visibility::Everything,
            conditions: cvss.conditions.clone(),
            group_by: vec![reports_core::findings::filter::FindingField::Severity],
        };
        let (_, counts) = store.count_findings(query).await?;
        count.push(started.elapsed().as_secs_f64() * 1000.0);
        groups = counts.iter().map(|c| c.total).sum();
    }
    println!(
        "Queries over {} findings ({reports} reports, loaded at {rate:.0} creates/s), {} repetitions:\n\n\
         | question | p50 ms | p90 ms | answer |\n|---|---:|---:|---|\n\
         | `properties.score>=8`, first page of 500 | {:.1} | {:.1} | {matched} findings |\n\
         | `properties.score>=8`, `groupBy=severity` | {:.1} | {:.1} | {groups} findings counted |",
        reports * plan.results,
        plan.repetitions,
        percentile(&mut page, 0.5),
        percentile(&mut page, 0.9),
        percentile(&mut count, 0.5),
        percentile(&mut count, 0.9),
    );
    Ok(())
}
