#!/bin/bash
# Apportions PostgreSQL's cost of the store's create statement (crates/reports-store/src/postgres.rs,
# CREATE_SQL) with pgbench on a throwaway durable cluster: the full statement, then without
# pg_notify, with a sequence instead of the report_counters row, and the object insert alone.
# 8 clients, 15 s each, ~6.9 KB Kyverno-shaped bodies split around the resourceVersion like the
# store does. Then the per-row storage split of report_objects after 100k inserts.
# Usage (as root, PostgreSQL 15 installed): bash crates/reports-bench/scripts/pg-create-cost.sh
set -e
mkdir -p /tmp/pgexp
cd /tmp/pgexp
python3 - <<'PY'
import json
rules=["adding-capabilities","require-drop-all","adding-capabilities-strict","host-namespaces","host-path","host-ports-none","host-process-containers","privilege-escalation","privileged-containers","check-proc-mount","selinux-type","selinux-user-role","run-as-non-root-user","run-as-non-root","app-armor","check-seccomp","check-seccomp-strict","check-sysctls","restricted-volumes"]
out=open('docs.tsv','w')
for d in range(1,1001):
    labels={"app.kubernetes.io/managed-by":"kyverno","audit.kyverno.io/resource.uid":f"{d:08x}-1111-4222-8333-{d*7919:012x}"}
    res=[]
    for i,r in enumerate(rules):
        labels[f"cpol.kyverno.io/disallow-{r}"]=str(226000+i)
        fail=(d+i)%7==0
        res.append({"category":"Pod Security Standards (Baseline)","message":(f"validation error: rule {r} failed at path /spec/containers/0/securityContext/ (nginx)" if fail else f"validation rule '{r}' passed."),"policy":"disallow-"+r,"result":"fail" if fail else "pass","rule":r,"scored":True,"severity":"medium","source":"kyverno","timestamp":{"nanos":0,"seconds":1700000000+d}})
    meta=json.dumps({"name":f"pod-{d}","namespace":"ns","labels":labels,"annotations":{"audit.kyverno.io/last-scan-time":"2025-01-01T00:00:00Z"}},separators=(',',':'))[1:]
    rest=json.dumps({"results":res,"summary":{"pass":16,"fail":3}},separators=(',',':'))[1:]
    prefix='{"apiVersion":"wgpolicyk8s.io/v1alpha2","kind":"PolicyReport","metadata":{"resourceVersion":"'
    suffix='",'+meta+','+rest
    esc=lambda s: s.replace('\\','\\\\').replace('\t','\\t').replace('\n','\\n')
    out.write(f"{d}\t{esc(json.dumps(labels,separators=(',',':')))}\t{esc(prefix)}\t{esc(suffix)}\n")
PY
set -e
BIN=/usr/lib/postgresql/15/bin
D=/tmp/pgexp/data
PORT=55432
rm -rf $D; mkdir -p $D; chown -R postgres:postgres /tmp/pgexp
runuser -u postgres -- $BIN/initdb -D $D -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
cat >> $D/postgresql.conf <<CONF
listen_addresses='127.0.0.1'
port=$PORT
unix_socket_directories='/tmp/pgexp'
shared_buffers=1GB
max_wal_size=4GB
fsync=on
synchronous_commit=on
full_page_writes=on
CONF
runuser -u postgres -- $BIN/pg_ctl -D $D -l /tmp/pgexp/log -w start >/dev/null
P="$BIN/psql -X -q -h 127.0.0.1 -p $PORT -U postgres"
$P -c "CREATE DATABASE exp"
$P -d exp <<'SQL'
CREATE TABLE report_counters (cluster_id UUID PRIMARY KEY, rv BIGINT NOT NULL, compacted_rv BIGINT NOT NULL DEFAULT 0);
CREATE TABLE report_objects (cluster_id UUID NOT NULL, resource TEXT COLLATE "C" NOT NULL, namespace TEXT COLLATE "C" NOT NULL,
  name TEXT COLLATE "C" NOT NULL, uid TEXT NOT NULL, rv BIGINT NOT NULL, labels JSONB NOT NULL, body TEXT NOT NULL,
  PRIMARY KEY (cluster_id, resource, namespace, name));
CREATE TABLE report_changes (cluster_id UUID NOT NULL, rv BIGINT NOT NULL, resource TEXT COLLATE "C" NOT NULL,
  namespace TEXT COLLATE "C" NOT NULL, name TEXT COLLATE "C" NOT NULL, uid TEXT NOT NULL,
  type TEXT NOT NULL CHECK (type IN ('ADDED','MODIFIED','DELETED')), labels JSONB NOT NULL, prev_labels JSONB, body TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (cluster_id, rv));
