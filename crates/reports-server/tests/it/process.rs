//! The real binary as an operator runs it: flags, refusals, and durability across `kill -9`.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
};

use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_reports-server");

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(BINARY).args(args).env("NO_COLOR", "1").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Starts the binary on a free port with the database at `db`; returns the child and its URL once
/// it has logged that it is ready (the log line is the synchronisation point).
fn start(db: &std::path::Path) -> (Child, String) {
    let storage = format!("sqlite://{}", db.display());
    let (child, url, _) = start_binary(&["--storage", &storage], &[]);
    (child, url)
}

/// Starts the binary on a free port with extra flags and environment; returns the child, its URL
/// once it has logged that it is ready, and every log line it writes (collected in the
/// background, so the server never blocks on a full pipe).
pub fn start_binary(args: &[&str], env: &[(&str, &str)]) -> (Child, String, Arc<Mutex<Vec<String>>>) {
    let mut command = Command::new(BINARY);
    command.args(args).envs(env.iter().copied());
    start_command(command)
}

/// [`start_binary`] for a command that runs the binary in its own way (under a shell's `ulimit`,
/// say); `--secure-port 0` is appended to its arguments.
pub fn start_command(mut command: Command) -> (Child, String, Arc<Mutex<Vec<String>>>) {
    let mut child = command
        .args(["--secure-port", "0"])
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("server exited before it was ready: {:?}", log.lock().unwrap()))
            .unwrap();
        log.lock().unwrap().push(line.clone());
        if let Some(rest) = line.split("is ready on ").nth(1) {
            break rest.split(';').next().unwrap().to_string();
        }
    };
    let collected = log.clone();
    std::thread::spawn(move || {
        lines.map_while(Result::ok).for_each(|line| collected.lock().unwrap().push(line))
    });
    (child, url, log)
}

pub fn insecure_client() -> reqwest::Client {
    crate::harness::install_crypto();
    reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap()
}

#[test]
fn version_and_help_describe_the_binary() {
    let (ok, text) = run(&["--version"]);
    assert!(ok && text.starts_with("reports-server "), "{text}");
    let (ok, text) = run(&["--help"]);
    assert!(ok && text.contains("--storage") && text.contains("--secure-port"), "{text}");
}

