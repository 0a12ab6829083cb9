//! Bodies on disk: zstd-compressed BLOBs. A report's JSON repeats its keys and policy texts, so
//! it packs to about a fifth (see `docs/BENCHMARKS.md`), which is most of what keeps the embedded
//! store's file small under a flood. Files written before compression hold TEXT, which is read
//! as it is: SQLite keeps a value's type per value, so both live side by side and nothing is
//! rewritten (rows move to BLOBs as they are next written).
//!
//! Only the stored bytes change: the server still serves the JSON text exactly as it was
//! written, and decompression is the one cost a read adds.

use std::cell::RefCell;

use rusqlite::types::ValueRef;

use crate::error::{StoreError, StoreResult};

/// zstd's level: 3 (its default) packs report JSON within a few percent of the higher levels at
/// a fraction of their cost, and compression runs under the writer lock.
const LEVEL: i32 = 3;

thread_local! {
    /// A compression context per thread, kept: creating one per body was a visible part of a
    /// flood's profile (contexts hold their tables and buffers).
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    /// The same for decompression (a deletecollection of a million reads a million bodies).
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// The stored form of a body.
pub(super) fn pack(text: &str) -> StoreResult<Vec<u8>> {
    COMPRESSOR
        .with(|cell| {
            let mut cell = cell.borrow_mut();
            let compressor = match cell.as_mut() {
                Some(compressor) => compressor,
                None => cell.insert(zstd::bulk::Compressor::new(LEVEL)?),
            };
            compressor.compress(text.as_bytes())
        })
        .map_err(|e| StoreError::backend_caused("compressing a body", e))
}

/// The largest body size read from a frame header that is allocated at once (bodies are limited
/// to a few MiB; a larger claim is decoded as a stream, growing as it goes).
const MAX_TRUSTED_SIZE: u64 = 64 << 20;

/// Decompresses `packed` with this thread's context, when its frame says how large the body is.
fn decompress(packed: &[u8]) -> std::io::Result<Vec<u8>> {
    // A size past any body this server accepts is not trusted for an allocation up front.
    let size = match zstd::zstd_safe::get_frame_content_size(packed) {
        Ok(Some(size)) if size <= MAX_TRUSTED_SIZE => size,
        _ => return zstd::stream::decode_all(packed),
    };
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let decompressor = match cell.as_mut() {
            Some(decompressor) => decompressor,
            None => cell.insert(zstd::bulk::Decompressor::new()?),
        };
        decompressor.decompress(packed, usize::try_from(size).unwrap_or(usize::MAX))
    })
}

/// A body read from a column: a BLOB is compressed JSON, TEXT is JSON from an older file.
pub(super) fn unpack(value: ValueRef<'_>) -> rusqlite::Result<String> {
    let corrupt = |e: Box<dyn std::error::Error + Send + Sync>| {
        rusqlite::Error::FromSqlConversionFailure(0, value.data_type(), e)
    };
    match value {
        ValueRef::Text(text) => String::from_utf8(text.to_vec()).map_err(|e| corrupt(e.into())),
        ValueRef::Blob(packed) => {
            let bytes = decompress(packed).map_err(|e| corrupt(e.into()))?;
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
