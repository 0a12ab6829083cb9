//! In a cluster: delegated authentication and authorization through a front proxy that behaves
//! as kube-apiserver's aggregator, namespace lifecycle admission and APIService registration,
//! against the scripted fake kube-apiserver.

use std::{collections::BTreeMap, time::Duration};

use reports_server::cluster::{ApiServiceRegistration, ClusterConfig};
use reports_test_support::{
    fake_kube::{FakeKube, ObjectKey},
    pki::{CertAndKey, TestCa},
};
use serde_json::{json, Value};

use crate::harness::{sample_object, TestServer};

/// Fails the test instead of hanging when an expected change never comes.
const DEADLINE: Duration = Duration::from_secs(30);

const POLR: &str = "/apis/wgpolicyk8s.io/v1alpha2/namespaces";

struct InCluster {
    t: TestServer,
    fake: FakeKube,
    proxy_ca: TestCa,
    client_ca: TestCa,
}

async fn in_cluster() -> InCluster {
    let (fake, proxy_ca, client_ca) = fake_cluster().await;
    let t = replica(&fake, "replica-a").await;
    InCluster { t, fake, proxy_ca, client_ca }
}

/// The fake cluster: authentication settings, three namespaces, an RBAC policy, a token.
async fn fake_cluster() -> (FakeKube, TestCa, TestCa) {
    crate::harness::install_crypto();
    let fake = FakeKube::start().await;
    let proxy_ca = TestCa::new("front-proxy CA");
    let client_ca = TestCa::new("cluster client CA");
    fake.set_auth_configmap(BTreeMap::from([
        ("client-ca-file".to_string(), client_ca.pem()),
        ("requestheader-client-ca-file".to_string(), proxy_ca.pem()),
        ("requestheader-allowed-names".to_string(), r#"["front-proxy-client"]"#.to_string()),
        ("requestheader-username-headers".to_string(), r#"["X-Remote-User"]"#.to_string()),
        ("requestheader-group-headers".to_string(), r#"["X-Remote-Group"]"#.to_string()),
        ("requestheader-extra-headers-prefix".to_string(), r#"["X-Remote-Extra-"]"#.to_string()),
    ]));
    for (name, phase) in [("default", "Active"), ("team-a", "Active"), ("dying", "Terminating")] {
        fake.put_object(
            ObjectKey::new("api/v1", "namespaces", "", name),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, "status": {"phase": phase}}),
        );
    }
    // alice may do anything with reports in team-a and default; carol only list; nobody else.
    fake.set_access_policy(|spec| {
        let user = spec["user"].as_str().unwrap_or_default();
        let attributes = &spec["resourceAttributes"];
        let namespace = attributes["namespace"].as_str().unwrap_or_default();
        let verb = attributes["verb"].as_str().unwrap_or_default();
        let allowed = match user {
            "alice" => {
                namespace == "team-a" || namespace == "default" || namespace == "nope" || namespace == "dying"
            }
            "carol" => verb == "list",
            _ => false,
        };
        (allowed, if allowed { String::new() } else { "no RBAC rule allows it".into() })
    });
    fake.add_token("token-carol", "carol", &["readers"]);
    (fake, proxy_ca, client_ca)
}

/// A server joining the fake cluster as `identity`, registering two APIServices.
async fn replica(fake: &FakeKube, identity: &str) -> TestServer {
    let cluster = cluster_config(fake, identity);
    TestServer::start_with(move |config| config.cluster = Some(cluster)).await
}

/// Joining the fake cluster as `identity`, registering two APIServices, migrating.
fn cluster_config(fake: &FakeKube, identity: &str) -> ClusterConfig {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake.write_kubeconfig(dir.path());
    std::mem::forget(dir);
    ClusterConfig {
        kubeconfig: Some(kubeconfig),
        namespace_lifecycle: true,
        migrate: true,
        apiservices: Some(ApiServiceRegistration {
            group_versions: vec![
                ("wgpolicyk8s.io".into(), "v1alpha2".into()),
                ("openreports.io".into(), "v1alpha1".into()),
            ],
            service_name: "reports-server".into(),
            service_namespace: "reports".into(),
            service_port: 443,
            reconcile_interval: Duration::from_secs(3600),
            lease_namespace: "reports".into(),
            identity: identity.into(),
            ca_bundle: None,
        }),
        ..Default::default()
    }
}

impl InCluster {
    /// A client presenting `identity` (or none), trusting the server.
    fn client(&self, identity: Option<&CertAndKey>) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.t.pki.ca_pem.as_bytes()).unwrap());
        if let Some(identity) = identity {
            builder =
                builder.identity(reqwest::Identity::from_pem(identity.identity_pem().as_bytes()).unwrap());
        }
        builder.build().unwrap()
    }

    /// What kube-apiserver's aggregator sends: its proxy certificate and the caller in headers.
    fn proxy(&self) -> reqwest::Client {
        self.client(Some(&self.proxy_ca.client("front-proxy-client", &[])))
    }
}

