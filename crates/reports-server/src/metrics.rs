//! `/metrics`: the series an apiserver operator already graphs, in Prometheus text format.
//!
//! Request series carry kube-apiserver's names and labels, computed from the same request
//! attributes kube-apiserver uses ([`RequestInfo`]), so dashboards and alerts written for
//! kube-apiserver (or for upstream reports-server, which inherits them) work unchanged:
//!
//! - `apiserver_request_total{verb,dry_run,group,version,resource,subresource,scope,component,code}`
//! - `apiserver_request_duration_seconds{verb,dry_run,group,version,resource,subresource,scope,component}`,
//!   a histogram with kube's buckets, measured until the response body has been sent (lists
//!   stream, so the head alone would flatter them); watches are left out, as they last as long
//!   as the client wants;
//! - `apiserver_longrunning_requests{verb,group,version,resource,subresource,scope,component}`,
//!   open watches;
//! - `apiserver_current_inflight_requests{request_kind}`, requests being served, split into
//!   `readOnly` and `mutating` as kube's max-in-flight filter splits them.
//!
//! Verbs are reported the way kube reports them: the HTTP method, except `LIST` for reads of a
//! collection and `WATCH` for watches. Other sources (the store, the watch window) add their
//! own lines through [`MetricsSource`].
//!
//! Every series is a few atomics behind one short-held lock per request; the label sets are
//! bounded by the catalogue (six resources, a handful of verbs and codes), and non-resource
//! requests (discovery, health) are not recorded, so nothing a client sends can grow the set
//! without bound: unknown resources are recorded under `resource=""` with their code.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use axum::{extract::Request, middleware::Next, response::Response};
use reports_core::{request_info::RequestInfo, Catalogue};

/// kube-apiserver's buckets for `apiserver_request_duration_seconds`.
const DURATION_BUCKETS: [f64; 23] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0,
    20.0, 30.0, 45.0, 60.0,
];

/// Adds lines to a scrape: the store and the watch feed report their own figures this way.
pub trait MetricsSource: Send + Sync {
    /// Appends complete Prometheus text lines (with their `# HELP` and `# TYPE`).
    fn render(&self, out: &mut String);
}

/// The labels every request series shares.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SeriesKey {
    verb: &'static str,
    dry_run: &'static str,
    group: String,
    version: String,
    resource: String,
    subresource: String,
    scope: &'static str,
}

impl SeriesKey {
    fn labels(&self) -> String {
        format!(
            "component=\"apiserver\",dry_run=\"{}\",group=\"{}\",resource=\"{}\",scope=\"{}\",subresource=\"{}\",verb=\"{}\",version=\"{}\"",
            self.dry_run,
            escape(&self.group),
            escape(&self.resource),
            self.scope,
            escape(&self.subresource),
            self.verb,
            escape(&self.version)
        )
    }
}

/// Counts and durations of one label set.
#[derive(Default)]
struct RequestSeries {
    /// Completed requests by HTTP status code.
    codes: BTreeMap<u16, u64>,
    /// Cumulative-by-render histogram: one count per bucket (not cumulative here), then +Inf.
    buckets: [u64; DURATION_BUCKETS.len() + 1],
    /// Sum of observed durations, in seconds.
    duration_sum: f64,
    /// Observations (requests other than watches).
    duration_count: u64,
}

/// The process's metrics. Shared by the request middleware and the `/metrics` handler.
pub struct Metrics {
    /// Resource names known to the catalogue, so an unknown path cannot add label values.
    known: Vec<(String, String, String)>,
    /// Request counts and durations; a lock held for a map update per request.
    requests: Mutex<BTreeMap<SeriesKey, RequestSeries>>,
    /// Open watches by label set.
    long_running: Mutex<BTreeMap<SeriesKey, Arc<AtomicI64>>>,
    /// Requests in flight that change nothing.
    inflight_read_only: AtomicI64,
    /// Requests in flight that write.
    inflight_mutating: AtomicI64,
    /// Scrapes served, for operators checking that Prometheus reaches the server.
    scrapes: AtomicU64,
    /// Other contributors (store, watch feed), rendered after the request series.
    sources: Mutex<Vec<Arc<dyn MetricsSource>>>,
}

