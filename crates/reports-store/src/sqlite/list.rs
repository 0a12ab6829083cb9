//! Streaming a list from one read transaction: the snapshot RV and the rows come from the same
//! snapshot, and rows go out in chunks of bounded size while the statement runs. A list at a
//! past RV merges in the versions the change log kept (`crate::snapshot`).

use rusqlite::{types::Value as SqlValue, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::{
    errors::sqlite_error,
    selectors::{push_field_selector, push_label_selector},
};
use crate::{
    error::{StoreError, StoreResult},
    model::{ListChunk, ListQuery, StoredObject},
    snapshot::body_rv,
};

/// Rows per list chunk.
const CHUNK_ROWS: usize = 256;
/// The byte budget that closes a chunk early (large reports).
const CHUNK_BYTES: usize = 1 << 20;

/// An object from a row of `namespace, name, uid, rv, body`.
pub(super) fn stored_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredObject> {
    Ok(StoredObject {
        namespace: r.get(0)?,
        name: r.get(1)?,
        uid: r.get(2)?,
        rv: r.get::<_, i64>(3)? as u64,
        body: super::body::unpack(r.get_ref(4)?)?,
    })
}

/// Streams one list inside a read transaction (runs on a blocking thread).
pub(super) fn stream_list(
    conn: &mut Connection,
    query: &ListQuery,
    snapshot: oneshot::Sender<StoreResult<u64>>,
    chunks: &mpsc::Sender<StoreResult<ListChunk>>,
) -> StoreResult<()> {
    let tx = conn.transaction().map_err(sqlite_error)?;
    // The first read fixes the snapshot: the counter and the rows below come from the same one.
    let (rv, replaced) = match plan(&tx, query) {
        Ok(plan) => plan,
        Err(e) => {
            let _ = snapshot.send(Err(e));
            return Ok(());
        }
    };
    if snapshot.send(Ok(rv)).is_err() {
        return Ok(());
    }
    let reads = Reads::new(query, rv);
    let mut objects_stmt = tx.prepare(&reads.objects(replaced)).map_err(sqlite_error)?;
    let mut objects = objects_stmt
        .query_map(rusqlite::params_from_iter(reads.args(query.after.as_ref())), stored_from_row)
        .map_err(sqlite_error)?
        .peekable();
    // The versions of keys changed after the snapshot (only when there are such keys): merged
    // in key order with the object rows, whose keys they never share (`crate::snapshot`).
    let mut changes_stmt = match replaced {
        true => Some(tx.prepare(&reads.first_changes()).map_err(sqlite_error)?),
        false => None,
    };
    let mut changes = match changes_stmt.as_mut() {
        Some(stmt) => Some(
            stmt.query_map(
                rusqlite::params_from_iter(reads.key_args(query.after.as_ref())),
                replaced_from_row,
            )
            .map_err(sqlite_error)?
            .peekable(),
        ),
        None => None,
    };
    let mut version_stmt = tx.prepare(&reads.version_at_snapshot()).map_err(sqlite_error)?;
    let mut next = || -> StoreResult<Option<StoredObject>> {
        loop {
            let take_change = match (objects.peek(), changes.as_mut().and_then(|c| c.peek())) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(Ok(o)), Some(Ok(c))) => (&c.namespace, &c.name) < (&o.namespace, &o.name),
                (Some(Err(_)), _) => false,
                (_, Some(Err(_))) => true,
            };
            if !take_change {
                return objects.next().transpose().map_err(sqlite_error);
            }
            let Some(first) = changes.as_mut().and_then(|c| c.next()).transpose().map_err(sqlite_error)?
            else {
                return Ok(None);
            };
            // Its creation, or a version the selector leaves out: nothing at the snapshot.
            if let Some(object) = first.version(&mut version_stmt, &reads.label_args)? {
                return Ok(Some(object));
            }
        }
    };
    let limit = query.limit.unwrap_or(u64::MAX);
    let mut sent: u64 = 0;
    let mut last_sent: Option<(String, String)> = None;
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut more = false;
    while let Some(object) = next()? {
        if sent == limit {
            more = true;
            break;
        }
        last_sent = Some((object.namespace.clone(), object.name.clone()));
        batch_bytes += object.body.len();
        batch.push(object);
        sent += 1;
        if batch.len() >= CHUNK_ROWS || batch_bytes >= CHUNK_BYTES {
            if chunks.blocking_send(Ok(ListChunk::Items(std::mem::take(&mut batch)))).is_err() {
                return Ok(()); // the client went away
            }
            batch_bytes = 0;
        }
    }
    if !batch.is_empty() && chunks.blocking_send(Ok(ListChunk::Items(batch))).is_err() {
        return Ok(());
    }
    // Counted for lists without a label selector only (what kube gives the count for).
    let remaining = match (more && query.count_remaining && query.labels.is_empty(), last_sent) {
        (true, Some(last)) => Some(
            tx.query_row(
                &reads.count(replaced),
                rusqlite::params_from_iter(reads.count_args(&last, replaced)),
                |r| r.get::<_, i64>(0),
            )
            .map_err(sqlite_error)? as u64,
        ),
        _ => None,
    };
    let _ = chunks.blocking_send(Ok(ListChunk::End { more, remaining }));
    Ok(())
}

