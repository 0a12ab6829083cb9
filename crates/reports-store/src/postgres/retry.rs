//! Running a write again when it lost a deadlock or serialization race: the one retry rule of
//! every write (combined creates, single creates, and every write transaction).

use super::errors::is_retryable;

/// Attempts of a write that lost a deadlock or serialization race.
const WRITE_ATTEMPTS: usize = 3;

/// Counts the attempts of one write and decides whether it runs again.
#[derive(Default)]
pub(super) struct Retry {
    attempts: usize,
}

impl Retry {
    /// Takes the result of one attempt: `None` when the write lost a race and has attempts left
    /// (run it again), else the result to keep.
    pub fn settle<T>(
        &mut self,
        result: Result<T, tokio_postgres::Error>,
    ) -> Option<Result<T, tokio_postgres::Error>> {
        self.attempts += 1;
        match result {
            Err(e) if is_retryable(&e) && self.attempts < WRITE_ATTEMPTS => None,
            done => Some(done),
        }
    }
}
