//! Label and field selectors, parsed and matched exactly as k8s.io/apimachinery does.
//!
//! Label selectors follow the full grammar of `labels.Parse`: requirements joined by `,`, each one
//! of `key`, `!key`, `key=v`, `key==v`, `key!=v`, `key in (a,b)`, `key notin (a,b)`, `key>n` and
//! `key<n`. Two rules surprise people and matter to clients: `!=` and `notin` match objects that
//! lack the key, and `>`/`<` only match label values that parse as 64-bit integers.
//!
//! Field selectors for custom resources only know `metadata.name` and, for namespaced kinds,
//! `metadata.namespace`; anything else is the error kube-apiserver gives for a CRD. Terms are split
//! on unescaped commas and are not trimmed (`metadata.name = x` names an unknown field, as in Go).
//!
//! The store turns the parsed requirements into SQL; [`LabelSelector::matches`] and
//! [`FieldSelector::matches`] are the in-memory twins used for watch events.
//!
//! Label selectors are in `label`, field selectors in `field`; both are re-exported here.

mod field;
mod label;

pub(crate) use field::split_at_operator;
pub use field::{Field, FieldOp, FieldRequirement, FieldSelector};
pub use label::{LabelSelector, Operator, Requirement};

/// Why a selector could not be parsed; the text is the message of the 400 response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);