/// The RV a list reads at, and whether keys changed after it (so the change log must supply
/// their versions): the current RV, or [`ListQuery::at`] while the log covers it.
fn plan(tx: &rusqlite::Transaction<'_>, query: &ListQuery) -> StoreResult<(u64, bool)> {
    let current =
        tx.query_row("SELECT rv FROM counter", [], |r| r.get::<_, i64>(0)).map_err(sqlite_error)? as u64;
    let Some(at) = query.at.filter(|&at| at < current) else { return Ok((current, false)) };
    let compacted: u64 = tx
        .query_row("SELECT value FROM meta WHERE key = 'compacted_rv'", [], |r| r.get::<_, String>(0))
        .map_err(sqlite_error)?
        .parse()
        .unwrap_or(0);
    if at < compacted {
        return Err(StoreError::Expired);
    }
    Ok((at, super::changes::changed_since(tx, &query.resource, at)?))
}

/// A key changed after the snapshot: its first change after it.
struct Replaced {
    namespace: String,
    name: String,
    rv: i64,
}

impl Replaced {
    /// The version the key had at the snapshot, which its first change after it kept; None when
    /// that change is the key's creation or the version fails the label selector. A change
    /// written before the log kept replaced bodies cannot give it back (expired).
    fn version(
        self,
        stmt: &mut rusqlite::Statement<'_>,
        label_args: &[SqlValue],
    ) -> StoreResult<Option<StoredObject>> {
        let mut args = vec![SqlValue::Integer(self.rv)];
        args.extend(label_args.iter().cloned());
        let row = stmt
            .query_row(rusqlite::params_from_iter(args), |r| {
                Ok((r.get::<_, String>(0)?, super::body::unpack_opt(r.get_ref(1)?)?))
            })
            .optional()
            .map_err(sqlite_error)?;
        let Some((uid, body)) = row else { return Ok(None) };
        let body = body.ok_or(StoreError::Expired)?;
        Ok(Some(StoredObject { namespace: self.namespace, name: self.name, uid, rv: body_rv(&body)?, body }))
    }
}

fn replaced_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Replaced> {
    Ok(Replaced { namespace: r.get(0)?, name: r.get(1)?, rv: r.get(2)? })
}

/// The statements of one list and their arguments. Every statement starts with the resource and
/// the snapshot RV (`?1`, `?2`), then the key to read after (when there is one) and the
/// selectors, in the order the conditions are written.
struct Reads<'a> {
    query: &'a ListQuery,
    rv: u64,
    /// Namespace and field conditions, which hold for object rows and changes alike.
    key_conds: String,
    key_args: Vec<SqlValue>,
    /// Label conditions on `labels` (objects) or `prev_labels` (changes: the labels at `?2`).
    object_labels: String,
    change_labels: String,
    label_args: Vec<SqlValue>,
}

impl<'a> Reads<'a> {
    fn new(query: &'a ListQuery, rv: u64) -> Self {
        let (mut key_conds, mut key_args) = (String::new(), Vec::new());
        if let Some(ns) = &query.namespace {
            key_conds.push_str(" AND namespace = ?");
            key_args.push(SqlValue::Text(ns.clone()));
        }
        push_field_selector(&query.fields, &mut key_conds, &mut key_args);
        let (mut object_labels, mut change_labels, mut label_args) =
            (String::new(), String::new(), Vec::new());
        push_label_selector(&query.labels, "labels", &mut object_labels, &mut label_args);
        push_label_selector(&query.labels, "prev_labels", &mut change_labels, &mut Vec::new());
        Self { query, rv, key_conds, key_args, object_labels, change_labels, label_args }
    }

