//! The findings conformance suite: what every store's findings must do, checked against the
//! in-memory reference (`reports_core::findings::extract` for what the rows are, and
//! `Condition::matches` for what a filter selects). Each check takes a fresh store (or a way to
//! open one) and panics on a violation. Built only with the `testing` feature.

use std::collections::{BTreeMap, BTreeSet};

use reports_core::{
    catalogue::Catalogue,
    findings::{
        extract,
        filter::{Condition, FilterOp, FindingField, FindingFilter},
        query::{
            CountQuery, FindingCount, FindingKey, FindingQuery, FindingRecord, Visibility, VisibleResource,
        },
        Finding,
    },
};
use serde_json::{json, Value};

use crate::{
    conformance::collect, model::FindingChunk, store::DynStore, FindingsIndex, ListQuery, StoredObject,
};

const POLR: &str = "policyreports";
const CPOLR: &str = "clusterpolicyreports";

/// A report of `resource` (its kind follows) with `results`.
pub fn report(resource: &str, namespace: &str, name: &str, results: Value) -> Value {
    let kind = match resource {
        CPOLR => "ClusterPolicyReport",
        "reports" => "Report",
        "clusterreports" => "ClusterReport",
        "ephemeralreports" => "EphemeralReport",
        _ => "PolicyReport",
    };
    let mut metadata = json!({"name": name, "uid": format!("uid-{namespace}-{name}")});
    if !namespace.is_empty() {
        metadata["namespace"] = json!(namespace);
    }
    let mut report = json!({"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": kind, "metadata": metadata,
        "scope": {"apiVersion": "v1", "kind": "Pod", "namespace": namespace, "name": format!("{name}-pod"), "uid": "u1"}});
    if resource == "ephemeralreports" {
        report["spec"] = json!({"results": results});
    } else {
        report["results"] = results;
    }
    report
}

/// Every finding a query streams, in list order, and whether more were left.
pub async fn all_findings(store: &DynStore, query: FindingQuery) -> (Vec<FindingRecord>, bool) {
    let mut stream = store.findings(query).await.expect("findings");
    let mut items = Vec::new();
    while let Some(chunk) = stream.chunks.recv().await {
        match chunk.expect("chunk") {
            FindingChunk::Items(mut batch) => items.append(&mut batch),
            FindingChunk::End { more } => return (items, more),
        }
    }
    panic!("findings stream ended without End");
}

fn everything() -> FindingQuery {
    FindingQuery {
        namespace: None,
        visibility: Visibility::Everything,
        conditions: vec![],
        after: None,
        limit: None,
    }
}

/// The findings the store's reports should have, from the reports themselves, in key order.
async fn expected(store: &DynStore, index: &FindingsIndex) -> Vec<FindingRecord> {
    let mut all = Vec::new();
    for resource in &index.resources {
        let (_, objects, _) =
            collect(store, ListQuery { resource: resource.clone(), ..Default::default() }).await;
        for object in objects {
            for finding in extract(&object.parse().unwrap()) {
                let key = FindingKey {
                    namespace: object.namespace.clone(),
                    name: object.name.clone(),
                    resource: resource.clone(),
                    ordinal: finding.ordinal,
                };
                all.push(FindingRecord { key, finding });
            }
        }
    }
    all.sort_by(|a, b| a.key.cmp(&b.key));
    all
}

async fn assert_in_step(store: &DynStore, index: &FindingsIndex, when: &str) {
    let (rows, more) = all_findings(store, everything()).await;
    assert!(!more, "{when}");
    assert_eq!(rows, expected(store, index).await, "findings after {when}");
}

fn results(policies: &[&str]) -> Value {
    Value::from(
        policies
            .iter()
            .map(|p| json!({"policy": p, "result": "fail", "severity": "high", "properties": {"score": "9.1"}}))
            .collect::<Vec<_>>(),
    )
}

