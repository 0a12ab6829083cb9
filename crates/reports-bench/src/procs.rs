//! Processes the harness starts and measures: the server child, the throwaway PostgreSQL cluster,
//! and CPU and memory read from `/proc`.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use anyhow::Context as _;

/// A server child process (this binary's hidden `serve` subcommand) and its base URL.
pub struct ServerProcess {
    child: Child,
    /// `https://127.0.0.1:PORT`.
    pub base: String,
    /// The file the server records its commits' instants in, when asked to.
    pub commit_trace: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts a server on `storage` (a fresh temporary SQLite file when None).
    pub fn start(storage: Option<&str>) -> anyhow::Result<Self> {
        Self::start_with(storage, false)
    }

    /// [`ServerProcess::start`], and with `trace_commits` the server records the instant of
    /// each of its commits in [`ServerProcess::commit_trace`].
    pub fn start_with(storage: Option<&str>, trace_commits: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let storage = storage
            .map(str::to_string)
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
        let commit_trace = trace_commits.then(|| dir.path().join("commits"));
        let mut command = Command::new(std::env::current_exe()?);
        command.args(["serve", "--storage", &storage]);
        if let Some(path) = &commit_trace {
            command.arg("--commit-trace").arg(path);
        }
        let mut child =
            command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
        let mut first = String::new();
        BufReader::new(child.stdout.take().context("child stdout")?).read_line(&mut first)?;
        let port = first.trim().strip_prefix("READY ").context("server did not start")?;
        Ok(Self { base: format!("https://127.0.0.1:{port}"), child, commit_trace, _dir: dir })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server process, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.child.id())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // the child shuts down cleanly on EOF
        let _ = self.child.wait();
    }
}

/// Resident memory of a process, in bytes (0 when it is gone).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3 onwards).
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')').next().unwrap_or_default().split_whitespace().map(str::to_string).collect()
}

fn ticks(fields: &[String], range: std::ops::Range<usize>) -> f64 {
    fields.get(range).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()) / 100.0
}

/// CPU seconds (user + system) used so far by a process and its threads.
pub fn cpu_seconds(pid: u32) -> f64 {
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the command name.
    ticks(&stat_fields(pid), 11..13)
}

/// CPU seconds of a process, its live children, and its children that have exited and been
/// reaped (PostgreSQL's postmaster reaps every backend, so this is the whole cluster's CPU).
pub fn cpu_seconds_with_children(pid: u32) -> f64 {
    // cutime and cstime follow stime.
    let mut total = ticks(&stat_fields(pid), 11..15);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let fields = stat_fields(child);
            if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
                total += ticks(&fields, 11..13);
            }
        }
    }
    total
}

/// How the throwaway PostgreSQL cluster trades durability for speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// `fsync=on`, `synchronous_commit=on`, `full_page_writes=on`: what production runs.
    Durable,
    /// `fsync=off` (the test suite's setting): an upper bound, never a headline.
    Fast,
}

/// The release `reports-server` binary beside this one, run with the given flags on a free
/// loopback port (as production runs it: its own process, its own flags), killed when dropped.
pub struct ReleaseServer {
    child: Child,
    /// `https://127.0.0.1:PORT`.
    pub base: String,
}

