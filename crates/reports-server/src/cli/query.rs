//! Flags of `reports-server query`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// reports-server query: ask a running server about findings (the results inside reports) and
/// print a table, JSON or CSV. It reads the query API (`findings`, `findingcounts` in
/// query.reports-server.io), through kube-apiserver with the current kubeconfig, or straight
/// from a server with --server.
#[derive(Debug, Clone, Parser)]
#[command(name = "reports-server query", version)]
pub struct QueryArgs {
    /// What to ask.
    #[command(subcommand)]
    pub question: Question,
    /// Only findings from reports in this namespace.
    #[arg(long, short = 'n', global = true, conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Findings from every namespace and the cluster reports (the default).
    #[arg(long, short = 'A', global = true)]
    pub all_namespaces: bool,
    /// Conditions in the findings query language, e.g. `properties.score>=8,result=fail`
    /// (see docs/query.md).
    #[arg(long, short = 'f', global = true, default_value = "")]
    pub filter: String,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Items requested per page.
    #[arg(long, global = true, default_value_t = 500)]
    pub chunk_size: u64,
    /// Stop after this many items (0: no limit).
    #[arg(long, global = true, default_value_t = 0)]
    pub max_items: u64,
    /// The server's URL (e.g. https://127.0.0.1:4443); without it, the kubeconfig's cluster.
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// A kubeconfig (default: KUBECONFIG, ~/.kube/config, or the pod's service account).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Bearer token for --server.
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// Do not verify the server's certificate (--server only; the standalone server's is
    /// self-signed).
    #[arg(long, global = true)]
    pub insecure_skip_tls_verify: bool,
}

/// The questions.
#[derive(Debug, Clone, Subcommand)]
pub enum Question {
    /// Every finding that matches the filter.
    Findings,
    /// Findings counted per group, largest first.
    Counts {
        /// Fields to group by, comma-separated (e.g. `namespace,severity`, `policy`,
        /// `resource.kind`, `properties.artifact.repository`).
        #[arg(long, required = true)]
        by: String,
    },
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns, one table per page.
    Table,
    /// One JSON array of the objects.
    Json,
    /// Comma-separated values with a header.
    Csv,
}