CREATE INDEX report_changes_by_resource ON report_changes (cluster_id, resource, rv);
ALTER TABLE report_objects ALTER COLUMN body SET COMPRESSION lz4;
ALTER TABLE report_changes ALTER COLUMN body SET COMPRESSION lz4;
INSERT INTO report_counters VALUES ('00000000-0000-4000-8000-000000000001', 0);
CREATE SEQUENCE rvs;
CREATE TABLE docs (id int PRIMARY KEY, labels text, prefix text, suffix text);
SQL
# 1000 documents from the bench shape: the body is split around the resourceVersion like the store does.
$P -d exp -c "\copy docs FROM '/tmp/pgexp/docs.tsv'"
echo "fsync: $($BIN/pg_test_fsync -s 1 -f /tmp/pgexp/fsync.test 2>/dev/null | grep -m1 fdatasync)"
run() { # name, sql
  $P -d exp -c "TRUNCATE report_objects, report_changes" >/dev/null
  printf '%s\n' "\\set id random(1, 1000)" "\\set n random(1, 2000000000)" "$2" > /tmp/pgexp/$1.sql
  chown postgres /tmp/pgexp/$1.sql
  out=$(runuser -u postgres -- $BIN/pgbench -n -h 127.0.0.1 -p $PORT -U postgres -c 8 -j 2 -T 15 -M prepared -f /tmp/pgexp/$1.sql exp 2>&1)
  echo "$1: $(echo "$out" | grep -E '^tps' | head -1) $(echo "$out" | grep 'latency average')"
}
C="'00000000-0000-4000-8000-000000000001'::uuid"
run full "WITH d AS (SELECT * FROM docs WHERE id = :id), c AS (UPDATE report_counters SET rv = rv + 1 WHERE cluster_id = $C RETURNING rv),
o AS (INSERT INTO report_objects (cluster_id, resource, namespace, name, uid, rv, labels, body)
  SELECT $C, 'policyreports', 'ns', 'n-' || :n || '-' || c.rv, 'u', c.rv, d.labels::jsonb, d.prefix || c.rv::text || d.suffix FROM c, d RETURNING rv, labels),
ch AS (INSERT INTO report_changes (cluster_id, rv, resource, namespace, name, uid, type, labels) SELECT $C, o.rv, 'policyreports', 'ns', 'n', 'u', 'ADDED', o.labels FROM o),
n AS (SELECT pg_notify('reports', o.rv::text) AS sent FROM o) SELECT o.rv FROM o, n;"
run no_notify "WITH d AS (SELECT * FROM docs WHERE id = :id), c AS (UPDATE report_counters SET rv = rv + 1 WHERE cluster_id = $C RETURNING rv),
o AS (INSERT INTO report_objects (cluster_id, resource, namespace, name, uid, rv, labels, body)
  SELECT $C, 'policyreports', 'ns', 'n-' || :n || '-' || c.rv, 'u', c.rv, d.labels::jsonb, d.prefix || c.rv::text || d.suffix FROM c, d RETURNING rv, labels),
ch AS (INSERT INTO report_changes (cluster_id, rv, resource, namespace, name, uid, type, labels) SELECT $C, o.rv, 'policyreports', 'ns', 'n', 'u', 'ADDED', o.labels FROM o)
SELECT o.rv FROM o;"
run sequence_with_notify "WITH d AS (SELECT * FROM docs WHERE id = :id), c AS (SELECT nextval('rvs') AS rv),
o AS (INSERT INTO report_objects (cluster_id, resource, namespace, name, uid, rv, labels, body)
  SELECT $C, 'policyreports', 'ns', 'n-' || :n || '-' || c.rv, 'u', c.rv, d.labels::jsonb, d.prefix || c.rv::text || d.suffix FROM c, d RETURNING rv, labels),
ch AS (INSERT INTO report_changes (cluster_id, rv, resource, namespace, name, uid, type, labels) SELECT $C, o.rv, 'policyreports', 'ns', 'n', 'u', 'ADDED', o.labels FROM o),
n AS (SELECT pg_notify('reports', o.rv::text) AS sent FROM o) SELECT o.rv FROM o, n;"
run sequence_no_notify "WITH d AS (SELECT * FROM docs WHERE id = :id), c AS (SELECT nextval('rvs') AS rv),
o AS (INSERT INTO report_objects (cluster_id, resource, namespace, name, uid, rv, labels, body)
  SELECT $C, 'policyreports', 'ns', 'n-' || :n || '-' || c.rv, 'u', c.rv, d.labels::jsonb, d.prefix || c.rv::text || d.suffix FROM c, d RETURNING rv, labels),
ch AS (INSERT INTO report_changes (cluster_id, rv, resource, namespace, name, uid, type, labels) SELECT $C, o.rv, 'policyreports', 'ns', 'n', 'u', 'ADDED', o.labels FROM o)
SELECT o.rv FROM o;"
run object_only "WITH d AS (SELECT * FROM docs WHERE id = :id)
INSERT INTO report_objects (cluster_id, resource, namespace, name, uid, rv, labels, body)
  SELECT $C, 'policyreports', 'ns', 'n-' || :n || '-' || nextval('rvs'), 'u', 1, d.labels::jsonb, d.prefix || '1' || d.suffix FROM d;"
$P -d exp -c "TRUNCATE report_objects, report_changes" >/dev/null
runuser -u postgres -- $BIN/pgbench -n -h 127.0.0.1 -p $PORT -U postgres -c 8 -j 2 -t 12500 -M prepared -f /tmp/pgexp/object_only.sql exp >/dev/null 2>&1
$P -d exp -c "VACUUM ANALYZE report_objects" -c "SELECT count(*), round(pg_total_relation_size('report_objects')::numeric/count(*)) AS total_per_row, round(avg(pg_column_size(body))) AS body, round(avg(pg_column_size(labels))) AS labels, round(pg_relation_size('report_objects_pkey')::numeric/count(*)) AS pkey, round(pg_relation_size('report_objects')::numeric/count(*)) AS heap FROM report_objects"
runuser -u postgres -- $BIN/pg_ctl -D $D -m fast -w stop >/dev/null
