//! APIServices: register our groups with kube-apiserver's aggregator and keep them registered.
//!
//! One APIService per served group version (`v1alpha2.wgpolicyk8s.io`, `v1.reports.kyverno.io`,
//! `v1alpha1.openreports.io`), pointing at our Service, with the CA that signed our serving
//! certificate in `caBundle` when we know it (`insecureSkipTLSVerify` only when we do not). The
//! leading replica reconciles them: at start, whenever one of them changes (a watch, so a
//! tampered or deleted APIService is restored at once) and on a timer as a safety net.
//!
//! Nothing here ever deletes or disables an APIService. Stopping, rolling out or scaling down
//! the server leaves them as they are (taking the API away from every client on each rollout was
//! upstream's issue #327); handing the groups back is an explicit uninstall.

use std::{collections::BTreeMap, time::Duration};

use futures::StreamExt as _;
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    kube_aggregator::pkg::apis::apiregistration::v1::{APIService, APIServiceSpec, ServiceReference},
    ByteString,
};
use kube::{
    api::PostParams,
    runtime::{watcher, WatchStreamExt as _},
    Api, Client,
};
use tokio::sync::watch;

/// Label on every APIService we manage.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "reports-server";

/// What the APIServices must say.
#[derive(Debug, Clone)]
pub struct ApiServiceTarget {
    /// `(group, version)` pairs served.
    pub group_versions: Vec<(String, String)>,
    /// The Service in front of the server.
    pub service_name: String,
    /// Its namespace.
    pub service_namespace: String,
    /// Its port.
    pub service_port: i32,
    /// PEM of the CA that signed the serving certificate, when known.
    pub ca_bundle: Option<String>,
    /// How often to check even without a change.
    pub resync: Duration,
}

impl ApiServiceTarget {
    /// The APIService for one group version, as it must be.
    pub fn desired(&self, group: &str, version: &str) -> APIService {
        APIService {
            metadata: ObjectMeta {
                name: Some(format!("{version}.{group}")),
                labels: Some(BTreeMap::from([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())])),
                ..Default::default()
            },
            spec: Some(APIServiceSpec {
                group: Some(group.to_string()),
                version: Some(version.to_string()),
                group_priority_minimum: 100,
                version_priority: 100,
                service: Some(ServiceReference {
                    name: Some(self.service_name.clone()),
                    namespace: Some(self.service_namespace.clone()),
                    port: Some(self.service_port),
                }),
                ca_bundle: self.ca_bundle.as_ref().map(|pem| ByteString(pem.as_bytes().to_vec())),
                insecure_skip_tls_verify: self.ca_bundle.is_none().then_some(true),
            }),
            status: None,
        }
    }
}

/// Makes every APIService match `target` (create, or replace what differs). Returns how many it
/// had to write.
pub async fn reconcile_once(client: &Client, target: &ApiServiceTarget) -> kube::Result<usize> {
    let api = Api::<APIService>::all(client.clone());
    let mut written = 0;
    for (group, version) in &target.group_versions {
        let desired = target.desired(group, version);
        let name = desired.metadata.name.clone().unwrap_or_default();
        match api.get_opt(&name).await? {
            None => {
                api.create(&PostParams::default(), &desired).await?;
                tracing::info!(apiservice = %name, "created the APIService");
                written += 1;
            }
            Some(current) if !matches(&current, &desired) => {
                let mut updated = current.clone();
                let mut spec = desired.spec.clone().unwrap_or_default();
                // Without a CA of our own, a caBundle someone else set (a chart, cert-manager's
                // injector) is kept rather than replaced by skipping verification.
                if spec.ca_bundle.is_none() {
                    if let Some(existing) = current.spec.as_ref().and_then(|s| s.ca_bundle.clone()) {
                        spec.ca_bundle = Some(existing);
                        spec.insecure_skip_tls_verify = None;
                    }
                }
                updated.spec = Some(spec);
                api.replace(&name, &PostParams::default(), &updated).await?;
                tracing::info!(apiservice = %name, "restored the APIService");
                written += 1;
            }
            Some(_) => {}
        }
    }
    Ok(written)
}

/// True when `current` says what `desired` says. Metadata is not compared: an APIService a chart
/// created carries the chart's labels, and both may keep it as long as they agree on the spec.
/// Without a CA of our own, any caBundle already there is accepted.
fn matches(current: &APIService, desired: &APIService) -> bool {
    let (Some(have), Some(want)) = (&current.spec, &desired.spec) else { return false };
    let trust_matches = match &want.ca_bundle {
        Some(ca) => have.ca_bundle.as_ref() == Some(ca) && !have.insecure_skip_tls_verify.unwrap_or(false),
        None => have.ca_bundle.is_some() || have.insecure_skip_tls_verify.unwrap_or(false),
    };
    trust_matches
        && have.group == want.group
        && have.version == want.version
        && have.group_priority_minimum == want.group_priority_minimum
        && have.version_priority == want.version_priority
        && have.service == want.service
}

/// Reconciles while this replica leads (`leading` true), until `shutdown`. Never tears down.
pub fn keep_registered(
    client: Client,
    target: ApiServiceTarget,
    mut leading: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let api = Api::<APIService>::all(client.clone());
        loop {
            // Wait to lead.
            tokio::select! {
                led = leading.wait_for(|l| *l) => if led.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
            }
            // Every APIService, not only ours by label: a cluster has a few dozen, and ours may
            // carry another owner's labels.
            let names: Vec<String> =
                target.group_versions.iter().map(|(group, version)| format!("{version}.{group}")).collect();
            let mut changes = watcher(api.clone(), watcher::Config::default())
                .default_backoff()
                .filter(move |event| {
                    let ours = match event {
                        Ok(
                            watcher::Event::Apply(a)
                            | watcher::Event::Delete(a)
                            | watcher::Event::InitApply(a),
                        ) => a.metadata.name.as_ref().is_some_and(|n| names.contains(n)),
                        _ => true,
                    };
                    std::future::ready(ours)
                })
                .boxed();
            let mut timer = tokio::time::interval(target.resync);
            loop {
                if let Err(e) = reconcile_once(&client, &target).await {
                    tracing::warn!(error = %e, "reconciling the APIServices failed; retrying");
                }
                tokio::select! {
                    _ = timer.tick() => {}
                    event = changes.next() => if event.is_none() { break },
                    _ = leading.wait_for(|l| !*l) => break,
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        }
    });
}
