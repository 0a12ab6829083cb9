//! The error edge and response helpers.
//!
//! Every failure is an [`ApiError`]; it is turned into an HTTP response in exactly one place,
//! [`ErrorResponse::into_response`], as a `metav1.Status` with the contract's headers. The
//! operator-only detail of 5xx errors is logged there and never sent.

use axum::{
    body::Body,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use reports_core::ApiError;
use reports_store::StoreError;

/// An [`ApiError`] on its way out (axum needs a local type to implement `IntoResponse`).
#[derive(Debug)]
pub(crate) struct ErrorResponse(pub ApiError);

impl From<ApiError> for ErrorResponse {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        let error = self.0;
        if error.code >= 500 {
            tracing::warn!(code = error.code, reason = error.reason, internal = ?error.internal, "{}", error.message);
        } else if let Some(internal) = &error.internal {
            tracing::debug!(code = error.code, %internal, "{}", error.message);
        }
        let body = serde_json::to_vec(&error.to_status()).unwrap_or_default();
        let status = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        if let Some(seconds) = error.retry_after().filter(|_| matches!(error.code, 429 | 503 | 504)) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Handler result: a response or an error rendered at the edge.
pub(crate) type ApiResult<T = Response> = Result<T, ErrorResponse>;

/// A complete body with a content type.
pub(crate) fn bytes_response(status: StatusCode, content_type: &str, body: impl Into<Body>) -> Response {
    let mut response = (status, body.into()).into_response();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// A JSON value with `application/json`.
pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    bytes_response(status, "application/json", serde_json::to_vec(value).unwrap_or_default())
}

/// Maps a store failure that has no object-specific meaning (the caller handles NotFound,
/// AlreadyExists and Conflict where they mean something).
pub(crate) fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::Unavailable(detail) => {
            ApiError::unavailable("the storage backend is unavailable, please try again")
                .with_internal(detail.to_string())
        }
        other => ApiError::internal(other.to_string()),
    }
}

/// `response` with `guard` kept alive until its body has been sent, or dropped by a client that
/// went away: streamed lists and watches hold what they count (an in-flight slot, a metric,
/// a connection's activity) for as long as they send, not only until their head is ready.
pub(crate) fn hold_until_sent<G: Send + Sync + Unpin + 'static>(response: Response, guard: G) -> Response {
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, Body::new(GuardedBody { inner: body, guard: Some(guard) }))
}

/// A response body that drops its guard at the end of the stream (or with itself).
struct GuardedBody<G> {
    inner: Body,
    guard: Option<G>,
}

impl<G: Unpin> http_body::Body for GuardedBody<G> {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(None) = polled {
            self.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
