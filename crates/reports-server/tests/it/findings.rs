//! The query API (`findings`, `findingcounts`) through HTTPS, kubectl and `reports-server query`:
//! findings follow every write, the common questions give exact answers, pages cover everything
//! once, and bad questions get a Status.

use std::collections::BTreeSet;

use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use crate::harness::{dynamic_api, to_dynamic, TestServer};

const FINDINGS: &str = "/apis/query.reports-server.io/v1alpha1/findings";
const COUNTS: &str = "/apis/query.reports-server.io/v1alpha1/findingcounts";

/// A vulnerability result as the Trivy adapters write it.
fn vulnerability(cve: &str, severity: &str, score: &str) -> Value {
    let result = if matches!(severity, "critical" | "high") { "fail" } else { "warn" };
    json!({"policy": cve, "rule": "pkg", "result": result, "severity": severity, "category": "Vulnerability Scan",
           "source": "Trivy Vulnerability", "timestamp": {"seconds": 1796342400, "nanos": 0},
           "properties": {"score": score, "nvd.v3_score": score, "resource": "openssl"}})
}

/// A PolicyReport (kind index 0) or ClusterPolicyReport (1) about one workload.
fn report(index: usize, name: &str, ns: Option<&str>, workload: &str, results: Vec<Value>) -> Value {
    let mut object = crate::harness::sample_object(index, name, ns);
    object["scope"] = json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": workload,
                             "namespace": ns.unwrap_or_default()});
    object["results"] = Value::Array(results);
    object
}

/// Names of the findings a GET of `path` lists (all pages of `limit`).
async fn finding_names(t: &TestServer, path: &str, selector: &str, limit: Option<u64>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut token = String::new();
    loop {
        let mut query = vec![("fieldSelector", selector.to_string())];
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        if !token.is_empty() {
            query.push(("continue", token.clone()));
        }
        let response = t.http().get(with_query(t.url(path), &query)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}?{selector}");
        let page: Value = response.json().await.unwrap();
        assert_eq!(page["kind"], "FindingList");
        for item in page["items"].as_array().unwrap() {
            let name = format!(
                "{}/{}",
                item["metadata"]["namespace"].as_str().unwrap_or("-"),
                item["metadata"]["name"].as_str().unwrap()
            );
            assert!(names.insert(name.clone()), "{name} listed twice");
        }
        if let Some(limit) = limit {
            assert!(page["items"].as_array().unwrap().len() as u64 <= limit);
        }
        token = page["metadata"]["continue"].as_str().unwrap_or_default().to_string();
        if token.is_empty() {
            return names;
        }
    }
}

