//! The production store: PostgreSQL, shared by any number of server replicas.
//!
//! # Tables
//!
//! - `report_objects`: the current state, one row per object, keyed by
//!   `(cluster_id, resource, namespace, name)`. The JSON is kept as `text` exactly as served
//!   (`jsonb` would reorder keys and cost a conversion on every read), compressed (pglz) and out
//!   of line; labels are there only as 4-byte hashes that label selectors are pushed down to, see
//!   [`labels`].
//! - `report_changes`: the change log, keyed by `(cluster_id, rv)`. To keep a flood of creates
//!   from writing every report twice, a change row leaves `body` NULL while its object row still
//!   holds that very version; the write that replaces or deletes the object first copies the old
//!   body into the old change row. A log read joins the two, so it always yields the object as it
//!   was at that RV.
//! - `report_counters`: one row per cluster with the newest RV and the compacted RV.
//! - `clusters`: `(id, name)`, the same shape as upstream's table of that name.
//!
//! Every row carries a cluster id, so one database can hold several clusters (as upstream does);
//! RVs are per cluster.
//!
//! # resourceVersion in commit order, across replicas
//!
//! Every write increments its cluster's counter row inside the writing transaction. The row lock
//! is held until commit, and PostgreSQL makes a transaction visible before it releases its locks,
//! so the transaction that takes RV N+1 can only start its increment after the one holding N is
//! visible. Hence RVs are unique, increase in commit order, and whoever sees N sees everything
//! below N: a watcher reading `rv > X` can never skip a late commit, on any replica. The lock is
//! held for one statement and the commit: an update first locks its object row (`FOR UPDATE`) and
//! checks the expected RV, and only then takes the counter in the statement that writes.
//!
//! The object's JSON carries its RV, which is known only inside that statement, so the body is
//! sent as two halves and joined around the counter value by PostgreSQL (`$prefix || rv ||
//! $suffix`): one round trip, no placeholder scanning on the server.
//!
//! # Waking watchers on every replica
//!
//! Each write also sends `NOTIFY` (delivered on commit) on a channel named after the cluster. Each
//! store keeps one dedicated listening connection and publishes the newest RV it hears of (and of
//! its own commits) to [`Store::subscribe`]; the watch feed then reads the log. A reconnecting
//! listener re-reads the counter after `LISTEN`, and a slow poll covers anything else, so a lost
//! notification delays an event but never loses it.
//!
//! # Failure
//!
//! Every operation runs in its own task, so a request that is abandoned halfway (a client hanging
//! up) never returns a connection to the pool in the middle of a transaction. Connection
//! failures, pool exhaustion and timeouts are [`StoreError::Unavailable`] (503 with Retry-After);
//! the pool replaces broken connections by itself, so the server recovers when the database is
//! back. No connection string or password is ever put in an error.

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::{StreamExt as _, TryStreamExt as _};
use reports_core::{
    selector::{Field, FieldOp, FieldSelector, LabelSelector},
    Catalogue,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::{error::SqlState, types::ToSql, AsyncMessage};
use uuid::Uuid;

use crate::{
    commits::CommitSignal, labels_json, parse_labels, Change, ChangeType, ListChunk, ListQuery, ListStream,
    Store, StoreError, StoreResult, StoredObject,
};

/// Most rows one statement of a list reads.
const READ_ROWS: u64 = 1000;
/// Rows per list chunk, and the byte budget that closes a chunk early.
const CHUNK_ROWS: usize = 256;
const CHUNK_BYTES: usize = 1 << 20;
/// How often the listener re-reads the counter even without notifications.
const SAFETY_POLL: Duration = Duration::from_secs(5);
/// Attempts of a write that lost a deadlock or serialization race.
pub(super) const WRITE_ATTEMPTS: usize = 3;
/// Rows dropped per compaction statement, so one pass never holds locks for long.
const COMPACTION_BATCH: i64 = 10_000;
/// The upstream (kyverno/reports-server) schema version this store adopts in place.
const UPSTREAM_SCHEMA_VERSION: i64 = 11;

/// How to verify the server's certificate (libpq's `sslmode`, as upstream's `--dbsslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// No TLS (upstream's default).
    #[default]
    Disable,
    /// TLS when the server offers it, unverified.
    Prefer,
    /// TLS, unverified unless a root certificate is given (then as `VerifyCa`), as libpq does.
    Require,
    /// TLS with the chain verified against the root certificate; any host name.
    VerifyCa,
    /// TLS with the chain and the host name verified.
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "" | "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(StoreError::Backend(format!(
                    "unknown sslmode {other:?}: use disable, prefer, require, verify-ca or verify-full"
                )))
            }
        })
    }
}

/// PostgreSQL settings that do not fit in a connection URL or come from upstream's flags.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// TLS mode; overrides the URL's `sslmode`.
    pub ssl_mode: Option<SslMode>,
    /// PEM root certificate(s) that sign the server's certificate.
    pub ssl_root_cert: Option<PathBuf>,
    /// PEM client certificate, for certificate authentication.
    pub ssl_cert: Option<PathBuf>,
    /// PEM private key of `ssl_cert`.
    pub ssl_key: Option<PathBuf>,
    /// Largest number of pooled connections (plus one for notifications).
    pub pool_size: usize,
    /// Connect timeout for new connections.
    pub connect_timeout: Duration,
    /// How long a request waits for a free pooled connection before it gets 503.
    pub acquire_timeout: Duration,
    /// Server-side limit on one statement (a list streams in one statement).
    pub statement_timeout: Duration,
    /// How long start-up keeps retrying while the database cannot be reached (a server often
    /// starts before its database does); zero fails at once.
    pub startup_timeout: Duration,
    /// The cluster whose reports this server serves (a UUID: the kube-system namespace UID in a
    /// cluster). None: the only cluster recorded in the database, or a new one.
    pub cluster_id: Option<String>,
    /// A name recorded with the cluster (upstream's `--clustername`).
    pub cluster_name: Option<String>,
}