async fn status(response: reqwest::Response) -> (u16, Value) {
    let code = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (code, body)
}

#[tokio::test]
async fn the_front_proxy_is_trusted_and_everyone_else_is_authenticated_on_their_own() {
    let c = in_cluster().await;
    let team_a = c.t.url(&format!("{POLR}/team-a/policyreports"));
    let report = sample_object(0, "r1", Some("team-a"));

    // Through the proxy, as alice: allowed.
    let created = c
        .proxy()
        .post(&team_a)
        .header("X-Remote-User", "alice")
        .header("X-Remote-Group", "devs")
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let listed = c.proxy().get(&team_a).header("X-Remote-User", "alice").send().await.unwrap();
    assert_eq!(listed.status(), 200);

    // Through the proxy, as someone RBAC does not allow: kube's 403.
    let (code, body) =
        status(c.proxy().get(&team_a).header("X-Remote-User", "mallory").send().await.unwrap()).await;
    assert_eq!(code, 403);
    assert_eq!(body["reason"], "Forbidden");
    assert_eq!(
        body["message"],
        "policyreports.wgpolicyk8s.io is forbidden: User \"mallory\" cannot list resource \"policyreports\" in API group \"wgpolicyk8s.io\" in the namespace \"team-a\": no RBAC rule allows it"
    );

    // The same headers on a connection without the proxy's certificate are ignored: anonymous.
    let (code, body) = status(
        c.client(None)
            .get(&team_a)
            .header("X-Remote-User", "alice")
            .header("X-Remote-Group", "system:masters")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains("User \"system:anonymous\""), "{body}");

    // An impostor proxy (right name, wrong CA) and a proxy name not allowed: 401.
    let impostor = TestCa::new("front-proxy CA").client("front-proxy-client", &[]);
    let (code, body) =
        status(c.client(Some(&impostor)).get(&team_a).header("X-Remote-User", "alice").send().await.unwrap())
            .await;
    assert_eq!((code, body["reason"].as_str()), (401, Some("Unauthorized")), "{body}");
    let other_name = c.proxy_ca.client("not-the-proxy", &[]);
    let (code, _) = status(
        c.client(Some(&other_name)).get(&team_a).header("X-Remote-User", "alice").send().await.unwrap(),
    )
    .await;
    assert_eq!(code, 401);

    // A client certificate of the cluster's client CA names its user; masters need no review.
    let admin = c.client_ca.client("admin", &["system:masters"]);
    let reviews = c.fake.access_reviews();
    let (code, _) = status(c.client(Some(&admin)).delete(format!("{team_a}/r1")).send().await.unwrap()).await;
    assert_eq!(code, 200);
    assert_eq!(c.fake.access_reviews(), reviews, "system:masters is not reviewed");

    // Bearer tokens: a valid one is reviewed and authorized; a bad one is 401.
    let carol = c.client(None);
    assert_eq!(carol.get(&team_a).bearer_auth("token-carol").send().await.unwrap().status(), 200);
    let (code, body) =
        status(carol.post(&team_a).bearer_auth("token-carol").json(&report).send().await.unwrap()).await;
    assert_eq!(code, 403, "{body}");
    let (code, _) = status(carol.get(&team_a).bearer_auth("forged").send().await.unwrap()).await;
    assert_eq!(code, 401);

    // Health answers anyone; metrics do not unless allowed.
    assert_eq!(c.client(None).get(c.t.url("/livez")).send().await.unwrap().status(), 200);
    assert_eq!(c.client(None).get(c.t.url("/readyz")).send().await.unwrap().status(), 200);
    assert_eq!(c.client(None).get(c.t.url("/metrics")).send().await.unwrap().status(), 403);
}

