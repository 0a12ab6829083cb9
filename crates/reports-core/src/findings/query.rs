//! What a store is asked about findings and what it answers.
//!
//! Findings are listed in key order, (report namespace, report name, report resource, ordinal),
//! in pages resumed after the last key, like objects. Who may see what is part of the query
//! ([`Visibility`]), not a filter applied to an answer: the server works out from the caller's
//! RBAC which report kinds it may list everywhere and in which namespaces, and the store only
//! reads rows from there (a count is then a count of what the caller may see).

use serde::{Deserialize, Serialize};

use super::{filter::Condition, filter::FindingField, Finding};
use crate::error::ApiError;

/// Where a caller may read findings from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visibility {
    /// Everywhere (no authorization, or a caller who may list every report kind cluster-wide).
    Everything,
    /// Only these report kinds, each everywhere or in some namespaces; kinds not listed are
    /// invisible (an empty list sees nothing).
    Only(Vec<VisibleResource>),
}

/// One report kind a caller may read findings of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibleResource {
    /// The resource plural (storage key).
    pub resource: String,
    /// `None`: every namespace (and, for cluster kinds, the cluster's reports); otherwise only
    /// these namespaces.
    pub namespaces: Option<Vec<String>>,
}

/// The key of a finding, its place in list order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FindingKey {
    /// The report's namespace ("" for the cluster kinds).
    pub namespace: String,
    /// The report's name.
    pub name: String,
    /// The report's resource plural.
    pub resource: String,
    /// The finding's ordinal in its report.
    pub ordinal: u32,
}

/// A findings list.
#[derive(Debug, Clone, PartialEq)]
pub struct FindingQuery {
    /// Only reports in this namespace (a namespaced request); `None` for all.
    pub namespace: Option<String>,
    /// What the caller may see.
    pub visibility: Visibility,
    /// Conditions, all of which must hold.
    pub conditions: Vec<Condition>,
    /// Resume after this key.
    pub after: Option<FindingKey>,
    /// At most this many findings.
    pub limit: Option<u64>,
}

/// One finding as listed: where it comes from and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct FindingRecord {
    /// Its key (report namespace, name, resource, ordinal).
    pub key: FindingKey,
    /// The finding (its `ordinal` equals the key's).
    pub finding: Finding,
}

/// Grouped counts.
#[derive(Debug, Clone, PartialEq)]
pub struct CountQuery {
    /// Only reports in this namespace; `None` for all.
    pub namespace: Option<String>,
    /// What the caller may see.
    pub visibility: Visibility,
    /// Conditions, all of which must hold.
    pub conditions: Vec<Condition>,
    /// The grouping (at least one field).
    pub group_by: Vec<FindingField>,
}

/// The count of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindingCount {
    /// The group's values, in `group_by` order ("" for missing).
    pub key: Vec<String>,
    /// Findings in the group.
    pub total: u64,
    /// Findings per `result` value (pass, fail, warn, error, skip, or whatever was written).
    pub by_result: Vec<(String, u64)>,
}

/// Orders groups as they are served: largest first, then by key.
pub fn sort_counts(counts: &mut [FindingCount]) {
    counts.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.key.cmp(&b.key)));
}

const TOKEN_VERSION: &str = "reports-server/findings/v1";

/// A continue token of a findings list (after a key) or a counts list (after a number of groups).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingsToken {
    v: String,
    /// The RV of the first page.
    pub rv: u64,
    /// The last finding served (findings lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<FindingKey>,
    /// Groups served so far (counts lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

impl FindingsToken {
    /// A token resuming a findings list after `key`.
    pub fn after(rv: u64, key: FindingKey) -> Self {
        Self { v: TOKEN_VERSION.into(), rv, after: Some(key), offset: None }
    }

    /// A token resuming a counts list after `offset` groups.
    pub fn offset(rv: u64, offset: u64) -> Self {
        Self { v: TOKEN_VERSION.into(), rv, after: None, offset: Some(offset) }
    }

    /// The opaque text sent to clients.
    pub fn encode(&self) -> String {
        crate::paging::encode_token(self)
    }

    /// Parses a token from a client: 400 for anything that is not one of ours.
    pub fn decode(text: &str) -> Result<Self, ApiError> {
        let invalid = |why: &str| ApiError::bad_request(format!("invalid continue token: {why}"));
        let token: Self = crate::paging::decode_token(text)?;
        if token.v != TOKEN_VERSION {
            return Err(invalid("unsupported version"));
        }
        if let Some(key) = &token.after {
            if [&key.namespace, &key.name, &key.resource].iter().any(|t| t.contains('\0'))
                || key.name.is_empty()
            {
                return Err(invalid("malformed"));
            }
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_strangers() {
        let key = FindingKey {
            namespace: "ns".into(),
            name: "r".into(),
            resource: "policyreports".into(),
            ordinal: 7,
        };
        let token = FindingsToken::after(42, key.clone());
        assert_eq!(FindingsToken::decode(&token.encode()).unwrap(), token);
        let counts = FindingsToken::offset(42, 500);
        assert_eq!(FindingsToken::decode(&counts.encode()).unwrap().offset, Some(500));
        let objects = crate::paging::ContinueToken::new(1, "ns", "n").encode();
        assert_eq!(FindingsToken::decode(&objects).unwrap_err().code, 400, "an object list's token");
        assert_eq!(FindingsToken::decode("!!").unwrap_err().code, 400);
    }

    #[test]
    fn counts_sort_largest_first_then_by_key() {
        let group = |k: &str, total| FindingCount { key: vec![k.into()], total, by_result: vec![] };
        let mut counts = vec![group("b", 1), group("a", 1), group("c", 5)];
        sort_counts(&mut counts);
        assert_eq!(counts.iter().map(|c| c.key[0].as_str()).collect::<Vec<_>>(), ["c", "a", "b"]);
    }
}