impl Default for PgSettings {
    fn default() -> Self {
        Self {
            ssl_mode: None,
            ssl_root_cert: None,
            ssl_cert: None,
            ssl_key: None,
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(60),
            startup_timeout: Duration::from_secs(60),
            cluster_id: None,
            cluster_name: None,
        }
    }
}

/// The PostgreSQL-backed [`Store`].
pub struct PgStore {
    /// Pooled connections for requests; each operation takes one for its duration.
    pool: Pool,
    /// The cluster every row read or written belongs to.
    cluster: Uuid,
    /// The NOTIFY channel of this cluster (`reports_<uuid hex>`).
    channel: Arc<str>,
    /// Newest committed RV known here (own commits and notifications); wakes the watch feed.
    committed: Arc<CommitSignal>,
    /// Creates go through one combining task that writes whatever is waiting in one statement.
    creates: creates::CreateQueue,
    /// Updates go through one combining task that writes whatever is waiting in one transaction.
    updates: updates::UpdateQueue,
    /// Dropped with the store, which ends the listener task.
    _stop_listener: watch::Sender<()>,
}

fn db_error(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        let class = &code.code()[..2];
        // 08: connection, 53: resources, 57: operator intervention (shutdown, cancel, timeout).
        if matches!(class, "08" | "53" | "57") {
            return StoreError::Unavailable(format!("{}: {}", code.code(), db.message()));
        }
        return StoreError::Backend(format!("{}: {}", code.code(), db.message()));
    }
    if e.is_closed() || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()) {
        return StoreError::Unavailable(e.to_string());
    }
    StoreError::Backend(e.to_string())
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => match db_error(e) {
            // A failure to connect at all is an outage, whatever the error says.
            StoreError::Backend(text) => StoreError::Unavailable(text),
            other => other,
        },
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn is_retryable(e: &tokio_postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE)
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn meta_text<'a>(object: &'a Value, key: &str) -> &'a str {
    object.get("metadata").and_then(|m| m.get(key)).and_then(Value::as_str).unwrap_or_default()
}

/// The object's JSON split around its `metadata.resourceVersion` value, so the database can put
/// the RV it assigns in between.
struct SplitBody {
    prefix: String,
    suffix: String,
}

impl SplitBody {
    fn new(object: &mut Value) -> StoreResult<Self> {
        for _ in 0..4 {
            // A fresh random marker per attempt: user data cannot know it, and a second match is
            // checked for anyway.
            let marker = format!("rv-marker-{}", Uuid::new_v4().simple());
            object
                .get_mut("metadata")
                .and_then(Value::as_object_mut)
                .ok_or_else(|| backend("object has no metadata"))?
                .insert("resourceVersion".into(), Value::String(marker.clone()));
            let mut text = serde_json::to_string(object).map_err(backend)?;
            let needle = format!("\"resourceVersion\":\"{marker}\"");
            let mut found = text.match_indices(&needle);
            if let (Some((at, _)), None) = (found.next(), found.next()) {
                let value_start = at + "\"resourceVersion\":\"".len();
                let suffix = text.split_off(value_start + marker.len());
                text.truncate(value_start);
                return Ok(Self { prefix: text, suffix });
            }
        }
        Err(backend("could not place the resourceVersion in the stored JSON"))
    }

    fn join(&self, rv: u64) -> String {
        let rv = rv.to_string();
        let mut body = String::with_capacity(self.prefix.len() + rv.len() + self.suffix.len());
        body.push_str(&self.prefix);
        body.push_str(&rv);
        body.push_str(&self.suffix);
        body
    }
}

/// Copies the body of an object's current version into its change row (if that row is still in
/// the log) before the object row is replaced or deleted. `$1` cluster, `$2..$4` key, `$5` old RV.
const KEEP_OLD_BODY: &str = "keep AS (
    UPDATE report_changes ch SET body = o.body FROM report_objects o
    WHERE ch.cluster_id = $1 AND ch.rv = $5 AND ch.body IS NULL
      AND o.cluster_id = $1 AND o.resource = $2 AND o.namespace = $3 AND o.name = $4)";

/// The statement of a create: counter, object row, change row, notification.
pub(super) const CREATE_SQL: &str = "WITH c AS (
    UPDATE report_counters SET rv = rv + 1 WHERE cluster_id = $1 RETURNING rv),
o AS (
    INSERT INTO report_objects (cluster_id, resource, namespace, name, uid, rv, label_hashes, body)
    SELECT $1, $2, $3, $4, $5, c.rv, $10::text::integer[], $7 || c.rv::text || $8 FROM c RETURNING rv),
ch AS (
    INSERT INTO report_changes (cluster_id, rv, resource, namespace, name, uid, type, labels)
    SELECT $1, o.rv, $2, $3, $4, $5, 'ADDED', $6::text::jsonb FROM o),
n AS (SELECT pg_notify($9, o.rv::text) AS sent FROM o)
SELECT o.rv FROM o, n";

/// Locks an object row for an update or delete and returns what the write needs.
const LOCK_SQL: &str = "SELECT rv, body FROM report_objects
    WHERE cluster_id = $1 AND resource = $2 AND namespace = $3 AND name = $4 FOR UPDATE";

