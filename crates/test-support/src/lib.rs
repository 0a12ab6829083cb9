//! Test and benchmark support shared by the store's tests, the server's integration tests and the
//! benchmark harness.
//!
//! # A throwaway PostgreSQL cluster
//!
//! Tests run against a real PostgreSQL server, never a mock. [`PgCluster::start`] runs `initdb`
//! from the PostgreSQL binaries installed on the machine (Debian keeps them under
//! `/usr/lib/postgresql/<version>/bin`; `PG_BIN` overrides the directory) into a temporary
//! directory and starts the server on a free loopback port with durability switched off
//! (`fsync=off`: a crash of the test machine loses nothing worth keeping). PostgreSQL refuses to
//! run as root, so when the tests run as root (CI does) every PostgreSQL command runs as the
//! `postgres` user through `runuser`.
//!
//! Each test gets its own database ([`PgCluster::create_database`]), usually copied from a
//! template that was migrated once, which is much faster than migrating per test.
//!
//! A cluster is normally shared by a whole test binary through a `static`, and statics are never
//! dropped, so the cluster cannot be stopped from `Drop`. Instead a small watchdog shell process
//! stops the server and removes its directory once the process that started it has exited.

pub mod fake_kube;
pub mod https;
pub mod pki;

use std::{
    future::Future,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        OnceLock,
    },
};

/// The cluster shared by every test of one binary (see [`PgCluster::shared`]).
static SHARED: OnceLock<PgCluster> = OnceLock::new();
/// Set once the shared cluster's migrated template exists.
static TEMPLATE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
/// Makes database names unique within the process.
static NEXT_DATABASE: AtomicUsize = AtomicUsize::new(0);
/// The template every test database is copied from.
pub const TEMPLATE_DATABASE: &str = "migrated_template";

/// A PostgreSQL server running from a temporary directory on a loopback port.
pub struct PgCluster {
    /// The directory of the PostgreSQL binaries used.
    bin: PathBuf,
    /// The data directory (inside `root`).
    data: PathBuf,
    /// Everything that belongs to the cluster: data, socket directory, log. The watchdog removes
    /// it, so it is not a `TempDir` (whose drop would race the watchdog).
    root: PathBuf,
    /// The TCP port on 127.0.0.1.
    port: u16,
    /// Whether PostgreSQL commands must run as the `postgres` user (we are root).
    as_postgres_user: bool,
}

/// Failures of the cluster's own commands, with the command's output.
#[derive(Debug)]
pub struct PgError(pub String);

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PgError {}

fn running_as_root() -> bool {
    // The effective uid is not in std; /proc/self/status has it without unsafe code.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(2).map(|uid| uid == "0"))
        .unwrap_or(false)
}

/// Finds the newest PostgreSQL binary directory on the machine (or `PG_BIN`).
pub fn find_pg_bin() -> Result<PathBuf, PgError> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            PgError(format!("no PostgreSQL under /usr/lib/postgresql ({e}); install it or set PG_BIN"))
        })?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| PgError("no initdb under /usr/lib/postgresql/*/bin".into()))
}

fn free_port() -> Result<u16, PgError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| PgError(format!("finding a free port: {e}")))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| PgError(e.to_string()))
}

impl PgCluster {
    /// Creates and starts a new cluster; returns when it accepts connections.
    pub fn start() -> Result<Self, PgError> {
        Self::start_with(&[], &[])
    }

    /// Like [`start`](Self::start), with extra `postgresql.conf` lines and files written into the
    /// data directory before the server starts (e.g. a TLS certificate and `ssl = on`).
    pub fn start_with(settings: &[&str], files: &[(&str, &[u8])]) -> Result<Self, PgError> {
        let bin = find_pg_bin()?;
        let as_postgres_user = running_as_root();
        let root = tempfile::Builder::new()
            .prefix("reports-pg-")
            .tempdir()
            .map_err(|e| PgError(format!("temporary directory: {e}")))?
            .keep();
        let cluster = Self { bin, data: root.join("data"), root, port: free_port()?, as_postgres_user };
        if as_postgres_user {
            // The postgres user must own the tree; 0700 on the root is kept.
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster.root)
                .status()
                .map_err(|e| PgError(format!("chown: {e}")))?;
            if !status.success() {
                return Err(PgError("chown of the cluster directory failed".into()));
            }
        }
        cluster.spawn_watchdog()?;
        cluster.run(
            "initdb",
            &[
                "-D",
                path_str(&cluster.data)?,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        let base_settings = [
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("port = {}", cluster.port),
            format!("unix_socket_directories = '{}'", path_str(&cluster.root)?),
            "fsync = off".into(),
            "full_page_writes = off".into(),
            "max_connections = 300".into(),
            "shared_buffers = 128MB".into(),
            "log_min_messages = warning".into(),
        ];
        let conf = cluster.data.join("postgresql.conf");
        let mut text =
            std::fs::read_to_string(&conf).map_err(|e| PgError(format!("reading {conf:?}: {e}")))?;
        text.push('\n');
        text.push_str(&base_settings.join("\n"));
        text.push('\n');
        text.push_str(&settings.join("\n"));
        text.push('\n');
        std::fs::write(&conf, text).map_err(|e| PgError(format!("writing {conf:?}: {e}")))?;
        for (name, content) in files {
            let path = cluster.data.join(name);
            std::fs::write(&path, content).map_err(|e| PgError(format!("writing {path:?}: {e}")))?;
            // PostgreSQL insists that a private key is private to its owner.
            let mode = if name.ends_with(".key") { "0600" } else { "0644" };
            let mut chmod = Command::new("chmod");
            chmod.arg(mode).arg(&path);
            let mut chown = Command::new("chown");
            chown.arg("postgres:postgres").arg(&path);
            for command in
                [&mut chmod, &mut chown].into_iter().take(if cluster.as_postgres_user { 2 } else { 1 })
            {
                let status = command.status().map_err(|e| PgError(format!("{command:?}: {e}")))?;
                if !status.success() {
                    return Err(PgError(format!("{command:?} failed")));
                }
            }
        }
        cluster.resume()?;
        Ok(cluster)
    }

    /// The cluster shared by every test of this process, started on first use.
    pub fn shared() -> &'static PgCluster {
        SHARED.get_or_init(|| PgCluster::start().expect("start a throwaway PostgreSQL cluster"))
    }

