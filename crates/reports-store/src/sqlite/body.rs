//! Bodies on disk: zstd-compressed BLOBs. A report's JSON repeats its keys and policy texts, so
//! it packs to about a fifth (see `docs/BENCHMARKS.md`), which is most of what keeps the embedded
//! store's file small under a flood. Files written before compression hold TEXT, which is read
//! as it is: SQLite keeps a value's type per value, so both live side by side and nothing is
//! rewritten (rows move to BLOBs as they are next written).
//!
//! Only the stored bytes change: the server still serves the JSON text exactly as it was
//! written, and decompression is the one cost a read adds.

use rusqlite::types::ValueRef;

use crate::error::{StoreError, StoreResult};

/// zstd's level: 3 (its default) packs report JSON within a few percent of the higher levels at
/// a fraction of their cost, and compression runs under the writer lock.
const LEVEL: i32 = 3;

/// The stored form of a body.
pub(super) fn pack(text: &str) -> StoreResult<Vec<u8>> {
    zstd::bulk::compress(text.as_bytes(), LEVEL)
        .map_err(|e| StoreError::backend_caused("compressing a body", e))
}

/// A body read from a column: a BLOB is compressed JSON, TEXT is JSON from an older file.
pub(super) fn unpack(value: ValueRef<'_>) -> rusqlite::Result<String> {
    let corrupt = |e: Box<dyn std::error::Error + Send + Sync>| {
        rusqlite::Error::FromSqlConversionFailure(0, value.data_type(), e)
    };
    match value {
        ValueRef::Text(text) => String::from_utf8(text.to_vec()).map_err(|e| corrupt(e.into())),
        ValueRef::Blob(packed) => {
            let bytes = zstd::stream::decode_all(packed).map_err(|e| corrupt(e.into()))?;
            String::from_utf8(bytes).map_err(|e| corrupt(e.into()))
        }
        _ => Err(corrupt("a body is neither text nor a blob".into())),
    }
}

/// [`unpack`] of a column that may be NULL.
pub(super) fn unpack_opt(value: ValueRef<'_>) -> rusqlite::Result<Option<String>> {
    match value {
        ValueRef::Null => Ok(None),
        value => unpack(value).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_and_older_text_bodies_read_back_alike() {
        let text = r#"{"metadata":{"name":"a","resourceVersion":"7"},"results":[]}"#;
        let packed = pack(text).unwrap();
        assert_eq!(unpack(ValueRef::Blob(&packed)).unwrap(), text);
        assert_eq!(unpack(ValueRef::Text(text.as_bytes())).unwrap(), text);
        assert_eq!(unpack_opt(ValueRef::Null).unwrap(), None);
        assert!(unpack(ValueRef::Blob(b"not zstd")).is_err());
    }
}
