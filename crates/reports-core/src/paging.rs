//! Continue tokens for paginated lists.
//!
//! A list with `limit=n` returns at most n items ordered by the key (namespace, name) and, when
//! more remain, an opaque `continue` token. Every page of one list must report the same
//! `metadata.resourceVersion`, the RV of the first page (the snapshot RV): kube-rs starts its watch
//! from the RV of the *last* page and client-go from the assembled list, so a page reporting a
//! newer RV would make the following watch skip the events in between. The token therefore
//! carries the snapshot RV together with the last key returned.
//!
//! Later pages show the objects as they were at that snapshot, rebuilt from the change log
//! (`reports_store`'s snapshot module), as kube serves every page at the token's revision. Once
//! the change log has been compacted past the snapshot RV the token is expired: the client gets
//! 410 Expired, and, as kube offers, a new token in that Status's `metadata.continue` that goes on
//! from the same key at the newest RV ([`ContinueToken::inconsistent`]; the rest of the list is
//! then not one snapshot with the pages before, which the Status message says). client-go's pager
//! relists in full instead.
//!
//! The token is base64url (no padding) of a small JSON document with a version tag, so the format
//! can change without misreading old tokens.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

const TOKEN_VERSION: &str = "reports-server/v1";

/// The decoded content of a continue token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContinueToken {
    /// Format version; see [`TOKEN_VERSION`].
    v: String,
    /// The snapshot RV of the first page; -1 continues at the newest RV (kube's "inconsistent
    /// continue", offered when the snapshot expired).
    pub rv: i64,
    /// Namespace of the last item returned ("" for cluster-scoped kinds).
    pub ns: String,
    /// Name of the last item returned.
    pub name: String,
}

impl ContinueToken {
    /// A token that resumes after `(ns, name)` for a list whose snapshot RV is `rv`.
    pub fn new(rv: u64, ns: impl Into<String>, name: impl Into<String>) -> Self {
        Self { v: TOKEN_VERSION.into(), rv: rv.min(i64::MAX as u64) as i64, ns: ns.into(), name: name.into() }
    }

    /// A token that resumes after `(ns, name)` at the newest RV, whatever it is then.
    pub fn inconsistent(ns: impl Into<String>, name: impl Into<String>) -> Self {
        Self { v: TOKEN_VERSION.into(), rv: -1, ns: ns.into(), name: name.into() }
    }

    /// The snapshot RV the next page is read at; `None` for the newest.
    pub fn snapshot(&self) -> Option<u64> {
        u64::try_from(self.rv).ok()
    }

    /// The opaque text sent to clients.
    pub fn encode(&self) -> String {
        encode_token(self)
    }

    /// Parses a token received from a client; any defect is a 400 `invalid continue token`.
    pub fn decode(text: &str) -> Result<Self, ApiError> {
        let invalid = |why: &str| ApiError::bad_request(format!("invalid continue token: {why}"));
        let token: ContinueToken = decode_token(text)?;
        if token.v != TOKEN_VERSION {
            return Err(invalid("unsupported version"));
        }
        if token.name.is_empty() {
            return Err(invalid("empty key"));
        }
        if token.rv == 0 || token.rv < -1 {
            return Err(invalid("bad resourceVersion"));
        }
        // No stored key holds a NUL byte, and PostgreSQL cannot even compare with one.
        if token.name.contains('\0') || token.ns.contains('\0') {
            return Err(invalid("malformed"));
        }
        Ok(token)
    }
}

/// A token's text: base64url (no padding) of its JSON.
pub(crate) fn encode_token(token: &impl Serialize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(token).unwrap_or_default())
}

/// Reads a token's text back; anything else is the 400 `invalid continue token`.
pub(crate) fn decode_token<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ApiError> {
    let invalid = |why: &str| ApiError::bad_request(format!("invalid continue token: {why}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| invalid("not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| invalid("malformed"))
}

/// The 410 for a token whose snapshot the change log no longer covers, with kube's words for
/// the inconsistent-continue token the Status carries (the caller puts it in
/// `metadata.continue`).
pub fn expired_token() -> ApiError {
    ApiError::expired(
        "The provided continue parameter is too old to display a consistent list result. \
         You can start a new list without the continue parameter, or use the continue token in \
         this response to retrieve the remainder of the results. Continuing with the provided \
         token results in an inconsistent list - objects that were created, modified, or deleted \
         between the time the first chunk was returned and now may show up in the list.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let token = ContinueToken::new(42, "app", "polr-1");
        assert_eq!(ContinueToken::decode(&token.encode()).unwrap(), token);
        assert_eq!(token.snapshot(), Some(42));
        let newest = ContinueToken::inconsistent("app", "polr-1");
        assert_eq!(ContinueToken::decode(&newest.encode()).unwrap().snapshot(), None);
    }

    #[test]
    fn resource_versions_other_than_positive_or_newest_are_refused() {
        for rv in [0, -2, i64::MIN] {
            let token = ContinueToken { rv, ..ContinueToken::new(1, "a", "b") };
            assert_eq!(ContinueToken::decode(&token.encode()).unwrap_err().code, 400, "{rv}");
        }
    }

    #[test]
    fn rejects_garbage_with_400() {
        for bad in ["", "!!!", "e30", "eyJ2IjoieCIsInJ2IjoxLCJucyI6IiIsIm5hbWUiOiJhIn0"] {
            let err = ContinueToken::decode(bad).unwrap_err();
            assert_eq!(err.code, 400, "{bad}");
            assert!(err.message.starts_with("invalid continue token"), "{}", err.message);
        }
    }

    #[test]
    fn keys_with_nul_bytes_are_refused() {
        for (ns, name) in [("a\0", "b"), ("a", "b\0")] {
            let err = ContinueToken::decode(&ContinueToken::new(1, ns, name).encode()).unwrap_err();
            assert_eq!(err.code, 400);
        }
    }
}
