//! The `reports-server` binary: flags, logging, start, wait for a signal, shut down cleanly.

use std::net::SocketAddr;

use anyhow::Context as _;
use reports_server::{cli::Args, glibc::Memcpy, tls::CertificatePem, Server, ServerConfig};

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
    let args = Args::parse();
    init_logging(&args.log_format);
    memcpy.log();
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
    for warning in args.unimplemented_flags() {
        tracing::warn!("{warning}");
    }
    if !args.bind_address.is_loopback() {
        anyhow::ensure!(
            args.dangerously_serve_without_authentication,
            "refusing to serve {} without authentication: authentication and authorization are not built yet, so \
             only loopback addresses are served. Pass --dangerously-serve-without-authentication to expose every \
             report to anyone who can reach the port.",
            args.bind_address
        );
        tracing::warn!(
            "SERVING {} WITHOUT AUTHENTICATION: anyone who can reach this port can read and change every report",
            args.bind_address
        );
    }
    let certificate = match (&args.tls_cert_file, &args.tls_private_key_file) {
        (Some(cert), Some(key)) => CertificatePem::from_files(cert, key)?,
        _ => {
            tracing::info!("no --tls-cert-file given: using a self-signed certificate");
            CertificatePem::self_signed()?
        }
    };
    let config = ServerConfig {
        listen: SocketAddr::new(args.bind_address, args.secure_port),
        certificate,
        storage: args.storage_url(),
        postgres: args.postgres_settings()?,
        max_body_bytes: args.max_request_body_bytes,
        change_log_retention_seconds: args.change_log_retention_seconds,
        watch_window_bytes: args.watch_window_bytes,
        commit_trace: args.commit_trace,
        cluster: None,
    };
    let config_storage = config.storage.clone();
    let server = Server::start(config).await.context("starting the server")?;
    let addr = server.local_addr;
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    tracing::info!(
        storage = %reports_server::redact_url(&config_storage),
        "reports-server is ready on https://{host}:{}; try: kubectl --server https://{host}:{} --insecure-skip-tls-verify --token unused get polr -A",
        addr.port(),
        addr.port(),
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
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