/// The statements of an update and a delete, which take the same parameters: `$1` cluster,
/// `$2..$4` key, `$5` the RV being replaced, `$6` uid, `$7` labels after the write, `$8`/`$9` the
/// body halves, `$10` labels before the write, `$11` the notification channel; an update also
/// takes `$12`, the label hashes after the write.
fn locked_write_sql(kind: &WriteKind) -> &'static str {
    static UPDATE: OnceLock<String> = OnceLock::new();
    static DELETE: OnceLock<String> = OnceLock::new();
    match kind {
        WriteKind::Update { .. } => UPDATE.get_or_init(|| {
            format!(
                "WITH c AS (UPDATE report_counters SET rv = rv + 1 WHERE cluster_id = $1 RETURNING rv),
{KEEP_OLD_BODY},
o AS (
    UPDATE report_objects SET uid = $6, rv = c.rv, label_hashes = $12, body = $8 || c.rv::text || $9
    FROM c WHERE cluster_id = $1 AND resource = $2 AND namespace = $3 AND name = $4 RETURNING report_objects.rv),
ch AS (
    INSERT INTO report_changes (cluster_id, rv, resource, namespace, name, uid, type, labels, prev_labels)
    SELECT $1, o.rv, $2, $3, $4, $6, 'MODIFIED', $7::text::jsonb, $10::text::jsonb FROM o),
n AS (SELECT pg_notify($11, o.rv::text) AS sent FROM o)
SELECT o.rv FROM o, n"
            )
        }),
        WriteKind::Delete => DELETE.get_or_init(|| {
            format!(
                "WITH c AS (UPDATE report_counters SET rv = rv + 1 WHERE cluster_id = $1 RETURNING rv),
{KEEP_OLD_BODY},
d AS (DELETE FROM report_objects WHERE cluster_id = $1 AND resource = $2 AND namespace = $3 AND name = $4),
ch AS (
    INSERT INTO report_changes (cluster_id, rv, resource, namespace, name, uid, type, labels, prev_labels, body)
    SELECT $1, c.rv, $2, $3, $4, $6, 'DELETED', $7::text::jsonb, $10::text::jsonb, $8 || c.rv::text || $9 FROM c),
n AS (SELECT pg_notify($11, c.rv::text) AS sent FROM c)
SELECT c.rv FROM c, n"
            )
        }),
    }
}

/// Appends the WHERE conditions of the selectors; `params` grows with their values. Label
/// requirements are only prefiltered (see [`labels`]): the rows must still pass
/// [`labels::body_matches`].
fn push_selectors(
    label_selector: &LabelSelector,
    fields: &FieldSelector,
    sql: &mut String,
    params: &mut Vec<Box<dyn ToSql + Send + Sync>>,
) {
    let next = |params: &mut Vec<Box<dyn ToSql + Send + Sync>>, value: Box<dyn ToSql + Send + Sync>| {
        params.push(value);
        format!("${}", params.len())
    };
    labels::push_label_prefilter(label_selector, sql, params);
    for req in &fields.requirements {
        let column = match req.field {
            Field::Name => "name",
            Field::Namespace => "namespace",
        };
        let op = match req.op {
            FieldOp::Equals => "=",
            FieldOp::NotEquals => "<>",
        };
        let v = next(params, Box::new(req.value.clone()));
        sql.push_str(&format!(" AND {column} {op} {v}::text"));
    }
}

fn as_params(params: &[Box<dyn ToSql + Send + Sync>]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
}

/// Builds the TLS connector for the configured mode (see [`tls`]).
fn make_tls(settings: &PgSettings, mode: SslMode) -> StoreResult<tokio_postgres_rustls::MakeRustlsConnect> {
    tls::connector(settings, mode).map(tokio_postgres_rustls::MakeRustlsConnect::new)
}

/// Reads the URL's `sslmode` where tokio-postgres does not know it (verify-ca, verify-full) and
/// returns the URL with a mode it understands.
fn take_ssl_mode(url: &str) -> StoreResult<(String, Option<SslMode>)> {
    for (text, mode) in
        [("sslmode=verify-full", SslMode::VerifyFull), ("sslmode=verify-ca", SslMode::VerifyCa)]
    {
        if url.contains(text) {
            return Ok((url.replace(text, "sslmode=require"), Some(mode)));
        }
    }
    Ok((url.to_string(), None))
}

