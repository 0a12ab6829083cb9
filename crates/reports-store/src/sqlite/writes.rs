//! The writes themselves, run inside a group-commit transaction: each takes the next RV, writes
//! it into the object, changes the object row and appends its change, or refuses (AlreadyExists,
//! NotFound, Conflict) before taking anything.

use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::Value;

use super::{
    body::{pack, unpack},
    errors::sqlite_error,
    findings::write as findings,
    group_commit::WriteTx,
};
use crate::{
    error::{StoreError, StoreResult},
    findings::FindingsIndex,
    model::{labels_json, meta_text, now_seconds, parse_labels, Change, ChangeType, StoredObject},
    snapshot::{with_rv, Restampable},
};

/// Inserts a new object (and its findings); AlreadyExists if the key is taken.
pub(super) fn create(
    tx: &WriteTx<'_>,
    index: &FindingsIndex,
    resource: &str,
    mut object: Value,
) -> StoreResult<StoredObject> {
    let namespace = meta_text(&object, "namespace").to_string();
    let name = meta_text(&object, "name").to_string();
    if current_version(tx, resource, &namespace, &name)?.is_some() {
        return Err(StoreError::AlreadyExists);
    }
    let (stored, labels) = stamp(tx, &mut object, namespace, name)?;
    tx.prepare_cached(
        "INSERT INTO objects (resource, namespace, name, uid, rv, labels, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .map_err(sqlite_error)?
    .execute(params![resource, stored.namespace, stored.name, stored.uid, stored.rv as i64, labels, pack(&stored.body)?])
    .map_err(sqlite_error)?;
    append_change(tx, resource, &stored, ChangeType::Added, &labels, None, Replaced::Nothing)?;
    if index.is_on() {
        findings::insert(tx, (resource, &stored.namespace, &stored.name), &index.rows(resource, &object))?;
    }
    Ok(stored)
}

/// Replaces an object whose stored RV is `expected_rv` (and its findings).
pub(super) fn update(
    tx: &WriteTx<'_>,
    index: &FindingsIndex,
    resource: &str,
    mut object: Value,
    expected_rv: u64,
) -> StoreResult<StoredObject> {
    let namespace = meta_text(&object, "namespace").to_string();
    let name = meta_text(&object, "name").to_string();
    let (rv, prev_labels) = current_version(tx, resource, &namespace, &name)?.ok_or(StoreError::NotFound)?;
    if rv != expected_rv {
        return Err(StoreError::Conflict);
    }
    let (stored, labels) = stamp(tx, &mut object, namespace, name)?;
    // First, while the row still has it, the body this update replaces goes to its change.
    append_change(
        tx,
        resource,
        &stored,
        ChangeType::Modified,
        &labels,
        Some(&prev_labels),
        Replaced::StoredRow,
    )?;
    tx.prepare_cached(
        "UPDATE objects SET uid = ?4, rv = ?5, labels = ?6, body = ?7
         WHERE resource = ?1 AND namespace = ?2 AND name = ?3",
    )
    .map_err(sqlite_error)?
    .execute(params![
        resource,
        stored.namespace,
        stored.name,
        stored.uid,
        stored.rv as i64,
        labels,
        pack(&stored.body)?
    ])
    .map_err(sqlite_error)?;
    if index.is_on() {
        let key = (resource, stored.namespace.as_str(), stored.name.as_str());
        findings::delete(tx, key)?;
        findings::insert(tx, key, &index.rows(resource, &object))?;
    }
    Ok(stored)
}

/// Deletes one object (and its findings) after checking its RV; returns its final state at the
/// deletion's RV.
pub(super) fn delete(
    tx: &WriteTx<'_>,
    index: &FindingsIndex,
    resource: &str,
    namespace: &str,
    name: &str,
    expected_rv: u64,
) -> StoreResult<StoredObject> {
    let Some(removed) = remove_row(tx, resource, namespace, name, expected_rv)? else {
        let exists = current_version(tx, resource, namespace, name)?.is_some();
        return Err(if exists { StoreError::Conflict } else { StoreError::NotFound });
    };
    let body = unpack((&removed.packed).into()).map_err(sqlite_error)?;
    let rv = next_rv(tx)?;
    // The final state is the stored object at the deletion's RV.
    let body = with_rv(&body, rv)?;
    let final_state =
        StoredObject { namespace: namespace.into(), name: name.into(), uid: removed.uid, rv, body };
    log_removal(tx, index, resource, &final_state, &removed.labels, removed.packed)?;
    Ok(final_state)
}

/// Deletes objects as they were read (by a list), each only if its RV is still the one read:
/// the others (moved on, gone, or given twice) are `None`. The bodies read are the stored ones
/// at those RVs, so none is read back or decompressed in the one writer's time, and the RVs are
/// taken from the counter once for the set.
pub(super) fn delete_read(
    tx: &WriteTx<'_>,
    index: &FindingsIndex,
    resource: &str,
    read: Vec<Restampable>,
) -> StoreResult<Vec<Option<StoredObject>>> {
    let mut rv = counter_rv(tx)?;
    let mut deleted = Vec::with_capacity(read.len());
    for object in read {
        let listed = object.read();
        let Some(removed) = remove_row(tx, resource, &listed.namespace, &listed.name, listed.rv)? else {
            deleted.push(None);
            continue;
        };
        rv += 1;
        let final_state = object.at(rv);
        log_removal(tx, index, resource, &final_state, &removed.labels, removed.packed)?;
        deleted.push(Some(final_state));
    }
    set_counter_rv(tx, rv)?;
    Ok(deleted)
}

/// What a deleted object row held that its DELETED change keeps.
struct RemovedRow {
    labels: String,
    uid: String,
    /// The body as stored (compressed), moved to the change as it is.
    packed: rusqlite::types::Value,
}

/// Deletes the object row if its RV is `rv`, in one statement that also hands back what its
/// change keeps; `None` if there is no such row (moved on or gone).
fn remove_row(
    tx: &WriteTx<'_>,
    resource: &str,
    namespace: &str,
    name: &str,
    rv: u64,
) -> StoreResult<Option<RemovedRow>> {
    tx.prepare_cached(
        "DELETE FROM objects WHERE resource = ?1 AND namespace = ?2 AND name = ?3 AND rv = ?4
         RETURNING labels, uid, body",
    )
    .map_err(sqlite_error)?
    .query_row(params![resource, namespace, name, rv as i64], |r| {
        Ok(RemovedRow { labels: r.get(0)?, uid: r.get(1)?, packed: r.get(2)? })
    })
    .optional()
    .map_err(sqlite_error)
}

/// Logs the deletion of an object row that had `labels` and the `packed` body, whose final state
/// is `final_state`, and deletes its findings.
fn log_removal(
    tx: &WriteTx<'_>,
    index: &FindingsIndex,
    resource: &str,
    final_state: &StoredObject,
    labels: &str,
    packed: rusqlite::types::Value,
) -> StoreResult<()> {
    let replaced = Replaced::Body(packed);
    append_change(tx, resource, final_state, ChangeType::Deleted, labels, Some(labels), replaced)?;
    if index.is_on() {
        findings::delete(tx, (resource, &final_state.namespace, &final_state.name))?;
    }
    Ok(())
}

/// Takes the next RV and writes it into `object`; returns the object as it will be stored, with
/// its labels as JSON text.
fn stamp(
    tx: &Transaction<'_>,
    object: &mut Value,
    namespace: String,
    name: String,
) -> StoreResult<(StoredObject, String)> {
    let rv = next_rv(tx)?;
    object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| StoreError::backend("object has no metadata"))?
        .insert("resourceVersion".into(), Value::String(rv.to_string()));
    let stored = StoredObject {
        uid: meta_text(object, "uid").to_string(),
        body: serde_json::to_string(object)
            .map_err(|e| StoreError::backend_caused("serializing the object", e))?,
        namespace,
        name,
        rv,
    };
    Ok((stored, labels_json(object)))
}