    fn after(after: Option<&(String, String)>) -> &'static str {
        if after.is_some() {
            " AND (namespace, name) > (?3, ?4)"
        } else {
            " AND ?3 IS NULL AND ?4 IS NULL"
        }
    }

    /// `?1` resource, `?2` snapshot RV, `?3`/`?4` the key to read after (NULL for none), then the
    /// key conditions and the label conditions.
    fn args(&self, after: Option<&(String, String)>) -> Vec<SqlValue> {
        let (ns, name) = match after {
            Some((ns, name)) => (SqlValue::Text(ns.clone()), SqlValue::Text(name.clone())),
            None => (SqlValue::Null, SqlValue::Null),
        };
        let mut args =
            vec![SqlValue::Text(self.query.resource.clone()), SqlValue::Integer(self.rv as i64), ns, name];
        args.extend(self.key_args.iter().cloned());
        args.extend(self.label_args.iter().cloned());
        args
    }

    /// Object rows in key order (at most the snapshot RV when keys changed after it).
    fn objects(&self, replaced: bool) -> String {
        let mut sql = format!(
            "SELECT namespace, name, uid, rv, body FROM objects WHERE resource = ?1{}{}{}",
            Self::after(self.query.after.as_ref()),
            self.key_conds,
            self.object_labels
        );
        sql.push_str(if replaced { " AND rv <= ?2" } else { " AND ?2 IS NOT NULL" });
        sql.push_str(" ORDER BY namespace, name");
        if let Some(limit) = self.query.limit {
            sql.push_str(&format!(" LIMIT {}", limit.saturating_add(1).min(i64::MAX as u64)));
        }
        sql
    }

    /// The keys changed after the snapshot RV, in key order, with the RV of their first change
    /// after it (SQLite takes the bare columns of a `min()` group from the row with the
    /// minimum). Found by RV, so the work is that of the changes since the snapshot, not of the
    /// whole log; only keys and RVs are sorted, the bodies are read one by one as the page
    /// needs them ([`Self::version_at_snapshot`]).
    fn first_changes(&self) -> String {
        format!(
            "SELECT namespace, name, min(rv) FROM changes INDEXED BY changes_by_resource
             WHERE resource = ?1 AND rv > ?2{}{} GROUP BY namespace, name ORDER BY namespace, name",
            Self::after(self.query.after.as_ref()),
            self.key_conds,
        )
    }

    /// The version a first change after the snapshot kept (`?1`: its RV), unless it is the key's
    /// creation; the label selector applies to the labels it had then.
    fn version_at_snapshot(&self) -> String {
        format!("SELECT uid, prev_body FROM changes WHERE rv = ?1 AND type <> 'ADDED'{}", self.change_labels)
    }

    /// [`Self::args`] without the label conditions' arguments.
    fn key_args(&self, after: Option<&(String, String)>) -> Vec<SqlValue> {
        let mut args = self.args(after);
        args.truncate(args.len() - self.label_args.len());
        args
    }

    /// Counts the objects after a key at the snapshot (lists without label selectors only).
    fn count(&self, replaced: bool) -> String {
        let objects = format!(
            "SELECT count(*) FROM objects WHERE resource = ?1 AND (namespace, name) > (?3, ?4){}",
            self.key_conds
        );
        if !replaced {
            return format!("SELECT ({objects} AND ?2 IS NOT NULL)");
        }
        format!(
            "SELECT ({objects} AND rv <= ?2) + (SELECT count(*) FROM (
                SELECT type, min(rv) FROM changes
                WHERE resource = ?1 AND rv > ?2 AND (namespace, name) > (?3, ?4){} GROUP BY namespace, name)
             WHERE type <> 'ADDED')",
            self.key_conds
        )
    }

    fn count_args(&self, last: &(String, String), replaced: bool) -> Vec<SqlValue> {
        let mut args = vec![
            SqlValue::Text(self.query.resource.clone()),
            SqlValue::Integer(self.rv as i64),
            SqlValue::Text(last.0.clone()),
            SqlValue::Text(last.1.clone()),
        ];
        args.extend(self.key_args.iter().cloned());
        if replaced {
            args.extend(self.key_args.iter().cloned());
        }
        args
    }
}