#[tokio::test]
async fn reports_go_only_into_namespaces_that_exist_and_are_not_terminating() {
    let c = in_cluster().await;
    let create = |ns: &str| {
        c.proxy()
            .post(c.t.url(&format!("{POLR}/{ns}/policyreports")))
            .header("X-Remote-User", "alice")
            .json(&sample_object(0, "r1", Some(ns)))
            .send()
    };
    let (code, body) = status(create("nope").await.unwrap()).await;
    assert_eq!((code, body["reason"].as_str()), (404, Some("NotFound")), "{body}");
    assert_eq!(body["message"], "namespaces \"nope\" not found");
    assert_eq!(body["details"], json!({"name": "nope", "kind": "namespaces"}));

    let (code, body) = status(create("dying").await.unwrap()).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body["message"],
        "policyreports.wgpolicyk8s.io \"r1\" is forbidden: unable to create new content in namespace dying because it is being terminated"
    );
    assert_eq!(body["details"]["causes"][0]["reason"], "NamespaceTerminating");

    // A namespace created after start is found (by the watch or the direct look-up).
    c.fake.put_object(
        ObjectKey::new("api/v1", "namespaces", "", "nope"),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "nope"}, "status": {"phase": "Active"}}),
    );
    assert_eq!(create("nope").await.unwrap().status(), 201);
    assert_eq!(c.t.store().count_by_resource().await.unwrap(), vec![("policyreports".to_string(), 1)]);
}

#[tokio::test]
async fn apiservices_are_registered_restored_when_tampered_and_left_alone_on_shutdown() {
    let mut c = in_cluster().await;
    let key = ObjectKey::new("apis/apiregistration.k8s.io/v1", "apiservices", "", "v1alpha2.wgpolicyk8s.io");
    let registered = |o: Option<&Value>| o.is_some_and(|o| o["spec"]["service"]["name"] == "reports-server");
    let apiservice = tokio::time::timeout(DEADLINE, c.fake.wait_for_object(&key, registered))
        .await
        .expect("registered")
        .unwrap();
    assert_eq!(apiservice["spec"]["group"], "wgpolicyk8s.io");
    assert_eq!(apiservice["spec"]["version"], "v1alpha2");
    assert_eq!(
        apiservice["spec"]["service"],
        json!({"name": "reports-server", "namespace": "reports", "port": 443})
    );
    assert_eq!(apiservice["spec"]["groupPriorityMinimum"], 100);
    assert_eq!(apiservice["metadata"]["labels"]["app.kubernetes.io/managed-by"], "reports-server");
    // The test's serving certificate is signed by a CA the chain does not carry: no caBundle.
    assert_eq!(apiservice["spec"]["insecureSkipTLSVerify"], true);
    let openreports =
        ObjectKey::new("apis/apiregistration.k8s.io/v1", "apiservices", "", "v1alpha1.openreports.io");
    tokio::time::timeout(DEADLINE, c.fake.wait_for_object(&openreports, registered))
        .await
        .expect("registered");
    let lease = c
        .fake
        .object(&ObjectKey::new(
            "apis/coordination.k8s.io/v1",
            "leases",
            "reports",
            "reports-server-apiservices",
        ))
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-a");

    // Tampered: pointed elsewhere. Restored.
    let mut tampered = apiservice.clone();
    tampered["spec"]["service"]["name"] = json!("evil");
    c.fake.put_object(key.clone(), tampered);
    tokio::time::timeout(DEADLINE, c.fake.wait_for_object(&key, registered)).await.expect("restored");
    // Deleted. Recreated.
    assert!(c.fake.delete_object(&key));
    tokio::time::timeout(DEADLINE, c.fake.wait_for_object(&key, registered)).await.expect("recreated");

    // Shutting down leaves them as they are and hands the Lease back.
    c.t.server.take().unwrap().shutdown().await;
    let after = c.fake.object(&key).expect("still registered");
    assert!(registered(Some(&after)));
    let released =
        ObjectKey::new("apis/coordination.k8s.io/v1", "leases", "reports", "reports-server-apiservices");
    let lease = tokio::time::timeout(
        DEADLINE,
        c.fake.wait_for_object(&released, |l| l.is_some_and(|l| l["spec"]["holderIdentity"].is_null())),
    )
    .await
    .expect("lease released");
    assert!(lease.is_some());
    assert!(
        !c.fake.requests().iter().any(|r| r.starts_with("DELETE /apis/apiregistration")),
        "the server never deletes an APIService"
    );
}

