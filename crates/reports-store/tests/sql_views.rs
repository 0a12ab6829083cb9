//! The SQL interface for BI tools (PostgreSQL): the example queries of `docs/sql.md`, read from
//! that file and run as written against reports written through the store, and the read-only
//! role, which may read the views and nothing else.

use std::collections::BTreeMap;

use reports_store::{
    postgres::{PgSettings, PgStore},
    Store,
};
use reports_test_support::PgCluster;
use serde_json::{json, Value};
use tokio_postgres::{NoTls, SimpleQueryMessage};

/// The `sql` blocks of docs/sql.md by their `-- test: name` line.
fn documented_queries() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/sql.md")).unwrap();
    let mut queries = BTreeMap::new();
    for block in text.split("```sql\n").skip(1) {
        let sql = block.split("```").next().unwrap();
        let name = sql.lines().next().and_then(|l| l.strip_prefix("-- test: ")).expect("a test name line");
        queries.insert(name.to_string(), sql.to_string());
    }
    queries
}

fn report(kind: &str, namespace: &str, name: &str, scope: Value, results: Value, summary: Value) -> Value {
    let mut metadata = json!({"name": name, "uid": format!("uid-{name}")});
    if !namespace.is_empty() {
        metadata["namespace"] = json!(namespace);
    }
    json!({"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": kind, "metadata": metadata, "scope": scope,
           "results": results, "summary": summary})
}

/// Rows of a simple query as (column name -> text) maps.
async fn rows(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<BTreeMap<String, String>>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for message in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(row) = message {
            let columns = row.columns().iter().enumerate();
            out.push(
                columns
                    .map(|(i, c)| (c.name().to_string(), row.get(i).unwrap_or("NULL").to_string()))
                    .collect(),
            );
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_findings_queries_answer_as_documented() {
    let url = PgCluster::fresh_database(|url| async move {
        drop(PgStore::connect(&url, &PgSettings::default()).await.expect("migrate the template"));
        PgCluster::shared()
            .psql(
                reports_test_support::TEMPLATE_DATABASE,
                "DELETE FROM report_counters; DELETE FROM clusters;",
            )
            .unwrap();
    })
    .await;
    let store = PgStore::connect(&url, &PgSettings::default()).await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let at = |ago: i64| json!({"seconds": now - ago, "nanos": 0});
    let web = json!({"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "prod", "name": "web"});
    let api = json!({"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "dev", "name": "api"});
    store
        .create("policyreports", report("PolicyReport", "prod", "web-vulns", web.clone(), json!([
            {"policy": "CVE-A", "result": "fail", "severity": "critical", "timestamp": at(3600),
             "properties": {"score": "9.8", "nvd.v3_score": "9.1"}},
            {"policy": "CVE-B", "result": "fail", "severity": "high", "timestamp": at(3 * 86400),
             "properties": {"score": "7.5"}},
            {"policy": "CVE-C", "result": "pass", "severity": "critical", "properties": {"score": "8.0"}}
        ]), json!({"fail": 2, "pass": 1})))
        .await
        .unwrap();
    store
        .create("policyreports", report("PolicyReport", "dev", "api-vulns", api, json!([
            {"policy": "CVE-A", "result": "fail", "severity": "critical", "properties": {"score": "n/a"}},
            {"policy": "CVE-D", "result": "warn", "severity": "critical", "timestamp": at(60),
             "properties": {"score": "10.0", "nvd.v3_score": "8"}}
        ]), json!({"fail": 1, "warn": 1})))
        .await
        .unwrap();
    store
        .create(
            "clusterpolicyreports",
            report(
                "ClusterPolicyReport",
                "",
                "cluster-rbac",
                json!({}),
                json!([
                    {"policy": "rbac", "result": "fail", "severity": "high",
                     "resources": [{"kind": "ClusterRole", "name": "admin"}, web]}
                ]),
                json!({"fail": 2}),
            ),
        )
        .await
        .unwrap();
    // (rows, column of the first row, its value)
    let expected: BTreeMap<&str, (usize, &str, &str)> = BTreeMap::from([
        ("cvss", (3, "score", "10")),
        ("nvd", (2, "policy", "CVE-A")),
        ("failing-per-policy", (3, "failing", "2")),
        ("top-namespaces", (2, "namespace", "dev")),
        ("workload", (4, "report_kind", "ClusterPolicyReport")),
        ("since-yesterday", (2, "policy", "CVE-D")),
        ("report-summaries", (3, "name", "cluster-rbac")),
    ]);
    let queries = documented_queries();
    assert_eq!(
        queries.keys().map(String::as_str).collect::<Vec<_>>(),
        expected.keys().copied().collect::<Vec<_>>()
    );
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    // As the read-only role, which is what a BI tool's login holds.
    client.batch_execute("SET ROLE reports_reader").await.unwrap();
    for (name, sql) in &queries {
        let got = rows(&client, sql).await.unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let (count, column, value) = expected[name.as_str()];
        assert_eq!(got.len(), count, "{name}: {got:?}");
        assert_eq!(got[0][column], value, "{name}: {got:?}");
    }
    let denied = rows(&client, "SELECT count(*) FROM report_finding_sets").await.unwrap_err();
    assert_eq!(denied.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE));
    let denied = rows(&client, "UPDATE report_objects SET rv = rv").await.unwrap_err();
    assert_eq!(denied.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE));
}
