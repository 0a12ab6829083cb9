//! Result metrics: Policy Reporter's gauges, kept by the server from its own change log.
//!
//! # What is exported
//!
//! Policy Reporter turns every result of the reports it reads into a Prometheus series, and its
//! Grafana dashboards are written against those series. This module exports the same two
//! gauges with the same label names and values, so the dashboards work against this server
//! unchanged (and Policy Reporter's own metrics can be switched off):
//!
//! - `policy_report_result`, results of namespaced reports (PolicyReport, openreports Report);
//! - `cluster_policy_report_result`, results of cluster reports (ClusterPolicyReport,
//!   ClusterReport), without the `namespace` label.
//!
//! In the `detailed` mode (Policy Reporter's default) the labels are `namespace, rule, policy,
//! report, kind, name, status, severity, category, source` and a series is worth 1; in the
//! `simple` mode they are `namespace, policy, status, severity, category, source` and a series
//! counts its results; in the `custom` mode the operator lists the labels, in Policy Reporter's
//! syntax (report labels and result properties included), and a series counts its results. The
//! three are one path: a mode is a label set, and everything below works on any set. How each
//! value is read from a report, and how custom labels are named and checked, is in `labels`.
//!
//! # The model: contributions
//!
//! Each report *contributes* results to series. The tally keeps, per series, how many results
//! it counts, and per report, which series it added to and how much (a short list of
//! `(series, count)` pairs). A write of a report takes its old contribution away and adds the
//! new one; a delete takes it away; a series whose count falls to 0 disappears. So the gauges
//! follow creates, updates (a result changing severity moves from one series to another, a
//! report whose results shrink to none leaves nothing behind) and deletes exactly, and no scrape
//! ever reads a report: it writes out the series held, at a cost proportional to them.
//!
//! # Interning
//!
//! A cluster has many results but few distinct label values (a few hundred policies, a few
//! severities, the namespaces), so every value is held once and series and reports refer to it
//! by a 4-byte id. A series is one id per label (ten in the detailed mode) and a count; a
//! report's contribution is a few pairs of ids. Values are counted by their users and freed
//! with the last one, so report and resource names that come and go do not accumulate.
//!
//! # Following the change log
//!
//! Every replica must show the cluster's numbers (dashboards take the `max` across pods), not
//! just the writes it served, so the tally is fed from the store's change log, which records
//! every replica's writes. At start one task reads every report of the four counted kinds, in
//! pages, into a fresh tally, and swaps it in; from then on it reads the log after each commit
//! notification (which on PostgreSQL includes other replicas' commits), one cursor per kind
//! starting at the snapshot its read saw. It has a tail of its own rather than using the watch
//! feed's window: that window is only filled while someone watches, and keeping it full for the
//! metrics would cost its memory for nothing.
//!
//! If the log has been compacted past a cursor (the server was stalled for longer than the
//! retention), changes may be missing: the task reads every report again into a fresh tally and
//! swaps it in, as a watcher relists after 410 Gone.
//!
//! # The limit
//!
//! Detailed series are one per result, which on a large cluster is more than a Prometheus wants.
//! `--result-metrics-max-series` bounds the series held: a result that would need a new series
//! beyond it is not counted, `reports_server_result_metrics_dropped_results` says how many
//! results are missing and `reports_server_result_metrics_dropped_series_total` how many series
//! were refused, so a cap never hides numbers silently. A refused result is counted when its
//! report is next written, if there is room by then. `off` does no work at all: no read, no
//! tail, no series.

mod labels;
mod tail;
mod tally;

pub use labels::SettingsError;

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
};

use reports_store::DynStore;

use crate::metrics::{Metrics, MetricsSource};
use labels::LabelSet;
use tally::Tally;

/// The default of `--result-metrics-max-series`: enough for a cluster's results in the simple
/// mode, and for a mid-sized cluster's in the detailed one, about 20 MB held.
pub const DEFAULT_MAX_SERIES: usize = 100_000;

/// Which labels the result gauges carry (`--result-metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// One series per result: namespace, rule, policy, report, kind, name, status, severity,
    /// category, source (Policy Reporter's default, which its dashboards' tables expect).
    #[default]
    Detailed,
    /// Counts by namespace, policy, status, severity, category and source.
    Simple,
    /// Counts by the labels listed in `--result-metrics-labels`, in Policy Reporter's syntax
    /// (its `metrics.customLabels`): the fixed names, `label:<key>` and `property:<key>`.
    Custom,
    /// No result metrics, and no work for them.
    Off,
}

impl std::fmt::Display for Mode {
    /// The mode as `--result-metrics` spells it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Detailed => "detailed",
            Mode::Simple => "simple",
            Mode::Custom => "custom",
            Mode::Off => "off",
        })
    }
}

