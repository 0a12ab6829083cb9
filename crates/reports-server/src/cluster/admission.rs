//! Admission webhooks, which kube-apiserver calls for CRDs and not for aggregated servers: a
//! policy engine's webhooks that match our resources (Kyverno's mutate and validate policies on
//! reports) then see our writes as they would see them for the CRDs.
//!
//! The cluster's `MutatingWebhookConfiguration`s and `ValidatingWebhookConfiguration`s are
//! mirrored from watches. A webhook applies to a write when its rules match the operation,
//! group, version, resource and scope, its `namespaceSelector` matches the namespace's labels and
//! its `objectSelector` the object's (new or old) labels. Mutating webhooks come first, one after
//! the other in configuration-name order, each sent the object as the previous one left it; their
//! JSON patches are applied, and the object is then pruned and validated as any written object.
//! Validating webhooks come last, after the object is final, all at once. Each is sent an
//! `AdmissionReview` (v1) with the caller's identity. A denial is kube's Status
//! (`admission webhook "name" denied the request: ...`, code at least 400). A webhook that cannot
//! be reached or does not answer within `timeoutSeconds` (10 by default) fails the request with
//! `failurePolicy: Fail` (the default) and is skipped with `Ignore`. A dry-run request is refused
//! by a webhook that declares side effects (`sideEffects` other than `None`/`NoneOnDryRun`).
//!
//! Not yet: `matchConditions` (CEL), which are treated as matching, and `reinvocationPolicy`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    api::admissionregistration::v1::{
        MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhook,
        ValidatingWebhookConfiguration, WebhookClientConfig,
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::{runtime::reflector, Api, Client};
use reports_auth::UserInfo;
use reports_core::{negotiate::BodyType, ApiError, ResourceKind};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::namespaces::NamespaceLifecycle;

/// Most bytes a mutating webhook's `copy` operations may add (kube's request body limit).
const MAX_PATCH_GROWTH: usize = 3 * 1024 * 1024;

/// What is being admitted.
pub struct Admission<'a> {
    /// The kind written.
    pub kind: &'a ResourceKind,
    /// `CREATE`, `UPDATE` or `DELETE`.
    pub operation: &'static str,
    /// Namespace ("" for cluster-scoped kinds).
    pub namespace: &'a str,
    /// Object name (may be empty on a create with generateName).
    pub name: &'a str,
    /// The object as it will be stored (None for a delete).
    pub object: Option<&'a Value>,
    /// The object as it is stored (None for a create).
    pub old_object: Option<&'a Value>,
    /// The caller.
    pub user: &'a UserInfo,
    /// A dry run.
    pub dry_run: bool,
}

/// What both kinds of webhook have in common, for matching and calling.
struct Hook {
    name: String,
    client_config: WebhookClientConfig,
    rules: Option<Vec<RuleWithOperations>>,
    failure_policy: Option<String>,
    namespace_selector: Option<LabelSelector>,
    object_selector: Option<LabelSelector>,
    side_effects: String,
    timeout_seconds: Option<i32>,
}

impl From<ValidatingWebhook> for Hook {
    fn from(w: ValidatingWebhook) -> Self {
        Self {
            name: w.name,
            client_config: w.client_config,
            rules: w.rules,
            failure_policy: w.failure_policy,
            namespace_selector: w.namespace_selector,
            object_selector: w.object_selector,
            side_effects: w.side_effects,
            timeout_seconds: w.timeout_seconds,
        }
    }
}

impl From<MutatingWebhook> for Hook {
    fn from(w: MutatingWebhook) -> Self {
        Self {
            name: w.name,
            client_config: w.client_config,
            rules: w.rules,
            failure_policy: w.failure_policy,
            namespace_selector: w.namespace_selector,
            object_selector: w.object_selector,
            side_effects: w.side_effects,
            timeout_seconds: w.timeout_seconds,
        }
    }
}

