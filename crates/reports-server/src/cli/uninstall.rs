//! Flags of `reports-server uninstall`.

use std::path::PathBuf;

use clap::Parser;

use super::compat::go_bool;

/// reports-server uninstall: hand the report groups back to their CRDs (deletes the APIServices),
/// optionally copying every report into CRD objects. Scale the server to zero first.
#[derive(Debug, Clone, Parser)]
#[command(name = "reports-server uninstall", version, about, long_about = None)]
pub struct UninstallArgs {
    /// kubeconfig for the cluster (the pod's service account when absent).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the server's Service and Lease (POD_NAMESPACE, else reports-server).
    #[arg(long)]
    pub servicens: Option<String>,
    /// Copy every report from the store into CRD objects once the APIServices are gone (the
    /// CRDs must be installed).
    #[arg(long)]
    pub copy_back: bool,
    /// Go on even though a replica holds the APIService Lease (it would register them again).
    #[arg(long)]
    pub force: bool,
    /// Where the reports are (as the server's --storage; upstream's DB_* environment too).
    #[arg(long, env = "REPORTS_STORAGE")]
    pub storage: Option<String>,
    /// PostgreSQL TLS mode (libpq's sslmode).
    #[arg(long)]
    pub dbsslmode: Option<String>,
    /// Hand back wgpolicyk8s.io (PolicyReport, ClusterPolicyReport).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "true", value_parser = go_bool)]
    pub storereports: bool,
    /// Hand back reports.kyverno.io (EphemeralReport, ClusterEphemeralReport).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "true", value_parser = go_bool)]
    pub storeephemeralreports: bool,
    /// Hand back openreports.io (Report, ClusterReport).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "true", value_parser = go_bool)]
    pub storeopenreports: bool,
}

impl UninstallArgs {
    /// The group versions to hand back.
    pub fn group_versions(&self) -> Vec<(String, String)> {
        [
            (self.storereports, "wgpolicyk8s.io", "v1alpha2"),
            (self.storeephemeralreports, "reports.kyverno.io", "v1"),
            (self.storeopenreports, "openreports.io", "v1alpha1"),
        ]
        .into_iter()
        .filter(|(enabled, _, _)| *enabled)
        .map(|(_, group, version)| (group.to_string(), version.to_string()))
        // The query API goes with the server: no CRD serves it afterwards.
        .chain([super::query_group_version()])
        .collect()
    }
}
