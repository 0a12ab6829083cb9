//! Flags of a server running in a cluster: how it reaches the cluster's API, how it authenticates
//! and authorizes callers (k8s.io/apiserver's names and meanings), and which APIServices it keeps.

use std::{path::PathBuf, time::Duration};

use super::compat::{go_bool, go_duration};

/// Heading (in `--help`) of the cluster flags; given without a cluster, they are named in the
/// start-up warning.
pub const HEADING: &str = "Cluster";

/// Cluster flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = HEADING)]
pub struct ClusterFlags {
    /// kubeconfig for the cluster's API (TokenReview, SubjectAccessReview, the authentication
    /// ConfigMap, namespaces, APIServices). Without it, and without the two below, a server running
    /// in a pod uses its service account; elsewhere it runs standalone.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// k8s.io/apiserver's kubeconfig for delegated authentication; used as --kubeconfig when that
    /// is absent (one client serves every call).
    #[arg(long)]
    pub authentication_kubeconfig: Option<PathBuf>,
    /// k8s.io/apiserver's kubeconfig for delegated authorization; used as --kubeconfig when that
    /// and --authentication-kubeconfig are absent.
    #[arg(long)]
    pub authorization_kubeconfig: Option<PathBuf>,
    /// Do not read kube-system/extension-apiserver-authentication; only the flags below count.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    pub authentication_skip_lookup: Option<bool>,
    /// How long TokenReview answers are cached (Go duration; 10s).
    #[arg(long, value_parser = go_duration)]
    pub authentication_token_webhook_cache_ttl: Option<Duration>,
    /// CA of client certificates (replaces the cluster's published one).
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// CA of the front proxy's client certificate (replaces the cluster's published settings).
    #[arg(long)]
    pub requestheader_client_ca_file: Option<PathBuf>,
    /// Common names allowed for the front proxy's certificate (empty: any the CA signed).
    #[arg(long, value_delimiter = ',')]
    pub requestheader_allowed_names: Vec<String>,
    /// Headers carrying the user name.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_username_headers: Vec<String>,
    /// Headers carrying the user's groups.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_group_headers: Vec<String>,
    /// Header prefixes carrying extra user attributes.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_extra_headers_prefix: Vec<String>,
    /// Headers carrying the user's UID.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_uid_headers: Vec<String>,
    /// Non-resource paths served without authorization (comma-separated; a trailing * matches a
    /// prefix). Default: /healthz, /readyz, /livez.
    #[arg(long, value_delimiter = ',')]
    pub authorization_always_allow_paths: Vec<String>,
    /// How long allowed SubjectAccessReview answers are cached (Go duration; 10s).
    #[arg(long, value_parser = go_duration)]
    pub authorization_webhook_cache_authorized_ttl: Option<Duration>,
    /// How long denied SubjectAccessReview answers are cached (Go duration; 10s).
    #[arg(long, value_parser = go_duration)]
    pub authorization_webhook_cache_unauthorized_ttl: Option<Duration>,
    /// The Service in front of this server: with it, the APIServices of the served groups are
    /// registered pointing at it and kept so (by one replica at a time, under a Lease). They are
    /// never removed by a stop; `reports-server uninstall` hands the groups back.
    #[arg(long)]
    pub servicename: Option<String>,
    /// Namespace of --servicename (default: the pod's namespace, POD_NAMESPACE).
    #[arg(long)]
    pub servicens: Option<String>,
    /// Safety-net interval between APIService reconciliations (Go duration; changes are also
    /// seen at once through a watch).
    #[arg(long, value_parser = go_duration)]
    pub apiservicereconcileinterval: Option<Duration>,
}

impl ClusterFlags {
    /// The kubeconfig to use, if any flag names one.
    pub fn kubeconfig(&self) -> Option<&PathBuf> {
        self.kubeconfig
            .as_ref()
            .or(self.authentication_kubeconfig.as_ref())
            .or(self.authorization_kubeconfig.as_ref())
    }

    /// The front-proxy and client-CA settings given as flags.
    pub fn client_auth(&self) -> reports_auth::config::ClientAuthFlags {
        reports_auth::config::ClientAuthFlags {
            client_ca_file: self.client_ca_file.clone(),
            requestheader_client_ca_file: self.requestheader_client_ca_file.clone(),
            requestheader_allowed_names: self.requestheader_allowed_names.clone(),
            requestheader_username_headers: self.requestheader_username_headers.clone(),
            requestheader_uid_headers: self.requestheader_uid_headers.clone(),
            requestheader_group_headers: self.requestheader_group_headers.clone(),
            requestheader_extra_headers_prefix: self.requestheader_extra_headers_prefix.clone(),
        }
    }
}
