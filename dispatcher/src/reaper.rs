//! Removal of sessions long expired.

use sqlx::PgPool;
use std::time::Duration;

/// Rows removed per statement, so that a large backlog never holds long locks.
const BATCH: i64 = 1000;

/// Deletes sessions (not retained) that expired more than `retention` ago;
/// returns how many.
pub async fn reap_expired_sessions(db: &PgPool, retention: Duration) -> sqlx::Result<u64> {
    let retention_secs = retention.as_secs_f64();
    let mut total = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM sessions WHERE request_id IN (
                 SELECT request_id FROM sessions
                 WHERE NOT retain AND expires_at < now() - make_interval(secs => $1)
                 LIMIT $2)",
        )
        .bind(retention_secs)
        .bind(BATCH)
        .execute(db)
        .await?
        .rows_affected();
        total += deleted;
        if deleted < BATCH as u64 {
            return Ok(total);
        }
    }
}
