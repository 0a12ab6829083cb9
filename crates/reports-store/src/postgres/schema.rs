//! The schema and the start-up work done under the migration lock: embedded migrations, the
//! cluster this server serves, and adopting an upstream database.

use uuid::Uuid;

use super::{errors::db_error, findings, settings::PgSettings, upstream};
use crate::error::{SettingError, StoreError, StoreResult};

/// Schema migrations, applied in order under an advisory lock; the index + 1 is the version.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE IF NOT EXISTS clusters (id UUID NOT NULL PRIMARY KEY, name VARCHAR);
CREATE TABLE report_counters (
    cluster_id   UUID PRIMARY KEY,
    rv           BIGINT NOT NULL,
    compacted_rv BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE report_objects (
    cluster_id UUID NOT NULL,
    resource   TEXT COLLATE "C" NOT NULL,
    namespace  TEXT COLLATE "C" NOT NULL,
    name       TEXT COLLATE "C" NOT NULL,
    uid        TEXT NOT NULL,
    rv         BIGINT NOT NULL,
    labels     JSONB NOT NULL,
    body       TEXT NOT NULL,
    PRIMARY KEY (cluster_id, resource, namespace, name)
);
CREATE TABLE report_changes (
    cluster_id  UUID NOT NULL,
    rv          BIGINT NOT NULL,
    resource    TEXT COLLATE "C" NOT NULL,
    namespace   TEXT COLLATE "C" NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    uid         TEXT NOT NULL,
    type        TEXT NOT NULL CHECK (type IN ('ADDED', 'MODIFIED', 'DELETED')),
    labels      JSONB NOT NULL,
    prev_labels JSONB,
    body        TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_id, rv)
);
CREATE INDEX report_changes_by_resource ON report_changes (cluster_id, resource, rv);
DO $$ BEGIN
    -- lz4 is faster and smaller than pglz on report JSON; servers built without it keep pglz.
    ALTER TABLE report_objects ALTER COLUMN body SET COMPRESSION lz4;
    ALTER TABLE report_changes ALTER COLUMN body SET COMPRESSION lz4;
EXCEPTION WHEN OTHERS THEN NULL;
END $$;
"#,
    r#"
-- Labels live in the body; the row keeps one 4-byte hash per label for selector pushdown (see
-- postgres/labels.rs). The function is the SQL twin of label_hash() in that module.
CREATE OR REPLACE FUNCTION reports_label_hash(key text, value text) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN ('x' || substr(encode(sha256(convert_to(key || '=' || value, 'UTF8')), 'hex'), 1, 8))::bit(32)::integer;
ALTER TABLE report_objects ADD COLUMN label_hashes integer[];
-- Inline, never in TOAST: a filtered scan reads the hashes of every row.
ALTER TABLE report_objects ALTER COLUMN label_hashes SET STORAGE MAIN;
UPDATE report_objects SET label_hashes =
    ARRAY(SELECT reports_label_hash(key, value) FROM jsonb_each_text(labels) ORDER BY 1);
ALTER TABLE report_objects ALTER COLUMN label_hashes SET NOT NULL;
ALTER TABLE report_objects DROP COLUMN labels;
-- pglz packs report JSON about 13 % tighter than lz4 (1.52 KB against 1.75 KB for a 7 KB
-- report); objects live long, so the denser one wins. The change log keeps lz4.
ALTER TABLE report_objects ALTER COLUMN body SET COMPRESSION pglz;
-- A row stays inline (compressed) when it fits a fifth of a page: 1,624 bytes is the largest
-- tuple of which five fit an 8 KB page. Larger rows move their body to TOAST, which costs a
-- pointer, a chunk header, a TOAST index entry and a second page per read, so for a 6 KB report
-- (1.4 KB compressed) inline is 1.75 KB per report against 2.0 KB out of line. (PostgreSQL's
-- default target, about 2 KB, keeps 1.7 KB rows inline at four per page: the worst of both.)
ALTER TABLE report_objects SET (toast_tuple_target = 1624);
"#,
    findings::schema::TABLE,
    findings::schema::VIEWS,
    r#"
-- Snapshot reads (see snapshot.rs): an update's or delete's change row keeps the body it
-- replaced, and a key's changes are found in key order. Rows written before keep `body`.
ALTER TABLE report_changes ADD COLUMN prev_body TEXT;
DO $$ BEGIN
    ALTER TABLE report_changes ALTER COLUMN prev_body SET COMPRESSION lz4;
EXCEPTION WHEN OTHERS THEN NULL;
END $$;
CREATE INDEX report_changes_by_key ON report_changes (cluster_id, resource, namespace, name, rv);
"#,
    findings::schema::SETS,
    r#"