/// Takes the next RV.
fn next_rv(tx: &Transaction<'_>) -> StoreResult<u64> {
    Ok(tx
        .prepare_cached("UPDATE counter SET rv = rv + 1 WHERE id = 1 RETURNING rv")
        .map_err(sqlite_error)?
        .query_row([], |r| r.get::<_, i64>(0))
        .map_err(sqlite_error)? as u64)
}

/// The newest RV taken.
fn counter_rv(tx: &Transaction<'_>) -> StoreResult<u64> {
    Ok(tx
        .prepare_cached("SELECT rv FROM counter WHERE id = 1")
        .map_err(sqlite_error)?
        .query_row([], |r| r.get::<_, i64>(0))
        .map_err(sqlite_error)? as u64)
}

/// Records `rv` as the newest RV taken (after a set of writes took RVs up to it).
fn set_counter_rv(tx: &Transaction<'_>, rv: u64) -> StoreResult<()> {
    tx.prepare_cached("UPDATE counter SET rv = ?1 WHERE id = 1")
        .map_err(sqlite_error)?
        .execute(params![rv as i64])
        .map_err(sqlite_error)?;
    Ok(())
}

/// The version a change replaces, which it keeps (see `crate::snapshot`).
enum Replaced {
    /// None: a create's change.
    Nothing,
    /// The object row's current body, copied inside SQLite before the row is rewritten.
    StoredRow,
    /// A body (as stored) already taken from the row.
    Body(rusqlite::types::Value),
}

