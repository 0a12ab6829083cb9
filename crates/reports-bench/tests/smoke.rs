//! Keeps the harness working: the quick run must finish and deliver every watch event. It checks
//! no timing; figures come from release runs (docs/BENCHMARKS.md).

#[test]
fn the_quick_run_delivers_every_event() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reports-bench")).arg("quick").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let result: serde_json::Value = text
        .lines()
        .find(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .expect("a JSON result line");
    assert_eq!(result["scenario"], "watch-lag");
    assert_eq!(result["events_delivered"], result["events_expected"], "{result}");
    assert!(result["events_expected"].as_u64().unwrap() > 0, "{result}");
}