/// Findings follow creates (alone and combined), updates (growing, shrinking, to zero),
/// deletes and batch deletes exactly; a result naming several resources is several findings.
pub async fn findings_follow_every_write(store: DynStore) {
    let index = FindingsIndex::default();
    let several = json!([{"policy": "p", "result": "fail", "resources": [
        {"kind": "Deployment", "name": "a"}, {"kind": "Deployment", "name": "b"}, {"kind": "Pod", "name": "c"}]}]);
    let a = store.create(POLR, report(POLR, "ns", "a", several)).await.unwrap();
    let (rows, _) = all_findings(&store, everything()).await;
    assert_eq!(rows.len(), 3, "one finding per resource");
    assert_in_step(&store, &index, "a create").await;
    // Concurrent creates (combined into one statement where the store does that).
    let mut tasks = Vec::new();
    for i in 0..24 {
        let store = store.clone();
        let policies: Vec<String> = (0..i % 5).map(|p| format!("p{p}")).collect();
        tasks.push(tokio::spawn(async move {
            let policies: Vec<&str> = policies.iter().map(String::as_str).collect();
            store.create(POLR, report(POLR, "ns", &format!("c{i:02}"), results(&policies))).await.unwrap()
        }));
    }
    let mut created = Vec::new();
    for task in tasks {
        created.push(task.await.unwrap());
    }
    store.create(CPOLR, report(CPOLR, "", "cluster", results(&["x", "y"]))).await.unwrap();
    assert_in_step(&store, &index, "concurrent creates").await;
    // A refused create changes nothing.
    let refused = store.create(POLR, report(POLR, "ns", "a", results(&["z"; 9]))).await;
    assert!(refused.is_err());
    assert_in_step(&store, &index, "a refused create").await;
    // Updates: grow, shrink, to zero; concurrent ones (combined where the store does that).
    let a =
        store.update(POLR, report(POLR, "ns", "a", results(&["q1", "q2", "q3", "q4"])), a.rv).await.unwrap();
    assert_in_step(&store, &index, "an update that grows").await;
    let a = store.update(POLR, report(POLR, "ns", "a", results(&["q9"])), a.rv).await.unwrap();
    assert_in_step(&store, &index, "an update that shrinks").await;
    let a = store.update(POLR, report(POLR, "ns", "a", json!([])), a.rv).await.unwrap();
    assert_in_step(&store, &index, "an update to no results").await;
    assert!(store.update(POLR, report(POLR, "ns", "a", results(&["stale"])), a.rv - 1).await.is_err());
    assert_in_step(&store, &index, "a refused update").await;
    let mut tasks = Vec::new();
    for object in created.iter().take(12) {
        let (store, name, rv) = (store.clone(), object.name.clone(), object.rv);
        tasks.push(tokio::spawn(async move {
            let policies: Vec<String> = (0..(rv % 3) as usize).map(|p| format!("u{p}")).collect();
            let policies: Vec<&str> = policies.iter().map(String::as_str).collect();
            store.update(POLR, report(POLR, "ns", &name, results(&policies)), rv).await.unwrap()
        }));
    }
    let mut updated = Vec::new();
    for task in tasks {
        updated.push(task.await.unwrap());
    }
    assert_in_step(&store, &index, "concurrent updates").await;
    // Deletes, alone and as a set (with one key that moved on).
    store.delete(POLR, "ns", "a", a.rv).await.unwrap();
    let doomed = &created[13];
    store.delete(POLR, "ns", &doomed.name, doomed.rv).await.unwrap();
    assert_in_step(&store, &index, "a delete").await;
    let mut read: Vec<StoredObject> = updated.iter().take(6).cloned().collect();
    read[0].rv += 1000;
    read.push(created[20].clone());
    let out = store.delete_batch(POLR, read).await.unwrap();
    assert_eq!(out.iter().flatten().count(), 6);
    assert_in_step(&store, &index, "a batch delete").await;
    // Only indexed kinds: the ephemeral kinds are not indexed by default.
    store.create("ephemeralreports", report("ephemeralreports", "ns", "e", results(&["e"]))).await.unwrap();
    let (rows, _) = all_findings(&store, everything()).await;
    assert!(rows.iter().all(|r| r.key.resource != "ephemeralreports"), "ephemeral kinds are off by default");
}

