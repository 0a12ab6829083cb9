//! `ApiError`: the one error type every failure becomes, rendered once at the edge as a
//! `metav1.Status`; no other error shape ever reaches a client.
//!
//! Constructors follow the message templates of k8s.io/apimachinery's `errors` package, so
//! kubectl and client-go print and classify them exactly as they do for a CRD. Text meant for
//! operators (SQL, driver messages) goes into [`ApiError::internal`] and is logged, never sent.
//!
//! This module depends on nothing else in the crate, so every other module can use it. The
//! constructors that name an object of a served kind (404, 409, 422, 405) are in
//! [`crate::object_errors`], beside the catalogue they read.

use serde::Serialize;
use serde_json::Value;

/// One entry of `details.causes`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusCause {
    /// Machine-readable cause, e.g. `FieldValueInvalid`.
    pub reason: String,
    /// Human text.
    pub message: String,
    /// JSON path of the field, e.g. `metadata.name`.
    pub field: String,
}

/// `details` of a Status.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetails {
    /// Object name, when one is involved.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// API group.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Resource plural (Kind for `Invalid`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Object UID (successful deletes).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Field-level causes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
    /// Suggested client back-off, also sent as `Retry-After`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u32>,
}

/// A failed request, ready to be rendered as a Kubernetes `Status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Status `reason`, e.g. `NotFound`; empty for the reason-less 500 kube emits in a few places.
    pub reason: &'static str,
    /// The message the client sees.
    pub message: String,
    /// Status `details`, when there are any.
    pub details: Option<Box<StatusDetails>>,
    /// What went wrong, for the log only (may name SQL, files, drivers).
    pub internal: Option<String>,
    /// The Status's `metadata.continue` (an expired continue token's way on).
    pub continue_token: Option<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)?;
        if let Some(internal) = &self.internal {
            write!(f, " ({internal})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// A bare error with a code, reason and message.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None, internal: None, continue_token: None }
    }

    /// Sets the Status's `metadata.continue`.
    pub fn with_continue(mut self, token: impl Into<String>) -> Self {
        self.continue_token = Some(token.into());
        self
    }

    /// Adds `details`.
    pub fn with_details(mut self, details: StatusDetails) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// Attaches an operator-only explanation that is logged but never sent.
    pub fn with_internal(mut self, internal: impl Into<String>) -> Self {
        self.internal = Some(internal.into());
        self
    }

    /// `retryAfterSeconds` of the details, if any.
    pub fn retry_after(&self) -> Option<u32> {
        self.details.as_ref().and_then(|d| d.retry_after_seconds)
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 for a path that names nothing we serve.
    pub fn path_not_found() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
            .with_details(StatusDetails::default())
    }

    /// 422 Invalid with an explicit qualified kind (some messages use `plural.group`, and list
    /// options use `ListOptions.meta.k8s.io`).
    pub fn invalid_qualified(
        qualified_kind: &str,
        kind: &str,
        group: &str,
        name: &str,
        causes: Vec<StatusCause>,
    ) -> Self {
        let joined = match causes.len() {
            0 => String::new(),
            1 => format!("{}: {}", causes[0].field, causes[0].message),
            _ => format!(
                "[{}]",
                causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect::<Vec<_>>().join(", ")
            ),
        };
        Self::new(422, "Invalid", format!("{qualified_kind} \"{name}\" is invalid: {joined}")).with_details(
            StatusDetails {
                name: name.to_string(),
                group: group.to_string(),
                kind: kind.to_string(),
                causes,
                ..Default::default()
            },
        )
    }

    /// 422 on list/watch options (`ListOptions.meta.k8s.io "" is invalid: ...`).
    pub fn invalid_list_options(cause: StatusCause) -> Self {
        Self::invalid_qualified("ListOptions.meta.k8s.io", "ListOptions", "meta.k8s.io", "", vec![cause])
    }

    /// 406 NotAcceptable.
    pub fn not_acceptable(accepted: &str) -> Self {
        Self::new(406, "NotAcceptable", format!("only the following media types are accepted: {accepted}"))
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(accepted: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {accepted}"
            ),
        )
    }

    /// 413 RequestEntityTooLarge.
    pub fn too_large(limit: usize) -> Self {
        Self::new(413, "RequestEntityTooLarge", format!("Request entity too large: limit is {limit}"))
    }

    /// 410 Expired.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 504 Timeout for a resourceVersion newer than anything committed.
    pub fn too_large_resource_version(requested: u64, current: u64) -> Self {
        Self::new(
            504,
            "Timeout",
            format!("Timeout: Too large resource version: {requested}, current: {current}"),
        )
        .with_details(StatusDetails {
            causes: vec![StatusCause {
                reason: "ResourceVersionTooLarge".into(),
                message: "Too large resource version".into(),
                field: String::new(),
            }],
            retry_after_seconds: Some(1),
            ..Default::default()
        })
    }

    /// 429 TooManyRequests: the server is at its limit of requests in flight; the client retries
    /// after a second, as it would with kube-apiserver's max-in-flight filter.
    pub fn too_many_requests() -> Self {
        Self::new(429, "TooManyRequests", "Too many requests, please try again later.")
            .with_details(StatusDetails { retry_after_seconds: Some(1), ..Default::default() })
    }

    /// 504 Timeout: the request did not finish within the server's request timeout.
    pub fn request_timeout() -> Self {
        Self::new(
            504,
            "Timeout",
            "Timeout: request did not complete within requested timeout - context deadline exceeded",
        )
        .with_details(StatusDetails::default())
    }

    /// 503 ServiceUnavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
            .with_details(StatusDetails { retry_after_seconds: Some(1), ..Default::default() })
    }

    /// 500 InternalError; `internal` is logged, the client sees a generic message.
    pub fn internal(internal: impl Into<String>) -> Self {
        Self::new(500, "InternalError", "Internal error occurred: see the server log for details")
            .with_details(StatusDetails {
                causes: vec![StatusCause {
                    reason: String::new(),
                    message: "internal error".into(),
                    field: String::new(),
                }],
                ..Default::default()
            })
            .with_internal(internal)
    }

    /// The `metav1.Status` body.
    pub fn to_status(&self) -> Value {
        let mut status = serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        });
        if self.reason.is_empty() {
            status.as_object_mut().map(|m| m.remove("reason"));
        }
        if let Some(token) = &self.continue_token {
            status["metadata"]["continue"] = token.as_str().into();
        }
        if let Some(details) = &self.details {
            status["details"] = serde_json::to_value(details).unwrap_or(Value::Null);
        }
        status["code"] = self.code.into();
        status
    }
}

