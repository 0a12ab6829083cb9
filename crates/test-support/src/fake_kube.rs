//! A scripted kube-apiserver: real HTTPS and kube's wire format, for only the calls
//! reports-server makes. No kube-apiserver binary can run on the test machines; this stands in
//! for it behind the real kube-rs client the server uses.
//!
//! What it serves:
//! - any object under `/api/v1/...` and `/apis/{group}/{version}/...` from one in-memory store
//!   with kube's semantics for what the server uses: get, list (name and namespace field
//!   selectors, equality label selectors, `limit` and `continue`), watch (from a resourceVersion, or with the current
//!   objects first when none is given), create (409 AlreadyExists), replace (409 Conflict on a
//!   stale resourceVersion), merge patch and delete. ConfigMaps, Leases, APIServices, Namespaces
//!   and report CRD objects all live there; a test reads and changes them with
//!   [`FakeKube::put_object`], [`FakeKube::object`] and [`FakeKube::delete_object`];
//! - TokenReview (tokens registered with [`FakeKube::add_token`]);
//! - SubjectAccessReview, decided by a policy the test sets ([`FakeKube::set_access_policy`]).
//!
//! Every request is logged ([`FakeKube::requests`]), so a test can see an unexpected call.
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
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::post,
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

/// Where an object lives: API path (`api/v1`, `apis/GROUP/VERSION`), resource plural,
/// namespace ("" for cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// `api/v1` or `apis/GROUP/VERSION`.
    pub api: String,
    /// Resource plural.
    pub plural: String,
    /// Namespace, "" for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// A key from its parts.
    pub fn new(api: &str, plural: &str, namespace: &str, name: &str) -> Self {
        Self { api: api.into(), plural: plural.into(), namespace: namespace.into(), name: name.into() }
    }
}

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
    /// The objects and the resourceVersion counter, changed together.
    objects: Mutex<Objects>,
    /// Every change as (key, watch event JSON), for watches.
    events: broadcast::Sender<(ObjectKey, u64, String)>,
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

struct Objects {
    rv: u64,
    items: BTreeMap<ObjectKey, Value>,
}

impl FakeState {
    /// Stores `object` under `key` with the next resourceVersion and announces it.
    fn store(&self, key: ObjectKey, mut object: Value, event_type: &str) -> Value {
        let mut objects = lock(&self.objects);
        objects.rv += 1;
        let rv = objects.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        if event_type == "DELETED" {
            objects.items.remove(&key);
        } else {
            objects.items.insert(key.clone(), object.clone());
        }
        let line = json!({"type": event_type, "object": object}).to_string();
        let _ = self.events.send((key, rv, line));
        object
    }
}