/// With indexing off, writes leave no findings rows and queries find nothing.
pub async fn indexing_off_writes_no_rows(store: DynStore) {
    let a = store.create(POLR, report(POLR, "ns", "a", results(&["p", "q"]))).await.unwrap();
    store.update(POLR, report(POLR, "ns", "a", results(&["p", "q", "r"])), a.rv).await.unwrap();
    store.create(CPOLR, report(CPOLR, "", "c", results(&["p"]))).await.unwrap();
    let (rows, more) = all_findings(&store, everything()).await;
    assert!(rows.is_empty() && !more, "{rows:?}");
    let count = CountQuery {
        namespace: None,
        visibility: Visibility::Everything,
        conditions: vec![],
        group_by: vec![FindingField::Severity],
    };
    assert!(store.count_findings(count).await.unwrap().1.is_empty());
}

/// With the ephemeral kinds indexed, their results (under `spec`) are findings too.
pub async fn ephemeral_kinds_when_enabled(store: DynStore) {
    store
        .create("ephemeralreports", report("ephemeralreports", "ns", "e", results(&["e1", "e2"])))
        .await
        .unwrap();
    assert_in_step(&store, &FindingsIndex::with_ephemeral(), "an ephemeral create").await;
    assert_eq!(all_findings(&store, everything()).await.0.len(), 2);
}

/// Results whose properties hold the numeric edge cases, over two namespaces and a cluster
/// report: what the filter tests run against.
async fn load_edge_cases(store: &DynStore) {
    let scores: [Option<&str>; 12] = [
        Some("8"),
        Some("8.0"),
        Some("10.0"),
        Some("9.9"),
        Some("n/a"),
        None,
        Some(""),
        Some(" 7.5 "),
        Some("1e1"),
        Some("-0"),
        Some("8.00"),
        Some("0x8"),
    ];
    let mut n = 0;
    for (resource, namespace) in [(POLR, "ns1"), (POLR, "ns2"), (CPOLR, "")] {
        for r in 0..2 {
            let mut items = Vec::new();
            for (i, score) in scores.iter().enumerate() {
                n += 1;
                let mut properties = json!({"nvd.v3_score": format!("{}", (n % 7) as f64 + 4.5), "tag": "1.17",
                    "we\"ird": if i % 2 == 0 { "x" } else { "y" }});
                if let Some(score) = score {
                    properties["score"] = json!(score);
                }
                let result = ["fail", "pass", "warn"][i % 3];
                let severity = ["critical", "high", "", "low"][i % 4];
                let message =
                    ["Web server 50% exposed", "a_b", "back\\slash", "plain \"quoted\" {a,b} NULL"][i % 4];
                let category = if i % 2 == 0 { "c" } else { "" };
                let mut item = json!({
                    "policy": format!("CVE-{}", i % 4), "rule": format!("r{}", i % 3),
                    "result": result, "severity": severity, "category": category, "scored": i % 2 == 0,
                    "message": message, "properties": properties,
                });
                if i % 3 != 0 {
                    item["source"] = json!("Trivy");
                }
                if i % 4 != 0 {
                    item["timestamp"] = json!({"seconds": 1_700_000_000 + (i as i64 % 3 - 1), "nanos": 0});
                }
                if i == 5 {
                    item["resources"] = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "namespace": namespace},
                                               {"kind": "Pod", "name": "WEB-1"}]);
                }
                items.push(item);
            }
            let mut body = report(resource, namespace, &format!("r{r}"), Value::from(items));
            body["source"] = json!("report-source");
            store.create(resource, body).await.unwrap();
        }
    }
}