    /// A fresh database on the shared cluster, copied from a template that `migrate` prepared
    /// once (it gets the template's URL); returns the new database's URL.
    pub async fn fresh_database<F, Fut>(migrate: F) -> String
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        let pg = Self::shared();
        TEMPLATE
            .get_or_init(|| async {
                pg.create_database(TEMPLATE_DATABASE, None).expect("create the template database");
                migrate(pg.url(TEMPLATE_DATABASE)).await;
            })
            .await;
        let name = Self::unique_name("t");
        pg.create_database(&name, Some(TEMPLATE_DATABASE)).expect("copy the template database");
        pg.url(&name)
    }

    /// A database name no other caller in this process gets.
    pub fn unique_name(prefix: &str) -> String {
        format!("{prefix}{}_{}", std::process::id(), NEXT_DATABASE.fetch_add(1, Ordering::SeqCst))
    }

    /// Stops the server (fast shutdown: sessions are cut, committed data stays).
    pub fn stop(&self) -> Result<(), PgError> {
        self.run("pg_ctl", &["-D", path_str(&self.data)?, "-m", "fast", "-w", "stop"]).map(|_| ())
    }

    /// Starts the server again after [`stop`](Self::stop); returns when it accepts connections.
    pub fn resume(&self) -> Result<(), PgError> {
        let log = self.root.join("postgres.log");
        self.run("pg_ctl", &["-D", path_str(&self.data)?, "-l", path_str(&log)?, "-t", "60", "-w", "start"])
            .map(|_| ())
    }

    /// The data directory (its `postmaster.pid` names the server process).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database` as the superuser `postgres` (no password: trust auth).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs SQL through `psql` on `database`, failing on the first error; returns psql's output
    /// (tuples only, unaligned).
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, PgError> {
        let port = self.port.to_string();
        self.run(
            "psql",
            &[
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ],
        )
    }

    /// Creates an empty database, or a copy of `template` (which must have no open sessions:
    /// any that are left are ended first).
    pub fn create_database(&self, name: &str, template: Option<&str>) -> Result<(), PgError> {
        let sql = match template {
            Some(t) => {
                self.psql(
                    "postgres",
                    &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{t}' AND pid <> pg_backend_pid()"),
                )?;
                format!("CREATE DATABASE \"{name}\" TEMPLATE \"{t}\"")
            }
            None => format!("CREATE DATABASE \"{name}\""),
        };
        self.psql("postgres", &sql).map(|_| ())
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String, PgError> {
        let output = self
            .command(program)
            .args(args)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| PgError(format!("running {program}: {e}")))?;
        if !output.status.success() {
            let log = std::fs::read_to_string(self.root.join("postgres.log")).unwrap_or_default();
            return Err(PgError(format!(
                "{program} {args:?} failed: {}\n{}\n{}\nserver log:\n{log}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Stops the server and removes its directory once this process has exited.
    fn spawn_watchdog(&self) -> Result<(), PgError> {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = if self.as_postgres_user {
            format!(
                "runuser -u postgres -- {} -D {} -m immediate stop",
                path_str(&pg_ctl)?,
                path_str(&self.data)?
            )
        } else {
            format!("{} -D {} -m immediate stop", path_str(&pg_ctl)?, path_str(&self.data)?)
        };
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {root}",
            pid = std::process::id(),
            root = path_str(&self.root)?,
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(|_| ())
            .map_err(|e| PgError(format!("starting the cluster watchdog: {e}")))
    }
}

fn path_str(path: &Path) -> Result<&str, PgError> {
    path.to_str().ok_or_else(|| PgError(format!("path is not UTF-8: {path:?}")))
}
