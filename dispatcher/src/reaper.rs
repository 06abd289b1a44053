//! Periodic clean-up: sessions long expired, the scripts nothing refers to
//! any more, and request logs past their retention.

use sqlx::PgPool;
use std::time::Duration;

/// Rows removed per statement, so that a large backlog never holds long locks.
const BATCH: i64 = 1000;

/// What one round removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub sessions: u64,
    pub scripts: u64,
    pub request_logs: u64,
}

/// One round of clean-up: sessions expired more than `session_retention`
/// ago, then unreferenced scripts, then request logs older than `log_retention`.
pub async fn reap_once(
    db: &PgPool,
    session_retention: Duration,
    log_retention: Duration,
) -> sqlx::Result<Reaped> {
    Ok(Reaped {
        sessions: reap_expired_sessions(db, session_retention).await?,
        scripts: reap_unreferenced_scripts(db).await?,
        request_logs: reap_request_logs(db, log_retention).await?,
    })
}

/// Deletes sessions that expired more than `retention` ago (retained ones
/// too: their expiry moves with each execute, so theirs passed only when they
/// were left unused); returns how many.
pub async fn reap_expired_sessions(db: &PgPool, retention: Duration) -> sqlx::Result<u64> {
    delete_in_batches(
        db,
        "DELETE FROM sessions WHERE request_id IN (
             SELECT request_id FROM sessions
             WHERE expires_at < now() - make_interval(secs => $1)
             LIMIT $2)",
        Some(retention),
    )
    .await
}

/// Deletes scripts no session, function or job refers to; returns how many.
/// A script is stored in the transaction that stores what refers to it, and
/// storing it again locks it, so a script is never seen unreferenced while
/// it is being used; should one gain a reference anyway, its foreign keys
/// refuse the deletion and the round is tried again.
pub async fn reap_unreferenced_scripts(db: &PgPool) -> sqlx::Result<u64> {
    delete_in_batches(
        db,
        "DELETE FROM scripts WHERE hash IN (
             SELECT sc.hash FROM scripts sc
             WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.script_hash = sc.hash)
               AND NOT EXISTS (SELECT 1 FROM functions f WHERE f.script_hash = sc.hash)
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.script_hash = sc.hash)
             LIMIT $1)",
        None,
    )
    .await
}

/// Deletes request logs (and their error logs) older than `retention`;
/// returns how many request logs.
pub async fn reap_request_logs(db: &PgPool, retention: Duration) -> sqlx::Result<u64> {
    let removed = delete_in_batches(
        db,
        "DELETE FROM request_logs WHERE id IN (
             SELECT id FROM request_logs
             WHERE created_at < now() - make_interval(secs => $1)
             LIMIT $2)",
        Some(retention),
    )
    .await?;
    delete_in_batches(
        db,
        "DELETE FROM error_logs WHERE id IN (
             SELECT id FROM error_logs
             WHERE created_at < now() - make_interval(secs => $1)
             LIMIT $2)",
        Some(retention),
    )
    .await?;
    Ok(removed)
}

/// Runs `sql` until it removes less than a batch. Its parameters: the age
/// in seconds (when given) and the batch size.
async fn delete_in_batches(db: &PgPool, sql: &str, age: Option<Duration>) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let mut query = sqlx::query(sql);
        if let Some(age) = age {
            query = query.bind(age.as_secs_f64());
        }
        let deleted = query.bind(BATCH).execute(db).await?.rows_affected();
        total += deleted;
        if deleted < BATCH as u64 {
            return Ok(total);
        }
    }
}
