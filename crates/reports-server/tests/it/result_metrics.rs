//! Result metrics: Policy Reporter's gauges on `/metrics` follow every write, on every replica,
//! with Policy Reporter's exact label sets (its fixed modes, and the operator's custom labels),
//! and within the series limit.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use reports_server::result_metrics::{Mode, Settings};
use serde_json::{json, Value};

use crate::harness::{postgres_database, within, TestServer, KINDS};

/// A series' labels.
type Labels = BTreeMap<String, String>;

/// Kind indexes in [`KINDS`].
const POLR: usize = 0;
const CPOLR: usize = 1;
const REPORT: usize = 4;
const CREPORT: usize = 5;

async fn scrape(t: &TestServer) -> String {
    let response = t.http().get(t.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// Parses a label set `k="v",...` (text-format escapes undone).
fn parse_labels(text: &str) -> Labels {
    let mut labels = Labels::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("dangling escape in {text}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated value in {text}"),
            }
        };
        labels.insert(name.trim_start_matches(',').to_string(), value);
        rest = &after[end + 1..];
    }
    labels
}

/// Every series of `family`, with its value.
fn family(text: &str, name: &str) -> BTreeMap<Labels, f64> {
    let mut series = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(inner) => {
                let (labels, value) = inner.rsplit_once("} ").unwrap();
                (parse_labels(labels), value)
            }
            None => match rest.strip_prefix(' ') {
                Some(value) => (Labels::new(), value),
                None => continue,
            },
        };
        assert!(series.insert(labels, value.parse().unwrap()).is_none(), "duplicate series: {line}");
    }
    series
}

/// The value of an unlabelled line, if present.
fn gauge(text: &str, name: &str) -> Option<f64> {
    family(text, name).get(&Labels::new()).copied()
}

