//! How SQLite errors become [`StoreError`]s: a busy or locked database is `Unavailable` (retry
//! later), anything else `Backend`, with the SQLite error kept as the cause.

use crate::error::{Failure, StoreError};

/// A SQLite call's error.
pub(super) fn sqlite_error(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
        {
            StoreError::Unavailable(Failure::caused_by("", e))
        }
        _ => StoreError::Backend(Failure::caused_by("", e)),
    }
}