/// The result-metrics settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Which labels, or none.
    pub mode: Mode,
    /// The labels of the custom mode, as Policy Reporter's `metrics.customLabels` lists them;
    /// empty with any other mode.
    pub labels: Vec<String>,
    /// Most series held at once.
    pub max_series: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self { mode: Mode::Detailed, labels: Vec::new(), max_series: DEFAULT_MAX_SERIES }
    }
}

impl Settings {
    /// Checks the settings as the server does at start: custom labels that Policy Reporter
    /// would not export (an unknown name, a name Prometheus refuses, a name given twice) are
    /// refused, as are labels without the custom mode and the custom mode without labels.
    pub fn check(&self) -> Result<(), SettingsError> {
        LabelSet::of(self).map(drop)
    }
}

/// The result gauges of one process: the tally the tailing task keeps, rendered at each scrape.
pub(crate) struct ResultMetrics {
    /// The labels of every series, and what a series is worth.
    labels: LabelSet,
    /// Most series held (`--result-metrics-max-series`).
    max_series: usize,
    /// The series and contributions. A std mutex: the task holds it for one report at a time,
    /// a scrape for one rendering.
    tally: Mutex<Tally>,
    /// Set once the first full read is in, so an operator can tell empty gauges from gauges not
    /// filled yet.
    ready: AtomicBool,
    /// Every change up to this RV is counted (what tests and operators compare with the newest
    /// RV to see the gauges are current).
    resource_version: AtomicU64,
    /// Full reads done (the first, and one per compaction past the tail).
    rebuilds: AtomicU64,
}

impl ResultMetrics {
    /// The gauges `settings` asks for, empty; None when they are off. Refuses settings that
    /// [`Settings::check`] refuses, so a server with bad labels does not start.
    pub(crate) fn new(settings: &Settings) -> Result<Option<Arc<Self>>, SettingsError> {
        let Some(labels) = LabelSet::of(settings)? else { return Ok(None) };
        Ok(Some(Arc::new(Self {
            tally: Mutex::new(Tally::new(&labels, settings.max_series)),
            labels,
            max_series: settings.max_series,
            ready: AtomicBool::new(false),
            resource_version: AtomicU64::new(0),
            rebuilds: AtomicU64::new(0),
        })))
    }

    /// The labels of every series.
    fn labels(&self) -> &LabelSet {
        &self.labels
    }

    /// An empty tally for these gauges.
    fn fresh_tally(&self) -> Tally {
        Tally::new(&self.labels, self.max_series)
    }

    fn tally(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Swaps in a tally built from a full read, keeping the count of refused series.
    fn replace(&self, mut fresh: Tally) {
        let mut tally = self.tally();
        fresh.refused_series_total += tally.refused_series_total;
        *tally = fresh;
        drop(tally);
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Notes that every change up to `rv` is counted.
    fn reached(&self, rv: u64) {
        self.resource_version.fetch_max(rv, Ordering::Relaxed);
    }
}

impl MetricsSource for ResultMetrics {
    fn render(&self, out: &mut String) {
        let tally = self.tally();
        tally.render(&self.labels, out);
        let (series, reports, bytes) = (tally.series(), tally.reports(), tally.bytes());
        let (dropped, refused) = (tally.refused_results, tally.refused_series_total);
        drop(tally);
        let gauges = [
            ("series", "gauge", "Series in the result gauges.", series as u64),
            ("max_series", "gauge", "The series limit (--result-metrics-max-series).", self.max_series as u64),
            ("reports", "gauge", "Reports whose results are counted.", reports as u64),
            ("bytes", "gauge", "Memory held for the result gauges, estimated.", bytes as u64),
            ("dropped_results", "gauge", "Results not counted because their series would pass the limit.", dropped),
            ("dropped_series_total", "counter", "Series refused at the limit, once per report write that needed them.", refused),
            ("ready", "gauge", "1 once every report has been read at start.", u64::from(self.ready.load(Ordering::Relaxed))),
            ("resource_version", "gauge", "Every change up to this resourceVersion is counted.", self.resource_version.load(Ordering::Relaxed)),
            ("rebuilds_total", "counter", "Full reads of every report (at start, and when the change log was compacted past the metrics).", self.rebuilds.load(Ordering::Relaxed)),
        ];
        for (name, kind, help, value) in gauges {
            let name = format!("reports_server_result_metrics_{name}");
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
        }
    }
}

/// Starts the result metrics made by [`ResultMetrics::new`] (nothing at all when off): adds them
/// to `metrics` and spawns the task that keeps them, which stops when `shutting_down` flips.
pub(crate) fn start(
    result_metrics: Option<Arc<ResultMetrics>>,
    store: DynStore,
    metrics: &Metrics,
    shutting_down: tokio::sync::watch::Receiver<bool>,
) {
    let Some(result_metrics) = result_metrics else { return };
    metrics.add_source(result_metrics.clone());
    tokio::spawn(tail::run(store, result_metrics, shutting_down));
}
