//! Test harness: a live server on loopback over real TLS, and the real clients that talk to it
//! (kube-rs, reqwest for raw wire checks, the kubectl binary).

use std::{future::Future, path::PathBuf, process::Command, sync::Once, time::Duration};

use futures::{TryStream, TryStreamExt as _};

use kube::{
    api::{Api, DynamicObject},
    core::{ApiResource, GroupVersionKind},
    Client,
};
use reports_server::{tls::CertificatePem, Server, ServerConfig};
use serde_json::{json, Value};

/// A throwaway PKI: a CA and a serving certificate for localhost and 127.0.0.1 signed by it.
pub struct TestPki {
    /// CA certificate (PEM), what clients trust.
    pub ca_pem: String,
    /// Serving certificate and key.
    pub serving: CertificatePem,
}

impl TestPki {
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "reports-server test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        Self {
            ca_pem: ca.pem(),
            serving: CertificatePem { cert_pem: leaf.pem(), key_pem: leaf_key.serialize_pem(), files: None },
        }
    }
}

impl TestPki {
    /// Writes the serving certificate and key into `dir` (`tls.crt`, `tls.key`), as a binary
    /// started with `--tls-cert-file` reads them; returns both paths.
    pub fn write_serving_files(&self, dir: &std::path::Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, &self.serving.cert_pem).unwrap();
        std::fs::write(&key, &self.serving.key_pem).unwrap();
        (cert, key)
    }
}

static CRYPTO: Once = Once::new();

/// rustls needs one process-wide crypto provider; the project uses ring only.
pub fn install_crypto() {
    CRYPTO.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A running server with a private temporary database, plus clients for it.
pub struct TestServer {
    pub server: Option<Server>,
    pub base: String,
    pub pki: TestPki,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        install_crypto();
        let pki = TestPki::new();
        let dir = tempfile::tempdir().unwrap();
        let mut config = standalone_config(&pki, dir.path());
        adjust(&mut config);
        let server = Server::start(config).await.expect("server starts");
        let base = format!("https://127.0.0.1:{}", server.local_addr.port());
        Self { server: Some(server), base, pki, dir }
    }

    /// A server on a fresh PostgreSQL database of the shared throwaway cluster.
    pub async fn start_postgres() -> Self {
        let url = postgres_database().await;
        Self::start_with(|config| config.storage = url).await
    }

    pub fn store(&self) -> &reports_store::DynStore {
        self.server.as_ref().unwrap().store()
    }

    /// A kube-rs client trusting the test CA.
    pub fn kube(&self) -> Client {
        let mut config = kube::Config::new(self.base.parse().unwrap());
        config.root_cert = Some(vec![pem_to_der(&self.pki.ca_pem)]);
        config.default_namespace = "default".into();
        Client::try_from(config).expect("kube client")
    }

    /// A raw HTTP client trusting the test CA (HTTP/1.1 and HTTP/2 through ALPN).
    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.pki.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A kubeconfig for this server, written into the test directory. It carries a token the
    /// server ignores: without any credential kubectl prompts for a username on HTTPS servers.
    pub fn kubeconfig(&self) -> PathBuf {
        use base64::Engine as _;
        let path = self.dir.path().join("kubeconfig");
        if !path.exists() {
            let ca = base64::engine::general_purpose::STANDARD.encode(&self.pki.ca_pem);
            let text = format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    \
                 certificate-authority-data: {ca}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    \
                 user: test\n    namespace: default\ncurrent-context: test\nusers:\n- name: test\n  user:\n    \
                 token: unused\n",
                self.base
            );
            std::fs::write(&path, text).unwrap();
        }
        path
    }

    /// Runs kubectl against this server; returns (success, stdout, stderr).
    pub fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        self.kubectl_env(args, &[])
    }

    /// Runs kubectl with extra environment variables (e.g. `KUBE_EDITOR`). Its stdin is closed,
    /// so any prompt fails instead of hanging.
    pub fn kubectl_env(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.dir.path().join("kubectl-cache"))
            .args(args)
            .env("HOME", self.dir.path())
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("kubectl is installed");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // The server task ends with the runtime; nothing else to release.
        let _ = self.server.take();
    }
}

/// A fresh, migrated PostgreSQL database on the shared throwaway cluster; returns its URL.
pub async fn postgres_database() -> String {
    use reports_store::postgres::{PgSettings, PgStore};
    use reports_test_support::{PgCluster, TEMPLATE_DATABASE};
    PgCluster::fresh_database(|url| async move {
        drop(PgStore::connect(&url, &PgSettings::default()).await.expect("migrate the template"));
        PgCluster::shared()
            .psql(TEMPLATE_DATABASE, "DELETE FROM report_counters; DELETE FROM clusters;")
            .unwrap();
    })
    .await
}