/// The cluster's admission webhooks.
#[derive(Clone)]
pub struct Webhooks {
    /// Mirror of the validating configurations.
    configurations: reflector::Store<ValidatingWebhookConfiguration>,
    /// Mirror of the mutating configurations.
    mutating: reflector::Store<MutatingWebhookConfiguration>,
    /// Namespace labels for `namespaceSelector`.
    namespaces: NamespaceLifecycle,
    /// HTTPS clients by trust (caBundle), reused across calls.
    clients: Arc<Mutex<HashMap<Vec<u8>, reqwest::Client>>>,
    /// Set once both mirrors hold a complete list: until then writes are refused with 503, as
    /// kube-apiserver refuses them, rather than admitted without the webhooks.
    synced: Arc<std::sync::atomic::AtomicBool>,
}

impl Webhooks {
    /// Starts mirroring the configurations and waits for the first complete list.
    pub async fn start(
        client: Client,
        namespaces: NamespaceLifecycle,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let configurations = super::mirror(
            Api::<ValidatingWebhookConfiguration>::all(client.clone()),
            "validating webhook configurations",
            shutdown.clone(),
        );
        let mutating = super::mirror(
            Api::<MutatingWebhookConfiguration>::all(client),
            "mutating webhook configurations",
            shutdown,
        );
        let synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (validating_list, mutating_list) = (configurations.clone(), mutating.clone());
        let done = synced.clone();
        let mut listing = tokio::spawn(async move {
            let listed = validating_list.wait_until_ready().await.is_ok()
                && mutating_list.wait_until_ready().await.is_ok();
            done.store(listed, std::sync::atomic::Ordering::SeqCst);
        });
        if tokio::time::timeout(super::INITIAL_SYNC, &mut listing).await.is_err() {
            tracing::warn!(
                "webhook configurations not listed yet; writes are refused with 503 until they are"
            );
        }
        Ok(Self { configurations, mutating, namespaces, clients: Arc::default(), synced })
    }

