//! A scripted kube-apiserver: real HTTPS and kube's wire format, for only the calls
//! reports-server makes. No kube-apiserver binary can run on the test machines; this stands in
//! for it behind the real kube-rs client the server uses.
//!
//! What it serves:
//! - the ConfigMap `kube-system/extension-apiserver-authentication`: get, list and watch (a test
//!   changes it with [`FakeKube::set_auth_configmap`] and every watch sees a MODIFIED event);
//! - TokenReview (tokens registered with [`FakeKube::add_token`]);
//! - SubjectAccessReview, decided by a policy the test sets ([`FakeKube::set_access_policy`]).
//!
//! Anything else is answered 404 with a Status and logged, so a test can see an unexpected call.
//! Every call must carry the server's own credential (the bearer token in the kubeconfig that
//! [`FakeKube::write_kubeconfig`] writes); others get 401, as kube-apiserver would answer.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use axum::{
    body::{Body, Bytes},
    extract::{Query, State},
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use base64::Engine as _;
use futures::StreamExt as _;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::pki::TestCa;

/// The bearer token reports-server uses towards the fake (written into its kubeconfig).
pub const SERVER_TOKEN: &str = "reports-server-service-account-token";

/// Decides a SubjectAccessReview from its `spec`: (allowed, reason).
pub type AccessPolicy = Box<dyn Fn(&Value) -> (bool, String) + Send + Sync>;

/// A running fake kube-apiserver.
pub struct FakeKube {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The CA of its serving certificate.
    pub serving_ca: TestCa,
    state: Arc<FakeState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

struct FakeState {
    /// resourceVersion counter of the fake's objects.
    rv: AtomicUsize,
    /// The authentication ConfigMap's data (None: the ConfigMap does not exist).
    auth_configmap: Mutex<Option<(usize, BTreeMap<String, String>)>>,
    /// Watch events of the ConfigMap, one JSON line each.
    configmap_events: broadcast::Sender<String>,
    /// Valid tokens and the `status.user` each reviews to.
    tokens: Mutex<HashMap<String, Value>>,
    /// SubjectAccessReview policy.
    access: Mutex<AccessPolicy>,
    /// Reviews answered.
    token_reviews: AtomicUsize,
    access_reviews: AtomicUsize,
    /// `METHOD path?query` of every request, in order.
    log: Mutex<Vec<String>>,
}

impl FakeKube {
    /// Starts the fake on a free loopback port. Every access review is denied until a policy is
    /// set.
    pub async fn start() -> Self {
        let serving_ca = TestCa::new("fake kube-apiserver CA");
        let serving = serving_ca.serving(&["127.0.0.1", "localhost"]);
        let (configmap_events, _) = broadcast::channel(64);
        let state = Arc::new(FakeState {
            rv: AtomicUsize::new(100),
            auth_configmap: Mutex::new(None),
            configmap_events,
            tokens: Mutex::new(HashMap::new()),
            access: Mutex::new(Box::new(|_| (false, String::new()))),
            token_reviews: AtomicUsize::new(0),
            access_reviews: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .route(
                "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication",
                get(get_auth_configmap),
            )
            .route("/api/v1/namespaces/kube-system/configmaps", get(list_or_watch_configmaps))
            .route("/apis/authentication.k8s.io/v1/tokenreviews", post(token_review))
            .route("/apis/authorization.k8s.io/v1/subjectaccessreviews", post(access_review))
            .fallback(not_found)
            .layer(axum::middleware::from_fn_with_state(state.clone(), check_credentials))
            .with_state(state.clone());
        let (url, stop) = crate::https::serve_router(router, &serving).await;
        Self { url, serving_ca, state, stop: Some(stop) }
    }

    /// Sets (or replaces) the authentication ConfigMap's data; watchers see the change.
    pub fn set_auth_configmap(&self, data: BTreeMap<String, String>) {
        let rv = self.state.rv.fetch_add(1, Ordering::SeqCst) + 1;
        let existed = {
            let mut current = lock(&self.state.auth_configmap);
            let existed = current.is_some();
            *current = Some((rv, data.clone()));
            existed
        };
        let event = json!({
            "type": if existed { "MODIFIED" } else { "ADDED" },
            "object": configmap_json(rv, &data),
        });
        let _ = self.state.configmap_events.send(event.to_string());
    }

    /// Registers a token that reviews to `user` in `groups`.
    pub fn add_token(&self, token: &str, user: &str, groups: &[&str]) {
        lock(&self.state.tokens).insert(
            token.to_string(),
            json!({"username": user, "uid": format!("uid-{user}"), "groups": groups}),
        );
    }

    /// Sets the SubjectAccessReview policy.
    pub fn set_access_policy(&self, policy: impl Fn(&Value) -> (bool, String) + Send + Sync + 'static) {
        *lock(&self.state.access) = Box::new(policy);
    }

    /// TokenReviews answered so far.
    pub fn token_reviews(&self) -> usize {
        self.state.token_reviews.load(Ordering::SeqCst)
    }

    /// SubjectAccessReviews answered so far.
    pub fn access_reviews(&self) -> usize {
        self.state.access_reviews.load(Ordering::SeqCst)
    }

    /// Every request received, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.state.log).clone()
    }

    /// Writes a kubeconfig for the server (bearer token [`SERVER_TOKEN`], trusting the fake's CA)
    /// into `dir` and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let ca = base64::engine::general_purpose::STANDARD.encode(self.serving_ca.pem());
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: reports-server\n  user:\n    token: {SERVER_TOKEN}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: reports-server\ncurrent-context: fake\n",
            url = self.url
        );
        let path = dir.join("fake-kube.kubeconfig");
        std::fs::write(&path, text).expect("writing the kubeconfig");
        path
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn configmap_json(rv: usize, data: &BTreeMap<String, String>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "extension-apiserver-authentication",
            "namespace": "kube-system",
            "uid": "5b0c3a5e-0000-4000-8000-00000000a0a0",
            "resourceVersion": rv.to_string(),
        },
        "data": data,
    })
}