/// The selectors the filter check runs, one by one and in pairs.
const SELECTORS: &[&str] = &[
    "properties.score>=8",
    "properties.score>8",
    "properties.score<9.9",
    "properties.score<=9.9",
    "properties.score>-1",
    "properties.score=8",
    "properties.score==8.0",
    "properties.score!=8",
    "properties.score in (8, n/a)",
    "properties.score notin (10, 9.9)",
    "properties.score=n/a",
    "properties.score=",
    "properties.score!=",
    "properties.score=0",
    "properties.score=0x8",
    "properties.nvd.v3_score>=7",
    "properties.nvd.v3_score<6.5",
    "properties.tag=1.17",
    "properties.tag=1.170",
    "properties.tag>1.1",
    "properties.we\"ird=x",
    "properties.we\"ird!=x",
    "properties.missing!=1",
    "properties.missing=1",
    "properties.missing<1",
    "severity in (critical,high)",
    "severity=",
    "result!=fail",
    "status=pass",
    "policy=CVE-1",
    "rule notin (r1)",
    "category=c",
    "source=Trivy",
    "source=report-source",
    "scored=true",
    "scored=false",
    "resource.kind=Pod",
    "resource.name=web",
    "resource.namespace=ns1",
    "resource.apiVersion=apps/v1",
    "resource.uid=u1",
    "timestamp>=1700000000",
    "timestamp<1700000000",
    "timestamp=1700000000",
    "timestamp!=1700000000",
    "timestamp notin (1700000000, 1699999999)",
    "timestamp>=2023-11-14T22:13:20Z",
    "search=cve-1",
    "search=50%",
    "search=a_b",
    "search=WEB",
    "search=\\\\",
    "search=_",
    "namespace=ns1",
    "metadata.namespace=",
    "report.name=r1",
    "report.kind=PolicyReport",
    "report.kind notin (ClusterPolicyReport)",
];

/// Hand-made conditions the parser would not make, which the SQL must still agree on.
fn odd_conditions() -> Vec<Condition> {
    let condition = |field, op, value: &str| Condition {
        field,
        op,
        values: vec![value.to_string()],
        numbers: vec![reports_core::findings::numeric(value)],
    };
    vec![
        condition(FindingField::Timestamp, FilterOp::Equals, "+1700000000"),
        condition(FindingField::Timestamp, FilterOp::NotEquals, "01700000000"),
        condition(FindingField::Scored, FilterOp::Equals, "yes"),
        condition(FindingField::Policy, FilterOp::Greater, "1"),
        condition(FindingField::Property("score".into()), FilterOp::Less, "x"),
    ]
}

fn keys_matching(
    reference: &[FindingRecord],
    conditions: &[Condition],
    visible: impl Fn(&FindingKey) -> bool,
) -> Vec<FindingKey> {
    reference
        .iter()
        .filter(|r| visible(&r.key))
        .filter(|r| {
            conditions.iter().all(|c| c.matches(&r.finding, &r.key.namespace, &r.key.name, &r.key.resource))
        })
        .map(|r| r.key.clone())
        .collect()
}

async fn store_keys(store: &DynStore, query: FindingQuery) -> Vec<FindingKey> {
    all_findings(store, query).await.0.into_iter().map(|r| r.key).collect()
}