impl PgStore {
    /// Connects, migrates (under an advisory lock), adopts an upstream database if it finds one,
    /// and starts listening for other replicas' commits.
    pub async fn connect(url: &str, settings: &PgSettings) -> StoreResult<Self> {
        let (url, url_mode) = take_ssl_mode(url)?;
        let mut config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
            backend(format!("invalid PostgreSQL connection string: {e}"))
        })?;
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
        let tls = make_tls(settings, mode)?;
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
            .map_err(backend)?;
        let cluster = {
            let mut client = first_connection(&pool, settings.startup_timeout).await?;
            schema::setup(&mut client, settings).await?
        };
        let rv: i64 = {
            let client = pool.get().await.map_err(pool_error)?;
            client
                .query_one("SELECT rv FROM report_counters WHERE cluster_id = $1", &[&cluster])
                .await
                .map_err(db_error)?
                .get(0)
        };
        fill_pool(&pool).await;
        let channel: Arc<str> = format!("reports_{}", cluster.simple()).into();
        let committed = Arc::new(CommitSignal::new(rv as u64));
        let (stop, stopped) = watch::channel(());
        tokio::spawn(listen(
            config,
            tls.clone(),
            pool.clone(),
            cluster,
            channel.clone(),
            committed.clone(),
            stopped,
        ));
        let creates = creates::CreateQueue::start_creates(creates::Combiner {
            pool: pool.clone(),
            cluster,
            channel: channel.clone(),
            committed: committed.clone(),
            combined: Default::default(),
        });
        let updates = updates::UpdateQueue::start_updates(updates::Combiner {
            pool: pool.clone(),
            cluster,
            channel: channel.clone(),
            committed: committed.clone(),
            combined: Default::default(),
        });
        Ok(Self { pool, cluster, channel, committed, creates, updates, _stop_listener: stop })
    }

    /// Records the instant of every commit this process makes in `file` (see [`CommitSignal`]).
    pub fn trace_commits_to(&self, file: std::fs::File) {
        self.committed.trace_to(file);
    }

    /// The cluster this store serves.
    pub fn cluster_id(&self) -> Uuid {
        self.cluster
    }

    /// How many creates so far were written in one statement together with others.
    pub fn combined_creates(&self) -> u64 {
        self.creates.combined()
    }

    /// How many updates so far were written in one transaction together with others.
    pub fn combined_updates(&self) -> u64 {
        self.updates.combined()
    }

    /// Connections currently open in the request pool (idle or in use).
    pub fn open_connections(&self) -> usize {
        self.pool.status().size
    }

    /// Runs `work` with a pooled connection in its own task (see the module notes on failure).
    async fn run<T, F, Fut>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = StoreResult<T>> + Send + 'static,
    {
        run_on(&self.pool, work).await
    }

    /// Locks, checks and rewrites or deletes one object in an open transaction.
    async fn locked_write<C: GenericClient>(
        client: &C,
        write: &LockedWrite,
    ) -> Result<StoreResult<StoredObject>, tokio_postgres::Error> {
        let lock = client.prepare_cached(LOCK_SQL).await?;
        let row = client
            .query_opt(&lock, &[&write.cluster, &write.resource, &write.namespace, &write.name])
            .await?;
        let Some(row) = row else { return Ok(Err(StoreError::NotFound)) };
        let current_rv = row.get::<_, i64>(0);
        if current_rv as u64 != write.expected_rv {
            return Ok(Err(StoreError::Conflict));
        }
        let old_body: &str = row.get(1);
        let prev_labels = labels::body_labels_json(old_body);
        // A delete's final state is the stored object at the deletion's RV.
        let deleted: (SplitBody, String);
        let (body, uid, labels, hashes) = match &write.kind {
            WriteKind::Update { body, uid, labels, hashes } => (body, uid, labels, Some(hashes)),
            WriteKind::Delete => {
                let final_state = serde_json::from_str(old_body)
                    .map_err(|e| backend(format!("stored JSON is corrupt: {e}")))
                    .and_then(|mut object: Value| {
                        let body = SplitBody::new(&mut object)?;
                        Ok((body, meta_text(&object, "uid").to_string()))
                    });
                deleted = match final_state {
                    Ok(state) => state,
                    Err(e) => return Ok(Err(e)),
                };
                (&deleted.0, &deleted.1, &prev_labels, None)
            }
        };
        let stmt = client.prepare_cached(locked_write_sql(&write.kind)).await?;
        let channel: &str = &write.channel;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &write.cluster,
            &write.resource,
            &write.namespace,
            &write.name,
            &current_rv,
            uid,
            labels,
            &body.prefix,
            &body.suffix,
            &prev_labels,
            &channel,
        ];
        if let Some(hashes) = hashes {
            params.push(hashes);
        }
        let rv: i64 = client.query_one(&stmt, &params).await?.get(0);
        Ok(Ok(StoredObject {
            namespace: write.namespace.clone(),
            name: write.name.clone(),
            uid: uid.clone(),
            rv: rv as u64,
            body: body.join(rv as u64),
        }))
    }

    /// Deletes every key whose stored RV still matches, in one transaction of three round trips
    /// whatever the number of keys: lock the rows, then one statement that takes a block of RVs,
    /// logs the final states, deletes the rows and notifies. Keys that moved or vanished are
    /// `None`, in the order given.
    async fn delete_set(
        tx: &deadpool_postgres::Transaction<'_>,
        batch: &BatchDelete,
    ) -> Result<StoreResult<Vec<Option<StoredObject>>>, tokio_postgres::Error> {
        let namespaces: Vec<&str> = batch.keys.iter().map(|(ns, _, _)| ns.as_str()).collect();
        let names: Vec<&str> = batch.keys.iter().map(|(_, name, _)| name.as_str()).collect();
        let rvs: Vec<i64> = batch.keys.iter().map(|(_, _, rv)| *rv as i64).collect();
        let lock = tx
            .prepare_cached(
                "SELECT o.namespace, o.name, o.rv, o.body FROM report_objects o
                 JOIN unnest($3::text[], $4::text[], $5::bigint[]) AS k(namespace, name, rv)
                   ON o.namespace = k.namespace AND o.name = k.name AND o.rv = k.rv
                 WHERE o.cluster_id = $1 AND o.resource = $2
                 ORDER BY o.namespace, o.name FOR UPDATE OF o",
            )
            .await?;
        let rows = tx.query(&lock, &[&batch.cluster, &batch.resource, &namespaces, &names, &rvs]).await?;
        let mut found: Vec<DoomedRow> = Vec::with_capacity(rows.len());
        for row in &rows {
            // A key given twice joins twice; it is deleted once.
            if found
                .last()
                .is_some_and(|f| f.namespace == row.get::<_, &str>(0) && f.name == row.get::<_, &str>(1))
            {
                continue;
            }
            let final_state = serde_json::from_str(row.get::<_, &str>(3))
                .map_err(|e| backend(format!("stored JSON is corrupt: {e}")))
                .and_then(|mut object: Value| {
                    let labels = labels_json(&object);
                    let body = SplitBody::new(&mut object)?;
                    Ok((body, meta_text(&object, "uid").to_string(), labels))
                });
            let (body, uid, labels) = match final_state {
                Ok(state) => state,
                Err(e) => return Ok(Err(e)),
            };
            found.push(DoomedRow {
                namespace: row.get(0),
                name: row.get(1),
                old_rv: row.get(2),
                labels,
                body,
                uid,
            });
        }
        let mut objects: std::collections::HashMap<(String, String), StoredObject> = Default::default();
        if !found.is_empty() {
            let column = |f: fn(&DoomedRow) -> &str| -> Vec<&str> { found.iter().map(f).collect() };
            let (ns, name) = (column(|f| &f.namespace), column(|f| &f.name));
            let (labels, uid) = (column(|f| &f.labels), column(|f| &f.uid));
            let (prefix, suffix) = (column(|f| &f.body.prefix), column(|f| &f.body.suffix));
            let old_rv: Vec<i64> = found.iter().map(|f| f.old_rv).collect();
            let count = found.len() as i64;
            let stmt = tx
                .prepare_cached(
                    "WITH c AS (UPDATE report_counters SET rv = rv + $3 WHERE cluster_id = $1 RETURNING rv - $3 AS base),
                    d AS (SELECT * FROM unnest($4::text[], $5::text[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::text[])
                          WITH ORDINALITY AS d(namespace, name, old_rv, uid, labels, prefix, suffix, i)),
                    keep AS (
                        UPDATE report_changes ch SET body = o.body FROM report_objects o, d
                        WHERE ch.cluster_id = $1 AND ch.rv = d.old_rv AND ch.body IS NULL
                          AND o.cluster_id = $1 AND o.resource = $2 AND o.namespace = d.namespace AND o.name = d.name),
                    del AS (
                        DELETE FROM report_objects o USING d
                        WHERE o.cluster_id = $1 AND o.resource = $2 AND o.namespace = d.namespace AND o.name = d.name),
                    ch AS (
                        INSERT INTO report_changes (cluster_id, rv, resource, namespace, name, uid, type, labels, prev_labels, body)
                        SELECT $1, c.base + d.i, $2, d.namespace, d.name, d.uid, 'DELETED', d.labels::jsonb, d.labels::jsonb,
                               d.prefix || (c.base + d.i)::text || d.suffix
                        FROM c, d),
                    n AS (SELECT pg_notify($11, (c.base + $3)::text) AS sent FROM c)
                    SELECT c.base FROM c, n",
                )
                .await?;
            let base: i64 = tx
                .query_one(
                    &stmt,
                    &[
                        &batch.cluster,
                        &batch.resource,
                        &count,
                        &ns,
                        &name,
                        &old_rv,
                        &uid,
                        &labels,
                        &prefix,
                        &suffix,
                        &batch.channel.as_ref(),
                    ],
                )
                .await?
                .get(0);
            for (i, row) in found.into_iter().enumerate() {
                let rv = (base + i as i64 + 1) as u64;
                let object = StoredObject {
                    namespace: row.namespace.clone(),
                    name: row.name.clone(),
                    uid: row.uid,
                    rv,
                    body: row.body.join(rv),
                };
                objects.insert((row.namespace, row.name), object);
            }
        }
        Ok(Ok(batch.keys.iter().map(|(ns, name, _)| objects.remove(&(ns.clone(), name.clone()))).collect()))
    }

    /// Runs one transaction of work (see [`write_locked`]).
    async fn write_locked(&self, work: TxWork) -> StoreResult<Vec<Option<StoredObject>>> {
        write_locked(&self.pool, &self.committed, work).await
    }

    fn locked(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        expected_rv: u64,
        kind: WriteKind,
    ) -> LockedWrite {
        LockedWrite {
            cluster: self.cluster,
            channel: self.channel.clone(),
            resource: resource.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            expected_rv,
            kind,
        }
    }
}