fn json_ok(body: Value) -> Response {
    ([("content-type", "application/json")], body.to_string()).into_response()
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code});
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Logs the request and refuses any caller without the server's token.
async fn check_credentials(
    State(state): State<Arc<FakeState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let uri = request.uri();
    lock(&state.log).push(format!(
        "{} {}",
        request.method(),
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
    ));
    let authorized = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {SERVER_TOKEN}"));
    if !authorized {
        return status(401, "Unauthorized", "Unauthorized");
    }
    next.run(request).await
}

async fn not_found(method: Method, uri: Uri) -> Response {
    status(404, "NotFound", &format!("the fake kube-apiserver does not serve {method} {}", uri.path()))
}

async fn get_auth_configmap(State(state): State<Arc<FakeState>>) -> Response {
    match lock(&state.auth_configmap).clone() {
        Some((rv, data)) => json_ok(configmap_json(rv, &data)),
        None => status(404, "NotFound", "configmaps \"extension-apiserver-authentication\" not found"),
    }
}

async fn list_or_watch_configmaps(
    State(state): State<Arc<FakeState>>,
    Query(query): Query<HashMap<String, String>>,
    _headers: HeaderMap,
) -> Response {
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    if !watch {
        let current = lock(&state.auth_configmap).clone();
        let rv = state.rv.load(Ordering::SeqCst);
        let items: Vec<Value> = current.iter().map(|(rv, data)| configmap_json(*rv, data)).collect();
        return json_ok(
            json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
        );
    }
    let after: usize = query.get("resourceVersion").and_then(|rv| rv.parse().ok()).unwrap_or(0);
    let events = futures::stream::unfold(state.configmap_events.subscribe(), |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(line) => return Some((line, receiver)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let lines = events.filter_map(move |event| async move {
        let line: String = event;
        let rv: usize = serde_json::from_str::<Value>(&line)
            .ok()?
            .pointer("/object/metadata/resourceVersion")?
            .as_str()?
            .parse()
            .ok()?;
        (rv > after).then(|| Ok::<_, std::convert::Infallible>(format!("{line}\n")))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| status(500, "InternalError", "building the watch"))
}

async fn token_review(State(state): State<Arc<FakeState>>, body: Bytes) -> Response {
    let Ok(review) = serde_json::from_slice::<Value>(&body) else {
        return status(400, "BadRequest", "not JSON");
    };
    state.token_reviews.fetch_add(1, Ordering::SeqCst);
    let token = review.pointer("/spec/token").and_then(Value::as_str).unwrap_or_default();
    let user = lock(&state.tokens).get(token).cloned();
    let status = match user {
        Some(user) => json!({"authenticated": true, "user": user}),
        None => json!({"authenticated": false, "error": "token not recognized"}),
    };
    json_ok(
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {}, "spec": review["spec"], "status": status}),
    )
}

async fn access_review(State(state): State<Arc<FakeState>>, body: Bytes) -> Response {
    let Ok(review) = serde_json::from_slice::<Value>(&body) else {
        return status(400, "BadRequest", "not JSON");
    };
    state.access_reviews.fetch_add(1, Ordering::SeqCst);
    let (allowed, reason) = (lock(&state.access))(&review["spec"]);
    let mut status = json!({"allowed": allowed});
    if !reason.is_empty() {
        status["reason"] = json!(reason);
    }
    json_ok(
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "metadata": {}, "spec": review["spec"], "status": status}),
    )
}