#[tokio::test]
async fn one_replica_at_a_time_holds_the_lease_and_another_takes_over_when_it_stops() {
    let mut c = in_cluster().await;
    let lease_key =
        ObjectKey::new("apis/coordination.k8s.io/v1", "leases", "reports", "reports-server-apiservices");
    let held_by =
        |who: &'static str| move |l: Option<&Value>| l.is_some_and(|l| l["spec"]["holderIdentity"] == who);
    tokio::time::timeout(DEADLINE, c.fake.wait_for_object(&lease_key, held_by("replica-a")))
        .await
        .expect("a leads");
    let mut b = replica(&c.fake, "replica-b").await;
    // b is running and a still holds the Lease (b's first attempt may or may not have been made
    // yet; the takeover below is what shows b can take it).
    assert_eq!(c.fake.object(&lease_key).unwrap()["spec"]["holderIdentity"], "replica-a");

    // a stops: it hands the Lease back, b takes it and keeps the APIServices.
    c.t.server.take().unwrap().shutdown().await;
    let taken = tokio::time::timeout(DEADLINE, c.fake.wait_for_object(&lease_key, held_by("replica-b")))
        .await
        .expect("b takes over")
        .unwrap();
    assert_eq!(taken["spec"]["leaseTransitions"], 1);
    let key = ObjectKey::new("apis/apiregistration.k8s.io/v1", "apiservices", "", "v1alpha2.wgpolicyk8s.io");
    assert!(c.fake.delete_object(&key));
    let registered = |o: Option<&Value>| o.is_some_and(|o| o["spec"]["service"]["name"] == "reports-server");
    tokio::time::timeout(DEADLINE, c.fake.wait_for_object(&key, registered))
        .await
        .expect("b restores what a registered");
    b.server.take().unwrap().shutdown().await;
}