#[test]
fn refuses_etcd_and_unauthenticated_exposure() {
    let (ok, text) = run(&["--etcd=true"]);
    assert!(!ok && text.contains("--etcd") && text.contains("not supported"), "{text}");
    let (ok, text) =
        run(&["--bind-address", "0.0.0.0", "--secure-port", "0", "--storage", "sqlite::memory:"]);
    assert!(!ok && text.contains("without authentication"), "{text}");
    let (ok, text) = run(&["--no-such-flag"]);
    assert!(!ok && text.contains("--no-such-flag"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_dash_nine() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reports.db");
    let http = insecure_client();
    let (mut child, url) = start(&db);
    let collection = format!("{url}/apis/wgpolicyk8s.io/v1alpha2/namespaces/default/policyreports");
    let mut last_rv = 0u64;
    for i in 0..20 {
        let body = json!({"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
            "metadata": {"name": format!("r{i}")}, "summary": {"pass": i}});
        let response = http.post(&collection).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 201);
        let created: Value = response.json().await.unwrap();
        last_rv = created["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    }
    child.kill().unwrap(); // SIGKILL: no shutdown path runs
    child.wait().unwrap();

    let (mut child, url) = start(&db);
    let collection = format!("{url}/apis/wgpolicyk8s.io/v1alpha2/namespaces/default/policyreports");
    let list: Value = http.get(&collection).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 20, "every acknowledged create is still there");
    assert_eq!(list["items"][19]["summary"]["pass"], 9, "items sort by name: r9 is last");
    let body = json!({"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport", "metadata": {"name": "after"}});
    let created: Value = http.post(&collection).json(&body).send().await.unwrap().json().await.unwrap();
    let rv: u64 = created["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    assert!(rv > last_rv, "resourceVersions keep increasing across a crash ({rv} > {last_rv})");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The environment the running server process (same PID as the child) ended up with.
fn environment_of(child: &Child) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
    raw.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect()
}

/// The glibc whose `ldd` is installed (the binary's C library), as (major, minor).
fn installed_glibc() -> Option<(u32, u32)> {
    let out = Command::new("ldd").arg("--version").output().ok()?;
    let first = String::from_utf8_lossy(&out.stdout).lines().next()?.to_string();
    let (major, minor) = first.rsplit(' ').next()?.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The re-execution runs on any CPU: an AMD host takes it by itself, and on others the test
/// sets `REPORTS_SERVER_MEMCPY_ASSUME_AMD=1`, which only replaces the CPU check. Hosts whose
/// glibc is 2.39 or newer never re-execute, and the test checks that instead.
#[test]
fn on_amd_cpus_the_binary_restarts_itself_once_without_aliased_rep_movsb() {
    if !cfg!(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64")) {
        return;
    }
    let restarts = installed_glibc().is_none_or(|v| v < (2, 39));
    let tunable = "glibc.cpu.x86_rep_movsb_threshold=1073741824";
    let storage = ["--storage", "sqlite::memory:"];
    let amd = ("REPORTS_SERVER_MEMCPY_ASSUME_AMD", "1");
    let restarted = |log: &Arc<Mutex<Vec<String>>>| {
        log.lock().unwrap().iter().any(|l| l.contains("restarted with GLIBC_TUNABLES"))
    };

    // Started plainly: the flags still apply (it became ready on the port it was given), the
    // same process (PID) runs with the tunable, and says once that it restarted.
    let (mut child, _, log) = start_binary(&storage, &[amd]);
    let env = environment_of(&child);
    let expected = format!("GLIBC_TUNABLES={tunable}");
    assert_eq!(env.contains(&expected), restarts, "{env:?}");
    assert_eq!(restarted(&log), restarts, "{:?}", log.lock().unwrap());
    child.kill().unwrap();
    child.wait().unwrap();

    // Other tunables are kept; the setting is added after them.
    let (mut child, _, _) = start_binary(&storage, &[amd, ("GLIBC_TUNABLES", "glibc.malloc.check=0")]);
    // glibc splits the variable in place while parsing it, so it is read back joined.
    let env = environment_of(&child).join(":");
    let expected = if restarts {
        format!("GLIBC_TUNABLES=glibc.malloc.check=0:{tunable}")
    } else {
        "GLIBC_TUNABLES=glibc.malloc.check=0:".to_string()
    };
    assert!(env.contains(&expected), "{env}");
    child.kill().unwrap();
    child.wait().unwrap();

    // The operator's opt-out, and a threshold the operator chose, are left alone.
    for setting in
        [("REPORTS_SERVER_KEEP_MEMCPY", "1"), ("GLIBC_TUNABLES", "glibc.cpu.x86_rep_movsb_threshold=4096")]
    {
        let (mut child, _, log) = start_binary(&storage, &[amd, setting]);
        let env = environment_of(&child);
        assert!(!env.iter().any(|v| v.contains(tunable)), "{setting:?}: {env:?}");
        assert!(!restarted(&log), "{setting:?}: {:?}", log.lock().unwrap());
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[test]
fn an_ordinary_start_up_error_is_one_log_line_in_the_chosen_format() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let plain = Command::new(BINARY)
        .args(["--secure-port", &port, "--storage", "sqlite::memory:"])
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert_eq!(plain.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&plain.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("binding 127.0.0.1:") && errors[0].contains("in use"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "no colour codes when stderr is not a terminal: {stderr:?}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace") && !stderr.contains("Caused by"),
        "{stderr}"
    );

    let json = Command::new(BINARY)
        .args(["--secure-port", &port, "--storage", "sqlite::memory:", "--log-format", "json"])
        .output()
        .unwrap();
    assert_eq!(json.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&json.stderr);
    let last: Value =
        serde_json::from_str(stderr.lines().last().unwrap()).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(last["level"], "ERROR");
    assert!(last["fields"]["message"].as_str().unwrap().contains("binding"), "{last}");
    for line in stderr.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("every line is JSON ({e}): {line}"));
    }
    drop(taken);
}

#[test]
fn uninstall_is_a_subcommand_that_needs_a_cluster() {
    let (ok, text) = run(&["uninstall", "--help"]);
    assert!(ok && text.contains("--copy-back") && text.contains("--force"), "{text}");
    let out =
        Command::new(BINARY).args(["uninstall"]).env_remove("KUBERNETES_SERVICE_HOST").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no cluster"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The binary as a Deployment runs it: its own certificate files, a request body limit,
/// upstream's inert flags (one warning naming them), and SIGTERM while watches are open: the
/// streams end cleanly and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_flags_warnings_and_sigterm_with_open_watches() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::harness::TestPki::new();
    let (cert, key) = pki.write_serving_files(dir.path());
    let storage = format!("sqlite://{}", dir.path().join("reports.db").display());
    let (mut child, url, log) = start_binary(
        &[
            "--storage",
            &storage,
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-private-key-file",
            key.to_str().unwrap(),
            "--max-request-body-bytes",
            "20000",
            "--clusterrolename=reports-server",
            "--servicename=reports-server",
        ],
        &[],
    );
    let warnings: Vec<String> = log.lock().unwrap().iter().filter(|l| l.contains("WARN")).cloned().collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("--clusterrolename") && warnings[0].contains("--servicename (no cluster)"),
        "{warnings:?}"
    );
    assert!(!warnings[0].contains("--max-request-body-bytes"), "an honoured flag: {warnings:?}");
    // Clients that trust only the test CA: the files' certificate is served.
    let (http1, http2) =
        (crate::watch::client_trusting(&pki.ca_pem, true), crate::watch::client_trusting(&pki.ca_pem, false));
    let collection = format!("{url}/apis/wgpolicyk8s.io/v1alpha2/namespaces/default/policyreports");
    let small = crate::harness::sample_object(0, "small", Some("default"));
    assert_eq!(http1.post(&collection).json(&small).send().await.unwrap().status(), 201);
    let mut big = crate::harness::sample_object(0, "big", Some("default"));
    big["results"][0]["message"] = json!("x".repeat(20_000));
    let refused = http1.post(&collection).json(&big).send().await.unwrap();
    assert_eq!(refused.status(), 413);
    let status: Value = refused.json().await.unwrap();
    assert_eq!((status["kind"].as_str(), status["code"].as_u64()), (Some("Status"), Some(413)), "{status}");
    // Watches open on both protocols, then SIGTERM.
    let watch = format!("{collection}?watch=1&allowWatchBookmarks=true&timeoutSeconds=600");
    let mut open = Vec::new();
    for http in [&http1, &http2] {
        let response = http.get(&watch).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let mut lines = crate::watch::Lines { response, buffer: Vec::new() };
        assert_eq!(lines.next().await.unwrap()["object"]["metadata"]["name"], "small");
        open.push(lines);
    }
    let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    for mut lines in open {
        while let Some(event) = lines.next().await {
            assert_eq!(event["type"], "BOOKMARK", "{event}");
        }
    }
    let status = crate::harness::within("the process exits after SIGTERM", async {
        tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap()
    })
    .await;
    assert_eq!(status.code(), Some(0), "{:?}", log.lock().unwrap());
    assert!(log.lock().unwrap().iter().any(|l| l.contains("shutting down")));
}
