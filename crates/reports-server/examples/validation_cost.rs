//! What schema pruning and validation cost on the write path, next to the database write.
//!
//! Run with `cargo run --release -p reports-server --example validation_cost`. For a
//! PolicyReport of 200 and of 3,600 Kyverno-shaped results it times, per report: decoding the
//! JSON body (for scale), pruning, validating, and the durable SQLite insert the write path then
//! performs. Prints a table and one JSON line per size; asserts nothing about time.

use std::time::{Duration, Instant};

use reports_core::Catalogue;
use serde_json::{json, Value};

/// A report with `results` results shaped like Kyverno's Pod Security ones (about 400 bytes each).
fn report(name: &str, results: usize) -> Value {
    let items: Vec<Value> = (0..results)
        .map(|i| {
            let result = ["pass", "fail", "warn", "error", "skip"][i % 5];
            let severity = ["critical", "high", "low", "medium", "info"][i % 5];
            json!({
                "policy": format!("disallow-privilege-escalation-{}", i % 17),
                "rule": "privilege-escalation",
                "result": result,
                "severity": severity,
                "scored": true,
                "source": "kyverno",
                "category": "Pod Security Standards (Restricted)",
                "message": "validation error: Privilege escalation is disallowed. The fields \
                            spec.containers[*].securityContext.allowPrivilegeEscalation must be set to false.",
                "timestamp": {"seconds": 1_700_000_000 + i as i64, "nanos": 0},
                "resources": [{"apiVersion": "v1", "kind": "Pod", "name": format!("web-{i}"),
                    "namespace": "default", "uid": "6b6e4c4e-2f35-4d5e-9b88-3f1e33a1c2d1"}],
                "properties": {"controls": "allowPrivilegeEscalation", "version": "latest"},
            })
        })
        .collect();
    json!({
        "apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
        "metadata": {"name": name, "namespace": "default", "labels": {"app.kubernetes.io/managed-by": "kyverno"},
            "uid": "0b1f4c5e-0000-4000-8000-000000000001", "creationTimestamp": "2026-01-01T00:00:00Z",
            "generation": 1},
        "scope": {"apiVersion": "v1", "kind": "Pod", "name": "web", "namespace": "default"},
        "summary": {"pass": results / 5, "fail": results / 5, "warn": results / 5, "error": results / 5, "skip": results / 5},
        "results": items,
    })
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() -> anyhow::Result<()> {
    let catalogue = Catalogue::embedded()?;
    let kind = catalogue
        .find("wgpolicyk8s.io", "v1alpha2", "policyreports")
        .ok_or_else(|| anyhow::anyhow!("no policyreports in the catalogue"))?;
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = runtime.block_on(reports_store::open(&url, &Default::default()))?;
    println!(
        "{:>8} {:>10} {:>11} {:>10} {:>11} {:>12} {:>9}",
        "results", "bytes", "decode µs", "prune µs", "validate µs", "db write µs", "val/db"
    );
    for (results, iterations) in [(200usize, 200usize), (3_600, 30)] {
        let body = serde_json::to_vec(&report("template", results))?;
        let (mut decode, mut prune, mut validate, mut write) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..iterations {
            let started = Instant::now();
            let mut object: Value = serde_json::from_slice(&body)?;
            decode.push(started.elapsed());

            let started = Instant::now();
            let unknown = kind.validator.prune(&mut object);
            prune.push(started.elapsed());
            anyhow::ensure!(unknown.is_empty(), "the benchmark report has unknown fields: {unknown:?}");

            let started = Instant::now();
            let causes = kind.validator.validate(&object);
            validate.push(started.elapsed());
            anyhow::ensure!(causes.is_empty(), "the benchmark report is invalid: {causes:?}");

            object["metadata"]["name"] = json!(format!("r{results}-{i}"));
            let started = Instant::now();
            runtime.block_on(store.create(kind.storage_key(), object))?;
            write.push(started.elapsed());
        }
        let (decode, prune, validate, write) =
            (median(decode), median(prune), median(validate), median(write));
        let ratio = (micros(prune) + micros(validate)) / micros(write);
        println!(
            "{results:>8} {:>10} {:>11.0} {:>10.0} {:>11.0} {:>12.0} {:>8.1}%",
            body.len(),
            micros(decode),
            micros(prune),
            micros(validate),
            micros(write),
            ratio * 100.0
        );
        println!(
            "{}",
            json!({"scenario": "validation-cost", "results": results, "body_bytes": body.len(),
                "iterations": iterations, "decode_us": micros(decode), "prune_us": micros(prune),
                "validate_us": micros(validate), "db_write_us": micros(write)})
        );
    }
    Ok(())
}
