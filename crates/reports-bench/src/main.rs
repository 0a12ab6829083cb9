//! reports-bench: measures reports-server under traffic shaped like the real thing, next to the
//! baselines it must be judged against.
//!
//! It is a tool, not a test: nothing here asserts on timing. The server runs in a child process
//! (this same binary, hidden `serve` subcommand) so its CPU and memory can be read from `/proc`
//! apart from the load generator's; PostgreSQL is a throwaway cluster started by the harness
//! (durable settings by default), etcd a throwaway member when the Debian package is installed.
//! Every request goes over HTTPS as a kube client would send it.
//!
//! Commands:
//! - `quick`: every workload with tiny sizes on the embedded store and PostgreSQL (CI smoke run,
//!   seconds);
//! - `pg`: the PostgreSQL store's figures (100k 6 KB reports: creates, updates, gets, lists,
//!   storage, admission churn, flood, watch) with the raw PostgreSQL and etcd baselines on the
//!   same documents;
//! - `full`: `pg` on both stores plus mixed datasets of 10k, 100k and 1M results;
//! - `watch-lag`: watch fan-out alone;
//! - `auth-overhead`: what delegated authentication and authorization add to a request;
//! - `migration`: how fast reports stored as CRD objects are copied at start;
//! - `result-metrics`: memory and scrape time of the result gauges, per mode;
//! - `overload`: one client's flood of lists and writes against another's small GETs;
//! - `findings`: the CVSS question over a million results against listing every report, and
//!   what indexing results costs a create;
//! - `findings-store`: findings on PostgreSQL, store-level: create throughput with indexing on and
//!   off, bytes per finding, the CVSS >= 8 question over a million findings;
//! - `flood`: a million admission reports created and label-deleted, with disk and RSS over time;
//! - `render`: regenerate a `docs/BENCHMARKS.md` section from a result file.
//!
//! Modules: [`shapes`] (documents), [`load`] (open and closed loops, CPU accounting), [`api`]
//! (requests), [`procs`] (child processes, `/proc`), [`suite`] (the workloads), [`raw_pg`] and
//! [`etcd`] (baselines), [`watch`] (fan-out), [`report`] (JSON and Markdown).

use std::{io::Write as _, path::PathBuf};

use clap::{Args, Parser, Subcommand};

mod api;
mod etcd;
mod findings;
mod findings_store;
mod flood;
mod in_cluster;
mod load;
mod overload;
mod procs;
mod raw_pg;
mod report;
mod result_metrics;
mod shapes;
mod suite;
mod watch;

/// The server binary's allocator, so the child measures what production runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "reports-bench", about = "Benchmarks for reports-server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options shared by the suite commands.
#[derive(Args, Clone)]
struct Output {
    /// Write the JSON result document here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace this run's section of a Markdown file (e.g. docs/BENCHMARKS.md).
    #[arg(long)]
    docs: Option<PathBuf>,
}

/// Size overrides of the suite commands.
#[derive(Args, Clone)]
struct Overrides {
    /// Stores to run the server on.
    #[arg(long, value_delimiter = ',')]
    stores: Option<Vec<suite::StoreKind>>,
    /// PostgreSQL durability (durable: fsync and synchronous_commit on).
    #[arg(long)]
    durability: Option<procs::Durability>,
    /// Number of 6 KB reports of the core workload.
    #[arg(long)]
    reports: Option<usize>,
    /// Closed-loop clients.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Open-loop create rates per second (one step each).
    #[arg(long, value_delimiter = ',')]
    create_rates: Option<Vec<f64>>,
    /// Seconds of each open-loop step.
    #[arg(long)]
    open_seconds: Option<f64>,
    /// Mixed-dataset tiers in results (e.g. 10000,100000,1000000).
    #[arg(long, value_delimiter = ',')]
    tiers: Option<Vec<usize>>,
    /// Skip the etcd baseline.
    #[arg(long)]
    no_etcd: bool,
}

