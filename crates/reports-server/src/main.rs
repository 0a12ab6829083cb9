//! The `reports-server` binary: flags, logging, start, wait for a signal, shut down cleanly.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser as _;
use reports_server::{
    cli::{uninstall::UninstallArgs, Args},
    glibc::Memcpy,
    tls::CertificatePem,
    Server, ServerConfig,
};

/// mimalloc: the request path allocates many small, short-lived buffers, and glibc's malloc
/// showed up as the top symbol in profiles of the write and watch paths.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // First, before the runtime starts threads: it may replace this process.
    let memcpy = reports_server::glibc::avoid_aliased_rep_movsb();
    run(memcpy)
}

#[tokio::main]
async fn run(memcpy: Memcpy) -> anyhow::Result<()> {
    // One TLS crypto provider for the whole process (outgoing webhook calls use the default).
    let _ = rustls::crypto::ring::default_provider().install_default();
    if std::env::args_os().nth(1).is_some_and(|a| a == "uninstall") {
        let args = UninstallArgs::parse_from(std::env::args_os().skip(1));
        init_logging("text");
        if let Err(e) = uninstall(args).await {
            tracing::error!("{e:#}");
            std::process::exit(1);
        }
        return Ok(());
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "query") {
        let args = reports_server::cli::query::QueryArgs::parse_from(std::env::args_os().skip(1));
        if let Err(e) = reports_server::query::client::run(&args, &mut std::io::stdout().lock()).await {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        return Ok(());
    }
    let args = Args::parse();
    init_logging(&args.log_format);
    memcpy.log();
    // Before the connection limit is derived from it.
    let open_files = reports_server::limits::raise_open_file_limit();
    tracing::debug!(?open_files, "open-file limit");
    // Start-up failures (a port in use, an unreachable database) are ordinary operational
    // errors: one log line in the configured format, with the cause chain, and exit status 1.
    if let Err(e) = serve(args).await {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
    Ok(())
}

async fn serve(args: Args) -> anyhow::Result<()> {
    if args.etcd == Some(true) {
        anyhow::bail!(
            "--etcd (upstream's embedded etcd) is not supported: reports-server keeps reports in an embedded \
             SQLite file by default (--storage sqlite://PATH), or in PostgreSQL"
        );
    }
    let result_metrics = args.result_metrics_settings()?;
    let certificate = match (&args.tls_cert_file, &args.tls_private_key_file) {
        (Some(cert), Some(key)) => CertificatePem::from_files(cert, key)?,
        _ => {
            tracing::info!("no --tls-cert-file given: using a self-signed certificate");
            CertificatePem::self_signed_for(&service_names(&args))?
        }
    };
    let cluster = args.cluster_config(|name| std::env::var(name).ok(), &certificate);
    match &cluster {
        Some(cluster) => tracing::info!(
            kubeconfig = ?cluster.kubeconfig,
            "in a cluster: every request is authenticated and authorized by the cluster"
        ),
        None if !args.bind_address.is_loopback() => {
            anyhow::ensure!(
                args.dangerously_serve_without_authentication,
                "refusing to serve {} without authentication: give --kubeconfig (or run in a pod with a service \
                 account) so that callers are authenticated and authorized by the cluster, or pass \
                 --dangerously-serve-without-authentication to expose every report to anyone who can reach the port",
                args.bind_address
            );
            tracing::warn!(
                "SERVING {} WITHOUT AUTHENTICATION: anyone who can reach this port can read and change every report",
                args.bind_address
            );
        }
        None => {}
    }
    let standalone = cluster.is_none();
    for warning in args.unimplemented_flags(standalone) {
        tracing::warn!("{warning}");
    }
    let config = ServerConfig {
        listen: SocketAddr::new(args.bind_address, args.secure_port),
        certificate,
        storage: args.storage_url(),
        postgres: args.postgres_settings()?,
        sqlite: args.sqlite_limits(),
        limits: args.serving_limits(),
        change_log: reports_store::Retention {
            max_age_seconds: args.change_log_retention_seconds,
            max_entries: args.change_log_max_entries,
        },
        watch_window_bytes: args.watch_window_bytes,
        commit_trace: args.commit_trace.clone(),
        cluster,
        result_metrics,
    };
    let config_storage = config.storage.clone();
    let server = Server::start(config).await.context("starting the server")?;
    let addr = server.local_addr;
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    if standalone {
        tracing::info!(
            storage = %reports_server::redact_url(&config_storage),
            "reports-server is ready on https://{host}:{}; try: kubectl --server https://{host}:{} --insecure-skip-tls-verify --token unused get polr -A",
            addr.port(),
            addr.port(),
        );
    } else {
        tracing::info!(storage = %reports_server::redact_url(&config_storage), "reports-server is ready on https://{host}:{}", addr.port());
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// `reports-server uninstall`: see `reports_server::cluster::uninstall`.
async fn uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    let client = reports_auth::cluster::client(args.kubeconfig.as_deref())
        .await?
        .context("no cluster: give --kubeconfig, or run in a pod with a service account")?;
    let store = if args.copy_back {
        let url = reports_server::cli::storage_url(args.storage.as_deref(), |name| std::env::var(name).ok());
        let postgres = reports_store::postgres::PgSettings {
            ssl_mode: args.dbsslmode.as_deref().map(str::parse).transpose()?,
            ..Default::default()
        };
        let settings = reports_store::StoreSettings { postgres, ..Default::default() };
        Some(
            reports_store::open(&url, &settings)
                .await
                .with_context(|| format!("opening {}", reports_server::redact_url(&url)))?,
        )
    } else {
        None
    };
    let namespace = args
        .servicens
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "reports-server".to_string());
    let options = reports_server::cluster::uninstall::UninstallOptions {
        group_versions: args.group_versions(),
        lease_namespace: namespace,
        copy_back: args.copy_back,
        force: args.force,
    };
    let catalogue = reports_core::Catalogue::embedded()?;
    let summary =
        reports_server::cluster::uninstall::uninstall(&client, store.as_ref(), &catalogue, &options).await?;
    tracing::info!(
        apiservices_deleted = ?summary.apiservices_deleted,
        copied = summary.copied,
        already_present = summary.already_present,
        "uninstalled: the report groups are served from their CRDs"
    );
    Ok(())
}

/// Names for a generated serving certificate: loopback, and the Service's DNS names when known
/// (the aggregator connects to `<service>.<namespace>.svc`).
fn service_names(args: &Args) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Some(service) = args.cluster.servicename.as_ref().filter(|s| !s.is_empty()) {
        let namespace = args
            .cluster
            .servicens
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "reports-server".to_string());
        for name in [
            service.clone(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ] {
            names.push(name);
        }
    }
    names
}

fn init_logging(format: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colour codes only for a person at a terminal, never in a container's log.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