impl Metrics {
    /// Metrics for the kinds of `catalogue`.
    pub fn new(catalogue: &Catalogue) -> Self {
        let known = catalogue
            .kinds()
            .iter()
            .map(|k| (k.group.clone(), k.version.clone(), k.plural.clone()))
            .collect();
        Self {
            known,
            requests: Mutex::default(),
            long_running: Mutex::default(),
            inflight_read_only: AtomicI64::new(0),
            inflight_mutating: AtomicI64::new(0),
            scrapes: AtomicU64::new(0),
            sources: Mutex::default(),
        }
    }

    /// Adds a contributor of further lines.
    pub fn add_source(&self, source: Arc<dyn MetricsSource>) {
        lock(&self.sources).push(source);
    }

    /// The label set of a resource request, with unknown resources folded into one value.
    fn key(&self, info: &RequestInfo, dry_run: bool) -> SeriesKey {
        let known = self
            .known
            .iter()
            .any(|(g, v, r)| *g == info.api_group && *v == info.api_version && *r == info.resource);
        let (group, version, resource, subresource) = if known {
            (
                info.api_group.clone(),
                info.api_version.clone(),
                info.resource.clone(),
                info.subresource.clone(),
            )
        } else {
            Default::default()
        };
        SeriesKey {
            verb: reported_verb(info),
            dry_run: if dry_run { "All" } else { "" },
            group,
            version,
            resource,
            subresource,
            scope: scope(info),
        }
    }

    fn record(&self, key: &SeriesKey, code: u16, elapsed: Option<f64>) {
        let mut requests = lock(&self.requests);
        let series = match requests.get_mut(key) {
            Some(series) => series,
            None => requests.entry(key.clone()).or_default(),
        };
        *series.codes.entry(code).or_default() += 1;
        if let Some(seconds) = elapsed {
            let bucket =
                DURATION_BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(DURATION_BUCKETS.len());
            series.buckets[bucket] += 1;
            series.duration_sum += seconds;
            series.duration_count += 1;
        }
    }

    fn long_running_gauge(&self, key: &SeriesKey) -> Arc<AtomicI64> {
        lock(&self.long_running).entry(key.clone()).or_default().clone()
    }

    /// The whole scrape, in Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        self.scrapes.fetch_add(1, Ordering::Relaxed);
        let mut out = String::with_capacity(16 * 1024);
        let requests = lock(&self.requests);
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.\n# TYPE apiserver_request_total counter\n");
        for (key, series) in requests.iter() {
            let labels = key.labels();
            for (code, count) in &series.codes {
                let _ = writeln!(out, "apiserver_request_total{{code=\"{code}\",{labels}}} {count}");
            }
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.\n# TYPE apiserver_request_duration_seconds histogram\n");
        for (key, series) in requests.iter().filter(|(_, s)| s.duration_count > 0) {
            let labels = key.labels();
            let mut cumulative = 0;
            for (bound, count) in DURATION_BUCKETS.iter().zip(series.buckets.iter()) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "apiserver_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                series.duration_count
            );
            let _ =
                writeln!(out, "apiserver_request_duration_seconds_sum{{{labels}}} {}", series.duration_sum);
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_count{{{labels}}} {}",
                series.duration_count
            );
        }
        drop(requests);
        out.push_str("# HELP apiserver_longrunning_requests Gauge of all active long-running apiserver requests broken out by verb, group, version, resource, scope and component.\n# TYPE apiserver_longrunning_requests gauge\n");
        for (key, gauge) in lock(&self.long_running).iter() {
            let labels = key.labels().replace(&format!("dry_run=\"{}\",", key.dry_run), "");
            let _ =
                writeln!(out, "apiserver_longrunning_requests{{{labels}}} {}", gauge.load(Ordering::Relaxed));
        }
        out.push_str("# HELP apiserver_current_inflight_requests Maximal number of currently used inflight request limit of this apiserver per request kind in last second.\n# TYPE apiserver_current_inflight_requests gauge\n");
        let _ = writeln!(
            out,
            "apiserver_current_inflight_requests{{request_kind=\"mutating\"}} {}",
            self.inflight_mutating.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "apiserver_current_inflight_requests{{request_kind=\"readOnly\"}} {}",
            self.inflight_read_only.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP reports_server_metrics_scrapes_total Scrapes of /metrics served.\n# TYPE reports_server_metrics_scrapes_total counter\nreports_server_metrics_scrapes_total {}",
            self.scrapes.load(Ordering::Relaxed)
        );
        let sources = lock(&self.sources).clone();
        for source in sources {
            source.render(&mut out);
        }
        out
    }
}

