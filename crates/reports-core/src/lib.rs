//! reports-core: everything about the Kubernetes API surface of the report kinds that needs no IO.
//!
//! The resource catalogue derived from the embedded CRDs, label and field selectors, list options
//! and continue tokens, object preparation (system fields, validation, patches), deletion and
//! finalizers, watch event rules, content negotiation, Table rendering, discovery and OpenAPI
//! documents, schema validation and pruning, `fieldValidation`, and [`ApiError`], the one error
//! type that every failure becomes. The store and server crates build on it; nothing here
//! touches a socket, a file, a database, a clock or a random number generator: the time, uids
//! and generated-name randomness come from the caller, so everything here is deterministic.
//!
//! [`fuzzing`] drives the parsers of client input with arbitrary bytes, for `fuzz/` and the
//! smoke test in this crate's tests.

pub mod catalogue;
pub mod deletion;
pub mod discovery;
pub mod error;
pub mod field_validation;
pub mod findings;
pub mod fuzzing;
pub mod negotiate;
pub mod object;
pub mod object_errors;
pub mod openapi;
pub mod options;
pub mod paging;
pub mod patch;
pub mod request_info;
pub mod selector;
pub mod table;
pub mod time;
pub mod validation;
pub mod watch;

pub use catalogue::{Catalogue, PrinterColumn, ResourceKind};
pub use error::{ApiError, StatusCause, StatusDetails};