/// Every selector (and every pair of a few), evaluated in SQL, selects exactly what
/// `Condition::matches` selects: the numeric edge cases, missing properties, sets, search
/// with LIKE's special characters, timestamps.
pub async fn filters_agree_with_the_reference(store: DynStore) {
    load_edge_cases(&store).await;
    let reference = expected(&store, &FindingsIndex::default()).await;
    assert!(reference.len() > 70, "{}", reference.len());
    let catalogue = Catalogue::embedded().unwrap();
    let mut cases: Vec<(String, Vec<Condition>)> = Vec::new();
    for selector in SELECTORS {
        let filter =
            FindingFilter::parse(selector, &catalogue).unwrap_or_else(|e| panic!("{selector}: {e:?}"));
        cases.push((selector.to_string(), filter.conditions));
    }
    for (i, a) in SELECTORS.iter().enumerate().step_by(4) {
        for b in SELECTORS.iter().skip(i + 1).step_by(7) {
            let filter = FindingFilter::parse(&format!("{a},{b}"), &catalogue).unwrap();
            cases.push((format!("{a},{b}"), filter.conditions));
        }
    }
    for condition in odd_conditions() {
        cases.push((format!("{condition:?}"), vec![condition]));
    }
    let mut nonempty = 0;
    for (name, conditions) in cases {
        let want = keys_matching(&reference, &conditions, |_| true);
        nonempty += usize::from(!want.is_empty() && want.len() < reference.len());
        let query = FindingQuery { conditions, ..everything() };
        assert_eq!(store_keys(&store, query).await, want, "selector {name}");
    }
    assert!(nonempty > SELECTORS.len() / 2, "the cases select something: {nonempty}");
}

/// Visibility is part of the query: a namespace not listed, a cluster kind without cluster-wide
/// visibility and an empty visibility see nothing.
pub async fn visibility_bounds_what_is_read(store: DynStore) {
    load_edge_cases(&store).await;
    let reference = expected(&store, &FindingsIndex::default()).await;
    let only = |kinds: Vec<(&str, Option<Vec<&str>>)>| {
        Visibility::Only(
            kinds
                .into_iter()
                .map(|(resource, namespaces)| VisibleResource {
                    resource: resource.to_string(),
                    namespaces: namespaces.map(|ns| ns.into_iter().map(str::to_string).collect()),
                })
                .collect(),
        )
    };
    type Visible = Box<dyn Fn(&FindingKey) -> bool>;
    let cases: Vec<(Visibility, Option<&str>, Visible)> = vec![
        (
            only(vec![(POLR, Some(vec!["ns1"]))]),
            None,
            Box::new(|k| k.resource == POLR && k.namespace == "ns1"),
        ),
        (only(vec![(POLR, Some(vec!["ns1"]))]), Some("ns2"), Box::new(|_| false)),
        (only(vec![(POLR, Some(vec![]))]), None, Box::new(|_| false)),
        (only(vec![(POLR, None)]), None, Box::new(|k| k.resource == POLR)),
        (only(vec![(POLR, None)]), Some("ns2"), Box::new(|k| k.resource == POLR && k.namespace == "ns2")),
        (only(vec![(CPOLR, None)]), None, Box::new(|k| k.resource == CPOLR)),
        (
            only(vec![(CPOLR, None), (POLR, Some(vec!["ns2", "other"]))]),
            None,
            Box::new(|k| k.resource == CPOLR || k.namespace == "ns2"),
        ),
        (only(vec![]), None, Box::new(|_| false)),
        (Visibility::Everything, Some("ns1"), Box::new(|k| k.namespace == "ns1")),
        (Visibility::Everything, None, Box::new(|_| true)),
    ];
    for (visibility, namespace, visible) in cases {
        let want: Vec<FindingKey> = keys_matching(&reference, &[], |k| visible(k));
        let query = FindingQuery {
            namespace: namespace.map(str::to_string),
            visibility: visibility.clone(),
            ..everything()
        };
        assert_eq!(store_keys(&store, query).await, want, "{visibility:?} in {namespace:?}");
        let count = CountQuery {
            namespace: namespace.map(str::to_string),
            visibility: visibility.clone(),
            conditions: vec![],
            group_by: vec![FindingField::Namespace],
        };
        let total: u64 = store.count_findings(count).await.unwrap().1.iter().map(|c| c.total).sum();
        assert_eq!(total, want.len() as u64, "count of {visibility:?} in {namespace:?}");
    }
}

