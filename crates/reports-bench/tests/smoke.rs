//! Keeps the harness working: the quick run (every workload, tiny sizes, the embedded store and
//! PostgreSQL, the raw PostgreSQL baselines) must finish, deliver every watch event and see no
//! failed request other than the deliberately stale updates. It checks no timing; figures come
//! from release runs (docs/BENCHMARKS.md).

use serde_json::Value;

#[test]
fn the_quick_run_completes_every_workload() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reports-bench")).arg("quick").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let results: Vec<Value> =
        text.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();

    let watches: Vec<&Value> = results.iter().filter(|r| r["scenario"] == "watch-lag").collect();
    assert_eq!(watches.len(), 2, "a watch run per store: {text}");
    for watch in watches {
        assert_eq!(watch["events_delivered"], watch["events_expected"], "{watch}");
        assert!(watch["events_expected"].as_u64().unwrap() > 0, "{watch}");
        assert_eq!(watch["writes_failed"], 0, "{watch}");
    }
    for system in ["ours/sqlite", "ours/postgres", "raw-postgres", "raw-postgres+log"] {
        let mine: Vec<&Value> = results.iter().filter(|r| r["system"] == system).collect();
        assert!(
            mine.iter().any(|r| r["workload"] == "create" && r["ops"].as_u64() > Some(0)),
            "{system}: {text}"
        );
        for result in &mine {
            let errors = result["errors"].as_object().cloned().unwrap_or_default();
            let stale = result["workload"].as_str().unwrap_or("").contains("stale");
            assert!(errors.keys().all(|status| stale && status == "409"), "{result}");
        }
    }
    let deleted = results.iter().filter(|r| r["workload"] == "label deletecollection");
    for result in deleted {
        assert_eq!(result["left"], 0, "{result}");
    }
}
