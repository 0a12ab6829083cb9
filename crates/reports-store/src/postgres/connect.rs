//! Connecting: the driver configuration from the URL and settings, the pool, the first
//! connection (waiting for a database that is not up yet), and opening every pooled connection
//! before the first request.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    errors::{is_unreachable, pool_error},
    settings::{take_ssl_mode, PgSettings, SslMode},
    tls,
};
use crate::error::{SettingError, StoreError, StoreResult};

/// The pool for `url` and `settings`, with the driver configuration and TLS connector that the
/// notification listener opens its own connection with. Nothing is connected yet.
pub(super) fn pool(
    url: &str,
    settings: &PgSettings,
) -> StoreResult<(Pool, tokio_postgres::Config, MakeRustlsConnect)> {
    let (url, url_mode) = take_ssl_mode(url);
    let mut config: tokio_postgres::Config =
        url.parse().map_err(|e: tokio_postgres::Error| SettingError::ConnectionString(e.to_string()))?;
    let mode = settings.ssl_mode.or(url_mode).unwrap_or(match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => SslMode::Disable,
        tokio_postgres::config::SslMode::Require => SslMode::Require,
        _ => SslMode::Prefer,
    });
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    config.connect_timeout(settings.connect_timeout);
    // Notice a silently dead connection (a partition) in about a minute rather than hours.
    config.keepalives_idle(Duration::from_secs(30));
    config.application_name("reports-server");
    config.options(format!("-c statement_timeout={}", settings.statement_timeout.as_millis()));
    if config.get_dbname().is_none() {
        config.dbname("reports");
    }
    let tls = MakeRustlsConnect::new(tls::connector(settings, mode)?);
    let manager = Manager::from_config(
        config.clone(),
        tls.clone(),
        ManagerConfig { recycling_method: RecyclingMethod::Fast },
    );
    let pool = Pool::builder(manager)
        .max_size(settings.pool_size.max(2))
        .wait_timeout(Some(settings.acquire_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(settings.connect_timeout))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::backend_caused("building the connection pool", e))?;
    Ok((pool, config, tls))
}

/// The first connection, retried with back-off for up to `patience` while the database is
/// unreachable; configuration errors (bad password, unknown database) fail at once.
pub(super) async fn first_connection(
    pool: &Pool,
    patience: Duration,
) -> StoreResult<deadpool_postgres::Object> {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(250);
    loop {
        let error = match pool.get().await {
            Ok(client) => return Ok(client),
            Err(e) => e,
        };
        let unreachable = match &error {
            deadpool_postgres::PoolError::Backend(e) => is_unreachable(e),
            deadpool_postgres::PoolError::Timeout(_) => true,
            _ => false,
        };
        let error = pool_error(error);
        if !unreachable || started.elapsed() + pause > patience {
            return Err(error);
        }
        tracing::warn!(error = %error, "PostgreSQL is not reachable yet; retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Opens every connection the pool may hold and prepares `statements` on each. A new
/// connection costs a TCP (often TLS) handshake, authentication and a backend process start, and
/// a backend's first statement on a table loads its catalog entries; done on demand, all of it
/// falls on the first burst of requests after a start, which queues behind it (about 80 ms of
/// stall at 1,500 creates/s). Best effort: what fails here is done by the request that needs it.
pub(super) async fn fill_pool(pool: &Pool, statements: &[&str]) {
    let opened = futures::future::join_all((0..pool.status().max_size).map(|_| pool.get())).await;
    let prepared = futures::future::join_all(opened.iter().flatten().map(|client| async move {
        for sql in statements {
            client.prepare_cached(sql).await?;
        }
        Ok::<_, tokio_postgres::Error>(())
    }))
    .await;
    let failed =
        opened.iter().filter(|c| c.is_err()).count() + prepared.iter().filter(|p| p.is_err()).count();
    if failed > 0 {
        tracing::debug!(failed, "some pooled connections could not be opened or prepared at start");
    }
}