/// Appends a change to the log and to the transaction's record of what it appended. The row
/// holds no copy of `object`'s body (the object row, or the key's next change, has it), only the
/// version the write `replaced`.
fn append_change(
    tx: &WriteTx<'_>,
    resource: &str,
    object: &StoredObject,
    change_type: ChangeType,
    labels: &str,
    prev_labels: Option<&str>,
    replaced: Replaced,
) -> StoreResult<()> {
    let (copy_row, given) = match replaced {
        Replaced::Nothing => (false, rusqlite::types::Value::Null),
        Replaced::StoredRow => (true, rusqlite::types::Value::Null),
        Replaced::Body(body) => (false, body),
    };
    tx.prepare_cached(
        "INSERT INTO changes (rv, resource, namespace, name, uid, type, labels, prev_labels, prev_body, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8,
                 CASE WHEN ?10 THEN (SELECT body FROM objects WHERE resource = ?2 AND namespace = ?3 AND name = ?4)
                      ELSE ?11 END,
                 ?9)",
    )
    .map_err(sqlite_error)?
    .execute(params![
        object.rv as i64,
        resource,
        object.namespace,
        object.name,
        object.uid,
        change_type.as_str(),
        labels,
        prev_labels,
        now_seconds() as i64,
        copy_row,
        given,
    ])
    .map_err(sqlite_error)?;
    tx.appended(Change {
        rv: object.rv,
        resource: resource.to_string(),
        change_type,
        object: object.clone(),
        labels: parse_labels(labels),
        prev_labels: prev_labels.map(parse_labels),
    });
    Ok(())
}

/// The RV and labels of a stored object. The body is left alone: a 6 KB body lives in overflow
/// pages, and only a delete needs it (handed back by the statement that deletes the row).
fn current_version(
    tx: &Transaction<'_>,
    resource: &str,
    namespace: &str,
    name: &str,
) -> StoreResult<Option<(u64, String)>> {
    tx.prepare_cached("SELECT rv, labels FROM objects WHERE resource = ?1 AND namespace = ?2 AND name = ?3")
        .map_err(sqlite_error)?
        .query_row(params![resource, namespace, name], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
        .optional()
        .map_err(sqlite_error)
}