pub fn pem_to_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

/// The six kinds as (group, version, kind, plural, namespaced).
pub const KINDS: [(&str, &str, &str, &str, bool); 6] = [
    ("wgpolicyk8s.io", "v1alpha2", "PolicyReport", "policyreports", true),
    ("wgpolicyk8s.io", "v1alpha2", "ClusterPolicyReport", "clusterpolicyreports", false),
    ("reports.kyverno.io", "v1", "EphemeralReport", "ephemeralreports", true),
    ("reports.kyverno.io", "v1", "ClusterEphemeralReport", "clusterephemeralreports", false),
    ("openreports.io", "v1alpha1", "Report", "reports", true),
    ("openreports.io", "v1alpha1", "ClusterReport", "clusterreports", false),
];

pub fn api_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// A kube-rs API for one of the six kinds: namespaced in `ns` or cluster-wide.
pub fn dynamic_api(client: &Client, index: usize, ns: Option<&str>) -> (Api<DynamicObject>, ApiResource) {
    let (group, version, kind, plural, namespaced) = KINDS[index];
    let resource = api_resource(group, version, kind, plural);
    let api = match (namespaced, ns) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
        _ => Api::all_with(client.clone(), &resource),
    };
    (api, resource)
}

pub fn polr_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    dynamic_api(client, 0, Some(ns)).0
}

/// A minimal valid object of kind index `i`; reports.kyverno.io kinds keep their data under spec.
pub fn sample_object(index: usize, name: &str, ns: Option<&str>) -> Value {
    let (group, version, kind, _, namespaced) = KINDS[index];
    let mut metadata = json!({"name": name, "labels": {"app": "demo"}});
    if namespaced {
        metadata["namespace"] = json!(ns.unwrap_or("default"));
    }
    let results =
        json!([{"policy": "require-labels", "rule": "check", "result": "pass", "source": "kyverno"}]);
    let summary = json!({"pass": 1, "fail": 0, "warn": 0, "error": 0, "skip": 0});
    let mut object = json!({"apiVersion": format!("{group}/{version}"), "kind": kind, "metadata": metadata});
    if group == "reports.kyverno.io" {
        object["spec"] = json!({"owner": {"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": "6b6e4c4e-2f35-4d5e-9b88-3f1e33a1c2d1"},
            "results": results, "summary": summary});
    } else {
        object["scope"] =
            json!({"apiVersion": "v1", "kind": "Pod", "name": "web", "namespace": ns.unwrap_or("default")});
        object["results"] = results;
        object["summary"] = summary;
    }
    object
}

pub fn to_dynamic(value: Value) -> DynamicObject {
    serde_json::from_value(value).unwrap()
}

/// The Kubernetes Status inside a kube-rs error (panics if the error is something else).
pub fn status_of(error: kube::Error) -> kube::core::Status {
    match error {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// How long a test waits for an awaited step (a watch event above all) before it fails: far
/// beyond what a loaded machine needs, far short of the clients' own timeouts (kube-rs waits
/// 290 s for a watch event, raw watches and `kubectl -w` forever), and shorter than the
/// server's 60 s bookmark interval, so that a loop skipping bookmarks cannot wait for a lost
/// event for ever.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Awaits `step`, failing the test, naming `what`, if it takes longer than [`DEADLINE`].
pub async fn within<T>(what: &str, step: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, step)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {DEADLINE:?}, the event or answer was lost"))
}

/// The next item of a watch stream (None: it ended), failing the test on a transport error or
/// when nothing arrives within [`DEADLINE`].
pub async fn next_event<S>(stream: &mut S) -> Option<S::Ok>
where
    S: TryStream + Unpin,
    S::Error: std::fmt::Debug,
{
    within("the next watch event", stream.try_next()).await.expect("the watch stream fails")
}

/// A standalone server's configuration: a SQLite file in `dir`, serving with `pki`'s
/// certificate on a free port, everything else as the binary's defaults.
pub fn standalone_config(pki: &TestPki, dir: &std::path::Path) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        certificate: pki.serving.clone(),
        storage: format!("sqlite://{}", dir.join("reports.db").display()),
        limits: Default::default(),
        change_log: reports_store::Retention { max_age_seconds: 900, max_entries: 100_000 },
        watch_window_bytes: reports_server::watch::DEFAULT_WINDOW_BYTES,
        commit_trace: None,
        cluster: None,
        postgres: Default::default(),
        sqlite: Default::default(),
        result_metrics: Default::default(),
    }
}
