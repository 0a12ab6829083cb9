//! The raw PostgreSQL baselines: the same documents written and read by a minimal tokio-postgres
//! client, with prepared statements and no HTTP, TLS or JSON work, in the store's own tables.
//!
//! Both baselines open a fresh database with the store itself, so its migrations create the
//! tables: the same columns (`label_hashes`, no `labels` column), the same body compression
//! (pglz) and `toast_tuple_target`, the same keys. The bodies are what the store keeps (the
//! metadata the server adds on create, and the RV inside the JSON), so bytes per report compare
//! like with like.
//!
//! - [`Work::Floor`]: one `INSERT` into `report_objects` per create, nothing else: no
//!   resourceVersion counter, no change log, no `NOTIFY`. The floor, not a competitor.
//! - [`Work::CounterAndLog`]: the store's own statement for a lone create
//!   ([`reports_store::postgres::CREATE_SQL`]: counter row, object row, change row, `pg_notify`),
//!   one per create, with a listening connection open as the server has. What the database
//!   charges for a create done the store's way, without our server: no combining of concurrent
//!   creates (that is the server's work, so ours can beat this one in a closed loop).

use std::sync::Arc;

use anyhow::Context as _;
use serde_json::Value;
use tokio_postgres::{types::ToSql, Client, NoTls, Statement};
use uuid::Uuid;

/// What a baseline create does in the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// The object row alone.
    Floor,
    /// The store's create statement: counter, object row, change row, notification.
    CounterAndLog,
}

/// A document as the store keeps it: its JSON split around the RV, and its label hashes.
pub struct StoredShape {
    /// The JSON up to the value of `metadata.resourceVersion`.
    pub prefix: String,
    /// The JSON after it.
    pub suffix: String,
    /// The label hashes as a PostgreSQL array literal (what the store writes to `label_hashes`).
    pub label_hashes: String,
    /// The labels as JSON text (what the change log records).
    pub labels: String,
    /// `metadata.uid`.
    pub uid: String,
}

impl StoredShape {
    /// The shape of `body` (a create's JSON as sent) once stored: the metadata the server adds on
    /// create (uid, creationTimestamp, generation) and the RV placed where the store places it.
    pub fn of(body: &[u8]) -> anyhow::Result<Self> {
        const MARKER: &str = "rv-marker-of-the-raw-baseline";
        let mut object: Value = serde_json::from_slice(body).context("a document is not JSON")?;
        let meta = object
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .context("a document has no metadata")?;
        let uid = Uuid::new_v4().to_string();
        meta.insert("uid".into(), Value::String(uid.clone()));
        meta.insert("creationTimestamp".into(), Value::String("2026-12-05T06:00:00Z".into()));
        meta.insert("generation".into(), Value::from(1));
        meta.insert("resourceVersion".into(), Value::String(MARKER.into()));
        let labels = meta.get("labels").cloned().unwrap_or_else(|| Value::Object(Default::default()));
        let mut hashes: Vec<i32> = labels
            .as_object()
            .map(|l| {
                l.iter()
                    .filter_map(|(k, v)| {
                        v.as_str().map(|v| reports_store::postgres::labels::label_hash(k, v))
                    })
                    .collect()
            })
            .unwrap_or_default();
        hashes.sort_unstable();
        let hashes: Vec<String> = hashes.iter().map(i32::to_string).collect();
        let text = serde_json::to_string(&object)?;
        let at = text.find(MARKER).context("the marker is in the JSON")?;
        Ok(Self {
            prefix: text[..at].to_string(),
            suffix: text[at + MARKER.len()..].to_string(),
            label_hashes: format!("{{{}}}", hashes.join(",")),
            labels: labels.to_string(),
            uid,
        })
    }
}

/// One connection and its prepared statements.
struct Connection {
    client: Client,
    insert: Statement,
    update: Statement,
    get: Statement,
}

/// A few connections to one baseline database.
#[derive(Clone)]
pub struct RawPg {
    work: Work,
    cluster: Uuid,
    channel: String,
    connections: Arc<Vec<Connection>>,
    /// The `LISTEN` connection of [`Work::CounterAndLog`] (the server keeps one too); its
    /// notifications are read and dropped by its connection task.
    _listener: Option<Arc<Client>>,
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.context("connecting")?;
    tokio::spawn(connection);
    Ok(client)
}

/// The floor's insert: the object row with its RV fixed at 1 (there is no counter).
const FLOOR_INSERT_SQL: &str = "INSERT INTO report_objects
    (cluster_id, resource, namespace, name, uid, rv, label_hashes, body)
    VALUES ($1, 'policyreports', $2, $3, $4, 1, $5::text::integer[], $6::text || '1' || $7::text)";

/// The floor's update with an RV precondition (`$4` the expected RV, `$5` the new one).
const FLOOR_UPDATE_SQL: &str = "UPDATE report_objects
    SET rv = $5, label_hashes = $6::text::integer[], body = $7::text || $5::bigint::text || $8::text
    WHERE cluster_id = $1 AND resource = 'policyreports' AND namespace = $2 AND name = $3 AND rv = $4";