#[tokio::test]
async fn reports_stored_as_crd_objects_are_copied_once_before_the_apiservices_switch() {
    let (fake, _, _) = fake_cluster().await;
    // The CRDs with their objects in "etcd": 1,100 PolicyReports (three pages), 3
    // ClusterPolicyReports, and
    // openreports.io Reports whose group an aggregated server already serves (out of reach).
    let crd = |name: &str| {
        fake.put_object(
            ObjectKey::new("apis/apiextensions.k8s.io/v1", "customresourcedefinitions", "", name),
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": name}}),
        );
    };
    crd("policyreports.wgpolicyk8s.io");
    crd("clusterpolicyreports.wgpolicyk8s.io");
    crd("reports.openreports.io");
    for i in 0..1100 {
        let ns = if i % 2 == 0 { "team-a" } else { "default" };
        let mut object = sample_object(0, &format!("polr-{i}"), Some(ns));
        object["metadata"]["uid"] = json!(format!("11111111-0000-4000-8000-{i:012}"));
        fake.put_object(
            ObjectKey::new("apis/wgpolicyk8s.io/v1alpha2", "policyreports", ns, &format!("polr-{i}")),
            object,
        );
    }
    for i in 0..3 {
        fake.put_object(
            ObjectKey::new("apis/wgpolicyk8s.io/v1alpha2", "clusterpolicyreports", "", &format!("cpolr-{i}")),
            sample_object(1, &format!("cpolr-{i}"), None),
        );
    }
    fake.put_object(
        ObjectKey::new("apis/openreports.io/v1alpha1", "reports", "default", "rep-0"),
        sample_object(4, "rep-0", Some("default")),
    );
    fake.put_object(
        ObjectKey::new("apis/apiregistration.k8s.io/v1", "apiservices", "", "v1alpha1.openreports.io"),
        json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "v1alpha1.openreports.io"},
               "spec": {"group": "openreports.io", "version": "v1alpha1", "service": {"name": "old", "namespace": "x", "port": 443},
                        "groupPriorityMinimum": 100, "versionPriority": 100}}),
    );

    // A previous start copied two of them before it crashed; one of those was changed since.
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("sqlite://{}", dir.path().join("reports.db").display());
    {
        let store = reports_store::open(&storage, &Default::default()).await.unwrap();
        for i in [0, 1] {
            let ns = if i % 2 == 0 { "team-a" } else { "default" };
            let mut object = sample_object(0, &format!("polr-{i}"), Some(ns));
            object["metadata"]["uid"] = json!(format!("11111111-0000-4000-8000-{i:012}"));
            object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            object["summary"]["pass"] = json!(7);
            store.create("policyreports", object).await.unwrap();
        }
    }
    let start = |storage: String| {
        let cluster = cluster_config(&fake, "replica-m");
        TestServer::start_with(move |config| {
            config.storage = storage;
            config.cluster = Some(cluster);
        })
    };
    let mut t = start(storage.clone()).await;
    let mut counts = t.store().count_by_resource().await.unwrap();
    counts.sort();
    assert_eq!(counts, vec![("clusterpolicyreports".to_string(), 3), ("policyreports".to_string(), 1100)]);
    let pages = fake
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /apis/wgpolicyk8s.io/v1alpha2/policyreports?"))
        .count();
    let continued = fake
        .requests()
        .iter()
        .filter(|r| {
            r.starts_with("GET /apis/wgpolicyk8s.io/v1alpha2/policyreports?") && r.contains("continue=")
        })
        .count();
    assert_eq!((pages, continued), (3, 2), "read in pages of 500");
    let copied = t.store().get("policyreports", "team-a", "polr-2").await.unwrap().unwrap();
    assert_eq!(copied.uid, "11111111-0000-4000-8000-000000000002", "identity kept");
    let body: Value = serde_json::from_str(&copied.body).unwrap();
    assert_eq!(body["metadata"]["resourceVersion"], copied.rv.to_string(), "our resourceVersion");
    let kept = t.store().get("policyreports", "team-a", "polr-0").await.unwrap().unwrap();
    assert!(kept.body.contains("\"pass\":7"), "an object already copied is left as it is");
    // Then the APIServices are switched, the local one included.
    let key = ObjectKey::new("apis/apiregistration.k8s.io/v1", "apiservices", "", "v1alpha2.wgpolicyk8s.io");
    let registered = |o: Option<&Value>| o.is_some_and(|o| o["spec"]["service"]["name"] == "reports-server");
    tokio::time::timeout(DEADLINE, fake.wait_for_object(&key, registered)).await.expect("switched");
    t.server.take().unwrap().shutdown().await;

    // A later start finds the groups switched and lists no CRD objects.
    let lists_before = fake
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /apis/wgpolicyk8s.io/v1alpha2/policyreports"))
        .count();
    let mut again = start(storage).await;
    let lists_after = fake
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /apis/wgpolicyk8s.io/v1alpha2/policyreports"))
        .count();
    assert_eq!(lists_after, lists_before, "nothing migrated twice");
    again.server.take().unwrap().shutdown().await;
}

