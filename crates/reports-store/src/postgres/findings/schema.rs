//! The findings migrations: the table and its indexes, then the SQL interface for BI tools (a
//! schema of views and a read-only role), then [`SETS`], which replaced the table of one row
//! per finding by one row per report (see the module docs of `postgres::findings` for why).
//! All are entries of the store's migration list, which is history: a new database runs them
//! all, in order.

/// The findings table, its indexes and the record of which kinds were indexed.
pub(in crate::postgres) const TABLE: &str = r#"
-- One row per finding (a result about one resource). Fixed-width columns first, so no padding
-- is spent between them; text is "" rather than NULL where absent, and COLLATE "C" keeps key
-- comparisons bytewise, as Rust's are.
CREATE TABLE report_findings (
    cluster_id          UUID NOT NULL,
    ordinal             INTEGER NOT NULL,
    scored              BOOLEAN NOT NULL,
    timestamp           BIGINT,
    score               FLOAT8,
    namespace           TEXT COLLATE "C" NOT NULL,
    name                TEXT COLLATE "C" NOT NULL,
    resource            TEXT COLLATE "C" NOT NULL,
    policy              TEXT COLLATE "C" NOT NULL,
    rule                TEXT COLLATE "C" NOT NULL,
    result              TEXT COLLATE "C" NOT NULL,
    severity            TEXT COLLATE "C" NOT NULL,
    category            TEXT COLLATE "C" NOT NULL,
    source              TEXT COLLATE "C" NOT NULL,
    subject_api_version TEXT COLLATE "C" NOT NULL,
    subject_kind        TEXT COLLATE "C" NOT NULL,
    subject_namespace   TEXT COLLATE "C" NOT NULL,
    subject_name        TEXT COLLATE "C" NOT NULL,
    subject_uid         TEXT COLLATE "C" NOT NULL,
    message             TEXT COLLATE "C" NOT NULL,
    properties          JSONB NOT NULL,
    numbers             JSONB,
    -- A report's findings are one key range, in list order.
    PRIMARY KEY (cluster_id, namespace, name, resource, ordinal)
);
-- No toast_tuple_target below the default: a 256-byte target was measured to leave the rows
-- exactly as large (their jsonb and text do not compress by the quarter pglz insists on) while
-- every write paid for the attempt.
-- "CVSS >= 8": only rows that have a score.
CREATE INDEX report_findings_by_score ON report_findings (cluster_id, score) WHERE score IS NOT NULL;
-- "Critical failures", counts per severity and result.
CREATE INDEX report_findings_by_severity ON report_findings (cluster_id, severity, result);
-- "Everything about one workload".
CREATE INDEX report_findings_by_subject ON report_findings (cluster_id, subject_name);
-- Which report kinds the findings cover, per cluster: a start-up with another set rebuilds
-- the kinds that differ (see postgres/findings/backfill.rs).
CREATE TABLE report_findings_indexed (
    cluster_id UUID PRIMARY KEY,
    resources  TEXT NOT NULL
);
"#;