impl ReleaseServer {
    /// Starts `reports-server --secure-port 0 ARGS` and waits until it is ready.
    pub fn start(args: &[String]) -> anyhow::Result<Self> {
        let binary = std::env::current_exe()?.with_file_name("reports-server");
        let mut child = Command::new(&binary)
            .args(["--secure-port", "0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!("starting {} (cargo build --release -p reports-server)", binary.display())
            })?;
        let mut log = BufReader::new(child.stderr.take().context("server stderr")?).lines();
        let mut server = Self { child, base: String::new() };
        server.base = loop {
            let line = log.next().context("the server exited before it was ready")??;
            if let Some(rest) = line.split("is ready on ").nth(1) {
                break rest.split(';').next().unwrap_or_default().trim().to_string();
            }
        };
        // Keep reading the log so the server never blocks on a full pipe.
        std::thread::spawn(move || log.for_each(drop));
        Ok(server)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server as an orchestrator does (SIGTERM) and waits for it to exit, so that what
    /// a clean shutdown leaves behind can be measured.
    pub fn terminate(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

impl Drop for ReleaseServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway PostgreSQL cluster for one run.
pub struct Postgres {
    /// The cluster (stopped and removed by its watchdog when the harness exits).
    pub cluster: reports_test_support::PgCluster,
    /// The settings appended to `postgresql.conf`.
    pub settings: Vec<String>,
}

impl Postgres {
    /// Starts a cluster with the benchmark's memory settings and the given durability.
    pub fn start(durability: Durability) -> anyhow::Result<Self> {
        Self::start_with(durability, &[])
    }

    /// [`start`](Self::start) with `extra` lines appended to `postgresql.conf` after the
    /// benchmark's own (the last setting of a name wins).
    pub fn start_with(durability: Durability, extra: &[String]) -> anyhow::Result<Self> {
        let mut settings = vec![
            "shared_buffers = 1GB".to_string(),
            "max_wal_size = 4GB".into(),
            "max_connections = 300".into(),
            // Autovacuum runs land in the middle of workloads; their timing is in postgres.log.
            "log_autovacuum_min_duration = 0".into(),
        ];
        match durability {
            Durability::Durable => settings.extend(
                ["fsync = on", "synchronous_commit = on", "full_page_writes = on", "min_wal_size = 1GB"]
                    .map(String::from),
            ),
            Durability::Fast => settings.extend(["fsync = off", "full_page_writes = off"].map(String::from)),
        }
        settings.extend(extra.iter().cloned());
        let lines: Vec<&str> = settings.iter().map(String::as_str).collect();
        let cluster = reports_test_support::PgCluster::start_with(&lines, &[])?;
        if durability == Durability::Durable {
            preallocate_wal(&cluster)?;
        }
        Ok(Self { cluster, settings })
    }

    /// The postmaster's process id (first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> Option<u32> {
        let path: PathBuf = self.cluster.data_dir().join("postmaster.pid");
        std::fs::read_to_string(path).ok()?.lines().next()?.trim().parse().ok()
    }

    /// Creates a database and returns its URL.
    pub fn database(&self, name: &str) -> anyhow::Result<String> {
        self.cluster.create_database(name, None)?;
        Ok(self.cluster.url(name))
    }
}

/// Makes a new cluster's WAL look like a running server's: a fresh cluster has no WAL segments
/// to recycle, so every 16 MB segment of the run is created by a committing backend (zero-filled
/// and flushed while commits wait), which stalls commits for 100-250 ms every few seconds at
/// 1,500 creates/s. A server that has been up past its first checkpoint renames old segments
/// instead. So: fill 80 segments, then checkpoint, which recycles them (`min_wal_size = 1GB`
/// keeps 64) for the run to use.
fn preallocate_wal(cluster: &reports_test_support::PgCluster) -> anyhow::Result<()> {
    cluster.psql(
        "postgres",
        "CREATE TABLE wal_warmup (n integer);
         DO $$ BEGIN
           FOR i IN 1..80 LOOP
             INSERT INTO wal_warmup VALUES (i);
             PERFORM pg_switch_wal();
           END LOOP;
         END $$;
         DROP TABLE wal_warmup;
         CHECKPOINT;",
    )?;
    Ok(())
}

/// `pg_test_fsync`'s fdatasync rate on the temporary directory's disk, in operations per second.
pub fn fsync_rate() -> Option<f64> {
    let bin = reports_test_support::find_pg_bin().ok()?;
    let dir = tempfile::tempdir().ok()?;
    let file = dir.path().join("fsync-test");
    let output = Command::new(bin.join("pg_test_fsync"))
        .args(["-s", "1", "-f"])
        .arg(&file)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    // The first "fdatasync" line is the one-write-per-sync figure: "fdatasync   1234.5 ops/sec ...".
    let line = text.lines().find(|l| l.trim_start().starts_with("fdatasync"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