#[tokio::test]
async fn uninstall_hands_the_groups_back_and_copies_the_reports_into_crd_objects() {
    use reports_server::cluster::uninstall::{uninstall, UninstallOptions};

    let mut c = in_cluster().await;
    let key = ObjectKey::new("apis/apiregistration.k8s.io/v1", "apiservices", "", "v1alpha2.wgpolicyk8s.io");
    let registered = |o: Option<&Value>| o.is_some_and(|o| o["spec"]["service"]["name"] == "reports-server");
    tokio::time::timeout(DEADLINE, c.fake.wait_for_object(&key, registered)).await.expect("registered");
    let team_a = c.t.url(&format!("{POLR}/team-a/policyreports"));
    for name in ["r1", "r2"] {
        let created = c
            .proxy()
            .post(&team_a)
            .header("X-Remote-User", "alice")
            .json(&sample_object(0, name, Some("team-a")))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
    }
    let dir = tempfile::tempdir().unwrap();
    let client =
        reports_auth::cluster::client(Some(&c.fake.write_kubeconfig(dir.path()))).await.unwrap().unwrap();
    let catalogue = reports_core::Catalogue::embedded().unwrap();
    let store = c.t.store().clone();
    let mut options = UninstallOptions {
        group_versions: vec![
            ("wgpolicyk8s.io".into(), "v1alpha2".into()),
            ("openreports.io".into(), "v1alpha1".into()),
        ],
        lease_namespace: "reports".into(),
        copy_back: true,
        force: false,
    };
    // While a replica holds the Lease it would register them again: refused, nothing changed.
    let refused =
        uninstall(&client, Some(&store), &catalogue, &options).await.expect_err("a replica is running");
    assert!(refused.to_string().contains("scale reports-server to zero"), "{refused}");
    assert!(registered(c.fake.object(&key).as_ref()));

    c.t.server.take().unwrap().shutdown().await;
    // Without the CRDs there is nowhere to copy to: refused before anything is deleted.
    let missing = uninstall(&client, Some(&store), &catalogue, &options).await.expect_err("no CRDs");
    assert!(missing.to_string().contains("is not installed"), "{missing}");
    assert!(registered(c.fake.object(&key).as_ref()));
    for crd in [
        "policyreports.wgpolicyk8s.io",
        "clusterpolicyreports.wgpolicyk8s.io",
        "reports.openreports.io",
        "clusterreports.openreports.io",
    ] {
        c.fake.put_object(
            ObjectKey::new("apis/apiextensions.k8s.io/v1", "customresourcedefinitions", "", crd),
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": crd}}),
        );
    }
    let summary = uninstall(&client, Some(&store), &catalogue, &options).await.unwrap();
    assert_eq!(
        summary.apiservices_deleted,
        vec!["v1alpha2.wgpolicyk8s.io".to_string(), "v1alpha1.openreports.io".to_string()]
    );
    assert_eq!(summary.copied, 2);
    assert!(c.fake.object(&key).is_none(), "the APIService is gone");
    let copied = c
        .fake
        .object(&ObjectKey::new("apis/wgpolicyk8s.io/v1alpha2", "policyreports", "team-a", "r1"))
        .expect("copied back");
    assert_eq!(copied["results"][0]["policy"], "require-labels");
    // Run again (after a failure, say): nothing is copied twice.
    options.force = true;
    let again = uninstall(&client, Some(&store), &catalogue, &options).await.unwrap();
    assert_eq!((again.copied, again.already_present, again.apiservices_deleted.len()), (0, 2, 0));
}