/// `apiserver_storage_objects{resource}`: objects stored per resource, refreshed by
/// [`refresh_storage_objects`] (a count per scrape would make every scrape a scan).
#[derive(Default)]
pub struct StorageObjects {
    /// `(resource.group, count)` for every kind of the catalogue.
    counts: Mutex<Vec<(String, u64)>>,
}

impl MetricsSource for StorageObjects {
    fn render(&self, out: &mut String) {
        out.push_str("# HELP apiserver_storage_objects Number of stored objects at the time of last check split by kind.\n# TYPE apiserver_storage_objects gauge\n");
        for (resource, count) in lock(&self.counts).iter() {
            let _ = writeln!(out, "apiserver_storage_objects{{resource=\"{}\"}} {count}", escape(resource));
        }
    }
}

/// Counts the stored objects of every kind now and then every `period`, until `shutting_down`.
pub async fn refresh_storage_objects(
    store: reports_store::DynStore,
    catalogue: Catalogue,
    gauge: Arc<StorageObjects>,
    period: std::time::Duration,
    mut shutting_down: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutting_down.wait_for(|stop| *stop) => return,
        }
        match store.count_by_resource().await {
            Ok(stored) => {
                let counts = catalogue
                    .kinds()
                    .iter()
                    .map(|kind| {
                        let count =
                            stored.iter().find(|(r, _)| r == kind.storage_key()).map_or(0, |(_, n)| *n);
                        (kind.qualified_resource(), count)
                    })
                    .collect();
                *lock(&gauge.counts) = counts;
            }
            Err(e) => tracing::warn!(error = %e, "counting stored objects for the metrics failed"),
        }
    }
}

/// Request middleware: records every resource request in `metrics`.
pub async fn track(metrics: Arc<Metrics>, mut request: Request, next: Next) -> Response {
    let info = RequestInfo::resolve(request.method().as_str(), request.uri().path(), request.uri().query());
    // Resolved once per request: authorization reads it from here.
    request.extensions_mut().insert(info.clone());
    if !info.is_resource_request {
        return next.run(request).await;
    }
    let dry_run = request.uri().query().is_some_and(|q| q.split('&').any(|p| p.starts_with("dryRun=")));
    let key = metrics.key(&info, dry_run);
    let inflight = if info.is_read_only() { &metrics.inflight_read_only } else { &metrics.inflight_mutating };
    inflight.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let response = next.run(request).await;
    inflight.fetch_sub(1, Ordering::Relaxed);
    let code = response.status().as_u16();
    let long_running = info.is_long_running() && response.status().is_success();
    let gauge = long_running.then(|| {
        let gauge = metrics.long_running_gauge(&key);
        gauge.fetch_add(1, Ordering::Relaxed);
        gauge
    });
    let done = Completion { metrics, key, code, started, timed: !info.is_long_running(), gauge };
    crate::response::hold_until_sent(response, done)
}

/// What is recorded once the response body has been sent or dropped (so streamed lists are
/// timed to their last byte).
struct Completion {
    metrics: Arc<Metrics>,
    key: SeriesKey,
    code: u16,
    started: Instant,
    /// False for watches, whose duration means nothing.
    timed: bool,
    /// The open-watch gauge to decrement.
    gauge: Option<Arc<AtomicI64>>,
}