-- A change row that keeps the body it replaced (an update's, a delete's) passes PostgreSQL's
-- 2 KB threshold, and each label column is then tried for compression: with pglz those tries
-- took 3.8 % of all CPU under a mass delete. lz4 tries in a fraction of that.
DO $$ BEGIN
    ALTER TABLE report_changes ALTER COLUMN labels SET COMPRESSION lz4,
                               ALTER COLUMN prev_labels SET COMPRESSION lz4;
EXCEPTION WHEN OTHERS THEN NULL;
END $$;
"#,
];

/// Advisory lock key that serializes schema work between replicas starting together.
const MIGRATION_LOCK: i64 = 0x7265_706f_7274_7331; // "reports1"
/// Migrations, cluster identity and upstream adoption, on one connection holding the advisory lock.
pub(super) async fn setup(
    client: &mut deadpool_postgres::Object,
    settings: &PgSettings,
) -> StoreResult<Uuid> {
    // Waiting for another replica's migration, or adopting a large upstream database, may take
    // longer than the request statement timeout.
    client.batch_execute("SET statement_timeout = 0").await.map_err(db_error)?;
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.map_err(db_error)?;
    let mut result = setup_locked(client, settings).await;
    if let Ok(cluster) = result {
        // Still under the lock: replicas starting together index existing reports once.
        result = findings::backfill::backfill(client, cluster, &settings.findings).await.map(|()| cluster);
    }
    // Unlock even after a failure; a lost connection releases the lock anyway.
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
    let _ = client.batch_execute("RESET statement_timeout").await;
    result
}

/// Everything in one transaction (PostgreSQL's DDL is transactional): a start that fails or
/// refuses, say on a dirty upstream schema, leaves the database exactly as it found it, without
/// half a schema or a cluster recorded by a start that never served.
async fn setup_locked(client: &mut deadpool_postgres::Object, settings: &PgSettings) -> StoreResult<Uuid> {
    let tx = client.transaction().await.map_err(db_error)?;
    // Refuse before creating anything of ours.
    let adoptable = upstream::find(&tx).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS reports_server_migrations (
            version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await
    .map_err(db_error)?;
    let applied: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM reports_server_migrations", &[])
        .await
        .map_err(db_error)?
        .get(0);
    let applied = applied as usize;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::backend(format!(
            "database schema version {applied} is newer than this binary understands ({})",
            MIGRATIONS.len()
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.batch_execute(migration).await.map_err(db_error)?;
        tx.execute("INSERT INTO reports_server_migrations (version) VALUES ($1)", &[&(index as i32 + 1)])
            .await
            .map_err(db_error)?;
        tracing::info!(version = index + 1, "applying PostgreSQL schema migration");
    }
    let cluster = resolve_cluster(&tx, settings).await?;
    tx.execute(
        // Starts at 1, never 0: a list at RV "0" followed by a watch from "0" would ask for
        // the current state again instead of the changes after the list.
        "INSERT INTO report_counters (cluster_id, rv) VALUES ($1, 1) ON CONFLICT (cluster_id) DO NOTHING",
        &[&cluster],
    )
    .await
    .map_err(db_error)?;
    if adoptable {
        upstream::adopt(&tx, cluster).await?;
    }
    tx.commit().await.map_err(db_error)?;
    Ok(cluster)
}

/// The cluster id: the configured one, else the only one recorded, else a new one.
async fn resolve_cluster(
    client: &deadpool_postgres::Transaction<'_>,
    settings: &PgSettings,
) -> StoreResult<Uuid> {
    let name = settings.cluster_name.clone();
    if let Some(id) = &settings.cluster_id {
        let id = Uuid::parse_str(id)
            .map_err(|e| SettingError::ClusterId { id: id.clone(), reason: e.to_string() })?;
        client
            .execute(
                "INSERT INTO clusters (id, name) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET name = coalesce(excluded.name, clusters.name)",
                &[&id, &name],
            )
            .await
            .map_err(db_error)?;
        return Ok(id);
    }
    let rows = match &name {
        Some(name) => client.query("SELECT id FROM clusters WHERE name = $1", &[name]).await,
        None => client.query("SELECT id FROM clusters", &[]).await,
    }
    .map_err(db_error)?;
    match rows.len() {
        1 => Ok(rows[0].get(0)),
        0 => {
            let id = Uuid::new_v4();
            client
                .execute("INSERT INTO clusters (id, name) VALUES ($1, $2)", &[&id, &name])
                .await
                .map_err(db_error)?;
            tracing::info!(cluster_id = %id, "recorded a new cluster in the database");
            Ok(id)
        }
        count => Err(SettingError::AmbiguousCluster { count, name }.into()),
    }
}