/// Pages of any size resumed after their last key give every finding exactly once, in order,
/// and `more` tells whether anything is left.
pub async fn pages_give_every_finding_once(store: DynStore) {
    load_edge_cases(&store).await;
    let catalogue = Catalogue::embedded().unwrap();
    let conditions = FindingFilter::parse("properties.score>=8", &catalogue).unwrap().conditions;
    let reference = expected(&store, &FindingsIndex::default()).await;
    for (conditions, name) in [(vec![], "all"), (conditions, "score>=8")] {
        let want = keys_matching(&reference, &conditions, |_| true);
        for page in [1u64, 7, 12, 1000] {
            let (mut got, mut after) = (Vec::new(), None);
            loop {
                let query =
                    FindingQuery { conditions: conditions.clone(), after, limit: Some(page), ..everything() };
                let (rows, more) = all_findings(&store, query).await;
                assert!(rows.len() as u64 <= page);
                got.extend(rows.into_iter().map(|r| r.key));
                assert_eq!(more, got.len() < want.len(), "{name}, pages of {page}: more");
                if !more {
                    break;
                }
                after = got.last().cloned();
            }
            assert_eq!(got, want, "{name}, pages of {page}");
        }
    }
}

fn group_value(field: &FindingField, finding: &Finding, key: &FindingKey) -> String {
    match field {
        FindingField::Namespace => key.namespace.clone(),
        FindingField::ReportName => key.name.clone(),
        FindingField::ReportResource => key.resource.clone(),
        FindingField::Policy => finding.policy.clone(),
        FindingField::Rule => finding.rule.clone(),
        FindingField::Result => finding.result.clone(),
        FindingField::Severity => finding.severity.clone(),
        FindingField::Category => finding.category.clone(),
        FindingField::Source => finding.source.clone(),
        FindingField::ResourceApiVersion => finding.subject.api_version.clone(),
        FindingField::ResourceKind => finding.subject.kind.clone(),
        FindingField::ResourceNamespace => finding.subject.namespace.clone(),
        FindingField::ResourceName => finding.subject.name.clone(),
        FindingField::ResourceUid => finding.subject.uid.clone(),
        FindingField::Property(p) => {
            finding.properties.get(p).and_then(Value::as_str).unwrap_or_default().to_string()
        }
        _ => String::new(),
    }
}

/// Grouped counts equal the reference's, per result too, largest group first.
pub async fn counts_per_group_agree(store: DynStore) {
    load_edge_cases(&store).await;
    let reference = expected(&store, &FindingsIndex::default()).await;
    let catalogue = Catalogue::embedded().unwrap();
    for selector in [
        "groupBy=severity",
        "groupBy in (namespace,properties.score)",
        "groupBy=resource.kind,properties.score>=8",
        "groupBy in (policy,report.kind),severity in (critical,high)",
        "groupBy=properties.we\"ird,search=web",
        "groupBy=source",
    ] {
        let filter = FindingFilter::parse(selector, &catalogue).unwrap();
        let mut groups: BTreeMap<Vec<String>, BTreeMap<String, u64>> = BTreeMap::new();
        for r in &reference {
            if filter
                .conditions
                .iter()
                .all(|c| c.matches(&r.finding, &r.key.namespace, &r.key.name, &r.key.resource))
            {
                let key = filter.group_by.iter().map(|f| group_value(f, &r.finding, &r.key)).collect();
                *groups.entry(key).or_default().entry(r.finding.result.clone()).or_default() += 1;
            }
        }
        let mut want: Vec<FindingCount> = groups
            .into_iter()
            .map(|(key, by)| FindingCount {
                key,
                total: by.values().sum(),
                by_result: by.into_iter().collect(),
            })
            .collect();
        reports_core::findings::query::sort_counts(&mut want);
        let query = CountQuery {
            namespace: None,
            visibility: Visibility::Everything,
            conditions: filter.conditions,
            group_by: filter.group_by,
        };
        let (rv, got) = store.count_findings(query).await.unwrap();
        assert_eq!(rv, store.current_rv().await.unwrap());
        assert_eq!(got, want, "{selector}");
    }
}