impl FakeKube {
    /// Starts the fake on a free loopback port. Every access review is denied until a policy is
    /// set.
    pub async fn start() -> Self {
        let serving_ca = TestCa::new("fake kube-apiserver CA");
        let serving = serving_ca.serving(&["127.0.0.1", "localhost"]);
        let (events, _) = broadcast::channel(4096);
        let state = Arc::new(FakeState {
            objects: Mutex::new(Objects { rv: 100, items: BTreeMap::new() }),
            events,
            tokens: Mutex::new(HashMap::new()),
            access: Mutex::new(Box::new(|_| (false, String::new()))),
            token_reviews: AtomicUsize::new(0),
            access_reviews: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .route("/apis/authentication.k8s.io/v1/tokenreviews", post(token_review))
            .route("/apis/authorization.k8s.io/v1/subjectaccessreviews", post(access_review))
            .fallback(objects)
            .layer(axum::middleware::from_fn_with_state(state.clone(), check_credentials))
            .with_state(state.clone());
        let (url, stop) = crate::https::serve_router(router, &serving).await;
        Self { url, serving_ca, state, stop: Some(stop) }
    }

    /// Creates or replaces an object (metadata.uid and creationTimestamp are added when absent);
    /// watchers see ADDED or MODIFIED. Returns it as stored.
    pub fn put_object(&self, key: ObjectKey, mut object: Value) -> Value {
        let existed = lock(&self.state.objects).items.contains_key(&key);
        fill_metadata(&mut object, &key);
        self.state.store(key, object, if existed { "MODIFIED" } else { "ADDED" })
    }

    /// The object stored under `key`.
    pub fn object(&self, key: &ObjectKey) -> Option<Value> {
        lock(&self.state.objects).items.get(key).cloned()
    }

    /// Every object of a resource (all namespaces), in key order.
    pub fn objects(&self, api: &str, plural: &str) -> Vec<Value> {
        lock(&self.state.objects)
            .items
            .iter()
            .filter(|(k, _)| k.api == api && k.plural == plural)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Waits until the object under `key` satisfies `check` (given None while it does not
    /// exist), woken by each change rather than by polling; returns the object as it then is.
    /// Callers wrap it in a deadline.
    pub async fn wait_for_object(
        &self,
        key: &ObjectKey,
        check: impl Fn(Option<&Value>) -> bool,
    ) -> Option<Value> {
        let mut changes = self.state.events.subscribe();
        loop {
            let current = self.object(key);
            if check(current.as_ref()) {
                return current;
            }
            loop {
                match changes.recv().await {
                    Ok((changed, _, _)) if changed == *key => break,
                    Ok(_) => continue,
                    // Missed changes: look at the object again.
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return self.object(key),
                }
            }
        }
    }

    /// Deletes an object; watchers see DELETED. Returns whether it existed.
    pub fn delete_object(&self, key: &ObjectKey) -> bool {
        let existing = lock(&self.state.objects).items.get(key).cloned();
        match existing {
            Some(object) => {
                self.state.store(key.clone(), object, "DELETED");
                true
            }
            None => false,
        }
    }

    /// Sets (or replaces) the data of `kube-system/extension-apiserver-authentication`.
    pub fn set_auth_configmap(&self, data: BTreeMap<String, String>) {
        let key = ObjectKey::new("api/v1", "configmaps", "kube-system", "extension-apiserver-authentication");
        let object = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": key.name, "namespace": key.namespace},
            "data": data,
        });
        self.put_object(key, object);
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

/// Adds what kube-apiserver sets on create: name and namespace from the key, uid, creation time.
fn fill_metadata(object: &mut Value, key: &ObjectKey) {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    let metadata = &mut object["metadata"];
    metadata["name"] = json!(key.name);
    if !key.namespace.is_empty() {
        metadata["namespace"] = json!(key.namespace);
    }
    if metadata.get("uid").and_then(Value::as_str).is_none_or(str::is_empty) {
        let n = NEXT_UID.fetch_add(1, Ordering::SeqCst);
        metadata["uid"] = json!(format!("00000000-0000-4000-8000-{n:012x}"));
    }
    if metadata.get("creationTimestamp").is_none_or(Value::is_null) {
        metadata["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
}

static NEXT_UID: AtomicUsize = AtomicUsize::new(1);

fn json_response(code: StatusCode, body: &Value) -> Response {
    (code, [("content-type", "application/json")], body.to_string()).into_response()
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code});
    json_response(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &body)
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

/// What a path names: a collection (name None) or an object, in a namespace or cluster-wide.
struct Target {
    api: String,
    plural: String,
    /// None: every namespace (a collection path without one).
    namespace: Option<String>,
    name: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => (format!("api/{version}"), rest),
        ["apis", group, version, rest @ ..] => (format!("apis/{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    match rest {
        [plural] => Some(Target { api, plural: plural.to_string(), namespace, name: None }),
        [plural, name] => {
            Some(Target { api, plural: plural.to_string(), namespace, name: Some(name.to_string()) })
        }
        _ => None,
    }
}

/// One query parameter, decoded.
fn param(uri: &Uri, key: &str) -> Option<String> {
    reports_core::options::Query::parse(uri.query()).get(key).map(str::to_string)
}

/// Field (`metadata.name`, `metadata.namespace`) and equality label selectors.
struct Filter {
    fields: Vec<(String, String)>,
    labels: Vec<(String, String)>,
}

impl Filter {
    fn from(uri: &Uri) -> Self {
        let pairs = |text: Option<String>| -> Vec<(String, String)> {
            text.unwrap_or_default()
                .split(',')
                .filter_map(|term| {
                    let (k, v) = term.split_once("==").or_else(|| term.split_once('='))?;
                    Some((k.trim().to_string(), v.trim().to_string()))
                })
                .collect()
        };
        Self { fields: pairs(param(uri, "fieldSelector")), labels: pairs(param(uri, "labelSelector")) }
    }

    fn matches(&self, object: &Value) -> bool {
        let metadata = &object["metadata"];
        self.fields.iter().all(|(field, value)| match field.as_str() {
            "metadata.name" => metadata["name"] == json!(value),
            "metadata.namespace" => metadata["namespace"].as_str().unwrap_or_default() == value,
            _ => true,
        }) && self.labels.iter().all(|(key, value)| metadata["labels"][key] == json!(value))
    }
}

fn in_scope(key: &ObjectKey, target: &Target) -> bool {
    key.api == target.api
        && key.plural == target.plural
        && target.namespace.as_ref().is_none_or(|ns| *ns == key.namespace)
        && target.name.as_ref().is_none_or(|name| *name == key.name)
}

/// Every object route: get, list, watch, create, replace, merge patch, delete.
async fn objects(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(target) = parse_path(uri.path()) else {
        return status(404, "NotFound", &format!("the fake kube-apiserver does not serve {}", uri.path()));
    };
    let key = |name: &str| ObjectKey {
        api: target.api.clone(),
        plural: target.plural.clone(),
        namespace: target.namespace.clone().unwrap_or_default(),
        name: name.to_string(),
    };
    let not_found = |name: &str| status(404, "NotFound", &format!("{} \"{name}\" not found", target.plural));
    match (method, target.name.clone()) {
        (Method::GET, None) if param(&uri, "watch").is_some_and(|w| w == "true" || w == "1") => {
            watch(state, target, Filter::from(&uri), param(&uri, "resourceVersion"))
        }
        (Method::GET, None) => {
            let filter = Filter::from(&uri);
            let limit = param(&uri, "limit")
                .and_then(|l| l.parse::<usize>().ok())
                .filter(|l| *l > 0)
                .unwrap_or(usize::MAX);
            // The continue token is the last key of the previous page (namespace/name).
            let after = param(&uri, "continue")
                .and_then(|c| c.split_once('/').map(|(ns, name)| (ns.to_string(), name.to_string())));
            let objects = lock(&state.objects);
            let mut matching =
                objects.items.iter().filter(|(k, v)| in_scope(k, &target) && filter.matches(v)).filter(
                    |(k, _)| after.as_ref().is_none_or(|(ns, name)| (&k.namespace, &k.name) > (ns, name)),
                );
            let page: Vec<(&ObjectKey, &Value)> = matching.by_ref().take(limit).collect();
            let more = matching.next().is_some();
            let mut metadata = json!({"resourceVersion": objects.rv.to_string()});
            if let (true, Some((last, _))) = (more, page.last()) {
                metadata["continue"] = json!(format!("{}/{}", last.namespace, last.name));
            }
            let items: Vec<&Value> = page.iter().map(|(_, v)| *v).collect();
            let list = json!({"apiVersion": "v1", "kind": "List", "metadata": metadata, "items": items});
            json_response(StatusCode::OK, &list)
        }
        (Method::GET, Some(name)) => match lock(&state.objects).items.get(&key(&name)) {
            Some(object) => json_response(StatusCode::OK, object),
            None => not_found(&name),
        },
        (Method::POST, None) => {
            let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                return status(400, "BadRequest", "the body is not a JSON object");
            };
            let mut name =
                object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
            if name.is_empty() {
                let prefix =
                    object.pointer("/metadata/generateName").and_then(Value::as_str).unwrap_or_default();
                if prefix.is_empty() {
                    return status(422, "Invalid", "name or generateName is required");
                }
                name = format!("{prefix}{:05x}", NEXT_UID.fetch_add(1, Ordering::SeqCst));
            }
            let key = key(&name);
            if lock(&state.objects).items.contains_key(&key) {
                return status(409, "AlreadyExists", &format!("{} \"{name}\" already exists", target.plural));
            }
            fill_metadata(&mut object, &key);
            let stored = state.store(key, object, "ADDED");
            json_response(StatusCode::CREATED, &stored)
        }
        (Method::PUT, Some(name)) => {
            let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                return status(400, "BadRequest", "the body is not a JSON object");
            };
            let key = key(&name);
            let Some(current) = lock(&state.objects).items.get(&key).cloned() else {
                return not_found(&name);
            };
            let wanted =
                object.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default();
            if !wanted.is_empty()
                && Some(wanted) != current.pointer("/metadata/resourceVersion").and_then(Value::as_str)
            {
                return status(409, "Conflict", &format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", target.plural));
            }
            object["metadata"]["uid"] = current["metadata"]["uid"].clone();
            object["metadata"]["creationTimestamp"] = current["metadata"]["creationTimestamp"].clone();
            fill_metadata(&mut object, &key);
            json_response(StatusCode::OK, &state.store(key, object, "MODIFIED"))
        }
        (Method::PATCH, Some(name)) => {
            let merge = headers.get("content-type").and_then(|v| v.to_str().ok())
                == Some("application/merge-patch+json");
            let Ok(patch) = serde_json::from_slice::<Value>(&body).map_err(|_| ()).and_then(|p| {
                if merge {
                    Ok(p)
                } else {
                    Err(())
                }
            }) else {
                return status(415, "UnsupportedMediaType", "the fake takes merge patches only");
            };
            let key = key(&name);
            let Some(mut object) = lock(&state.objects).items.get(&key).cloned() else {
                return not_found(&name);
            };
            merge_patch(&mut object, &patch);
            json_response(StatusCode::OK, &state.store(key, object, "MODIFIED"))
        }
        (Method::DELETE, Some(name)) => {
            let key = key(&name);
            let Some(object) = lock(&state.objects).items.get(&key).cloned() else { return not_found(&name) };
            json_response(StatusCode::OK, &state.store(key, object, "DELETED"))
        }
        (method, _) => status(405, "MethodNotAllowed", &format!("{method} is not supported here")),
    }
}

/// RFC 7386 merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (key, value) in patch {
        if value.is_null() {
            if let Some(map) = target.as_object_mut() {
                map.remove(key);
            }
        } else {
            merge_patch(&mut target[key], value);
        }
    }
}

/// A watch: the current objects as ADDED first when no resourceVersion is given, then every
/// change after it.
fn watch(state: Arc<FakeState>, target: Target, filter: Filter, from: Option<String>) -> Response {
    let receiver = state.events.subscribe();
    let (after, initial) = {
        let objects = lock(&state.objects);
        match from.as_deref().and_then(|rv| rv.parse::<u64>().ok()).filter(|rv| *rv > 0) {
            Some(rv) => (rv, Vec::new()),
            None => {
                let initial: Vec<String> = objects
                    .items
                    .iter()
                    .filter(|(k, v)| in_scope(k, &target) && filter.matches(v))
                    .map(|(_, v)| format!("{}\n", json!({"type": "ADDED", "object": v})))
                    .collect();
                (objects.rv, initial)
            }
        }
    };
    let changes = futures::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(event) => return Some((event, receiver)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .filter_map(move |(key, rv, line): (ObjectKey, u64, String)| {
        let wanted = rv > after
            && in_scope(&key, &target)
            && serde_json::from_str::<Value>(&line).is_ok_and(|e| filter.matches(&e["object"]));
        async move { wanted.then(|| format!("{line}\n")) }
    });
    let lines = futures::stream::iter(initial).chain(changes).map(Ok::<_, std::convert::Infallible>);
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
    let answer = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {}, "spec": review["spec"], "status": status});
    json_response(StatusCode::CREATED, &answer)
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
    let answer = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "metadata": {}, "spec": review["spec"], "status": status});
    json_response(StatusCode::CREATED, &answer)
}
