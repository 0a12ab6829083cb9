//! The result file and its Markdown rendering: machine facts, one table of rates, one of lists,
//! one of storage, and the ratios ours / raw PostgreSQL and ours / etcd. A rendered run replaces
//! its own section of `docs/BENCHMARKS.md` (between `<!-- reports-bench:NAME:begin -->` and
//! `<!-- reports-bench:NAME:end -->`), leaving the rest of the file alone.

use std::{fmt::Write as _, process::Command};

use serde_json::{json, Value};

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Facts about the machine and the code measured.
pub fn machine(fsync_per_s: Option<f64>) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string());
    let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| (kb / 1048576.0 * 10.0).round() / 10.0);
    let postgres = reports_test_support::find_pg_bin()
        .map(|bin| command_output(&bin.join("postgres").to_string_lossy(), &["--version"]))
        .unwrap_or_default();
    let dirty = !command_output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    json!({
        "cpu": cpu,
        "cores": cores,
        "memory_gib": memory_gib,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "os": format!("Debian {}", std::fs::read_to_string("/etc/debian_version").unwrap_or_default().trim()),
        "postgres": postgres,
        "fsync_per_s": fsync_per_s.map(f64::round),
        "commit": command_output("git", &["rev-parse", "--short", "HEAD"]),
        "worktree_dirty": dirty,
        "date": command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        "load_average_at_start": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

fn number(value: &Value) -> String {
    match value.as_f64() {
        Some(v) if v >= 100.0 => format_thousands(v.round() as i64),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
        None => "–".into(),
    }
}

fn format_thousands(v: i64) -> String {
    let digits = v.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn cpu_cell(result: &Value) -> String {
    result["cpu_s_per_1k_ops"]
        .as_object()
        .map(|cpu| cpu.iter().map(|(k, v)| format!("{k} {}", number(v))).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

fn errors_cell(result: &Value) -> String {
    result["errors"]
        .as_object()
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.iter()
                .map(|(k, v)| format!("{v}×{}", if k == "0" { "transport" } else { k }))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| "0".into())
}

fn find<'a>(results: &'a [Value], system: &str, workload: &str, mode_prefix: &str) -> Option<&'a Value> {
    results.iter().find(|r| {
        r["system"] == system
            && r["workload"] == workload
            && r["mode"].as_str().unwrap_or("").starts_with(mode_prefix)
    })
}

/// The system name of the raw baseline that issues the store's create statement (counter row,
/// change row, NOTIFY) directly; plain `raw-postgres` is the floor (object rows only).
pub const RAW_COUNTER_AND_LOG: &str = "raw-postgres+log";

/// The mode of the open-loop create step whose p99 the ratios quote: the sweep's highest rate,
/// the one the create target names (1,500/s in `pg` and `full`).
fn top_create_step(settings: &Value) -> Option<String> {
    let rates = settings["create_rates"].as_array()?;
    let top = rates.iter().filter_map(Value::as_f64).reduce(f64::max)?;
    // The same text the sweep records ("open 1500/s").
    Some(format!("open {top}/s"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

/// Renders a result document as a Markdown section (without the markers).
pub fn markdown(doc: &Value, command: &str) -> String {
    let machine = &doc["machine"];
    let settings = &doc["settings"];
    let results: Vec<Value> = doc["results"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    let name = settings["name"].as_str().unwrap_or("run");
    let _ = writeln!(out, "## Run `{name}` ({})\n", machine["date"].as_str().unwrap_or(""));
    let _ = writeln!(
        out,
        "Generated by `reports-bench` from its JSON result file; regenerate with the command below.\n"
    );
    let _ = writeln!(out, "```sh\n{command}\n```\n");
    let _ = writeln!(
        out,
        "Machine: {} cores ({}), {} GiB, {}, kernel {}; {}; `pg_test_fsync` fdatasync {} /s at the start. \
         Load average at the start {} (other work shares these cores). Commit `{}`{}, {} build. PostgreSQL durability: **{}** (`{}`). Wall time {} s.\n",
        machine["cores"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["memory_gib"],
        machine["os"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
        machine["postgres"].as_str().unwrap_or("?"),
        number(&machine["fsync_per_s"]),
        machine["load_average_at_start"].as_str().unwrap_or("?"),
        machine["commit"].as_str().unwrap_or("?"),
        if machine["worktree_dirty"] == true { " (with uncommitted changes)" } else { "" },
        machine["build"].as_str().unwrap_or("?"),
        settings["postgres_durability"].as_str().unwrap_or("?"),
        doc["postgres_settings"]
            .as_array()
            .map(|s| s.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
        doc["wall_seconds"],
    );
    let _ = writeln!(
        out,
        "Core documents: {} Kyverno PolicyReports of {} bytes (19 results). Open-loop latency runs from each request's scheduled send time. \
         CPU is seconds per 1,000 operations of each process (for lists: per list).\n",
        number(&settings["core_reports"]),
        doc["core_document_bytes"],
    );

    let _ = writeln!(out, "### Requests\n");
    let _ = writeln!(
        out,
        "| system | workload | mode | ops/s | p50 ms | p99 ms | max ms | errors | CPU s per 1k ops |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for r in results.iter().filter(|r| r["ops_per_s"].is_number() && r["workload"] != "list") {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r["system"].as_str().unwrap_or(""),
            r["workload"].as_str().unwrap_or(""),
            r["mode"].as_str().unwrap_or(""),
            number(&r["ops_per_s"]),
            number(&r["p50_ms"]),
            number(&r["p99_ms"]),
            number(&r["max_ms"]),
            errors_cell(r),
            cpu_cell(r),
        );
    }

    let _ = writeln!(out, "\n### Lists\n");
    let _ = writeln!(out, "| system | dataset | mode | items | MB | total s | request p50 ms | request p99 ms | server RSS growth MB | CPU s per list |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for r in results.iter().filter(|r| r["workload"] == "list") {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r["system"].as_str().unwrap_or(""),
            r["dataset"].as_str().unwrap_or(""),
            r["mode"].as_str().unwrap_or(""),
            number(&r["items"]),
            number(&r["mb"]),
            number(&r["total_s"]),
            number(&r["p50_ms"]),
            number(&r["p99_ms"]),
            r.get("server_rss_growth_mb").map(number).unwrap_or_else(|| "–".into()),
            cpu_cell(r),
        );
    }

    let others: Vec<&Value> = results
        .iter()
        .filter(|r| !r["ops_per_s"].is_number() || r["workload"] == "watch fan-out")
        .filter(|r| r["workload"] != "list")
        .collect();
    if !others.is_empty() {
        let _ = writeln!(out, "\n### Storage, deletecollection, watch\n");
        for r in others {
            let mut fields = r.as_object().cloned().unwrap_or_default();
            let system =
                fields.remove("system").and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            let workload =
                fields.remove("workload").and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            fields.remove("scenario");
            let text: Vec<String> = fields
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k} {s}"),
                    Value::Number(_) => format!("{k} {}", number(v)),
                    other => format!("{k} {other}"),
                })
                .collect();
            let _ = writeln!(out, "- **{system}, {workload}**: {}", text.join("; "));
        }
    }

    let _ = writeln!(out, "\n### Ratios\n");
    let _ = writeln!(
        out,
        "`raw PG` is the floor (object rows only: no counter, change log or NOTIFY); `raw PG + log` issues \
         the store's own create statement (counter row, object row, change row, NOTIFY) directly, one per \
         create, without the server (and without its combining of concurrent creates). Both use the \
         store's tables (same columns, compression and TOAST settings) and store the same JSON.\n"
    );
    let _ = writeln!(
        out,
        "| figure | ours (PostgreSQL) | raw PG | raw PG + log | etcd | ours / raw PG | ours / raw PG + log | ours / etcd |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    let ours = "ours/postgres";
    let cell = |v: Option<f64>| v.map(|v| number(&json!(v))).unwrap_or("–".into());
    let row = |out: &mut String, label: &str, [a, b, l, c]: [Option<f64>; 4]| {
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} | {} | {} |",
            cell(a),
            cell(b),
            cell(l),
            cell(c),
            ratio(a, b),
            ratio(a, l),
            ratio(a, c),
        );
    };
    let top_step = top_create_step(settings);
    let top_label =
        top_step.as_deref().map_or("open loop".to_string(), |s| format!("{s} (the sweep's top step)"));
    for (label, workload, mode, field) in [
        ("create ops/s, closed loop".to_string(), "create", "closed", "ops_per_s"),
        (format!("create p99 ms, {top_label}"), "create", top_step.as_deref().unwrap_or("open"), "p99_ms"),
        ("update ops/s, closed loop".to_string(), "update (RV precondition)", "closed", "ops_per_s"),
        ("update p99 ms, closed loop".to_string(), "update (RV precondition)", "closed", "p99_ms"),
        ("get ops/s, closed loop".to_string(), "get", "closed", "ops_per_s"),
        ("get p99 ms, closed loop".to_string(), "get", "closed", "p99_ms"),
        ("list all, pages of 500, s".to_string(), "list", "limit=500", "total_s"),
    ] {
        let pick = |system: &str| find(&results, system, workload, mode).and_then(|r| r[field].as_f64());
        row(&mut out, &label, [pick(ours), pick("raw-postgres"), pick(RAW_COUNTER_AND_LOG), pick("etcd")]);
    }
    // Sizes after the creates (the first storage record of each system), after VACUUM.
    let storage = |system: &str, field: &str| {
        results
            .iter()
            .find(|r| r["system"] == system && r["workload"] == "storage")
            .and_then(|r| r[field].as_f64())
    };
    let (objects, changes) = ("report_objects_bytes_per_report", "report_changes_bytes_per_report");
    let both = |system: &str| Some(storage(system, objects)? + storage(system, changes)?);
    let etcd = storage("etcd", "db_bytes_per_report_after_compaction_and_defrag");
    row(
        &mut out,
        "bytes per report after the creates: objects table with its indexes and TOAST",
        [
            storage(ours, objects),
            storage("raw-postgres", objects),
            storage(RAW_COUNTER_AND_LOG, objects),
            None,
        ],
    );
    row(
        &mut out,
        "bytes per report after the creates: change log (until compaction)",
        [storage(ours, changes), None, storage(RAW_COUNTER_AND_LOG, changes), None],
    );
    row(
        &mut out,
        "bytes per report after the creates: objects and change log (etcd: bbolt after compaction and defrag)",
        [both(ours), None, both(RAW_COUNTER_AND_LOG), etcd],
    );
    let notes: Vec<&str> =
        doc["notes"].as_array().map(|n| n.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    if !notes.is_empty() {
        let _ = writeln!(out, "\nNotes: {}", notes.join("; "));
    }
    out
}

/// Replaces (or appends) the section `name` of the Markdown file at `path`.
pub fn update_docs(path: &std::path::Path, name: &str, section: &str) -> anyhow::Result<()> {
    let begin = format!("<!-- reports-bench:{name}:begin -->");
    let end = format!("<!-- reports-bench:{name}:end -->");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{begin}\n{section}{end}");
    let updated = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &text[..b], &text[e + end.len()..]),
        _ => format!("{}\n{block}\n", text.trim_end()),
    };
    std::fs::write(path, updated)?;
    Ok(())
}
