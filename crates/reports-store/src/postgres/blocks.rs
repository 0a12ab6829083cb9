//! Blocks of RVs: a statement that writes a set of objects (combined creates and updates,
//! deletecollection) increments the counter once by the set's size and returns the RV before
//! the block; the set's objects take the block's RVs in order.

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

/// Runs a set statement (prepared once per connection) and returns the RV before its block.
pub(super) async fn take_block<C: GenericClient>(
    client: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let stmt = client.prepare_cached(sql).await?;
    Ok(client.query_one(&stmt, params).await?.get::<_, i64>(0) as u64)
}

/// The RV of the `i`-th object (from 0) of the block taken after `base`.
pub(super) fn block_rv(base: u64, i: usize) -> u64 {
    base + i as u64 + 1
}