/// The SQL interface for BI tools: stable views in their own schema, and a role that may read
/// them and nothing else. Creating a role needs CREATEROLE; without it the views are still made
/// and the role is left to the operator (a notice says so).
pub(in crate::postgres) const VIEWS: &str = r#"
CREATE SCHEMA reports_server;
COMMENT ON SCHEMA reports_server IS 'reports-server: stable read-only views for SQL clients (docs/sql.md)';
CREATE FUNCTION reports_server.kind_of(resource text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE resource
        WHEN 'policyreports' THEN 'PolicyReport'
        WHEN 'clusterpolicyreports' THEN 'ClusterPolicyReport'
        WHEN 'reports' THEN 'Report'
        WHEN 'clusterreports' THEN 'ClusterReport'
        WHEN 'ephemeralreports' THEN 'EphemeralReport'
        WHEN 'clusterephemeralreports' THEN 'ClusterEphemeralReport'
        ELSE resource END;
CREATE VIEW reports_server.reports AS
SELECT o.cluster_id, c.name AS cluster, reports_server.kind_of(o.resource) AS kind, o.resource,
       o.namespace, o.name, o.uid, o.rv AS resource_version, b.body,
       b.body -> 'summary' AS summary,
       (b.body #>> '{metadata,creationTimestamp}') AS created
FROM report_objects o
LEFT JOIN clusters c ON c.id = o.cluster_id
CROSS JOIN LATERAL (SELECT o.body::jsonb AS body) b;
COMMENT ON VIEW reports_server.reports IS 'One row per stored report: key, kind, body (jsonb) and summary';
CREATE VIEW reports_server.findings AS
SELECT f.cluster_id, c.name AS cluster, reports_server.kind_of(f.resource) AS report_kind,
       f.resource AS report_resource, f.namespace, f.name AS report_name, f.ordinal,
       f.policy, f.rule, f.result, f.severity, f.category, f.source, f.scored,
       to_timestamp(f.timestamp) AS timestamp, f.timestamp AS timestamp_seconds, f.message,
       f.subject_api_version AS resource_api_version, f.subject_kind AS resource_kind,
       f.subject_namespace AS resource_namespace, f.subject_name AS resource_name,
       f.subject_uid AS resource_uid, f.properties,
       coalesce(f.numbers, '{}'::jsonb)
           || CASE WHEN f.score IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('score', f.score) END
           AS numbers,
       f.score
FROM report_findings f
LEFT JOIN clusters c ON c.id = f.cluster_id;
COMMENT ON VIEW reports_server.findings IS 'One row per result of a report and resource it is about';
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'reports_reader') THEN
        BEGIN
            CREATE ROLE reports_reader NOLOGIN;
        EXCEPTION
            WHEN duplicate_object THEN NULL; -- another database's migration made it meanwhile
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'reports-server: no CREATEROLE; create role reports_reader yourself';
        END;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'reports_reader') THEN
        GRANT USAGE ON SCHEMA reports_server TO reports_reader;
        GRANT SELECT ON reports_server.reports, reports_server.findings TO reports_reader;
        GRANT EXECUTE ON FUNCTION reports_server.kind_of(text) TO reports_reader;
    END IF;
END $$;
"#;

/// One row per report instead of one per finding: the findings table and the view over it
/// rebuilt, and the record of indexed kinds cleared so the start-up backfill indexes every
/// report again (see `postgres/findings/backfill.rs`).
pub(in crate::postgres) const SETS: &str = r#"
DROP VIEW reports_server.findings;
DROP TABLE report_findings;
-- A report's findings as parallel arrays, element i of each being finding i (ordinal i - 1).
-- `max_score` is the largest score among them, so "score >= 8" skips reports without one.
CREATE TABLE report_finding_sets (
    cluster_id          UUID NOT NULL,
    max_score           FLOAT8,
    namespace           TEXT COLLATE "C" NOT NULL,
    name                TEXT COLLATE "C" NOT NULL,
    resource            TEXT COLLATE "C" NOT NULL,
    policy              TEXT[] COLLATE "C" NOT NULL,
    rule                TEXT[] COLLATE "C" NOT NULL,
    result              TEXT[] COLLATE "C" NOT NULL,
    severity            TEXT[] COLLATE "C" NOT NULL,
    category            TEXT[] COLLATE "C" NOT NULL,
    source              TEXT[] COLLATE "C" NOT NULL,
    scored              BOOLEAN[] NOT NULL,
    timestamp           BIGINT[] NOT NULL,
    message             TEXT[] COLLATE "C" NOT NULL,
    subject_api_version TEXT[] COLLATE "C" NOT NULL,
    subject_kind        TEXT[] COLLATE "C" NOT NULL,
    subject_namespace   TEXT[] COLLATE "C" NOT NULL,
    subject_name        TEXT[] COLLATE "C" NOT NULL,
    subject_uid         TEXT[] COLLATE "C" NOT NULL,
    -- JSON object text, not jsonb: parsing 40 objects into jsonb (sorting their keys) was a
    -- tenth of a create's cost in the database, and only questions about a property other
    -- than the score read them (as jsonb, cast then).
    properties          TEXT[] NOT NULL,
    numbers             JSONB[] NOT NULL,
    score               FLOAT8[] NOT NULL,
    -- In list order: a page of findings walks this key and unnests each report in turn.
    PRIMARY KEY (cluster_id, namespace, name, resource)
);
CREATE INDEX report_finding_sets_by_score ON report_finding_sets (cluster_id, max_score)
    WHERE max_score IS NOT NULL;
