//! Reading the objects as they were at a past resourceVersion, from the change log.
//!
//! kube-apiserver serves every page of a paged list, and every exact-RV list, at one revision
//! of etcd. We keep no MVCC history of the objects table, only the change log, so both stores
//! rebuild the state at a snapshot RV `S` from it, which is possible exactly while the log covers
//! `S` (`compacted_rv <= S`: every change above `S` is still in the log).
//!
//! # Where each version lives
//!
//! Every version of an object is stored once. The current one is the object row. A version that
//! was replaced is kept by the change that replaced it: an update's or a delete's change row holds
//! the body it replaced (`prev_body`), together with the labels it had (`prev_labels`), and a
//! create's holds nothing. Keeping the *replaced* body in the *replacing* change is what makes this
//! robust against compaction: the change that ends a version is always newer than the version,
//! so it outlives it in the log, however old the version itself is. (Keeping each version in
//! its own change row, as the PostgreSQL store once did, loses every version whose change row was
//! compacted while it was still current.)
//!
//! # The state at S
//!
//! For one key: if the object row's RV is at most `S`, the row is the state at `S` (a later write
//! would have moved its RV, a delete and re-create too). Otherwise take the key's first change
//! above `S`: if it is ADDED, the object did not exist at `S`; else its `prev_body` is the version
//! at `S`. Keys with no object row and a change above `S` were deleted after `S` and come back
//! the same way. So a page at `S` is the merge, in key order, of two ordered reads with disjoint
//! keys: the object rows with `rv <= S`, and the first change above `S` of each key that is not
//! ADDED. Both are keyset reads with the selectors in SQL (labels at `S` are the change's
//! `prev_labels`), so lists stay streamed, bounded and in key order. When nothing of the kind
//! changed above `S` (one indexed probe) the second read is skipped and a page costs what a
//! current page costs; the first page of a list, and every unpaged list, read the current rows.
//!
//! # What else reads `prev_body`
//!
//! A watch needs the body *at* each change. For a create or an update that is the object row
//! while it is still at that RV, else the `prev_body` of the key's next change (which exists, and
//! is still in the log, because it is newer). A delete's final state is its `prev_body` with the
//! deletion's RV written in ([`with_rv`]). Rows written before this scheme keep their own body and
//! are read as before; a snapshot that would need the replaced body of such a row (`prev_body`
//! missing) is treated as not covered (410).

use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{
    error::{StoreError, StoreResult},
    model::{raw_metadata, StoredObject},
};

/// `metadata`, borrowing `resourceVersion` only.
#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow, rename = "resourceVersion")]
    resource_version: &'a RawValue,
}

/// Where the digits of `metadata.resourceVersion` are in a stored body. A JSON scan without
/// building the document, so that it cannot be fooled by the same text elsewhere (a result's
/// object reference has a `resourceVersion` too).
fn rv_span(body: &str) -> Option<Range<usize>> {
    let meta: Meta<'_> = serde_json::from_str(raw_metadata(body)?.get()).ok()?;
    let raw = meta.resource_version.get();
    // The raw value borrows from `body`: its offset is the distance between the pointers.
    let start = raw.as_ptr() as usize - body.as_ptr() as usize;
    let quoted = raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"');
    quoted.then(|| start + 1..start + raw.len() - 1)
}

/// The RV written in a stored body.
pub(crate) fn body_rv(body: &str) -> StoreResult<u64> {
    rv_span(body)
        .and_then(|span| body[span].parse().ok())
        .ok_or_else(|| StoreError::backend("stored JSON has no resourceVersion"))
}

/// A stored body with `rv` written in place of its resourceVersion (a delete's final state).
pub(crate) fn with_rv(body: &str, rv: u64) -> StoreResult<String> {
    let span = rv_span(body).ok_or_else(|| StoreError::backend("stored JSON has no resourceVersion"))?;
    Ok(splice_rv(body, span, rv))
}

/// `body` with `rv` in place of the digits at `span`.
fn splice_rv(body: &str, span: Range<usize>, rv: u64) -> String {
    let rv = rv.to_string();
    let mut out = String::with_capacity(body.len() + rv.len());
    out.push_str(&body[..span.start]);
    out.push_str(&rv);
    out.push_str(&body[span.end..]);
    out
}

/// A stored object whose body's resourceVersion has been found, so that its final state at a
/// deletion's RV costs a copy and no scan: both stores scan a batch's 6 KB bodies before the
/// batch reaches SQLite's one writer or PostgreSQL's row locks (in SQLite's writer the scan took
/// 6 % of a profile of a 200k deletecollection).
pub(crate) struct Restampable {
    object: StoredObject,
    /// Where the RV's digits are in `object.body`; found in that body, so always in range.
    span: Range<usize>,
}

impl Restampable {
    /// Finds the RV in `object`'s body; an error if the body has none.
    pub(crate) fn new(object: StoredObject) -> StoreResult<Self> {
        let span =
            rv_span(&object.body).ok_or_else(|| StoreError::backend("stored JSON has no resourceVersion"))?;
        Ok(Self { object, span })
    }

    /// The object as read.
    pub(crate) fn read(&self) -> &StoredObject {
        &self.object
    }

    /// The object with `rv` as its RV, in its body too.
    pub(crate) fn at(&self, rv: u64) -> StoredObject {
        let read = &self.object;
        let body = splice_rv(&read.body, self.span.clone(), rv);
        StoredObject {
            namespace: read.namespace.clone(),
            name: read.name.clone(),
            uid: read.uid.clone(),
            rv,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_metadata_rv_and_nothing_else() {
        let body = r#"{"results":[{"resources":[{"resourceVersion":"7"}]}],"metadata":{"name":"a","resourceVersion":"7","uid":"u"}}"#;
        assert_eq!(body_rv(body).unwrap(), 7);
        assert_eq!(
            with_rv(body, 1234).unwrap(),
            r#"{"results":[{"resources":[{"resourceVersion":"7"}]}],"metadata":{"name":"a","resourceVersion":"1234","uid":"u"}}"#
        );
    }

    #[test]
    fn a_body_without_rv_is_an_error() {
        assert!(body_rv(r#"{"metadata":{"name":"a"}}"#).is_err());
        assert!(with_rv("not json", 1).is_err());
    }
}