/// Runs one transaction of work, retrying it whole on deadlock or serialization failure, and
/// publishes its newest RV.
async fn write_locked(
    pool: &Pool,
    committed: &CommitSignal,
    work: TxWork,
) -> StoreResult<Vec<Option<StoredObject>>> {
    let results = run_on(pool, move |mut client| async move {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let tx = client.transaction().await.map_err(db_error)?;
            let outcome = match &work {
                TxWork::One(write) => {
                    PgStore::locked_write(&tx, write).await.map(|r| r.map(|object| vec![Some(object)]))
                }
                TxWork::DeleteMany(batch) => PgStore::delete_set(&tx, batch).await,
                TxWork::UpdateMany(batch) => updates::update_set(&tx, batch).await,
            };
            match outcome {
                Ok(Ok(out)) => match tx.commit().await {
                    Ok(()) => return Ok(out),
                    Err(e) if is_retryable(&e) && attempt < WRITE_ATTEMPTS => continue,
                    Err(e) => return Err(db_error(e)),
                },
                Ok(Err(store_error)) => {
                    tx.rollback().await.map_err(db_error)?;
                    return Err(store_error);
                }
                Err(e) => {
                    let _ = tx.rollback().await;
                    if is_retryable(&e) && attempt < WRITE_ATTEMPTS {
                        continue;
                    }
                    return Err(db_error(e));
                }
            }
        }
    })
    .await?;
    if let Some(rv) = results.iter().flatten().map(|o| o.rv).max() {
        committed.committed(rv);
    }
    Ok(results)
}

