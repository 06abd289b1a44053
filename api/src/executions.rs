//! Execution counts of sessions, kept off the request path: `execute` records
//! in memory, a background task adds the counts to PostgreSQL in one
//! statement per tick, and keeps them for the next tick when the database is away.
//! Retained sessions' new expiry times travel the same way.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Per session: executions not yet written, and the latest one's time.
type Unwritten = HashMap<Uuid, (i64, DateTime<Utc>)>;

/// Executions recorded but not yet written, per session.
#[derive(Clone, Default)]
pub struct ExecutionCounts {
    unwritten: Arc<Mutex<Unwritten>>,
    /// Retained sessions' expiry times not yet written.
    extended: Arc<Mutex<HashMap<Uuid, DateTime<Utc>>>>,
}

impl ExecutionCounts {
    /// Counts one execution of session `id`.
    pub fn record(&self, id: Uuid, at: DateTime<Utc>) {
        let mut unwritten = self.unwritten.lock().expect("counts lock");
        let entry = unwritten.entry(id).or_insert((0, at));
        entry.0 += 1;
        entry.1 = entry.1.max(at);
    }

    /// What this process counted for `id` that PostgreSQL does not show yet.
    pub fn unwritten(&self, id: Uuid) -> Option<(i64, DateTime<Utc>)> {
        self.unwritten
            .lock()
            .expect("counts lock")
            .get(&id)
            .copied()
    }

    /// Moves the expiry of retained session `id` to `until` (never backwards).
    pub fn extend(&self, id: Uuid, until: DateTime<Utc>) {
        let mut extended = self.extended.lock().expect("expiry lock");
        let entry = extended.entry(id).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// The expiry this process gave `id` that PostgreSQL does not show yet.
    pub fn extended_until(&self, id: Uuid) -> Option<DateTime<Utc>> {
        self.extended.lock().expect("expiry lock").get(&id).copied()
    }

    /// Writes the counts every tick until `shutdown`, then once more.
    pub fn spawn_writer(&self, db: PgPool, tracker: &TaskTracker, shutdown: CancellationToken) {
        let counts = self.clone();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if let Err(err) = counts.write(&db).await {
                    tracing::warn!(error = %err, "execution counts not written; will retry");
                }
            }
            if let Err(err) = counts.write(&db).await {
                tracing::error!(error = %err, "execution counts lost at shutdown");
            }
        });
    }

    /// Adds the unwritten counts to PostgreSQL. They stay counted here until
    /// the update has committed, so a reader never sees fewer than happened.
    pub async fn write(&self, db: &PgPool) -> Result<(), sqlx::Error> {
        self.write_counts(db).await?;
        self.write_expiries(db).await
    }

    async fn write_counts(&self, db: &PgPool) -> Result<(), sqlx::Error> {
        let snapshot: Vec<(Uuid, i64, DateTime<Utc>)> = {
            let unwritten = self.unwritten.lock().expect("counts lock");
            unwritten
                .iter()
                .map(|(id, (n, at))| (*id, *n, *at))
                .collect()
        };
        if snapshot.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = snapshot.iter().map(|s| s.0).collect();
        let counts: Vec<i64> = snapshot.iter().map(|s| s.1).collect();
        let ats: Vec<DateTime<Utc>> = snapshot.iter().map(|s| s.2).collect();
        sqlx::query(
            "UPDATE sessions s
             SET execution_count = s.execution_count + d.n,
                 last_executed_at = GREATEST(s.last_executed_at, d.at)
             FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[]) AS d(id, n, at)
             WHERE s.request_id = d.id",
        )
        .bind(&ids)
        .bind(&counts)
        .bind(&ats)
        .execute(db)
        .await?;
        let mut unwritten = self.unwritten.lock().expect("counts lock");
        for (id, n, _) in snapshot {
            if let Some(entry) = unwritten.get_mut(&id) {
                entry.0 -= n;
                if entry.0 <= 0 {
                    unwritten.remove(&id);
                }
            }
        }
        Ok(())
    }

    /// Moves retained sessions' expiry forward, in one statement; what was
    /// written is forgotten unless a later extension came in meanwhile.
    async fn write_expiries(&self, db: &PgPool) -> Result<(), sqlx::Error> {
        let snapshot: Vec<(Uuid, DateTime<Utc>)> = {
            let extended = self.extended.lock().expect("expiry lock");
            extended.iter().map(|(id, at)| (*id, *at)).collect()
        };
        if snapshot.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = snapshot.iter().map(|s| s.0).collect();
        let untils: Vec<DateTime<Utc>> = snapshot.iter().map(|s| s.1).collect();
        sqlx::query(
            "UPDATE sessions s SET expires_at = GREATEST(s.expires_at, d.until)
             FROM unnest($1::uuid[], $2::timestamptz[]) AS d(id, until)
             WHERE s.request_id = d.id AND s.retain",
        )
        .bind(&ids)
        .bind(&untils)
        .execute(db)
        .await?;
        let mut extended = self.extended.lock().expect("expiry lock");
        for (id, until) in snapshot {
            if extended.get(&id).is_some_and(|now| *now <= until) {
                extended.remove(&id);
            }
        }
        Ok(())
    }
}
