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
    snapshot::with_rv,
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
    append_change(tx, resource, &stored, ChangeType::Added, &labels, None, false)?;
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
    append_change(tx, resource, &stored, ChangeType::Modified, &labels, Some(&prev_labels), true)?;
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
    let (rv, labels, body, uid) = current_body(tx, resource, namespace, name)?.ok_or(StoreError::NotFound)?;
    if rv != expected_rv {
        return Err(StoreError::Conflict);
    }
    let current = StoredObject { namespace: namespace.into(), name: name.into(), uid, rv, body };
    delete_current(tx, index, resource, current, &labels)
}

/// Deletes an object as it was read (by a list) if its RV is still the one read; the body read
/// is the stored one at that RV, so it is neither read nor decompressed again here, in the one
/// writer's time.
pub(super) fn delete_read(
    tx: &WriteTx<'_>,
    index: &FindingsIndex,
    resource: &str,
    read: StoredObject,
) -> StoreResult<StoredObject> {
    let (rv, labels) =
        current_version(tx, resource, &read.namespace, &read.name)?.ok_or(StoreError::NotFound)?;
    if rv != read.rv {
        return Err(StoreError::Conflict);
    }
    delete_current(tx, index, resource, read, &labels)
}

/// Deletes `current`, the stored object with its `labels`; returns its final state at the
/// deletion's RV.
fn delete_current(
    tx: &WriteTx<'_>,
    index: &FindingsIndex,
    resource: &str,
    current: StoredObject,
    labels: &str,
) -> StoreResult<StoredObject> {
    let rv = next_rv(tx)?;
    // The final state is the stored object at the deletion's RV.
    let final_state = StoredObject { body: with_rv(&current.body, rv)?, rv, ..current };
    let (namespace, name) = (final_state.namespace.as_str(), final_state.name.as_str());
    // First, while the row still has it, the body this delete removes goes to its change.
    append_change(tx, resource, &final_state, ChangeType::Deleted, labels, Some(labels), true)?;
    tx.prepare_cached("DELETE FROM objects WHERE resource = ?1 AND namespace = ?2 AND name = ?3")
        .map_err(sqlite_error)?
        .execute(params![resource, namespace, name])
        .map_err(sqlite_error)?;
    if index.is_on() {
        findings::delete(tx, (resource, namespace, name))?;
    }
    Ok(final_state)
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

/// Appends a change to the log and to the transaction's record of what it appended. The row
/// holds no copy of `object`'s body (the object row, or the key's next change, has it); with
/// `replaces`, it keeps the body the write replaces, copied (compressed as it is) from the object
/// row, so this runs before the row is rewritten or deleted.
fn append_change(
    tx: &WriteTx<'_>,
    resource: &str,
    object: &StoredObject,
    change_type: ChangeType,
    labels: &str,
    prev_labels: Option<&str>,
    replaces: bool,
) -> StoreResult<()> {
    tx.prepare_cached(
        "INSERT INTO changes (rv, resource, namespace, name, uid, type, labels, prev_labels, prev_body, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8,
                 CASE WHEN ?10 THEN (SELECT body FROM objects WHERE resource = ?2 AND namespace = ?3 AND name = ?4) END,
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
        replaces,
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
/// pages, and only a delete needs it ([`current_body`]).
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

/// The RV, labels, body and uid of a stored object.
fn current_body(
    tx: &Transaction<'_>,
    resource: &str,
    namespace: &str,
    name: &str,
) -> StoreResult<Option<(u64, String, String, String)>> {
    tx.prepare_cached(
        "SELECT rv, labels, body, uid FROM objects WHERE resource = ?1 AND namespace = ?2 AND name = ?3",
    )
    .map_err(sqlite_error)?
    .query_row(params![resource, namespace, name], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, unpack(r.get_ref(2)?)?, r.get(3)?))
    })
    .optional()
    .map_err(sqlite_error)
}