/// Runs `work` with a connection from `pool` in its own task, so an abandoned request never
/// returns a connection in the middle of a transaction.
async fn run_on<T, F, Fut>(pool: &Pool, work: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = StoreResult<T>> + Send + 'static,
{
    let pool = pool.clone();
    tokio::spawn(async move {
        let client = pool.get().await.map_err(pool_error)?;
        work(client).await
    })
    .await
    .map_err(backend)?
}

/// One update or delete, checked against the locked row.
struct LockedWrite {
    cluster: Uuid,
    channel: Arc<str>,
    resource: String,
    namespace: String,
    name: String,
    expected_rv: u64,
    kind: WriteKind,
}

/// A row locked for deletion with what its DELETED change needs.
struct DoomedRow {
    namespace: String,
    name: String,
    old_rv: i64,
    labels: String,
    body: SplitBody,
    uid: String,
}

/// Several deletes of one resource, checked against their expected RVs as a set.
struct BatchDelete {
    cluster: Uuid,
    channel: Arc<str>,
    resource: String,
    keys: Vec<(String, String, u64)>,
}

/// What one write transaction does.
enum TxWork {
    /// One update or delete.
    One(Arc<LockedWrite>),
    /// Many deletes (deletecollection).
    DeleteMany(BatchDelete),
    /// Many updates (combined by [`updates`]).
    UpdateMany(updates::BatchUpdate),
}

enum WriteKind {
    Update { body: SplitBody, uid: String, labels: String, hashes: Vec<i32> },
    Delete,
}

/// Opens every connection the pool may hold and prepares the write statements on each. A new
/// connection costs a TCP (often TLS) handshake, authentication and a backend process start, and
/// a backend's first statement on a table loads its catalog entries; done on demand, all of it
/// falls on the first burst of requests after a start, which queues behind it (about 80 ms of
/// stall at 1,500 creates/s). Best effort: what fails here is done by the request that needs it.
async fn fill_pool(pool: &Pool) {
    let opened = futures::future::join_all((0..pool.status().max_size).map(|_| pool.get())).await;
    let prepared = futures::future::join_all(opened.iter().flatten().map(|client| async move {
        for sql in [creates::BATCH_SQL, CREATE_SQL, LOCK_SQL] {
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

/// The first connection, retried with back-off for up to `patience` while the database is
/// unreachable; configuration errors (bad password, unknown database) fail at once.
async fn first_connection(pool: &Pool, patience: Duration) -> StoreResult<deadpool_postgres::Object> {
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

/// True when a connection attempt failed because the server is not there (yet): refused or
/// broken connections, "the database system is starting up". Authentication, TLS verification
/// and unknown databases are configuration errors that waiting does not cure.
fn is_unreachable(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return code.code().starts_with("08") || *code == SqlState::CANNOT_CONNECT_NOW;
    }
    let mut source = std::error::Error::source(e);
    let mut io = false;
    while let Some(inner) = source {
        if inner.is::<rustls::Error>() {
            return false;
        }
        if let Some(io_error) = inner.downcast_ref::<std::io::Error>() {
            // tokio-rustls reports handshake failures as I/O errors wrapping the rustls error.
            if io_error.get_ref().is_some_and(|wrapped| wrapped.is::<rustls::Error>()) {
                return false;
            }
            io = true;
        }
        source = inner.source();
    }
    io
}

/// Keeps `committed` up to date with commits made by any replica: LISTEN on a dedicated
/// connection, re-read the counter after every (re)connect and every [`SAFETY_POLL`].
async fn listen(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    pool: Pool,
    cluster: Uuid,
    channel: Arc<str>,
    committed: Arc<CommitSignal>,
    mut stop: watch::Receiver<()>,
) {
    let read_counter = |pool: Pool| async move {
        let client = pool.get().await.map_err(pool_error)?;
        let row = client
            .query_one("SELECT rv FROM report_counters WHERE cluster_id = $1", &[&cluster])
            .await
            .map_err(db_error)?;
        StoreResult::Ok(row.get::<_, i64>(0) as u64)
    };
    loop {
        let connected = config.connect(tls.clone()).await;
        let (client, mut connection) = match connected {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %db_error(e), "notification connection failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        let (notes_tx, mut notes) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if let Ok(rv) = n.payload().parse::<u64>() {
                            let _ = notes_tx.send(rv);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        let listening = client.batch_execute(&format!("LISTEN \"{channel}\"")).await;
        if let Err(e) = listening {
            tracing::warn!(error = %db_error(e), "LISTEN failed; retrying");
            driver.abort();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = stop.changed() => return,
            }
        }
        // Anything committed before LISTEN took effect is covered by reading the counter now.
        if let Ok(rv) = read_counter(pool.clone()).await {
            committed.learned(rv);
        }
        loop {
            tokio::select! {
                note = notes.recv() => match note {
                    Some(rv) => committed.learned(rv),
                    None => break, // connection lost: reconnect
                },
                _ = tokio::time::sleep(SAFETY_POLL) => {
                    if let Ok(rv) = read_counter(pool.clone()).await {
                        committed.learned(rv);
                    }
                }
                _ = stop.changed() => {
                    driver.abort();
                    return;
                }
            }
        }
        driver.abort();
        tracing::warn!("notification connection lost; reconnecting");
    }
}

fn now_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn stored_from_row(row: &tokio_postgres::Row) -> StoredObject {
    StoredObject {
        namespace: row.get(0),
        name: row.get(1),
        uid: row.get(2),
        rv: row.get::<_, i64>(3) as u64,
        body: row.get(4),
    }
}

/// Streams one list inside a read-only REPEATABLE READ transaction: the counter and the rows come
/// from one snapshot.
async fn stream_list(
    mut client: deadpool_postgres::Object,
    cluster: Uuid,
    query: ListQuery,
    snapshot: oneshot::Sender<StoreResult<u64>>,
    chunks: mpsc::Sender<StoreResult<ListChunk>>,
) {
    let tx = match client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
    {
        Ok(tx) => tx,
        Err(e) => {
            let _ = snapshot.send(Err(db_error(e)));
            return;
        }
    };
    let rv = match tx.query_one("SELECT rv FROM report_counters WHERE cluster_id = $1", &[&cluster]).await {
        Ok(row) => row.get::<_, i64>(0) as u64,
        Err(e) => {
            let _ = snapshot.send(Err(db_error(e)));
            return;
        }
    };
    if snapshot.send(Ok(rv)).is_err() {
        return;
    }
    // Every statement reads at most READ_ROWS rows after the last key read, in key order, so the
    // planner walks the primary key and stops early (a statement without LIMIT is planned as a
    // scan and sort of the whole range). Rows that fail the exact label check are skipped and the
    // reading goes on until the page is full; all statements see the transaction's one snapshot.
    // $3, $4: the key to read after; $5: how many rows.
    let mut sql = String::from(
        "SELECT namespace, name, uid, rv, body FROM report_objects
         WHERE cluster_id = $1 AND resource = $2 AND (namespace, name) > ($3, $4)",
    );
    let (mut after_namespace, mut after_name) = query.after.clone().unwrap_or_default();
    let mut params: Vec<Box<dyn ToSql + Send + Sync>> = vec![
        Box::new(cluster),
        Box::new(query.resource.clone()),
        Box::new(String::new()),
        Box::new(String::new()),
        Box::new(0i64),
    ];
    if let Some(ns) = &query.namespace {
        params.push(Box::new(ns.clone()));
        sql.push_str(&format!(" AND namespace = ${}", params.len()));
    }
    push_selectors(&query.labels, &query.fields, &mut sql, &mut params);
    sql.push_str(" ORDER BY namespace, name LIMIT $5");
    let exact_check = !query.labels.is_empty();
    let result = async {
        let statement = tx.prepare(&sql).await.map_err(db_error)?;
        let limit = query.limit.unwrap_or(u64::MAX);
        let mut sent: u64 = 0;
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        let mut more = false;
        'statements: loop {
            // Without the exact check, one row past the page tells whether there is more.
            let want = if exact_check {
                READ_ROWS
            } else {
                limit.saturating_sub(sent).saturating_add(1).min(READ_ROWS)
            };
            params[2] = Box::new(std::mem::take(&mut after_namespace));
            params[3] = Box::new(std::mem::take(&mut after_name));
            params[4] = Box::new(want as i64);
            let rows = tx.query_raw(&statement, as_params(&params)).await.map_err(db_error)?;
            futures::pin_mut!(rows);
            let mut read: u64 = 0;
            while let Some(row) = rows.try_next().await.map_err(db_error)? {
                read += 1;
                let object = stored_from_row(&row);
                after_namespace.clone_from(&object.namespace);
                after_name.clone_from(&object.name);
                if exact_check && !labels::body_matches(&query.labels, &object.body) {
                    continue;
                }
                if sent == limit {
                    more = true;
                    break 'statements;
                }
                batch_bytes += object.body.len();
                batch.push(object);
                sent += 1;
                if batch.len() >= CHUNK_ROWS || batch_bytes >= CHUNK_BYTES {
                    if chunks.send(Ok(ListChunk::Items(std::mem::take(&mut batch)))).await.is_err() {
                        return Ok(()); // the client went away
                    }
                    batch_bytes = 0;
                }
            }
            if read < want {
                break; // the range is exhausted
            }
        }
        if !batch.is_empty() && chunks.send(Ok(ListChunk::Items(batch))).await.is_err() {
            return Ok(());
        }
        let _ = chunks.send(Ok(ListChunk::End { more })).await;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = chunks.send(Err(e)).await;
    }
    // Read-only: ending it either way is the same.
    let _ = tx.rollback().await;
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn get(&self, resource: &str, namespace: &str, name: &str) -> StoreResult<Option<StoredObject>> {
        let key = (self.cluster, resource.to_string(), namespace.to_string(), name.to_string());
        self.run(move |client| async move {
            let stmt = client
                .prepare_cached(
                    "SELECT namespace, name, uid, rv, body FROM report_objects
                     WHERE cluster_id = $1 AND resource = $2 AND namespace = $3 AND name = $4",
                )
                .await
                .map_err(db_error)?;
            let row = client.query_opt(&stmt, &[&key.0, &key.1, &key.2, &key.3]).await.map_err(db_error)?;
            Ok(row.as_ref().map(stored_from_row))
        })
        .await
    }

    async fn create(&self, resource: &str, mut object: Value) -> StoreResult<StoredObject> {
        let namespace = meta_text(&object, "namespace").to_string();
        let name = meta_text(&object, "name").to_string();
        let uid = meta_text(&object, "uid").to_string();
        let body = Arc::new(SplitBody::new(&mut object)?);
        let (reply, answer) = oneshot::channel();
        let pending = creates::PendingCreate {
            resource: resource.to_string(),
            namespace: namespace.clone(),
            name: name.clone(),
            uid: uid.clone(),
            labels: labels_json(&object),
            label_hashes: labels::label_hashes_literal(&object),
            body: body.clone(),
            reply,
        };
        let rv = self.creates.create(pending, answer).await?;
        Ok(StoredObject { uid, body: body.join(rv), namespace, name, rv })
    }

    async fn update(&self, resource: &str, mut object: Value, expected_rv: u64) -> StoreResult<StoredObject> {
        let namespace = meta_text(&object, "namespace").to_string();
        let name = meta_text(&object, "name").to_string();
        let uid = meta_text(&object, "uid").to_string();
        let labels = labels_json(&object);
        let hashes = labels::label_hashes(&object);
        let body = SplitBody::new(&mut object)?;
        let write = self.locked(
            resource,
            &namespace,
            &name,
            expected_rv,
            WriteKind::Update { body, uid, labels, hashes },
        );
        self.updates.update(write).await
    }

    async fn delete(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        expected_rv: u64,
    ) -> StoreResult<StoredObject> {
        let write = self.locked(resource, namespace, name, expected_rv, WriteKind::Delete);
        let mut out = self.write_locked(TxWork::One(Arc::new(write))).await?;
        out.pop().flatten().ok_or_else(|| backend("delete returned nothing"))
    }

    async fn delete_batch(
        &self,
        resource: &str,
        keys: Vec<(String, String, u64)>,
    ) -> StoreResult<Vec<Option<StoredObject>>> {
        let batch = BatchDelete {
            cluster: self.cluster,
            channel: self.channel.clone(),
            resource: resource.to_string(),
            keys,
        };
        self.write_locked(TxWork::DeleteMany(batch)).await
    }

    async fn list(&self, query: ListQuery) -> StoreResult<ListStream> {
        let (snapshot_tx, snapshot_rx) = oneshot::channel();
        let (chunk_tx, chunk_rx) = mpsc::channel(2);
        let (pool, cluster) = (self.pool.clone(), self.cluster);
        tokio::spawn(async move {
            match pool.get().await {
                Ok(client) => stream_list(client, cluster, query, snapshot_tx, chunk_tx).await,
                Err(e) => {
                    let _ = snapshot_tx.send(Err(pool_error(e)));
                }
            }
        });
        let snapshot_rv = snapshot_rx.await.map_err(|_| backend("list reader ended early"))??;
        Ok(ListStream { snapshot_rv, chunks: chunk_rx })
    }

    async fn current_rv(&self) -> StoreResult<u64> {
        let cluster = self.cluster;
        self.run(move |client| async move {
            let stmt = client
                .prepare_cached("SELECT rv FROM report_counters WHERE cluster_id = $1")
                .await
                .map_err(db_error)?;
            Ok(client.query_one(&stmt, &[&cluster]).await.map_err(db_error)?.get::<_, i64>(0) as u64)
        })
        .await
    }

    async fn compacted_rv(&self) -> StoreResult<u64> {
        let cluster = self.cluster;
        self.run(move |client| async move {
            let stmt = client
                .prepare_cached("SELECT compacted_rv FROM report_counters WHERE cluster_id = $1")
                .await
                .map_err(db_error)?;
            Ok(client.query_one(&stmt, &[&cluster]).await.map_err(db_error)?.get::<_, i64>(0) as u64)
        })
        .await
    }

    async fn changed_since(&self, resource: &str, rv: u64) -> StoreResult<bool> {
        let (cluster, resource) = (self.cluster, resource.to_string());
        self.run(move |client| async move {
            let stmt = client
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM report_changes WHERE cluster_id = $1 AND resource = $2 AND rv > $3)",
                )
                .await
                .map_err(db_error)?;
            Ok(client.query_one(&stmt, &[&cluster, &resource, &(rv as i64)]).await.map_err(db_error)?.get(0))
        })
        .await
    }

    async fn changes_since(
        &self,
        resource: Option<&str>,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<Change>> {
        let (cluster, resource) = (self.cluster, resource.map(str::to_string));
        self.run(move |client| async move {
            let stmt = client
                .prepare_cached(
                    "SELECT ch.rv, ch.resource, ch.namespace, ch.name, ch.uid, ch.type, ch.prev_labels::text,
                            coalesce(ch.body, o.body), ch.labels::text
                     FROM report_changes ch
                     LEFT JOIN report_objects o ON ch.body IS NULL AND o.cluster_id = ch.cluster_id
                          AND o.resource = ch.resource AND o.namespace = ch.namespace AND o.name = ch.name
                          AND o.rv = ch.rv
                     WHERE ch.cluster_id = $1 AND ch.rv > $2 AND ($3::text IS NULL OR ch.resource = $3)
                     ORDER BY ch.rv LIMIT $4",
                )
                .await
                .map_err(db_error)?;
            let rows = client
                .query(&stmt, &[&cluster, &(after as i64), &resource, &(limit as i64)])
                .await
                .map_err(db_error)?;
            rows.iter()
                .map(|row| {
                    let rv = row.get::<_, i64>(0) as u64;
                    let type_text: &str = row.get(5);
                    let body: Option<String> = row.get(7);
                    Ok(Change {
                        rv,
                        resource: row.get(1),
                        change_type: ChangeType::parse(type_text)
                            .ok_or_else(|| backend(format!("unknown change type {type_text}")))?,
                        object: StoredObject {
                            namespace: row.get(2),
                            name: row.get(3),
                            uid: row.get(4),
                            rv,
                            body: body.ok_or_else(|| backend(format!("change {rv} has no object body")))?,
                        },
                        labels: parse_labels(row.get(8)),
                        prev_labels: row.get::<_, Option<&str>>(6).map(parse_labels),
                    })
                })
                .collect()
        })
        .await
    }

    async fn compact(&self, max_age_seconds: u64) -> StoreResult<u64> {
        let cluster = self.cluster;
        let cutoff = now_seconds() - max_age_seconds as f64;
        self.run(move |mut client| async move {
            let mut dropped = 0u64;
            loop {
                let tx = client.transaction().await.map_err(db_error)?;
                // One replica at a time; the others skip this round.
                let lock_key = format!("reports-server compaction {cluster}");
                let locked: bool = tx
                    .query_one("SELECT pg_try_advisory_xact_lock(hashtext($1))", &[&lock_key])
                    .await
                    .map_err(db_error)?
                    .get(0);
                if !locked {
                    tx.rollback().await.map_err(db_error)?;
                    return Ok(dropped);
                }
                let upto: Option<i64> = tx
                    .query_one(
                        "SELECT max(rv) FROM (SELECT rv FROM report_changes
                           WHERE cluster_id = $1 AND created_at <= to_timestamp($2)
                           ORDER BY rv LIMIT $3) oldest",
                        &[&cluster, &cutoff, &COMPACTION_BATCH],
                    )
                    .await
                    .map_err(db_error)?
                    .get(0);
                let Some(upto) = upto else {
                    tx.rollback().await.map_err(db_error)?;
                    return Ok(dropped);
                };
                let n = tx
                    .execute("DELETE FROM report_changes WHERE cluster_id = $1 AND rv <= $2", &[&cluster, &upto])
                    .await
                    .map_err(db_error)?;
                // Last, so the counter row (which every writer needs) is locked only briefly.
                tx.execute(
                    "UPDATE report_counters SET compacted_rv = GREATEST(compacted_rv, $2) WHERE cluster_id = $1",
                    &[&cluster, &upto],
                )
                .await
                .map_err(db_error)?;
                tx.commit().await.map_err(db_error)?;
                dropped += n;
                if (n as i64) < COMPACTION_BATCH {
                    return Ok(dropped);
                }
            }
        })
        .await
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    async fn ping(&self) -> StoreResult<()> {
        self.run(|client| async move { client.simple_query("SELECT 1").await.map(|_| ()).map_err(db_error) })
            .await
    }
}

mod combine;
mod creates;
pub mod labels;
mod schema;
mod tls;
mod updates;

mod upstream;