/// The namespaces holding a resource's objects, in order, each once.
pub async fn namespaces_of_lists_each_once(store: DynStore) {
    for (ns, name) in [("b", "1"), ("a", "1"), ("b", "2"), ("c", "1")] {
        store.create(POLR, report(POLR, ns, name, json!([]))).await.unwrap();
    }
    store.create("reports", report("reports", "z", "1", json!([]))).await.unwrap();
    assert_eq!(store.namespaces_of(POLR).await.unwrap(), ["a", "b", "c"]);
    assert_eq!(store.namespaces_of("reports").await.unwrap(), ["z"]);
    assert!(store.namespaces_of("clusterreports").await.unwrap().is_empty());
}

/// Reports written without indexing get their findings when a store opens with it, once; a
/// kind that leaves the set loses its rows. `open` opens the same database each time.
pub async fn backfill_indexes_existing_reports<F, Fut>(open: F)
where
    F: Fn(FindingsIndex) -> Fut,
    Fut: std::future::Future<Output = DynStore>,
{
    let store = open(FindingsIndex::off()).await;
    for i in 0..230 {
        let (resource, ns) = if i % 10 == 0 { (CPOLR, "") } else { (POLR, ["ns1", "ns2"][i % 2]) };
        let policies: Vec<String> = (0..i % 4).map(|p| format!("p{p}")).collect();
        let policies: Vec<&str> = policies.iter().map(String::as_str).collect();
        store.create(resource, report(resource, ns, &format!("r{i:03}"), results(&policies))).await.unwrap();
    }
    store.create("ephemeralreports", report("ephemeralreports", "ns", "e", results(&["e"]))).await.unwrap();
    assert!(all_findings(&store, everything()).await.0.is_empty());
    drop(store);
    let store = open(FindingsIndex::default()).await;
    let index = FindingsIndex::default();
    assert_in_step(&store, &index, "the backfill").await;
    assert!(all_findings(&store, everything()).await.0.len() > 250);
    drop(store);
    let with = FindingsIndex::with_ephemeral();
    let store = open(with.clone()).await;
    assert_in_step(&store, &with, "adding the ephemeral kinds").await;
    drop(store);
    let only = FindingsIndex { resources: vec![CPOLR.to_string()] };
    let store = open(only.clone()).await;
    assert_in_step(&store, &only, "dropping kinds").await;
    let kinds: BTreeSet<String> =
        all_findings(&store, everything()).await.0.into_iter().map(|r| r.key.resource).collect();
    assert_eq!(kinds, BTreeSet::from([CPOLR.to_string()]));
}

/// Runs every check that takes a fresh store: `factory` opens an empty one indexing the kinds
/// of the index it is given.
pub async fn run_all<F, Fut>(factory: F)
where
    F: Fn(FindingsIndex) -> Fut,
    Fut: std::future::Future<Output = DynStore>,
{
    findings_follow_every_write(factory(FindingsIndex::default()).await).await;
    indexing_off_writes_no_rows(factory(FindingsIndex::off()).await).await;
    ephemeral_kinds_when_enabled(factory(FindingsIndex::with_ephemeral()).await).await;
    filters_agree_with_the_reference(factory(FindingsIndex::default()).await).await;
    visibility_bounds_what_is_read(factory(FindingsIndex::default()).await).await;
    pages_give_every_finding_once(factory(FindingsIndex::default()).await).await;
    counts_per_group_agree(factory(FindingsIndex::default()).await).await;
    namespaces_of_lists_each_once(factory(FindingsIndex::default()).await).await;
}