    /// Ok when every matching webhook allows the write.
    pub async fn validate(&self, admission: &Admission<'_>) -> Result<(), ApiError> {
        if !self.synced.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ApiError::unavailable("not yet ready to handle request"));
        }
        let matching: Vec<Hook> = self
            .configurations
            .state()
            .iter()
            .flat_map(|c| c.webhooks.clone().unwrap_or_default())
            .map(Hook::from)
            .filter(|w| self.matches(w, admission))
            .collect();
        if matching.is_empty() {
            return Ok(());
        }
        refuse_side_effects_on_dry_run(&matching, admission)?;
        let review = review(admission);
        let calls = matching.iter().map(|w| self.call(w, &review));
        for (webhook, outcome) in matching.iter().zip(futures::future::join_all(calls).await) {
            match outcome {
                Ok(response) => {
                    if response["allowed"] != json!(true) {
                        return Err(denied(&webhook.name, &response["status"]));
                    }
                }
                Err(e) => failed(webhook, e)?,
            }
        }
        Ok(())
    }

    /// Runs the matching mutating webhooks over `object` (the operation's new object), in order,
    /// applying their patches. The caller prunes and validates the result.
    pub async fn mutate(&self, admission: &Admission<'_>, object: &mut Value) -> Result<(), ApiError> {
        if !self.synced.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ApiError::unavailable("not yet ready to handle request"));
        }
        let mut configurations = self.mutating.state();
        configurations.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let matching: Vec<Hook> = configurations
            .iter()
            .flat_map(|c| c.webhooks.clone().unwrap_or_default())
            .map(Hook::from)
            .filter(|w| self.matches(w, admission))
            .collect();
        if matching.is_empty() {
            return Ok(());
        }
        refuse_side_effects_on_dry_run(&matching, admission)?;
        for webhook in &matching {
            let current = Admission { object: Some(&*object), ..*admission };
            let response = match self.call(webhook, &review(&current)).await {
                Ok(response) => response,
                Err(e) => {
                    failed(webhook, e)?;
                    continue;
                }
            };
            if response["allowed"] != json!(true) {
                return Err(denied(&webhook.name, &response["status"]));
            }
            let Some(patch) = response["patch"].as_str() else { continue };
            use base64::Engine as _;
            // The webhook's patch, bounded as a client's patch is (the body limit caps what copies
            // may add).
            let patched = base64::engine::general_purpose::STANDARD
                .decode(patch)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).map_err(|e| e.to_string()))
                .and_then(|patch| {
                    reports_core::patch::apply_patch(object, &patch, BodyType::JsonPatch, MAX_PATCH_GROWTH)
                        .map_err(|e| e.message)
                });
            if let Err(e) = patched {
                failed(webhook, anyhow::anyhow!("the webhook's patch cannot be applied: {e}"))?;
            }
        }
        Ok(())
    }

    fn matches(&self, webhook: &Hook, admission: &Admission<'_>) -> bool {
        let kind = admission.kind;
        let rule_matches = webhook.rules.iter().flatten().any(|rule| {
            let any = |list: &Option<Vec<String>>, value: &str| {
                list.iter().flatten().any(|item| item == "*" || item == value)
            };
            let scope_ok = match rule.scope.as_deref().unwrap_or("*") {
                "Cluster" => !kind.namespaced,
                "Namespaced" => kind.namespaced,
                _ => true,
            };
            any(&rule.operations, admission.operation)
                && any(&rule.api_groups, &kind.group)
                && any(&rule.api_versions, &kind.version)
                && rule.resources.iter().flatten().any(|r| r == "*" || r == "*/*" || *r == kind.plural)
                && scope_ok
        });
        if !rule_matches {
            return false;
        }
        if kind.namespaced {
            if let Some(selector) = &webhook.namespace_selector {
                let labels = self.namespaces.labels(admission.namespace).unwrap_or_default();
                if !selector_matches(selector, &labels) {
                    return false;
                }
            }
        }
        if let Some(selector) = &webhook.object_selector {
            let labels_of = |object: Option<&Value>| -> Option<BTreeMap<String, String>> {
                object.map(|o| {
                    o.pointer("/metadata/labels")
                        .and_then(Value::as_object)
                        .map(|m| {
                            m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()
                        })
                        .unwrap_or_default()
                })
            };
            let new = labels_of(admission.object).is_some_and(|l| selector_matches(selector, &l));
            let old = labels_of(admission.old_object).is_some_and(|l| selector_matches(selector, &l));
            if !new && !old {
                return false;
            }
        }
        true
    }

    async fn call(&self, webhook: &Hook, review: &Value) -> anyhow::Result<Value> {
        let config = &webhook.client_config;
        let url = match (&config.url, &config.service) {
            (Some(url), _) => url.clone(),
            (None, Some(service)) => format!(
                "https://{}.{}.svc:{}{}",
                service.name,
                service.namespace,
                service.port.unwrap_or(443),
                service.path.as_deref().unwrap_or("")
            ),
            (None, None) => anyhow::bail!("the webhook has neither a url nor a service"),
        };
        let ca = config.ca_bundle.as_ref().map(|b| b.0.clone()).unwrap_or_default();
        let client = {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            match clients.get(&ca) {
                Some(client) => client.clone(),
                None => {
                    let mut builder = reqwest::Client::builder();
                    if !ca.is_empty() {
                        for certificate in reqwest::Certificate::from_pem_bundle(&ca)? {
                            builder = builder.add_root_certificate(certificate);
                        }
                    }
                    let client = builder.build()?;
                    clients.insert(ca, client.clone());
                    client
                }
            }
        };
        let timeout = Duration::from_secs(
            u64::try_from(webhook.timeout_seconds.unwrap_or(10).clamp(1, 30)).unwrap_or(10),
        );
        let response = client.post(&url).timeout(timeout).json(review).send().await?;
        anyhow::ensure!(response.status().is_success(), "the webhook answered {}", response.status());
        let answer: Value = response.json().await?;
        let response =
            answer.get("response").cloned().ok_or_else(|| anyhow::anyhow!("no response in the review"))?;
        anyhow::ensure!(response["uid"] == review["request"]["uid"], "the review answered another request");
        Ok(response)
    }
}

