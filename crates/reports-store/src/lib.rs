//! reports-store: durable storage of report objects behind the [`Store`] trait.
//!
//! # resourceVersion
//!
//! Every write takes the next value of one counter, inside the same transaction that writes the
//! row and appends to the change log, and the writer is serialized, so RVs are unique, strictly
//! increasing and in commit order across every kind. The counter is a row in the database: it
//! survives restarts and is shared by every process on the database. The object's JSON is stored
//! with its `metadata.resourceVersion` already set, so reads serve the stored text without
//! re-rendering.
//!
//! # Change log
//!
//! Each write also appends `(rv, resource, namespace, name, type, labels, previous labels, the body
//! it replaced)` to the change log. Watches replay it (`rv > X`), and lists at a past RV (later
//! pages of a paged list, exact-RV lists) are rebuilt from it while it still covers their RV
//! (`snapshot`). Compaction drops entries older than the retention window and records the
//! highest dropped RV as the *compacted RV*: any RV below it is "too old" (410).
//!
//! Both stores ([`sqlite`], the embedded default, and [`postgres`], for production and several
//! replicas) pass the same conformance suite (`conformance`, with the `testing` feature).

use std::sync::Arc;

pub mod commits;
#[cfg(feature = "testing")]
pub mod conformance;
mod counter;
mod error;
pub mod findings;
#[cfg(feature = "testing")]
pub mod findings_conformance;
mod model;
pub mod postgres;
mod snapshot;
pub mod sqlite;
mod store;

pub use error::{Failure, SettingError, StoreError, StoreResult};
pub use findings::FindingsIndex;
pub use model::{
    labels_json, parse_labels, raw_metadata, Change, ChangeType, FindingChunk, FindingStream, ListChunk,
    ListQuery, ListStream, Retention, StoredObject,
};
pub use store::{DynStore, Store, COMPACTION_BATCH};

/// True if `url` names a PostgreSQL database: a `postgres://` or `postgresql://` URL, or a libpq
/// key=value string (`host=... dbname=...`).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://")
        || url.starts_with("postgresql://")
        || (!url.contains("://") && (url.contains("host=") || url.contains("dbname=")))
}

/// What [`open`] needs beyond the URL: the settings of whichever store the URL names.
#[derive(Debug, Clone, Default)]
pub struct StoreSettings {
    /// PostgreSQL's settings, with `findings` (the report kinds whose results are indexed), the
    /// one setting both stores honour.
    pub postgres: postgres::PgSettings,
    /// The bounds the SQLite file is kept to.
    pub sqlite: sqlite::SqliteLimits,
}

/// Opens the store named by a `--storage` URL: `sqlite://PATH`, `sqlite::memory:`, or a
/// PostgreSQL URL or key=value string (see [`is_postgres_url`]). To record commit instants,
/// attach a [`commits::CommitTrace`] to [`Store::commits`].
pub async fn open(url: &str, settings: &StoreSettings) -> StoreResult<DynStore> {
    if is_postgres_url(url) {
        return Ok(Arc::new(postgres::PgStore::connect(url, &settings.postgres).await?));
    }
    let url = url.to_string();
    let (findings, limits) = (settings.postgres.findings.clone(), settings.sqlite);
    tokio::task::spawn_blocking(move || open_sqlite(&url, findings, limits))
        .await
        .map_err(|e| StoreError::backend_caused("opening the SQLite store", e))?
}

fn open_sqlite(
    url: &str,
    findings: findings::FindingsIndex,
    limits: sqlite::SqliteLimits,
) -> StoreResult<DynStore> {
    if url == "sqlite::memory:" {
        Ok(Arc::new(sqlite::SqliteStore::open_temporary_with(findings)?))
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        Ok(Arc::new(sqlite::SqliteStore::open_with_options(std::path::Path::new(path), limits, findings)?))
    } else {
        Err(SettingError::UnsupportedUrl(url.split(':').next().unwrap_or_default().to_string()).into())
    }
}
