//! The raw PostgreSQL baseline: the same documents written and read by a minimal tokio-postgres
//! client into a table equivalent to the store's `report_objects` (same key, columns, collation
//! and lz4 body), with prepared statements and nothing else: no HTTP, no TLS, no JSON work, no
//! change log, no resourceVersion counter. It is the floor for the server's overhead.

use std::sync::Arc;

use anyhow::Context as _;
use tokio_postgres::{Client, NoTls, Statement};

/// The baseline's table: `report_objects` without the cluster column's foreign meaning.
const SCHEMA: &str = r#"
CREATE TABLE raw_objects (
    cluster_id UUID NOT NULL DEFAULT '00000000-0000-4000-8000-000000000000',
    resource   TEXT COLLATE "C" NOT NULL,
    namespace  TEXT COLLATE "C" NOT NULL,
    name       TEXT COLLATE "C" NOT NULL,
    uid        TEXT NOT NULL,
    rv         BIGINT NOT NULL,
    labels     JSONB NOT NULL,
    body       TEXT NOT NULL,
    PRIMARY KEY (cluster_id, resource, namespace, name)
);
ALTER TABLE raw_objects ALTER COLUMN body SET COMPRESSION lz4;
"#;

/// One connection and its prepared statements.
struct Connection {
    client: Client,
    insert: Statement,
    update: Statement,
    get: Statement,
}

/// A few connections to the baseline database.
#[derive(Clone)]
pub struct RawPg {
    connections: Arc<Vec<Connection>>,
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.context("connecting")?;
    tokio::spawn(connection);
    Ok(client)
}

impl RawPg {
    /// Creates the table in the (empty) database at `url` and opens `connections` connections.
    pub async fn open(url: &str, connections: usize) -> anyhow::Result<Self> {
        connect(url).await?.batch_execute(SCHEMA).await.context("creating the baseline table")?;
        let mut opened = Vec::new();
        for _ in 0..connections.max(1) {
            let client = connect(url).await?;
            let insert = client
                .prepare(
                    "INSERT INTO raw_objects (resource, namespace, name, uid, rv, labels, body)
                     VALUES ('policyreports', $1, $2, $3, $4, $5::text::jsonb, $6)",
                )
                .await?;
            let update = client
                .prepare(
                    "UPDATE raw_objects SET rv = $4, labels = $5::text::jsonb, body = $6
                     WHERE cluster_id = '00000000-0000-4000-8000-000000000000' AND resource = 'policyreports'
                       AND namespace = $1 AND name = $2 AND rv = $3",
                )
                .await?;
            let get = client
                .prepare(
                    "SELECT body FROM raw_objects
                     WHERE cluster_id = '00000000-0000-4000-8000-000000000000' AND resource = 'policyreports'
                       AND namespace = $1 AND name = $2",
                )
                .await?;
            opened.push(Connection { client, insert, update, get });
        }
        Ok(Self { connections: Arc::new(opened) })
    }

    fn connection(&self, i: usize) -> &Connection {
        &self.connections[i % self.connections.len()]
    }

    /// Inserts one document.
    pub async fn insert(
        &self,
        i: usize,
        namespace: &str,
        name: &str,
        rv: i64,
        labels: &str,
        body: &str,
    ) -> bool {
        let c = self.connection(i);
        let uid = crate::shapes::uid(9, i as u64);
        c.client.execute(&c.insert, &[&namespace, &name, &uid, &rv, &labels, &body]).await.is_ok()
    }

    /// Updates one document if its rv is still `expected` (the resourceVersion precondition),
    /// setting it to `rv`; `versions` is (expected, rv).
    pub async fn update(
        &self,
        i: usize,
        key: (&str, &str),
        versions: (i64, i64),
        labels: &str,
        body: &str,
    ) -> Result<(), u16> {
        let ((namespace, name), (expected, rv)) = (key, versions);
        let c = self.connection(i);
        match c.client.execute(&c.update, &[&namespace, &name, &expected, &rv, &labels, &body]).await {
            Ok(1) => Ok(()),
            Ok(_) => Err(409),
            Err(_) => Err(0),
        }
    }

    /// Reads one document's body.
    pub async fn get(&self, i: usize, namespace: &str, name: &str) -> bool {
        let c = self.connection(i);
        matches!(c.client.query_opt(&c.get, &[&namespace, &name]).await, Ok(Some(_)))
    }

    /// Reads every body in key order, `page` rows at a time (keyset pagination, like a list with
    /// `limit`); returns (rows, bytes).
    pub async fn list_all(&self, page: i64) -> anyhow::Result<(usize, usize)> {
        let client = &self.connection(0).client;
        let statement = client
            .prepare(
                "SELECT namespace, name, body FROM raw_objects
                 WHERE cluster_id = '00000000-0000-4000-8000-000000000000' AND resource = 'policyreports'
                   AND (namespace, name) > ($1, $2)
                 ORDER BY cluster_id, resource, namespace, name LIMIT $3",
            )
            .await?;
        let (mut rows, mut bytes) = (0, 0);
        let mut after = (String::new(), String::new());
        loop {
            let page_rows = client.query(&statement, &[&after.0, &after.1, &page]).await?;
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

    /// Bytes per row of the table including its indexes and TOAST, after VACUUM; and the rows.
    pub async fn bytes_per_row(&self) -> anyhow::Result<(f64, i64)> {
        let client = &self.connection(0).client;
        client.batch_execute("VACUUM (ANALYZE) raw_objects").await?;
        let row = client
            .query_one("SELECT pg_total_relation_size('raw_objects')::float8, count(*) FROM raw_objects", &[])
            .await?;
        let (size, count): (f64, i64) = (row.get(0), row.get(1));
        Ok((size / count.max(1) as f64, count))
    }
}
