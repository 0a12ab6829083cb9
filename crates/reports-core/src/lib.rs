//! reports-core: everything about the Kubernetes API surface of the report kinds that needs no IO.
//!
//! The resource catalogue derived from the embedded CRDs, label and field selectors, list options
//! and continue tokens, object preparation (system fields, validation, patches), content
//! negotiation, Table rendering, discovery and OpenAPI documents, schema validation and pruning, and [`ApiError`], the one error type that
//! every failure becomes. The store and server crates build on it; nothing here touches a socket,
//! a file or a database.

pub mod catalogue;
pub mod discovery;
pub mod error;
pub mod negotiate;
pub mod object;
pub mod openapi;
pub mod options;
pub mod paging;
pub mod patch;
pub mod request_info;
pub mod selector;
pub mod table;
pub mod time;
pub mod validation;

pub use catalogue::{Catalogue, PrinterColumn, ResourceKind};
pub use error::{ApiError, StatusCause, StatusDetails};