impl Drop for Completion {
    fn drop(&mut self) {
        let elapsed = self.timed.then(|| self.started.elapsed().as_secs_f64());
        self.metrics.record(&self.key, self.code, elapsed);
        if let Some(gauge) = &self.gauge {
            gauge.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// kube's reported verb: the HTTP method, but `LIST` for a read that is not of one object and
/// `WATCH` for watches.
fn reported_verb(info: &RequestInfo) -> &'static str {
    match info.verb.as_str() {
        "list" if scope(info) == "resource" => "GET",
        "list" => "LIST",
        "watch" => "WATCH",
        "get" => "GET",
        "create" => "POST",
        "update" => "PUT",
        "patch" => "PATCH",
        "delete" | "deletecollection" => "DELETE",
        _ => "OTHER",
    }
}

/// kube's scope label: `resource` when a name is known (from the path or a `metadata.name`
/// field selector) and for creates, `namespace` for a namespace's collection, `cluster` for the
/// rest.
fn scope(info: &RequestInfo) -> &'static str {
    if !info.name.is_empty() || info.verb == "create" {
        "resource"
    } else if !info.namespace.is_empty() {
        "namespace"
    } else {
        "cluster"
    }
}

/// Escapes a label value (backslash, quote, newline).
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(&Catalogue::embedded().expect("embedded CRDs"))
    }

    fn key(m: &Metrics, method: &str, target: &str) -> SeriesKey {
        let (path, query) = target.split_once('?').map_or((target, None), |(p, q)| (p, Some(q)));
        m.key(&RequestInfo::resolve(method, path, query), false)
    }

    #[test]
    fn verbs_and_scopes_are_reported_as_kube_reports_them() {
        let m = metrics();
        let ns = "/apis/wgpolicyk8s.io/v1alpha2/namespaces/a/policyreports";
        let cases = [
            ("GET", ns.to_string(), "LIST", "namespace"),
            ("GET", format!("{ns}?watch=1"), "WATCH", "namespace"),
            ("GET", format!("{ns}/x"), "GET", "resource"),
            ("POST", ns.to_string(), "POST", "resource"),
            ("PUT", format!("{ns}/x"), "PUT", "resource"),
            ("PATCH", format!("{ns}/x"), "PATCH", "resource"),
            ("DELETE", format!("{ns}/x"), "DELETE", "resource"),
            ("DELETE", ns.to_string(), "DELETE", "namespace"),
            ("GET", "/apis/wgpolicyk8s.io/v1alpha2/policyreports".to_string(), "LIST", "cluster"),
            ("GET", "/apis/wgpolicyk8s.io/v1alpha2/clusterpolicyreports/c".to_string(), "GET", "resource"),
            ("GET", format!("{ns}?watch=1&fieldSelector=metadata.name%3Dx"), "WATCH", "resource"),
            ("GET", format!("{ns}?fieldSelector=metadata.name%3Dx"), "GET", "resource"),
        ];
        for (method, target, verb, scope) in cases {
            let k = key(&m, method, &target);
            assert_eq!((k.verb, k.scope), (verb, scope), "{method} {target}");
            assert!(k.resource.ends_with("policyreports"), "{target}");
        }
    }

    #[test]
    fn unknown_resources_do_not_add_label_values() {
        let m = metrics();
        let k = key(&m, "GET", "/apis/wgpolicyk8s.io/v1alpha2/namespaces/a/made-up-1");
        assert_eq!((k.group.as_str(), k.resource.as_str()), ("", ""));
        assert_eq!(k, key(&m, "GET", "/apis/evil.example/v9/namespaces/a/made-up-2"));
    }

    #[test]
    fn the_scrape_has_counters_a_cumulative_histogram_and_gauges() {
        let m = metrics();
        let k = key(&m, "GET", "/apis/openreports.io/v1alpha1/namespaces/a/reports");
        m.record(&k, 200, Some(0.003));
        m.record(&k, 200, Some(0.3));
        m.record(&k, 410, Some(100.0));
        let text = m.render();
        let labels = "component=\"apiserver\",dry_run=\"\",group=\"openreports.io\",resource=\"reports\",scope=\"namespace\",subresource=\"\",verb=\"LIST\",version=\"v1alpha1\"";
        assert!(text.contains(&format!("apiserver_request_total{{code=\"200\",{labels}}} 2\n")), "{text}");
        assert!(text.contains(&format!("apiserver_request_total{{code=\"410\",{labels}}} 1\n")));
        assert!(
            text.contains(&format!("apiserver_request_duration_seconds_bucket{{{labels},le=\"0.005\"}} 1\n"))
        );
        assert!(
            text.contains(&format!("apiserver_request_duration_seconds_bucket{{{labels},le=\"0.4\"}} 2\n"))
        );
        assert!(
            text.contains(&format!("apiserver_request_duration_seconds_bucket{{{labels},le=\"60\"}} 2\n"))
        );
        assert!(
            text.contains(&format!("apiserver_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 3\n"))
        );
        assert!(text.contains(&format!("apiserver_request_duration_seconds_count{{{labels}}} 3\n")));
        assert!(text.contains("apiserver_current_inflight_requests{request_kind=\"readOnly\"} 0\n"));
        let gauge = m.long_running_gauge(&key(&m, "GET", "/apis/openreports.io/v1alpha1/reports?watch=true"));
        gauge.fetch_add(2, Ordering::Relaxed);
        assert!(m.render().contains("apiserver_longrunning_requests{component=\"apiserver\",group=\"openreports.io\",resource=\"reports\",scope=\"cluster\",subresource=\"\",verb=\"WATCH\",version=\"v1alpha1\"} 2\n"));
    }
}
