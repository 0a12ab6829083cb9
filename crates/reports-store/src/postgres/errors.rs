//! How driver and pool errors become [`StoreError`]s: outages are `Unavailable` (retry later),
//! everything else is `Backend` with the driver's error kept as its cause. No connection string
//! or password ever reaches an error.

use tokio_postgres::error::SqlState;

use crate::error::{Failure, StoreError};

/// A statement or connection error.
pub(super) fn db_error(e: tokio_postgres::Error) -> StoreError {
    if let Some(code) = e.code() {
        let context = format!("SQLSTATE {}", code.code());
        // 08: connection, 53: resources, 57: operator intervention (shutdown, cancel, timeout).
        if matches!(&code.code()[..2], "08" | "53" | "57") {
            return StoreError::Unavailable(Failure::caused_by(context, e));
        }
        return StoreError::Backend(Failure::caused_by(context, e));
    }
    if e.is_closed() || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()) {
        return StoreError::Unavailable(Failure::caused_by("", e));
    }
    StoreError::Backend(Failure::caused_by("", e))
}

/// A failure to get a pooled connection: always an outage, whatever the error says.
pub(super) fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => match db_error(e) {
            StoreError::Backend(failure) => StoreError::Unavailable(failure),
            other => other,
        },
        other => StoreError::Unavailable(Failure::caused_by("no database connection", other)),
    }
}

/// A write that lost a deadlock or serialization race, which running it again may win.
pub(super) fn is_retryable(e: &tokio_postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE)
}

/// True when a connection attempt failed because the server is not there (yet): refused or
/// broken connections, "the database system is starting up". Authentication, TLS verification
/// and unknown databases are configuration errors that waiting does not cure.
pub(super) fn is_unreachable(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return code.code().starts_with("08") || *code == SqlState::CANNOT_CONNECT_NOW;
    }
    let mut source = std::error::Error::source(e);
    let mut io = false;
    while let Some(inner) = source {
        if inner.is::<rustls::Error>() {
            return false;
        }
        if let Some(io_error) = inner.downcast_ref::<std::io::Error>() {
            // tokio-rustls reports handshake failures as I/O errors wrapping the rustls error.
            if io_error.get_ref().is_some_and(|wrapped| wrapped.is::<rustls::Error>()) {
                return false;
            }
            io = true;
        }
        source = inner.source();
    }
    io
}