#[tokio::test]
async fn the_cluster_is_named_by_the_uid_of_its_kube_system_namespace() {
    let (fake, _, _) = fake_cluster().await;
    fake.put_object(
        ObjectKey::new("api/v1", "namespaces", "", "kube-system"),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system", "uid": "0c4f2a1e-7d3b-4c55-9a6e-2f1b8d9e0a11"}}),
    );
    let database = crate::harness::postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterConfig { kubeconfig: Some(fake.write_kubeconfig(dir.path())), ..Default::default() };
    let storage = database.clone();
    let mut t = TestServer::start_with(move |config| {
        config.storage = storage;
        config.cluster = Some(cluster);
    })
    .await;
    let (client, connection) = tokio_postgres::connect(&database, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let ids: Vec<String> =
        client.query("SELECT id::text FROM clusters", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, vec!["0c4f2a1e-7d3b-4c55-9a6e-2f1b8d9e0a11".to_string()]);
    t.server.take().unwrap().shutdown().await;
}

#[tokio::test]
async fn admission_webhooks_that_match_our_resources_are_called_as_for_crds() {
    use axum::{routing::post, Router};

    let (fake, proxy_ca, client_ca) = fake_cluster().await;
    // A policy engine's webhook: refuses reports labelled deny=yes, records what it was sent.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let record = seen.clone();
    let webhook = Router::new()
        .route(
            "/mutate",
            post(|body: axum::body::Bytes| async move {
                // Adds a label, and a field the schema does not have (pruned afterwards).
                let review: Value = serde_json::from_slice(&body).unwrap();
                use base64::Engine as _;
                let patch = json!([
                    {"op": "add", "path": "/metadata/labels/mutated", "value": "true"},
                    {"op": "add", "path": "/notInTheSchema", "value": 1}
                ]);
                let response = json!({"uid": review["request"]["uid"], "allowed": true, "patchType": "JSONPatch",
                    "patch": base64::engine::general_purpose::STANDARD.encode(patch.to_string())});
                let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response});
                ([("content-type", "application/json")], body.to_string())
            }),
        )
        .route(
        "/validate",
        post(move |body: axum::body::Bytes| {
            let record = record.clone();
            async move {
                let review: Value = serde_json::from_slice(&body).unwrap();
                record.lock().unwrap().push(review.clone());
                let request = &review["request"];
                let denied = request["object"]["metadata"]["labels"]["deny"] == "yes";
                let mut response = json!({"uid": request["uid"], "allowed": !denied});
                if denied {
                    response["status"] = json!({"code": 403, "reason": "Forbidden", "message": "reports labelled deny=yes are refused"});
                }
                let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response});
                ([("content-type", "application/json")], body.to_string())
            }
        }),
    );
    let webhook_ca = TestCa::new("webhook CA");
    let (webhook_url, _stop) =
        reports_test_support::https::serve_router(webhook, &webhook_ca.serving(&["127.0.0.1"])).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("https://127.0.0.1:{}/validate", closed.local_addr().unwrap().port());
    drop(closed);
    use base64::Engine as _;
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(webhook_ca.pem());
    let rule = |operations: &[&str]| json!([{"operations": operations, "apiGroups": ["wgpolicyk8s.io"], "apiVersions": ["*"], "resources": ["policyreports"], "scope": "*"}]);
    fake.put_object(
        ObjectKey::new("apis/admissionregistration.k8s.io/v1", "validatingwebhookconfigurations", "", "policy-engine"),
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "policy-engine"},
               "webhooks": [
                   {"name": "deny.example.com", "clientConfig": {"url": format!("{webhook_url}/validate"), "caBundle": ca_bundle},
                    "rules": rule(&["CREATE", "UPDATE"]), "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                    "namespaceSelector": {"matchLabels": {"team": "a"}}},
                   {"name": "down-but-ignored.example.com", "clientConfig": {"url": closed_url.clone()},
                    "rules": rule(&["CREATE"]), "failurePolicy": "Ignore", "sideEffects": "None", "admissionReviewVersions": ["v1"], "timeoutSeconds": 2},
                   {"name": "down-and-required.example.com", "clientConfig": {"url": closed_url},
                    "rules": rule(&["DELETE"]), "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"], "timeoutSeconds": 2}
               ]}),
    );
    fake.put_object(
        ObjectKey::new("apis/admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations", "", "policy-engine"),
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration", "metadata": {"name": "policy-engine"},
               "webhooks": [
                   {"name": "label.example.com", "clientConfig": {"url": format!("{webhook_url}/mutate"), "caBundle": ca_bundle.clone()},
                    "rules": rule(&["CREATE"]), "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                    "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]}}
               ]}),
    );
    fake.put_object(
        ObjectKey::new("api/v1", "namespaces", "", "team-a"),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a", "labels": {"team": "a"}}, "status": {"phase": "Active"}}),
    );
    let t = replica(&fake, "replica-w").await;
    let c = InCluster { t, fake, proxy_ca, client_ca };
    let create = |ns: &str, name: &str, deny: bool| {
        let mut report = sample_object(0, name, Some(ns));
        if deny {
            report["metadata"]["labels"]["deny"] = json!("yes");
        }
        c.proxy()
            .post(c.t.url(&format!("{POLR}/{ns}/policyreports")))
            .header("X-Remote-User", "alice")
            .header("X-Remote-Group", "devs")
            .json(&report)
            .send()
    };

    let (code, body) = status(create("team-a", "bad", true).await.unwrap()).await;
    assert_eq!((code, body["reason"].as_str()), (403, Some("Forbidden")), "{body}");
    assert_eq!(
        body["message"],
        "admission webhook \"deny.example.com\" denied the request: reports labelled deny=yes are refused"
    );
    assert!(c.t.store().get("policyreports", "team-a", "bad").await.unwrap().is_none(), "nothing stored");

    assert_eq!(create("team-a", "good", false).await.unwrap().status(), 201);
    let review = seen.lock().unwrap().last().cloned().unwrap();
    let request = &review["request"];
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(request["operation"], "CREATE");
    assert_eq!(
        request["resource"],
        json!({"group": "wgpolicyk8s.io", "version": "v1alpha2", "resource": "policyreports"})
    );
    assert_eq!((request["namespace"].as_str(), request["name"].as_str()), (Some("team-a"), Some("good")));
    assert_eq!(request["userInfo"]["username"], "alice");
    assert_eq!(request["userInfo"]["groups"], json!(["devs", "system:authenticated"]));
    assert_eq!(request["object"]["metadata"]["name"], "good");
    // The mutating webhook ran first: the validating one saw its label, and the stored object
    // has the label but not the field outside the schema.
    assert_eq!(request["object"]["metadata"]["labels"]["mutated"], "true");
    let stored: Value = serde_json::from_str(
        &c.t.store().get("policyreports", "team-a", "good").await.unwrap().unwrap().body,
    )
    .unwrap();
    assert_eq!(stored["metadata"]["labels"]["mutated"], "true");
    assert!(stored.get("notInTheSchema").is_none(), "{stored}");

    // The namespace selector: default is not selected, so the label does not matter there.
    assert_eq!(create("default", "bad", true).await.unwrap().status(), 201);
    let calls = seen.lock().unwrap().len();
    assert_eq!(calls, 2, "the webhook was not asked about default");

    // A required webhook that cannot be reached fails the request, and nothing is deleted.
    let (code, body) = status(
        c.proxy()
            .delete(c.t.url(&format!("{POLR}/team-a/policyreports/good")))
            .header("X-Remote-User", "alice")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((code, body["reason"].as_str()), (500, Some("InternalError")), "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("failed calling webhook \"down-and-required.example.com\""),
        "{body}"
    );
    assert!(c.t.store().get("policyreports", "team-a", "good").await.unwrap().is_some());
}

