//! The in-cluster figures: what delegated authentication and authorization cost a request, and
//! how fast a starting server migrates reports stored as CRD objects.
//!
//! Authorization overhead: the same keyed GET, in
//! alternating rounds, against a standalone server and against one in a (fake) cluster reached
//! through a front proxy's client certificate, with the authorization cache warm.
//!
//! Both servers run in this process on loopback with an in-memory SQLite store; the fake
//! kube-apiserver answers SubjectAccessReviews, but with a warm cache (10 s) a round of a few
//! seconds makes almost no review, so the difference is the per-request work: certificate
//! chain verification against the request-header CA, header parsing, the cache lookup.

use std::{collections::BTreeMap, time::Duration};

use reports_server::{cluster::ClusterConfig, tls::CertificatePem, Server, ServerConfig};
use reports_test_support::{fake_kube::FakeKube, pki::TestCa};
use serde_json::{json, Value};

use crate::load::percentile;

/// One configuration's latencies over its rounds.
struct Side {
    name: &'static str,
    server: Server,
    client: reqwest::Client,
    url: String,
    samples: Vec<Duration>,
}

/// Runs `rounds` alternating rounds of `requests` GETs from `concurrency` clients on each side.
pub async fn auth_overhead(requests: usize, concurrency: usize, rounds: usize) -> anyhow::Result<Value> {
    let fake = FakeKube::start().await;
    let proxy_ca = TestCa::new("front-proxy CA");
    fake.set_auth_configmap(BTreeMap::from([
        ("requestheader-client-ca-file".to_string(), proxy_ca.pem()),
        ("requestheader-allowed-names".to_string(), r#"["front-proxy-client"]"#.to_string()),
        ("requestheader-username-headers".to_string(), r#"["X-Remote-User"]"#.to_string()),
        ("requestheader-group-headers".to_string(), r#"["X-Remote-Group"]"#.to_string()),
    ]));
    fake.set_access_policy(|_| (true, String::new()));
    let dir = tempfile::tempdir()?;
    let kubeconfig = fake.write_kubeconfig(dir.path());
    let serving_ca = TestCa::new("serving CA");
    let serving = serving_ca.serving(&["127.0.0.1"]);
    let certificate = CertificatePem { cert_pem: serving.cert_pem, key_pem: serving.key_pem, files: None };
    let proxy = proxy_ca.client("front-proxy-client", &[]);

    let mut sides = Vec::new();
    for (name, cluster) in [
        ("standalone", None),
        ("delegated", Some(ClusterConfig { kubeconfig: Some(kubeconfig.clone()), ..Default::default() })),
    ] {
        let server = Server::start(ServerConfig {
            listen: "127.0.0.1:0".parse()?,
            certificate: certificate.clone(),
            storage: "sqlite::memory:".into(),
            postgres: Default::default(),
            sqlite: Default::default(),
            limits: Default::default(),
            change_log: reports_store::Retention { max_age_seconds: 900, max_entries: 100_000 },
            watch_window_bytes: reports_server::watch::DEFAULT_WINDOW_BYTES,
            commit_trace: None,
            cluster: cluster.clone(),
            result_metrics: Default::default(),
        })
        .await?;
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(serving_ca.pem().as_bytes())?);
        let mut headers = reqwest::header::HeaderMap::new();
        if cluster.is_some() {
            builder = builder.identity(reqwest::Identity::from_pem(proxy.identity_pem().as_bytes())?);
            headers.insert("X-Remote-User", "bench".parse()?);
            headers.insert("X-Remote-Group", "system:authenticated".parse()?);
        }
        let client = builder.default_headers(headers).build()?;
        let base = format!("https://127.0.0.1:{}", server.local_addr.port());
        let collection = format!("{base}/apis/wgpolicyk8s.io/v1alpha2/namespaces/default/policyreports");
        let report = json!({"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
            "metadata": {"name": "r", "namespace": "default"}, "results": [], "summary": {"pass": 0}});
        anyhow::ensure!(
            client.post(&collection).json(&report).send().await?.status() == 201,
            "{name}: create"
        );
        sides.push(Side { name, server, client, url: format!("{collection}/r"), samples: Vec::new() });
    }
    // Warm-up: connections, the authorization cache.
    for side in &sides {
        run_round(&side.client, &side.url, concurrency * 20, concurrency).await?;
    }
    for _ in 0..rounds {
        for side in &mut sides {
            let latencies = run_round(&side.client, &side.url, requests, concurrency).await?;
            side.samples.extend(latencies);
        }
    }
    let mut result = json!({"requests_per_round": requests, "concurrency": concurrency, "rounds": rounds,
        "access_reviews": fake.access_reviews()});
    for side in &mut sides {
        side.samples.sort();
        let ms = |q: f64| percentile(&side.samples, q).as_secs_f64() * 1000.0;
        result[side.name] = json!({"p50_ms": ms(0.5), "p99_ms": ms(0.99), "requests": side.samples.len()});
    }
    for side in sides {
        side.server.shutdown().await;
    }
    Ok(result)
}

/// `requests` GETs of `url` from `concurrency` clients; every answer must be 200.
async fn run_round(
    client: &reqwest::Client,
    url: &str,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Duration>> {
    let per_client = requests.div_ceil(concurrency.max(1));
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (client, url) = (client.clone(), url.to_string());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let started = std::time::Instant::now();
                    let response = client.get(&url).send().await?;
                    let status = response.status();
                    response.bytes().await?;
                    anyhow::ensure!(status == 200, "GET answered {status}");
                    latencies.push(started.elapsed());
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(requests);
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

/// Migration from etcd: `reports` Kyverno PolicyReports (19 results, about 7 KB) stored as CRD
/// objects in the fake kube-apiserver are copied into a fresh store by a starting server; the
/// figure is the start's duration with and without the copy.
pub async fn migration_rate(reports: usize, storage: Option<String>) -> anyhow::Result<Value> {
    use reports_test_support::fake_kube::ObjectKey;

    let fake = FakeKube::start().await;
    fake.set_auth_configmap(BTreeMap::new());
    fake.put_object(
        ObjectKey::new(
            "apis/apiextensions.k8s.io/v1",
            "customresourcedefinitions",
            "",
            "policyreports.wgpolicyk8s.io",
        ),
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": "policyreports.wgpolicyk8s.io"}}),
    );
    for i in 0..reports {
        let namespace = crate::shapes::namespace_of(i as u64);
        let name = format!("polr-{i}");
        let object = crate::shapes::kyverno_policy_report(Some(&namespace), &name, i as u64, 19);
        fake.put_object(
            ObjectKey::new("apis/wgpolicyk8s.io/v1alpha2", "policyreports", &namespace, &name),
            object,
        );
    }
    let dir = tempfile::tempdir()?;
    let kubeconfig = fake.write_kubeconfig(dir.path());
    let serving_ca = TestCa::new("serving CA");
    let serving = serving_ca.serving(&["127.0.0.1"]);
    let certificate = CertificatePem { cert_pem: serving.cert_pem, key_pem: serving.key_pem, files: None };
    let mut result = json!({"reports": reports});
    for (label, migrate) in [("start_without_migration_s", false), ("start_with_migration_s", true)] {
        let storage = storage
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join(format!("{label}.db")).display()));
        let registration = reports_server::cluster::ApiServiceRegistration {
            group_versions: vec![("wgpolicyk8s.io".into(), "v1alpha2".into())],
            service_name: "reports-server".into(),
            service_namespace: "reports".into(),
            service_port: 443,
            reconcile_interval: Duration::from_secs(3600),
            lease_namespace: "reports".into(),
            identity: label.into(),
            ca_bundle: None,
        };
        let cluster = ClusterConfig {
            kubeconfig: Some(kubeconfig.clone()),
            migrate,
            // Registering would switch the group and stop the second start from copying.
            apiservices: migrate.then_some(registration),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let server = Server::start(ServerConfig {
            listen: "127.0.0.1:0".parse()?,
            certificate: certificate.clone(),
            storage,
            postgres: Default::default(),
            sqlite: Default::default(),
            limits: Default::default(),
            change_log: reports_store::Retention { max_age_seconds: 900, max_entries: 100_000 },
            watch_window_bytes: reports_server::watch::DEFAULT_WINDOW_BYTES,
            commit_trace: None,
            cluster: Some(cluster),
            result_metrics: Default::default(),
        })
        .await?;
        result[label] = json!(started.elapsed().as_secs_f64());
        if migrate {
            let counts = server.store().count_by_resource().await?;
            result["copied"] = json!(counts.iter().map(|(_, n)| n).sum::<u64>());
        }
        server.shutdown().await;
    }
    let copy_seconds = result["start_with_migration_s"].as_f64().unwrap_or(0.0)
        - result["start_without_migration_s"].as_f64().unwrap_or(0.0);
    result["reports_per_second"] = json!(reports as f64 / copy_seconds.max(1e-9));
    Ok(result)
}