impl RawPg {
    /// Lets the store create its tables in the (empty) database at `url`, then opens
    /// `connections` connections doing `work`.
    pub async fn open(url: &str, connections: usize, work: Work) -> anyhow::Result<Self> {
        let cluster = {
            let store = reports_store::postgres::PgStore::connect(url, &Default::default())
                .await
                .context("creating the store's tables")?;
            store.cluster_id()
        };
        let channel = format!("reports_{}", cluster.simple());
        let listener = match work {
            Work::Floor => None,
            Work::CounterAndLog => {
                let client = connect(url).await?;
                client.batch_execute(&format!("LISTEN \"{channel}\"")).await?;
                Some(Arc::new(client))
            }
        };
        let insert_sql = match work {
            Work::Floor => FLOOR_INSERT_SQL,
            Work::CounterAndLog => reports_store::postgres::CREATE_SQL,
        };
        let mut opened = Vec::new();
        for _ in 0..connections.max(1) {
            let client = connect(url).await?;
            let insert = client.prepare(insert_sql).await.context("preparing the create")?;
            let update = client.prepare(FLOOR_UPDATE_SQL).await.context("preparing the update")?;
            let get = client
                .prepare(
                    "SELECT body FROM report_objects
                     WHERE cluster_id = $1 AND resource = 'policyreports' AND namespace = $2 AND name = $3",
                )
                .await
                .context("preparing the get")?;
            opened.push(Connection { client, insert, update, get });
        }
        Ok(Self { work, cluster, channel, connections: Arc::new(opened), _listener: listener })
    }

    fn connection(&self, i: usize) -> &Connection {
        &self.connections[i % self.connections.len()]
    }

    /// Creates one document; `Err(23505)` for a taken name, `Err(0)` for any other failure.
    pub async fn insert(&self, i: usize, namespace: &str, name: &str, doc: &StoredShape) -> Result<(), u16> {
        let c = self.connection(i);
        let result = match self.work {
            Work::Floor => {
                let params: [&(dyn ToSql + Sync); 7] =
                    [&self.cluster, &namespace, &name, &doc.uid, &doc.label_hashes, &doc.prefix, &doc.suffix];
                c.client.execute(&c.insert, &params).await.map(drop)
            }
            Work::CounterAndLog => {
                let channel: &str = &self.channel;
                let params: [&(dyn ToSql + Sync); 10] = [
                    &self.cluster,
                    &"policyreports",
                    &namespace,
                    &name,
                    &doc.uid,
                    &doc.labels,
                    &doc.prefix,
                    &doc.suffix,
                    &channel,
                    &doc.label_hashes,
                ];
                c.client.query_one(&c.insert, &params).await.map(drop)
            }
        };
        result.map_err(|e| {
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                409
            } else {
                0
            }
        })
    }

    /// Updates one document if its rv is still `expected` (the resourceVersion precondition),
    /// setting it to `rv`; `versions` is (expected, rv).
    pub async fn update(
        &self,
        i: usize,
        key: (&str, &str),
        versions: (i64, i64),
        doc: &StoredShape,
    ) -> Result<(), u16> {
        let ((namespace, name), (expected, rv)) = (key, versions);
        let c = self.connection(i);
        let params: [&(dyn ToSql + Sync); 8] =
            [&self.cluster, &namespace, &name, &expected, &rv, &doc.label_hashes, &doc.prefix, &doc.suffix];
        match c.client.execute(&c.update, &params).await {
            Ok(1) => Ok(()),
            Ok(_) => Err(409),
            Err(_) => Err(0),
        }
    }

    /// Reads one document's body.
    pub async fn get(&self, i: usize, namespace: &str, name: &str) -> bool {
        let c = self.connection(i);
        matches!(c.client.query_opt(&c.get, &[&self.cluster, &namespace, &name]).await, Ok(Some(_)))
    }

    /// Reads every body in key order, `page` rows at a time (keyset pagination, like a list with
    /// `limit`); returns (rows, bytes).
    pub async fn list_all(&self, page: i64) -> anyhow::Result<(usize, usize)> {
        let client = &self.connection(0).client;
        let statement = client
            .prepare(
                "SELECT namespace, name, body FROM report_objects
                 WHERE cluster_id = $1 AND resource = 'policyreports' AND (namespace, name) > ($2, $3)
                 ORDER BY cluster_id, resource, namespace, name LIMIT $4",
            )
            .await?;
        let (mut rows, mut bytes) = (0, 0);
        let mut after = (String::new(), String::new());
        loop {
            let page_rows = client.query(&statement, &[&self.cluster, &after.0, &after.1, &page]).await?;
            for row in &page_rows {
                bytes += row.get::<_, &str>(2).len();
            }
            rows += page_rows.len();
            match page_rows.last() {
                Some(last) if page_rows.len() as i64 == page => after = (last.get(0), last.get(1)),
                _ => return Ok((rows, bytes)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_shape_is_the_document_with_the_servers_metadata_and_its_rv() {
        let body = br#"{"apiVersion":"v1","metadata":{"name":"a","labels":{"k":"v","j":"w"}},"results":[]}"#;
        let shape = StoredShape::of(body).unwrap();
        let stored: Value = serde_json::from_str(&format!("{}42{}", shape.prefix, shape.suffix)).unwrap();
        assert_eq!(stored["metadata"]["resourceVersion"], "42");
        assert_eq!(stored["metadata"]["uid"], shape.uid.as_str());
        assert_eq!(stored["metadata"]["generation"], 1);
        assert_eq!(stored["results"], serde_json::json!([]));
        assert_eq!(shape.labels, r#"{"k":"v","j":"w"}"#);
        let mut hashes = [
            reports_store::postgres::labels::label_hash("k", "v"),
            reports_store::postgres::labels::label_hash("j", "w"),
        ];
        hashes.sort_unstable();
        assert_eq!(shape.label_hashes, format!("{{{},{}}}", hashes[0], hashes[1]));
    }
}