/// The scrape once the result metrics have counted every change committed so far. Polls: the
/// tail follows commits asynchronously, and on another replica after a notification.
async fn settled(t: &TestServer) -> String {
    let rv = t.store().current_rv().await.unwrap() as f64;
    within("the result metrics reach the last write", async {
        loop {
            let text = scrape(t).await;
            if gauge(&text, "reports_server_result_metrics_resource_version").is_some_and(|v| v >= rv) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Labels from pairs.
fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A detailed series' labels: `ns` (None for the cluster gauge), then rule, policy, report,
/// kind, name, status, severity, category, source.
fn detailed(ns: Option<&str>, values: [&str; 9]) -> Labels {
    let names = ["rule", "policy", "report", "kind", "name", "status", "severity", "category", "source"];
    let mut labels: Labels = names.iter().zip(values).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    if let Some(ns) = ns {
        labels.insert("namespace".into(), ns.into());
    }
    labels
}

fn collection(index: usize, ns: Option<&str>) -> String {
    let (group, version, _, plural, namespaced) = KINDS[index];
    match (namespaced, ns) {
        (true, Some(ns)) => format!("/apis/{group}/{version}/namespaces/{ns}/{plural}"),
        _ => format!("/apis/{group}/{version}/{plural}"),
    }
}

/// A report of kind `index` with `results`.
fn report(index: usize, ns: Option<&str>, name: &str, results: Value) -> Value {
    let (group, version, kind, _, _) = KINDS[index];
    let mut metadata = json!({"name": name});
    if let Some(ns) = ns {
        metadata["namespace"] = json!(ns);
    }
    json!({"apiVersion": format!("{group}/{version}"), "kind": kind, "metadata": metadata, "results": results})
}

async fn create(t: &TestServer, index: usize, ns: Option<&str>, object: &Value) {
    let response = t.http().post(t.url(&collection(index, ns))).json(object).send().await.unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 201, "{body}");
}

/// Replaces a report by itself after `change` (read, change, put).
async fn modify(t: &TestServer, index: usize, ns: Option<&str>, name: &str, change: impl FnOnce(&mut Value)) {
    let url = t.url(&format!("{}/{name}", collection(index, ns)));
    let mut object: Value = t.http().get(&url).send().await.unwrap().json().await.unwrap();
    change(&mut object);
    let response = t.http().put(&url).json(&object).send().await.unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
}

/// Replaces the results of a report (read, change, put).
async fn set_results(t: &TestServer, index: usize, ns: Option<&str>, name: &str, results: Value) {
    modify(t, index, ns, name, |object| object["results"] = results).await;
}

/// Deletes one report or a collection; reads the whole answer, as a deletecollection streams
/// its answer while it deletes.
async fn delete(t: &TestServer, target: &str) {
    let response = t.http().delete(t.url(target)).send().await.unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
}

fn result(policy: &str, rule: &str, status: &str, severity: &str, resource: Option<(&str, &str)>) -> Value {
    let mut result = json!({"policy": policy, "rule": rule, "result": status, "category": "Best Practices", "source": "kyverno"});
    if !severity.is_empty() {
        result["severity"] = json!(severity);
    }
    if let Some((kind, name)) = resource {
        result["resources"] = json!([{"apiVersion": "v1", "kind": kind, "name": name, "namespace": "a"},
            {"apiVersion": "v1", "kind": kind, "name": "second-resource-not-counted", "namespace": "a"}]);
    }
    result
}

const NS: &str = "policy_report_result";
const CLUSTER: &str = "cluster_policy_report_result";

on_both_stores! {
    /// Creates, updates (a severity change, results shrinking to none), patches, deletes and
    /// deletecollection move the detailed gauges exactly.
    async fn detailed_gauges_follow_every_write(t) {
        let pod = Some(("Pod", "web"));
        create(&t, POLR, Some("a"), &report(POLR, Some("a"), "polr", json!([
            result("require-labels", "check", "fail", "high", pod),
            result("require-labels", "check", "fail", "high", pod),
            result("disallow-latest", "tag", "pass", "", pod),
        ]))).await;
        let mut cluster = report(CPOLR, None, "cpolr", json!([{"policy": "ns-owner", "result": "warn"}]));
        cluster["scope"] = json!({"apiVersion": "v1", "kind": "Namespace", "name": "a"});
        create(&t, CPOLR, None, &cluster).await;
        let mut open = report(REPORT, Some("b"), "open", json!([{"policy": "p", "rule": "r", "result": "fail"}]));
        open["source"] = json!("kubewarden");
        create(&t, REPORT, Some("b"), &open).await;
        create(&t, CREPORT, None, &report(CREPORT, None, "cr", json!([{"policy": "c", "result": "error", "source": "s"}]))).await;

        let text = settled(&t).await;
        let labels_polr_fail = detailed(Some("a"), ["check", "require-labels", "polr", "Pod", "web", "fail", "high", "Best Practices", "kyverno"]);
        let labels_polr_pass = detailed(Some("a"), ["tag", "disallow-latest", "polr", "Pod", "web", "pass", "", "Best Practices", "kyverno"]);
        let labels_open = detailed(Some("b"), ["r", "p", "open", "", "", "fail", "", "Other", "kubewarden"]);
        assert_eq!(family(&text, NS), BTreeMap::from([
            (labels_polr_fail.clone(), 1.0),
            (labels_polr_pass.clone(), 1.0),
            (labels_open.clone(), 1.0),
        ]), "{text}");
        let labels_cpolr = detailed(None, ["", "ns-owner", "cpolr", "Namespace", "a", "warn", "", "Other", ""]);
        let labels_cr = detailed(None, ["", "c", "cr", "", "", "error", "", "Other", "s"]);
        assert_eq!(family(&text, CLUSTER), BTreeMap::from([(labels_cpolr.clone(), 1.0), (labels_cr.clone(), 1.0)]));
        assert_eq!(gauge(&text, "reports_server_result_metrics_series"), Some(5.0));
        assert_eq!(gauge(&text, "reports_server_result_metrics_reports"), Some(4.0));

        // A severity change moves the results to another series; the old one is gone.
        set_results(&t, POLR, Some("a"), "polr", json!([
            result("require-labels", "check", "fail", "critical", pod),
            result("disallow-latest", "tag", "pass", "", pod),
        ])).await;
        let text = settled(&t).await;
        let mut labels_polr_critical = labels_polr_fail.clone();
        labels_polr_critical.insert("severity".into(), "critical".into());
        assert_eq!(family(&text, NS), BTreeMap::from([
            (labels_polr_critical, 1.0),
            (labels_polr_pass, 1.0),
            (labels_open.clone(), 1.0),
        ]), "{text}");

        // Results shrinking to none leave nothing behind.
        set_results(&t, POLR, Some("a"), "polr", json!([])).await;
        let text = settled(&t).await;
        assert_eq!(family(&text, NS), BTreeMap::from([(labels_open, 1.0)]), "{text}");

        // A merge patch is a write like any other.
        let response = t.http().patch(t.url(&format!("{}/cpolr", collection(CPOLR, None))))
            .header("content-type", "application/merge-patch+json")
            .body(json!({"results": [{"policy": "ns-owner", "result": "fail"}]}).to_string())
            .send().await.unwrap();
        assert_eq!(response.status(), 200);
        let text = settled(&t).await;
        let mut labels_cpolr_fail = labels_cpolr.clone();
        labels_cpolr_fail.insert("status".into(), "fail".into());
        assert_eq!(family(&text, CLUSTER), BTreeMap::from([(labels_cpolr_fail, 1.0), (labels_cr.clone(), 1.0)]));

        delete(&t, &format!("{}/cpolr", collection(CPOLR, None))).await;
        let text = settled(&t).await;
        assert_eq!(family(&text, CLUSTER), BTreeMap::from([(labels_cr, 1.0)]));

        // deletecollection.
        delete(&t, &collection(REPORT, Some("b"))).await;
        delete(&t, &collection(CREPORT, None)).await;
        let text = settled(&t).await;
        assert_eq!((family(&text, NS).len(), family(&text, CLUSTER).len()), (0, 0), "{text}");
        assert_eq!(gauge(&text, "reports_server_result_metrics_series"), Some(0.0));
        assert_eq!(gauge(&text, "reports_server_result_metrics_reports"), Some(0.0));
        assert!(text.contains("# TYPE policy_report_result gauge\n"));
    }
}

/// A server on `store` ("sqlite" or "postgres") with `settings`.
async fn start(store: &str, settings: Settings) -> TestServer {
    let url = if store == "postgres" { Some(postgres_database().await) } else { None };
    TestServer::start_with(move |config| {
        config.result_metrics = settings;
        if let Some(url) = url {
            config.storage = url;
        }
    })
    .await
}

/// Declares `NAME::sqlite` and `NAME::postgres` running `body(store)`.
macro_rules! on_both_stores_named {
    ($(#[doc = $doc:expr])* async fn $name:ident($store:ident) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($store: &str) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run("sqlite").await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run("postgres").await
            }
        }
    };
}

on_both_stores_named! {
    /// The simple mode counts results by namespace, policy, status, severity, category and source.
    async fn simple_mode_counts_results(store) {
        let t = start(store, Settings { mode: Mode::Simple, ..Default::default() }).await;
        let results = json!([
            result("p", "r1", "fail", "high", Some(("Pod", "x"))),
            result("p", "r2", "fail", "high", Some(("Pod", "y"))),
            result("p", "r3", "pass", "high", None),
        ]);
        create(&t, POLR, Some("a"), &report(POLR, Some("a"), "one", results.clone())).await;
        create(&t, REPORT, Some("a"), &report(REPORT, Some("a"), "two", results)).await;
        create(&t, CPOLR, None, &report(CPOLR, None, "c", json!([{"policy": "q", "result": "skip", "source": "s"}]))).await;
        let text = settled(&t).await;
        let simple = |ns: Option<&str>, policy, status, severity, category, source| {
            let mut l = labels(&[("policy", policy), ("status", status), ("severity", severity), ("category", category), ("source", source)]);
            if let Some(ns) = ns {
                l.insert("namespace".into(), ns.into());
            }
            l
        };
        assert_eq!(family(&text, NS), BTreeMap::from([
            (simple(Some("a"), "p", "fail", "high", "Best Practices", "kyverno"), 4.0),
            (simple(Some("a"), "p", "pass", "high", "Best Practices", "kyverno"), 2.0),
        ]), "{text}");
        assert_eq!(family(&text, CLUSTER), BTreeMap::from([(simple(None, "q", "skip", "", "Other", "s"), 1.0)]));

        delete(&t, &format!("{}/one", collection(POLR, Some("a")))).await;
        let text = settled(&t).await;
        assert_eq!(family(&text, NS), BTreeMap::from([
            (simple(Some("a"), "p", "fail", "high", "Best Practices", "kyverno"), 2.0),
            (simple(Some("a"), "p", "pass", "high", "Best Practices", "kyverno"), 1.0),
        ]), "{text}");
    }
}

on_both_stores_named! {
    /// Beyond the limit no series is created, and what is missing is counted; freeing room and
    /// rewriting the report counts it again.
    async fn the_series_limit_refuses_and_counts(store) {
        let t = start(store, Settings { mode: Mode::Detailed, max_series: 3, ..Default::default() }).await;
        let results: Vec<Value> = (0..5).map(|i| result(&format!("p{i}"), "r", "fail", "low", None)).collect();
        create(&t, POLR, Some("a"), &report(POLR, Some("a"), "big", json!(results))).await;
        let text = settled(&t).await;
        assert_eq!(family(&text, NS).len(), 3, "{text}");
        assert_eq!(gauge(&text, "reports_server_result_metrics_series"), Some(3.0));
        assert_eq!(gauge(&text, "reports_server_result_metrics_max_series"), Some(3.0));
        assert_eq!(gauge(&text, "reports_server_result_metrics_dropped_results"), Some(2.0));
        assert_eq!(gauge(&text, "reports_server_result_metrics_dropped_series_total"), Some(2.0));
        // Another report cannot add a series either.
        create(&t, CPOLR, None, &report(CPOLR, None, "c", json!([{"policy": "q", "result": "fail"}]))).await;
        let text = settled(&t).await;
        assert_eq!(family(&text, CLUSTER).len(), 0);
        assert_eq!(gauge(&text, "reports_server_result_metrics_dropped_results"), Some(3.0));
        assert_eq!(gauge(&text, "reports_server_result_metrics_dropped_series_total"), Some(3.0));
        // Room is freed; the refused report's next write is counted.
        delete(&t, &format!("{}/big", collection(POLR, Some("a")))).await;
        set_results(&t, CPOLR, None, "c", json!([{"policy": "q", "result": "fail"}, {"policy": "q2", "result": "fail"}])).await;
        let text = settled(&t).await;
        assert_eq!((family(&text, NS).len(), family(&text, CLUSTER).len()), (0, 2), "{text}");
        assert_eq!(gauge(&text, "reports_server_result_metrics_dropped_results"), Some(0.0));
        assert_eq!(gauge(&text, "reports_server_result_metrics_dropped_series_total"), Some(3.0), "a counter");
    }
}

/// The custom labels of [`custom_labels_follow_every_write`], as an operator lists them (in no
/// particular order): two plain labels whose values Policy Reporter computes (the namespace,
/// dropped from the cluster gauge, and the category, `Other` when empty), a result property and
/// a report label, both under sanitised names.
const CUSTOM_LABELS: [&str; 6] = [
    "policy",
    "status",
    "namespace",
    "property:artifact.repository",
    "label:app.kubernetes.io/managed-by",
    "category",
];

/// A result for the custom labels: the `artifact.repository` property when `repository` is given
/// (another property beside it, which no label reads).
fn finding(policy: &str, status: &str, repository: Option<&str>) -> Value {
    let mut result =
        json!({"policy": policy, "rule": "r", "result": status, "severity": "high", "source": "Trivy"});
    if let Some(repository) = repository {
        result["properties"] = json!({"artifact.repository": repository, "artifact.tag": "1.25"});
    }
    result
}

/// A report with metadata labels: `app.kubernetes.io/managed-by` when `managed_by` is given, and
/// another label that no series reads.
fn labelled(index: usize, ns: Option<&str>, name: &str, managed_by: Option<&str>, results: Value) -> Value {
    let mut object = report(index, ns, name, results);
    object["metadata"]["labels"] = json!({"team": "platform"});
    if let Some(managed_by) = managed_by {
        object["metadata"]["labels"]["app.kubernetes.io/managed-by"] = json!(managed_by);
    }
    object
}

/// A custom series' labels: `ns` (None for the cluster gauge), then the report label, the
/// repository property, category, policy and status.
fn custom(ns: Option<&str>, values: [&str; 5]) -> Labels {
    let names = ["app_kubernetes_io_managed_by", "artifact_repository", "category", "policy", "status"];
    let mut labels: Labels = names.iter().zip(values).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    if let Some(ns) = ns {
        labels.insert("namespace".into(), ns.into());
    }
    labels
}

on_both_stores_named! {
    /// The custom mode: the operator's labels, with a report label and a result property, count
    /// results exactly through creates, an update (of the report's labels and of its results)
    /// and deletes.
    async fn custom_labels_follow_every_write(store) {
        let labels = CUSTOM_LABELS.iter().map(|l| l.to_string()).collect();
        let t = start(store, Settings { mode: Mode::Custom, labels, ..Default::default() }).await;
        let nginx = Some("library/nginx");
        let mut security = finding("q", "pass", nginx);
        security["category"] = json!("Security");
        create(&t, POLR, Some("a"), &labelled(POLR, Some("a"), "polr", Some("kyverno"), json!([
            finding("p", "fail", nginx),
            finding("p", "fail", nginx),
            finding("p", "fail", None),
            security,
        ]))).await;
        create(&t, POLR, Some("a"), &labelled(POLR, Some("a"), "other", Some("kyverno"), json!([finding("p", "fail", nginx)]))).await;
        create(&t, REPORT, Some("b"), &report(REPORT, Some("b"), "open", json!([finding("p", "fail", Some("library/redis"))]))).await;
        create(&t, CPOLR, None, &labelled(CPOLR, None, "cluster", Some("trivy-operator"), json!([finding("c", "warn", nginx)]))).await;

        let text = settled(&t).await;
        let redis = custom(Some("b"), ["", "library/redis", "Other", "p", "fail"]);
        assert_eq!(family(&text, NS), BTreeMap::from([
            (custom(Some("a"), ["kyverno", "library/nginx", "Other", "p", "fail"]), 3.0),
            (custom(Some("a"), ["kyverno", "", "Other", "p", "fail"]), 1.0),
            (custom(Some("a"), ["kyverno", "library/nginx", "Security", "q", "pass"]), 1.0),
            (redis.clone(), 1.0),
        ]), "{text}");
        let cluster = custom(None, ["trivy-operator", "library/nginx", "Other", "c", "warn"]);
        assert_eq!(family(&text, CLUSTER), BTreeMap::from([(cluster.clone(), 1.0)]), "{text}");
        assert_eq!(gauge(&text, "reports_server_result_metrics_series"), Some(5.0));
        assert_eq!(gauge(&text, "reports_server_result_metrics_reports"), Some(4.0));
        // Written as Prometheus' Go client writes it: labels by name, whatever the order given.
        assert!(text.contains("\npolicy_report_result{app_kubernetes_io_managed_by=\"kyverno\",artifact_repository=\"library/nginx\",category=\"Other\",namespace=\"a\",policy=\"p\",status=\"fail\"} 3\n"), "{text}");
        assert!(text.contains("\ncluster_policy_report_result{app_kubernetes_io_managed_by=\"trivy-operator\",artifact_repository=\"library/nginx\",category=\"Other\",policy=\"c\",status=\"warn\"} 1\n"), "{text}");

        // An update: the report's label changes and so do its results; its old contribution goes
        // whole, the other report's stays.
        modify(&t, POLR, Some("a"), "polr", |object| {
            object["metadata"]["labels"]["app.kubernetes.io/managed-by"] = json!("argocd");
            object["results"] = json!([finding("p", "fail", nginx), finding("p", "warn", nginx)]);
        }).await;
        let text = settled(&t).await;
        assert_eq!(family(&text, NS), BTreeMap::from([
            (custom(Some("a"), ["kyverno", "library/nginx", "Other", "p", "fail"]), 1.0),
            (custom(Some("a"), ["argocd", "library/nginx", "Other", "p", "fail"]), 1.0),
            (custom(Some("a"), ["argocd", "library/nginx", "Other", "p", "warn"]), 1.0),
            (redis.clone(), 1.0),
        ]), "{text}");
        assert_eq!(family(&text, CLUSTER), BTreeMap::from([(cluster, 1.0)]));

        delete(&t, &format!("{}/other", collection(POLR, Some("a")))).await;
        delete(&t, &format!("{}/cluster", collection(CPOLR, None))).await;
        let text = settled(&t).await;
        assert_eq!(family(&text, NS), BTreeMap::from([
            (custom(Some("a"), ["argocd", "library/nginx", "Other", "p", "fail"]), 1.0),
            (custom(Some("a"), ["argocd", "library/nginx", "Other", "p", "warn"]), 1.0),
            (redis, 1.0),
        ]), "{text}");
        assert_eq!(family(&text, CLUSTER).len(), 0, "{text}");
        assert_eq!(gauge(&text, "reports_server_result_metrics_series"), Some(3.0));
        assert_eq!(gauge(&text, "reports_server_result_metrics_reports"), Some(2.0));
    }
}

/// Starts the binary with `args` (on a free port, with an in-memory store) expecting it to refuse
/// to start: returns what it logged. A server that starts instead is stopped and the test fails.
fn refused_at_start(args: &[&str]) -> String {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_reports-server"))
        .args(["--secure-port", "0", "--storage", "sqlite::memory:"])
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("the server started with {args:?}:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

/// Custom labels Policy Reporter would not export, and labels without the custom mode, stop the
/// server at start-up with a message naming what is wrong: the binary exits, and so does an
/// embedding program's `Server::start`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_custom_labels_are_refused_at_start_up() {
    let custom = ["--result-metrics", "custom", "--result-metrics-labels"];
    let cases: [(&[&str], &str); 5] = [
        (&[&custom[..], &["policy,bogus,status"]].concat(), "\"bogus\" is not a label"),
        (
            &[&custom[..], &["policy,label:app/name,property:app.name"]].concat(),
            "\"property:app.name\" is named \"app_name\", as an earlier label is",
        ),
        (
            &[&custom[..], &["property:cvss score"]].concat(),
            "\"property:cvss score\" would be named \"cvss score\", which is not a Prometheus label name",
        ),
        (&["--result-metrics", "custom"], "--result-metrics custom needs its labels"),
        (
            &["--result-metrics", "simple", "--result-metrics-labels", "policy"],
            "--result-metrics-labels is only read with --result-metrics custom, not simple",
        ),
    ];
    for (args, message) in cases {
        let stderr = refused_at_start(args);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
        assert!(errors.len() == 1 && errors[0].contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("is ready on"), "{stderr}");
    }

    crate::harness::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let config = reports_server::ServerConfig {
        result_metrics: Settings {
            mode: Mode::Custom,
            labels: vec!["policy".into(), "Severity".into()],
            ..Default::default()
        },
        ..crate::harness::standalone_config(&crate::harness::TestPki::new(), dir.path())
    };
    let error = reports_server::Server::start(config).await.err().expect("refused");
    assert!(format!("{error:#}").contains("\"Severity\" is not a label"), "{error:#}");
    assert!(!dir.path().join("reports.db").exists(), "refused before the store is opened");
}

/// Off exposes nothing and does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_exposes_nothing() {
    let t = start("sqlite", Settings { mode: Mode::Off, ..Default::default() }).await;
    create(
        &t,
        POLR,
        Some("a"),
        &report(POLR, Some("a"), "r", json!([result("p", "r", "fail", "high", None)])),
    )
    .await;
    let text = scrape(&t).await;
    assert!(text.contains("apiserver_request_total"), "{text}");
    assert!(
        !text.contains("policy_report_result") && !text.contains("reports_server_result_metrics"),
        "{text}"
    );
}

/// A second replica on the same PostgreSQL database shows the first one's writes: the reports
/// there when it starts, and those written afterwards, through the change log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_shows_the_clusters_numbers() {
    let url = postgres_database().await;
    let url_b = url.clone();
    let a = TestServer::start_with(move |config| config.storage = url).await;
    let pod = Some(("Pod", "web"));
    create(
        &a,
        POLR,
        Some("a"),
        &report(POLR, Some("a"), "before", json!([result("p", "r", "fail", "high", pod)])),
    )
    .await;
    let b = TestServer::start_with(move |config| config.storage = url_b).await;
    let before =
        detailed(Some("a"), ["r", "p", "before", "Pod", "web", "fail", "high", "Best Practices", "kyverno"]);
    assert_eq!(family(&settled(&b).await, NS), BTreeMap::from([(before.clone(), 1.0)]));

    create(
        &a,
        POLR,
        Some("a"),
        &report(POLR, Some("a"), "after", json!([result("p", "r", "warn", "low", pod)])),
    )
    .await;
    delete(&a, &format!("{}/before", collection(POLR, Some("a")))).await;
    let after =
        detailed(Some("a"), ["r", "p", "after", "Pod", "web", "warn", "low", "Best Practices", "kyverno"]);
    let text = settled(&b).await;
    assert_eq!(family(&text, NS), BTreeMap::from([(after, 1.0)]), "{text}");
    assert_eq!(family(&text, NS), family(&settled(&a).await, NS), "both replicas agree");
}

/// What Policy Reporter would export for a report, written from its rules as stated (results
/// prepared: the first resource, else the scope; category `Other` when empty; the report's
/// source when the result has none, that being an openreports report's own `source` or else its
/// first result's), independently of the server's code.
fn policy_reporter_series(object: &Value, openreports: bool) -> Vec<(bool, Labels)> {
    let results = object["results"].as_array().cloned().unwrap_or_default();
    let field = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    let mut report_source = if openreports { field(object, "source") } else { String::new() };
    if report_source.is_empty() {
        report_source = results.first().map(|r| field(r, "source")).unwrap_or_default();
    }
    let namespace = field(&object["metadata"], "namespace");
    results
        .iter()
        .map(|r| {
            let subject = match r["resources"].as_array() {
                Some(list) if !list.is_empty() => list[0].clone(),
                _ => object["scope"].clone(),
            };
            let or =
                |value: String, default: &str| if value.is_empty() { default.to_string() } else { value };
            let mut labels = labels(&[
                ("rule", &field(r, "rule")),
                ("policy", &field(r, "policy")),
                ("report", &field(&object["metadata"], "name")),
                ("kind", &field(&subject, "kind")),
                ("name", &field(&subject, "name")),
                ("status", &field(r, "result")),
                ("severity", &field(r, "severity")),
                ("category", &or(field(r, "category"), "Other")),
                ("source", &or(field(r, "source"), &report_source)),
            ]);
            if !namespace.is_empty() {
                labels.insert("namespace".into(), namespace.clone());
            }
            (namespace.is_empty(), labels)
        })
        .collect()
}

/// Every real sample, as Policy Reporter would count it: the same series, label for label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_samples_have_policy_reporters_label_sets() {
    let t = TestServer::start().await;
    let mut expected: [BTreeSet<Labels>; 2] = Default::default();
    for (n, (file, raw)) in crate::samples::load_samples().into_iter().enumerate() {
        let index = crate::samples::served_kind(&raw);
        let object = crate::samples::creatable(index, n, raw);
        let ns = object["metadata"]["namespace"].as_str().map(str::to_string);
        let response =
            t.http().post(t.url(&collection(index, ns.as_deref()))).json(&object).send().await.unwrap();
        assert_eq!(response.status(), 201, "{file}");
        if [POLR, CPOLR, REPORT, CREPORT].contains(&index) {
            for (cluster, labels) in policy_reporter_series(&object, index >= REPORT) {
                expected[usize::from(cluster)].insert(labels);
            }
        }
    }
    let text = settled(&t).await;
    let ones = |set: &BTreeSet<Labels>| set.iter().map(|l| (l.clone(), 1.0)).collect::<BTreeMap<_, _>>();
    assert!(
        expected[0].len() > 50 && !expected[1].is_empty(),
        "the samples have results: {:?}",
        expected.each_ref().map(BTreeSet::len)
    );
    assert_eq!(family(&text, NS), ones(&expected[0]));
    assert_eq!(family(&text, CLUSTER), ones(&expected[1]));
    // Two lines written out by hand from the samples, as Policy Reporter renders them.
    assert!(text.contains("cluster_policy_report_result{category=\"SI - System and Information Integrity\",kind=\"\",name=\"\",policy=\"Attach to cluster-admin Role\",report=\"falco-cluster-policy-report-4c9eac68\",rule=\"\",severity=\"high\",source=\"Falco\",status=\"fail\"} 1\n"), "{text}");
    assert!(text.contains("policy_report_result{category=\"Other\",kind=\"Pod\",name=\"example-deployment-c94dc9f47-dfq6l\",namespace=\"samples\",policy=\"default/require-app-label\",report=\"7d23ea02-1526-4a4f-ba14-49665adf55e\",rule=\"check-app-label\",severity=\"\",source=\"kyverno\",status=\"fail\"} 1\n"));
}