/// A dry run is refused by a webhook that may have side effects, as kube refuses it.
fn refuse_side_effects_on_dry_run(hooks: &[Hook], admission: &Admission<'_>) -> Result<(), ApiError> {
    match hooks
        .iter()
        .find(|w| admission.dry_run && !matches!(w.side_effects.as_str(), "None" | "NoneOnDryRun"))
    {
        Some(w) => Err(ApiError::bad_request(format!(
            "admission webhook {:?} has side effects and does not support dry run",
            w.name
        ))),
        None => Ok(()),
    }
}

/// A webhook that could not be asked: ignored with `failurePolicy: Ignore`, otherwise kube's 500
/// naming the webhook and the failure (kube shows it to the caller too).
fn failed(webhook: &Hook, error: anyhow::Error) -> Result<(), ApiError> {
    if webhook.failure_policy.as_deref() == Some("Ignore") {
        tracing::warn!(webhook = %webhook.name, error = %format!("{error:#}"), "webhook failed; ignored (failurePolicy Ignore)");
        return Ok(());
    }
    Err(ApiError::new(
        500,
        "InternalError",
        format!("Internal error occurred: failed calling webhook {:?}: {error:#}", webhook.name),
    ))
}

/// The AdmissionReview sent for `admission`.
fn review(admission: &Admission<'_>) -> Value {
    let kind = admission.kind;
    let user = admission.user;
    let options_kind = match admission.operation {
        "CREATE" => "CreateOptions",
        "UPDATE" => "UpdateOptions",
        _ => "DeleteOptions",
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uuid::Uuid::new_v4().to_string(),
            "kind": {"group": kind.group, "version": kind.version, "kind": kind.kind},
            "resource": {"group": kind.group, "version": kind.version, "resource": kind.plural},
            "requestKind": {"group": kind.group, "version": kind.version, "kind": kind.kind},
            "requestResource": {"group": kind.group, "version": kind.version, "resource": kind.plural},
            "name": admission.name,
            "namespace": admission.namespace,
            "operation": admission.operation,
            "userInfo": {"username": user.name, "uid": user.uid, "groups": user.groups, "extra": user.extra},
            "object": admission.object,
            "oldObject": admission.old_object,
            "dryRun": admission.dry_run,
            "options": {"kind": options_kind, "apiVersion": "meta.k8s.io/v1"},
        }
    })
}

/// kube's Status for a webhook's denial.
fn denied(name: &str, status: &Value) -> ApiError {
    let code =
        status["code"].as_u64().and_then(|c| u16::try_from(c).ok()).filter(|c| *c >= 400).unwrap_or(400);
    let reason = status["reason"].as_str().unwrap_or_default();
    let message = status["message"].as_str().unwrap_or_default();
    let denied_by = format!("admission webhook {name:?} denied the request");
    let text = if !message.is_empty() {
        format!("{denied_by}: {message}")
    } else if !reason.is_empty() {
        format!("{denied_by}: {reason}")
    } else {
        format!("{denied_by} without explanation")
    };
    let reason: &'static str = match reason {
        "Forbidden" => "Forbidden",
        "Invalid" => "Invalid",
        "BadRequest" => "BadRequest",
        "Conflict" => "Conflict",
        "NotFound" => "NotFound",
        _ => "",
    };
    ApiError::new(code, reason, text)
}

/// A `metav1.LabelSelector` against a set of labels.
fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let equal = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    equal && expressions
}