/// Names of the findings `user` is shown at `path` (through the proxy), or the refusal's code.
async fn findings_seen(c: &InCluster, user: &str, path: &str) -> Result<Vec<String>, u16> {
    let response = c.proxy().get(c.t.url(path)).header("X-Remote-User", user).send().await.unwrap();
    let (code, body) = status(response).await;
    if code != 200 {
        return Err(code);
    }
    let mut names: Vec<String> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let ns = i["metadata"]["namespace"].as_str().unwrap_or("-");
            format!("{ns}/{}", i["metadata"]["name"].as_str().unwrap())
        })
        .collect();
    names.sort();
    Ok(names)
}

#[tokio::test]
async fn findings_show_only_what_the_caller_may_list() {
    let c = in_cluster().await;
    // tenant: may list findings, and policy reports in team-a only; admin: may list anything.
    c.fake.set_access_policy(|spec| {
        let attributes = &spec["resourceAttributes"];
        let text = |key: &str| attributes[key].as_str().unwrap_or_default().to_string();
        let allowed = match spec["user"].as_str().unwrap_or_default() {
            "admin" => text("verb") == "list",
            "tenant" => {
                text("verb") == "list"
                    && (text("group") == "query.reports-server.io"
                        || (text("resource") == "policyreports" && text("namespace") == "team-a"))
            }
            _ => false,
        };
        (allowed, if allowed { String::new() } else { "no RBAC rule allows it".into() })
    });
    let masters = c.client_ca.client("root", &["system:masters"]);
    for (path, ns) in [
        (format!("{POLR}/team-a/policyreports"), Some("team-a")),
        (format!("{POLR}/default/policyreports"), Some("default")),
        ("/apis/wgpolicyk8s.io/v1alpha2/clusterpolicyreports".to_string(), None),
    ] {
        let index = if ns.is_some() { 0 } else { 1 };
        let mut report = sample_object(index, "r1", ns);
        report["results"] = json!([{"policy": "p", "result": "fail", "severity": "high"}]);
        let created = c.client(Some(&masters)).post(c.t.url(&path)).json(&report).send().await.unwrap();
        assert_eq!(created.status(), 201, "{path}");
    }
    const ALL: &str = "/apis/query.reports-server.io/v1alpha1/findings";
    assert_eq!(findings_seen(&c, "admin", ALL).await.unwrap(), ["-/r1.0", "default/r1.0", "team-a/r1.0"]);
    assert_eq!(
        findings_seen(&c, "tenant", ALL).await.unwrap(),
        ["team-a/r1.0"],
        "its namespace only: not default's, not the cluster report's"
    );
    let default = "/apis/query.reports-server.io/v1alpha1/namespaces/default/findings";
    assert_eq!(findings_seen(&c, "tenant", default).await.unwrap(), Vec::<String>::new());
    assert_eq!(findings_seen(&c, "mallory", ALL).await, Err(403), "no list on findings at all");

    // Counts count only what the caller may see.
    let counts = "/apis/query.reports-server.io/v1alpha1/findingcounts?fieldSelector=groupBy%3Dseverity";
    for (user, total) in [("admin", 3), ("tenant", 1)] {
        let response = c.proxy().get(c.t.url(counts)).header("X-Remote-User", user).send().await.unwrap();
        let (code, body) = status(response).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["items"][0]["total"], total, "{user}: {body}");
    }
}