/// `url` with `params` percent-encoded into its query.
fn with_query<K: AsRef<str>, V: AsRef<str>>(url: String, params: &[(K, V)]) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let query: Vec<String> =
        params.iter().map(|(k, v)| format!("{}={}", encode(k.as_ref()), encode(v.as_ref()))).collect();
    format!("{url}?{}", query.join("&"))
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// The counts a grouped query gives, as (name, total) pairs in served order.
async fn counts(t: &TestServer, path: &str, selector: &str) -> Vec<(String, u64)> {
    let page: Value = t
        .http()
        .get(with_query(t.url(path), &[("fieldSelector", selector)]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .map(|i| (i["metadata"]["name"].as_str().unwrap().to_string(), i["total"].as_u64().unwrap()))
        .collect()
}

/// Three namespaced reports and one cluster report.
async fn seed(t: &TestServer) {
    let client = t.kube();
    let pp = PostParams::default();
    for (ns, name, workload, results) in [
        (
            "prod",
            "web",
            "web",
            vec![
                vulnerability("CVE-1", "critical", "9.8"),
                vulnerability("CVE-2", "high", "8"),
                vulnerability("CVE-3", "medium", "5.5"),
            ],
        ),
        (
            "prod",
            "db",
            "db",
            vec![vulnerability("CVE-4", "high", "8.0"), vulnerability("CVE-5", "low", "n/a")],
        ),
        (
            "dev",
            "web",
            "web",
            vec![vulnerability("CVE-1", "critical", "10.0"), vulnerability("CVE-6", "medium", "7.99")],
        ),
    ] {
        let (api, _) = dynamic_api(&client, 0, Some(ns));
        api.create(&pp, &to_dynamic(report(0, name, Some(ns), workload, results))).await.unwrap();
    }
    let (cluster, _) = dynamic_api(&client, 1, None);
    let mut node = report(1, "node-a", None, "node-a", vec![vulnerability("CVE-7", "high", "9.9")]);
    node["scope"] = json!({"apiVersion": "v1", "kind": "Node", "name": "node-a"});
    cluster.create(&pp, &to_dynamic(node)).await.unwrap();
}

on_both_stores! {
    /// The common questions have exact answers, in every namespace scope and page size.
    async fn findings_answer_the_common_questions(t) {
        seed(&t).await;
        let high = finding_names(&t, FINDINGS, "properties.score>=8", None).await;
        assert_eq!(high, set(&["-/node-a.0", "dev/web.0", "prod/db.0", "prod/web.0", "prod/web.1"]));
        for limit in [1, 2, 3, 500] {
            assert_eq!(finding_names(&t, FINDINGS, "properties.score>=8", Some(limit)).await, high, "pages of {limit}");
        }
        assert_eq!(
            finding_names(&t, "/apis/query.reports-server.io/v1alpha1/namespaces/prod/findings", "properties.nvd.v3_score>=8", None).await,
            set(&["prod/db.0", "prod/web.0", "prod/web.1"]),
            "a namespace's findings only, and dotted property keys"
        );
        assert_eq!(finding_names(&t, FINDINGS, "properties.score<8", None).await, set(&["dev/web.1", "prod/web.2"]),
            "\"n/a\" is no number: neither above nor below");
        assert_eq!(finding_names(&t, FINDINGS, "severity in (critical),resource.name=web", None).await,
            set(&["dev/web.0", "prod/web.0"]));
        assert_eq!(finding_names(&t, FINDINGS, "report.kind=ClusterPolicyReport", None).await, set(&["-/node-a.0"]));
        assert_eq!(finding_names(&t, FINDINGS, "search=cve-5", None).await, set(&["prod/db.1"]));
        assert_eq!(finding_names(&t, FINDINGS, "timestamp>=2026-12-04T00:00:00Z,result=warn", None).await,
            set(&["dev/web.1", "prod/db.1", "prod/web.2"]));

        let by_namespace = counts(&t, COUNTS, "groupBy=namespace,severity=critical").await;
        assert_eq!(by_namespace, [("dev".to_string(), 1), ("prod".to_string(), 1)]);
        let by_severity = counts(&t, COUNTS, "groupBy=severity").await;
        assert_eq!(by_severity[0], ("high".to_string(), 3), "largest group first: {by_severity:?}");
        assert_eq!(by_severity.iter().map(|(_, n)| n).sum::<u64>(), 8);
        let page: Value = t.http().get(with_query(t.url(COUNTS), &[("fieldSelector", "groupBy in (namespace,result)")]))
            .send().await.unwrap().json().await.unwrap();
        let prod_fail = page["items"].as_array().unwrap().iter()
            .find(|i| i["group"] == json!({"namespace": "prod", "result": "fail"})).unwrap();
        assert_eq!((prod_fail["metadata"]["namespace"].as_str(), prod_fail["total"].as_u64()), (Some("prod"), Some(3)));
        assert_eq!(prod_fail["results"], json!({"pass": 0, "fail": 3, "warn": 0, "error": 0, "skip": 0}));
    }
}

on_both_stores! {
    /// Findings change with their report in the same write: updates, patches, results shrinking
    /// to none, deletes and deletecollection.
    async fn findings_follow_every_write(t) {
        seed(&t).await;
        let client = t.kube();
        let (prod, _) = dynamic_api(&client, 0, Some("prod"));
        let all = || finding_names(&t, FINDINGS, "", None);
        assert_eq!(all().await.len(), 8);

        // A patch that lowers a score moves the finding out of the answer.
        let patch = json!({"results": [vulnerability("CVE-4", "high", "7.0"), vulnerability("CVE-5", "low", "n/a")]});
        prod.patch("db", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        assert!(!finding_names(&t, FINDINGS, "properties.score>=8", None).await.contains("prod/db.0"));
        assert!(finding_names(&t, FINDINGS, "properties.score=7", None).await.contains("prod/db.0"));

        // An update whose results shrink to none leaves no finding behind.
        let mut web = prod.get("web").await.unwrap();
        web.data["results"] = json!([]);
        prod.replace("web", &PostParams::default(), &web).await.unwrap();
        assert!(finding_names(&t, "/apis/query.reports-server.io/v1alpha1/namespaces/prod/findings", "report.name=web", None).await.is_empty());
        assert_eq!(all().await.len(), 5);

        // A result with several resources is a finding per resource.
        let mut db = prod.get("db").await.unwrap();
        db.data["results"] = json!([{"policy": "p", "result": "fail", "resources": [
            {"kind": "Pod", "name": "db-0"}, {"kind": "Pod", "name": "db-1"}]}]);
        prod.replace("db", &PostParams::default(), &db).await.unwrap();
        assert_eq!(finding_names(&t, FINDINGS, "resource.kind=Pod", None).await, set(&["prod/db.0", "prod/db.1"]));

        prod.delete("db", &DeleteParams::default()).await.unwrap();
        assert_eq!(all().await, set(&["-/node-a.0", "dev/web.0", "dev/web.1"]));
        let (cluster, _) = dynamic_api(&client, 1, None);
        cluster.delete_collection(&DeleteParams::default(), &ListParams::default()).await.unwrap();
        let (dev, _) = dynamic_api(&client, 0, Some("dev"));
        dev.delete_collection(&DeleteParams::default(), &ListParams::default().labels("app=demo")).await.unwrap();
        assert!(all().await.is_empty());
        assert!(counts(&t, COUNTS, "groupBy=severity").await.is_empty());
    }
}

on_both_stores! {
    /// kubectl lists findings and counts as tables, with the filter in --field-selector.
    async fn kubectl_gets_findings_and_counts(t) {
        seed(&t).await;
        let (ok, out, err) = t.kubectl(&["get", "findings", "-A", "--field-selector", "properties.score>=9,result=fail"]);
        assert!(ok, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "header and three findings:\n{out}");
        for column in ["NAMESPACE", "NAME", "POLICY", "RESULT", "SEVERITY", "SCORE", "KIND", "RESOURCE"] {
            assert!(lines[0].contains(column), "{column} in {}", lines[0]);
        }
        assert!(out.contains("node-a.0") && out.contains("9.9") && out.contains("Node"), "{out}");
        let (ok, out, err) = t.kubectl(&["get", "fndc", "-n", "prod", "--field-selector", "groupBy=severity", "--chunk-size=1"]);
        assert!(ok, "{err}");
        assert!(out.lines().next().unwrap().contains("TOTAL"), "{out}");
        let high = out.lines().find(|l| l.starts_with("high")).unwrap_or_else(|| panic!("{out}"));
        assert_eq!(high.split_whitespace().take(3).collect::<Vec<_>>(), ["high", "2", "2"], "{out}");
        assert_eq!(out.lines().count(), 5, "critical, high, low, medium, across pages of one:\n{out}");
        let (ok, out, _) = t.kubectl(&["get", "findings", "-n", "dev", "-o", "jsonpath={.items[*].properties.score}"]);
        assert!(ok);
        assert_eq!(out, "10.0 7.99");
        let (ok, _, err) = t.kubectl(&["get", "findings", "--field-selector", "severity>high"]);
        assert!(!ok && err.contains("does not support order comparisons"), "{err}");
    }
}

on_both_stores! {
    /// Questions the API cannot answer get a Status that says why, and change nothing.
    async fn bad_questions_get_a_status(t) {
        seed(&t).await;
        let http = t.http();
        for (method, path, query, code, says) in [
            ("GET", FINDINGS, "fieldSelector=properties.score>=high", 400, "is not a number"),
            ("GET", FINDINGS, "fieldSelector=groupBy%3Dseverity", 400, "groupBy is for findingcounts"),
            ("GET", COUNTS, "fieldSelector=severity%3Dhigh", 400, "needs a grouping"),
            ("GET", FINDINGS, "continue=bm9wZQ", 400, "invalid continue token"),
            ("GET", FINDINGS, "watch=true", 405, "watch is not supported"),
            ("POST", FINDINGS, "", 405, "create is not supported"),
            ("DELETE", FINDINGS, "", 405, "deletecollection is not supported"),
            ("GET", "/apis/query.reports-server.io/v1alpha1/findings/web.0", "", 405, "get is not supported"),
            ("GET", "/apis/query.reports-server.io/v1alpha1/policyreports", "", 404, "could not find the requested resource"),
        ] {
            let url = format!("{}?{query}", t.url(path));
            let response = http.request(method.parse().unwrap(), &url).send().await.unwrap();
            assert_eq!(response.status().as_u16(), code, "{method} {url}");
            let status: Value = response.json().await.unwrap();
            assert_eq!(status["kind"], "Status", "{status}");
            assert!(status["message"].as_str().unwrap().contains(says), "{method} {url}: {status}");
        }
        // A label selector: findings have no labels, so it matches all of them or none.
        let none: Value = http.get(with_query(t.url(FINDINGS), &[("labelSelector", "app=demo")])).send().await.unwrap().json().await.unwrap();
        assert_eq!(none["items"], json!([]));
        let all: Value = http.get(with_query(t.url(FINDINGS), &[("labelSelector", "app!=demo")])).send().await.unwrap().json().await.unwrap();
        assert_eq!(all["items"].as_array().unwrap().len(), 8);
        // A findings token is not a counts token, and the other way round.
        let page: Value = http.get(with_query(t.url(FINDINGS), &[("limit", "1")])).send().await.unwrap().json().await.unwrap();
        let token = page["metadata"]["continue"].as_str().unwrap();
        let response = http.get(with_query(t.url(COUNTS), &[("fieldSelector", "groupBy=severity"), ("continue", token)])).send().await.unwrap();
        assert_eq!(response.status(), 400);
    }
}

on_both_stores! {
    /// `reports-server query` prints the answers as a table, JSON and CSV.
    async fn the_query_command_prints_tables_json_and_csv(t) {
        seed(&t).await;
        let run = |args: &[&str]| {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_reports-server"))
                .arg("query")
                .args(args)
                .args(["--server", &t.base, "--insecure-skip-tls-verify", "--token", "unused", "--chunk-size", "2"])
                .output()
                .unwrap();
            (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
        };
        let (ok, out, err) = run(&["findings", "-f", "properties.score>=8", "-o", "json"]);
        assert!(ok, "{err}");
        let items: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(items.len(), 5);
        assert!(items.iter().all(|i| i["kind"] == "Finding"));

        let (ok, out, err) = run(&["findings", "-n", "prod", "-f", "severity=critical", "-o", "csv"]);
        assert!(ok, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("namespace,report_kind,report,policy,rule,result,severity,score"), "{out}");
        assert_eq!(lines[1..], ["prod,PolicyReport,web,CVE-1,pkg,fail,critical,9.8,Vulnerability Scan,Trivy Vulnerability,apps/v1,Deployment,prod,web,,2026-12-04T00:00:00Z,"]);

        let (ok, out, err) = run(&["counts", "--by", "namespace,severity", "-f", "result=fail"]);
        assert!(ok, "{err}");
        let header = out.lines().next().unwrap();
        assert!(header.starts_with("NAMESPACE") && header.contains("SEVERITY") && header.contains("TOTAL"), "{out}");
        assert!(out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()[..3] == ["prod", "high", "2"]), "{out}");

        let (ok, _, err) = run(&["findings", "-f", "score>=8"]);
        assert!(!ok && err.contains("field label not supported: score"), "{err}");
    }
}