/// Builds a `FieldValueInvalid` cause.
pub fn field_invalid(field: &str, value: &str, detail: &str) -> StatusCause {
    StatusCause {
        reason: "FieldValueInvalid".into(),
        message: format!("Invalid value: \"{value}\": {detail}"),
        field: field.into(),
    }
}

/// Builds a `FieldValueRequired` cause.
pub fn field_required(field: &str, detail: &str) -> StatusCause {
    StatusCause {
        reason: "FieldValueRequired".into(),
        message: if detail.is_empty() {
            "Required value".into()
        } else {
            format!("Required value: {detail}")
        },
        field: field.into(),
    }
}

/// Builds a `FieldValueForbidden` cause.
pub fn field_forbidden(field: &str, detail: &str) -> StatusCause {
    StatusCause {
        reason: "FieldValueForbidden".into(),
        message: format!("Forbidden: {detail}"),
        field: field.into(),
    }
}

/// Builds a `FieldValueNotSupported` cause.
pub fn field_not_supported(field: &str, value: &str, supported: &[&str]) -> StatusCause {
    let list = supported.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    StatusCause {
        reason: "FieldValueNotSupported".into(),
        message: format!("Unsupported value: \"{value}\": supported values: {list}"),
        field: field.into(),
    }
}

impl StatusCause {
    /// Replaces the message (for the few causes whose text differs from the helpers').
    pub fn with_message(mut self, message: &str) -> Self {
        self.message = message.into();
        self
    }
}