impl Overrides {
    fn apply(self, mut settings: suite::Settings) -> suite::Settings {
        if let Some(stores) = self.stores {
            settings.stores = stores;
        }
        if let Some(durability) = self.durability {
            settings.durability = durability;
        }
        if let Some(reports) = self.reports {
            settings.core_reports = reports;
        }
        if let Some(concurrency) = self.concurrency {
            settings.concurrency = concurrency;
        }
        if let Some(rates) = self.create_rates {
            settings.create_rates = rates;
        }
        if let Some(seconds) = self.open_seconds {
            settings.open_seconds = seconds;
        }
        if let Some(tiers) = self.tiers {
            settings.tiers = tiers;
        }
        if self.no_etcd {
            settings.etcd = false;
        }
        settings
    }
}

#[derive(Subcommand)]
enum Command {
    /// Every workload with tiny sizes, both stores, raw PostgreSQL baseline (CI smoke run).
    Quick {
        #[command(flatten)]
        output: Output,
    },
    /// The PostgreSQL store's figures with the raw PostgreSQL and etcd baselines.
    Pg {
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Everything: both stores, mixed-dataset tiers, both baselines.
    Full {
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Watch fan-out: delivery lag and memory per watcher.
    WatchLag {
        /// Watcher counts to run, one run each.
        #[arg(long, value_delimiter = ',', default_value = "10,100")]
        watchers: Vec<usize>,
        /// Writes per second (open loop).
        #[arg(long, default_value_t = 500)]
        rate: u64,
        /// Seconds of writing per run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Storage URL for the server (a fresh temporary SQLite file when absent).
        #[arg(long)]
        storage: Option<String>,
        /// Keep reports in a throwaway PostgreSQL started for the run (instead of --storage).
        #[arg(long, conflicts_with = "storage")]
        postgres: bool,
        /// Durability of the --postgres cluster (durable: fsync and synchronous_commit on, as
        /// production runs; fast: fsync off, an upper bound).
        #[arg(long, value_enum, default_value = "durable")]
        durability: procs::Durability,
        /// Watch through a second server process on the same PostgreSQL (cross-replica lag).
        #[arg(long)]
        replica: bool,
        /// How the watchers connect.
        #[arg(long, value_enum, default_value = "h2-each")]
        connections: watch::Connections,
    },
    /// What delegated authentication and authorization add to a keyed GET (warm cache), against
    /// a standalone server, in alternating rounds.
    AuthOverhead {
        /// GETs per round and side.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Rounds per side.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Migration from etcd: how fast a starting server copies reports stored as CRD objects.
    Migration {
        /// PolicyReports stored as CRD objects in the fake kube-apiserver.
        #[arg(long, default_value_t = 100_000)]
        reports: usize,
        /// Storage URL (a temporary SQLite file per start when absent).
        #[arg(long)]
        storage: Option<String>,
    },
    /// One client floods lists and writes while another GETs a small report at a fixed rate:
    /// the probe's latency alone and under the flood, with the in-flight limits on or off.
    Overload {
        /// Concurrent list loops of the flooding client.
        #[arg(long, default_value_t = 600)]
        lists: usize,
        /// Concurrent create loops of the flooding client.
        #[arg(long, default_value_t = 300)]
        writes: usize,
        /// 6 KB reports in the listed namespace.
        #[arg(long, default_value_t = 200)]
        items: usize,
        /// Probe GETs per second.
        #[arg(long, default_value_t = 50.0)]
        probe_rate: f64,
        /// Seconds of flood.
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// Serve without in-flight limits (the comparison).
        #[arg(long)]
        unlimited: bool,
        /// A further flag for the server (repeatable), e.g. `--server-arg=--max-requests-inflight=64`.
        #[arg(long = "server-arg", allow_hyphen_values = true)]
        server_args: Vec<String>,
    },
    /// The findings query API over many results (PostgreSQL) against listing every report, and
    /// create throughput with result indexing on and off.
    Findings {
        /// Results in the queried database.
        #[arg(long, default_value_t = 1_000_000)]
        results: usize,
        /// Results per report.
        #[arg(long, default_value_t = 100)]
        per_report: usize,
        /// Reports per server and round of the write-cost comparison.
        #[arg(long, default_value_t = 1_000)]
        write_reports: usize,
        /// Rounds of the write-cost comparison (alternating indexed and not).
        #[arg(long, default_value_t = 2)]
        write_rounds: usize,
        /// Closed-loop clients.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Repetitions of the first-page and counts questions.
        #[arg(long, default_value_t = 50)]
        repeats: usize,
        /// Repetitions of the whole answer and of the client-side alternative.
        #[arg(long, default_value_t = 3)]
        full_repeats: usize,
    },
    /// Memory and scrape time of the result gauges with Trivy-shaped reports, per mode.
    ResultMetrics {
        /// Reports created.
        #[arg(long, default_value_t = 1000)]
        reports: usize,
        /// Results per report.
        #[arg(long, default_value_t = 100)]
        results: usize,
        /// Scrapes timed per mode.
        #[arg(long, default_value_t = 20)]
        scrapes: usize,
    },
    /// Findings on PostgreSQL (store-level): create throughput with indexing on and off,
    /// bytes per finding, and the CVSS >= 8 question's latency.
    FindingsStore {
        /// Reports per throughput round.
        #[arg(long, default_value_t = 2_500)]
        reports: usize,
        /// Results per report.
        #[arg(long, default_value_t = 40)]
        results: usize,
        /// Rounds per side (indexing on and off alternate).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Concurrent writers.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Findings in the query dataset (0 skips the queries).
        #[arg(long, default_value_t = 1_000_000)]
        query_findings: usize,
        /// Repetitions of each query.
        #[arg(long, default_value_t = 20)]
        repetitions: usize,
        /// PostgreSQL durability.
        #[arg(long, value_enum, default_value = "durable")]
        durability: procs::Durability,
        /// SQL run on each database after its migration, to compare a variant of the schema
        /// (e.g. another `toast_tuple_target`, or an index dropped).
        #[arg(long)]
        variant: Option<String>,
    },
    /// Kyverno's admission reports all at once: create `reports` ~6 KB EphemeralReports, then
    /// label-delete them, printing disk use and server RSS every few seconds.
    Flood(flood::FloodRun),
    /// Regenerate a Markdown section from a result file.
    Render {
        /// The JSON result document.
        #[arg(long)]
        results: PathBuf,
        /// The Markdown file whose section to replace.
        #[arg(long)]
        docs: PathBuf,
        /// The command line to show in the section.
        #[arg(long)]
        command: Option<String>,
    },
    /// Internal: run a server on a free loopback port and print its port.
    #[command(hide = true)]
    Serve {
        /// Storage URL.
        #[arg(long)]
        storage: String,
        /// Record every commit's instant in this file (see the server's `--commit-trace`).
        #[arg(long)]
        commit_trace: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    // Before anything else, as the server binary does; the servers and databases it starts
    // inherit the setting, so every system measured runs with the same memcpy.
    reports_server::glibc::avoid_aliased_rep_movsb();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    match cli.command {
        Command::Serve { storage, commit_trace } => runtime.block_on(serve(storage, commit_trace)),
        Command::Migration { reports, storage } => {
            let result = runtime.block_on(in_cluster::migration_rate(reports, storage))?;
            println!("{result}");
            Ok(())
        }
        Command::Overload { lists, writes, items, probe_rate, seconds, unlimited, server_args } => {
            let flood = overload::Flood { lists, writes, items, probe_rate, seconds, unlimited, server_args };
            println!("{}", runtime.block_on(overload::overload(flood))?);
            Ok(())
        }
        Command::Findings {
            results,
            per_report,
            write_reports,
            write_rounds,
            concurrency,
            repeats,
            full_repeats,
        } => {
            let run = findings::FindingsRun {
                results,
                per_report,
                write_reports,
                write_rounds,
                concurrency,
                repeats,
                full_repeats,
            };
            println!("{}", runtime.block_on(findings::run(run))?);
            Ok(())
        }
        Command::ResultMetrics { reports, results, scrapes } => {
            let sizes = result_metrics::Sizes { reports, results, scrapes };
            println!("{}", runtime.block_on(result_metrics::run(sizes))?);
            Ok(())
        }
        Command::Flood(run) => {
            println!("{}", serde_json::to_string_pretty(&runtime.block_on(flood::flood(run))?)?);
            Ok(())
        }
        Command::AuthOverhead { requests, concurrency, rounds } => {
            let result = runtime.block_on(in_cluster::auth_overhead(requests, concurrency, rounds))?;
            println!("{result}");
            Ok(())
        }
        Command::WatchLag {
            watchers,
            rate,
            seconds,
            storage,
            postgres,
            durability,
            replica,
            connections,
        } => {
            let cluster = postgres.then(|| procs::Postgres::start(durability)).transpose()?;
            let durability = cluster.is_some().then_some(durability);
            for (run, count) in watchers.into_iter().enumerate() {
                // Each run starts from an empty database, as it does from a fresh SQLite file.
                let storage = match &cluster {
                    Some(pg) => Some(pg.database(&format!("reports{run}"))?),
                    None => storage.clone(),
                };
                runtime.block_on(watch::watch_lag(
                    count,
                    rate,
                    seconds,
                    storage,
                    replica,
                    connections,
                    durability,
                ))?;
            }
            Ok(())
        }
        Command::FindingsStore {
            reports,
            results,
            rounds,
            concurrency,
            query_findings,
            repetitions,
            durability,
            variant,
        } => {
            let plan = findings_store::Plan {
                reports,
                results,
                rounds,
                concurrency,
                query_findings,
                repetitions,
                durability,
                variant,
            };
            runtime.block_on(findings_store::run(plan))
        }
        Command::Quick { output } => run_suite(&runtime, suite::Settings::quick(), output, &command_line),
        Command::Pg { output, overrides } => {
            run_suite(&runtime, overrides.apply(suite::Settings::pg()), output, &command_line)
        }
        Command::Full { output, overrides } => {
            run_suite(&runtime, overrides.apply(suite::Settings::full()), output, &command_line)
        }
        Command::Render { results, docs, command } => {
            let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&results)?)?;
            let command = command.or_else(|| doc["command"].as_str().map(String::from)).unwrap_or_default();
            let name = doc["settings"]["name"].as_str().unwrap_or("run").to_string();
            report::update_docs(&docs, &name, &report::markdown(&doc, &command))
        }
    }
}

fn run_suite(
    runtime: &tokio::runtime::Runtime,
    settings: suite::Settings,
    output: Output,
    command_line: &str,
) -> anyhow::Result<()> {
    let name = settings.name.clone();
    let mut doc = runtime.block_on(suite::run(settings))?;
    doc["command"] = serde_json::json!(command_line);
    if let Some(path) = &output.out {
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)?;
        println!("results written to {}", path.display());
    }
    let markdown = report::markdown(&doc, command_line);
    if let Some(path) = &output.docs {
        report::update_docs(path, &name, &markdown)?;
        println!("section {name} of {} updated", path.display());
    } else {
        println!("\n{markdown}");
    }
    Ok(())
}

/// The child side: serve until stdin closes.
async fn serve(storage: String, commit_trace: Option<PathBuf>) -> anyhow::Result<()> {
    let config = reports_server::ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        certificate: reports_server::tls::CertificatePem::self_signed()?,
        storage,
        limits: Default::default(),
        change_log: reports_store::Retention { max_age_seconds: 900, max_entries: 100_000 },
        watch_window_bytes: reports_server::watch::DEFAULT_WINDOW_BYTES,
        commit_trace,
        cluster: None,
        postgres: Default::default(),
        sqlite: Default::default(),
        result_metrics: Default::default(),
    };
    let server = reports_server::Server::start(config).await?;
    println!("READY {}", server.local_addr.port());
    std::io::stdout().flush()?;
    tokio::task::spawn_blocking(|| std::io::stdin().lines().for_each(drop)).await?;
    server.shutdown().await;
    Ok(())
}
