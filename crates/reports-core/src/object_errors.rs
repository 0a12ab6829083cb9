//! The [`ApiError`] constructors that name an object of a served kind: 404, 409, 422 and 405,
//! with the `details` (name, group, plural) kube fills in for them.
//!
//! They are inherent constructors of `ApiError` (`ApiError::not_found(kind, name)`), written
//! here so that [`crate::error`] needs nothing from the catalogue.

use crate::{
    catalogue::ResourceKind,
    error::{ApiError, StatusCause, StatusDetails},
};

fn resource_details(kind: &ResourceKind, name: &str) -> StatusDetails {
    StatusDetails {
        name: name.to_string(),
        group: kind.group.clone(),
        kind: kind.plural.clone(),
        ..Default::default()
    }
}

impl ApiError {
    /// 404 NotFound for an object.
    pub fn not_found(kind: &ResourceKind, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", kind.qualified_resource()))
            .with_details(resource_details(kind, name))
    }

    /// 409 AlreadyExists.
    pub fn already_exists(kind: &ResourceKind, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", kind.qualified_resource()))
            .with_details(resource_details(kind, name))
    }

    /// 409 AlreadyExists after every generateName attempt collided.
    pub fn generate_name_conflict(kind: &ResourceKind, name: &str) -> Self {
        let mut details = resource_details(kind, name);
        details.retry_after_seconds = Some(1);
        Self::new(
            409,
            "AlreadyExists",
            format!(
                "{} \"{name}\" already exists, the server was not able to generate a unique name for the object",
                kind.qualified_resource()
            ),
        )
        .with_details(details)
    }

    /// 409 Conflict with a custom explanation after the standard prefix.
    pub fn conflict(kind: &ResourceKind, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} \"{name}\": {why}", kind.qualified_resource()),
        )
        .with_details(resource_details(kind, name))
    }

    /// 409 Conflict for a stale resourceVersion (optimistic lock).
    pub fn stale(kind: &ResourceKind, name: &str) -> Self {
        Self::conflict(
            kind,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422 Invalid for an object, with one cause per field error.
    pub fn invalid(kind: &ResourceKind, name: &str, causes: Vec<StatusCause>) -> Self {
        Self::invalid_qualified(&kind.qualified_kind(), &kind.kind, &kind.group, name, causes)
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(verb: &str, kind: &ResourceKind) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("{verb} is not supported on resources of kind \"{}\"", kind.qualified_resource()),
        )
        .with_details(StatusDetails {
            group: kind.group.clone(),
            kind: kind.plural.clone(),
            ..Default::default()
        })
    }
}