-- lz4, not pglz: every report write compresses its set (about 20 KB of arrays for a 40-result
-- Trivy report), and pglz on the sets was the largest single cost of indexing in a profile of
-- creates (twice the CPU the report's own body takes), while sets are read far less often than
-- written. A server built without lz4 keeps pglz.
DO $$ BEGIN
    ALTER TABLE report_finding_sets
        ALTER COLUMN policy SET COMPRESSION lz4,
        ALTER COLUMN rule SET COMPRESSION lz4,
        ALTER COLUMN result SET COMPRESSION lz4,
        ALTER COLUMN severity SET COMPRESSION lz4,
        ALTER COLUMN category SET COMPRESSION lz4,
        ALTER COLUMN source SET COMPRESSION lz4,
        ALTER COLUMN scored SET COMPRESSION lz4,
        ALTER COLUMN timestamp SET COMPRESSION lz4,
        ALTER COLUMN message SET COMPRESSION lz4,
        ALTER COLUMN subject_api_version SET COMPRESSION lz4,
        ALTER COLUMN subject_kind SET COMPRESSION lz4,
        ALTER COLUMN subject_namespace SET COMPRESSION lz4,
        ALTER COLUMN subject_name SET COMPRESSION lz4,
        ALTER COLUMN subject_uid SET COMPRESSION lz4,
        ALTER COLUMN properties SET COMPRESSION lz4,
        ALTER COLUMN numbers SET COMPRESSION lz4,
        ALTER COLUMN score SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN NULL;
END $$;
DELETE FROM report_findings_indexed;
CREATE VIEW reports_server.findings AS
SELECT s.cluster_id, c.name AS cluster, reports_server.kind_of(s.resource) AS report_kind,
       s.resource AS report_resource, s.namespace, s.name AS report_name, (f.ord - 1)::int4 AS ordinal,
       f.policy, f.rule, f.result, f.severity, f.category, f.source, f.scored,
       to_timestamp(f.timestamp) AS timestamp, f.timestamp AS timestamp_seconds, f.message,
       f.subject_api_version AS resource_api_version, f.subject_kind AS resource_kind,
       f.subject_namespace AS resource_namespace, f.subject_name AS resource_name,
       f.subject_uid AS resource_uid, f.properties::jsonb AS properties,
       coalesce(f.numbers, '{}'::jsonb)
           || CASE WHEN f.score IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('score', f.score) END
           AS numbers,
       f.score
FROM report_finding_sets s
CROSS JOIN LATERAL unnest(s.policy, s.rule, s.result, s.severity, s.category, s.source, s.scored,
    s.timestamp, s.message, s.subject_api_version, s.subject_kind, s.subject_namespace,
    s.subject_name, s.subject_uid, s.properties, s.numbers, s.score)
    WITH ORDINALITY AS f(policy, rule, result, severity, category, source, scored, timestamp, message,
        subject_api_version, subject_kind, subject_namespace, subject_name, subject_uid, properties,
        numbers, score, ord)
LEFT JOIN clusters c ON c.id = s.cluster_id;
COMMENT ON VIEW reports_server.findings IS 'One row per result of a report and resource it is about';
DO $$ BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'reports_reader') THEN
        GRANT SELECT ON reports_server.findings TO reports_reader;
    END IF;
END $$;
"#;
