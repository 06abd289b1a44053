//! The sweeper: no accepted job stays `queued` or `running` forever.
//!
//! It looks at open jobs nothing happened to for a while (`SWEEP_AFTER_SECONDS`,
//! plus the job's timeout when it runs). A job whose message is still in the
//! jobs stream is JetStream's to redeliver — unless it has used up its
//! deliveries, then it is dead. A job whose message is gone (never published,
//! lost with the stream, or run by a worker that vanished) is published again.
//! While the events stream holds unrecorded events the sweep waits: a job's
//! result may be among them.

use crate::{dead::DeadLetters, metrics::Metrics, publish};
use async_nats::jetstream::{self, consumer::PullConsumer, stream::LastRawMessageErrorKind};
use schemas::{codec, streams::Definitions, Job, Subjects};
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};
use uuid::Uuid;

/// Most jobs looked at per sweep.
const LIMIT: i64 = 1000;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub republished: usize,
    pub dead: usize,
    pub waiting: usize,
}

/// Finds and revives stuck jobs; drive it with [`Sweeper::sweep_once`].
pub struct Sweeper {
    pub db: PgPool,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub events: PullConsumer,
    pub dead: DeadLetters,
    pub after: Duration,
    pub metrics: Arc<Metrics>,
}

#[derive(sqlx::FromRow)]
struct Open {
    job_id: Uuid,
    published_seq: Option<i64>,
    attempts: i32,
}

impl Sweeper {
    /// One sweep.
    pub async fn sweep_once(&mut self) -> anyhow::Result<Swept> {
        let info = self.events.info().await?;
        if info.num_pending > 0 || info.num_ack_pending > 0 {
            return Ok(Swept::default());
        }
        let open: Vec<Open> = sqlx::query_as(
            "SELECT job_id, published_seq, attempts FROM jobs
             WHERE status IN ('queued', 'running')
               AND updated_at < now() - make_interval(secs => $1
                   + CASE WHEN status = 'running' THEN timeout_ms / 1000.0 ELSE 0 END)
             ORDER BY updated_at LIMIT $2",
        )
        .bind(self.after.as_secs_f64())
        .bind(LIMIT)
        .fetch_all(&self.db)
        .await?;
        if open.is_empty() {
            return Ok(Swept::default());
        }
        let max_deliver = Definitions::shipped().worker_consumer.max_deliver;
        let stream = self.js.get_stream(self.subjects.jobs_stream()).await?;
        let mut swept = Swept::default();
        let (mut lost, mut waiting) = (Vec::new(), Vec::new());
        for job in open {
            let Some(seq) = job.published_seq else {
                lost.push(job.job_id);
                continue;
            };
            match stream.get_raw_message(seq as u64).await {
                Ok(m) if codec::decode::<Job>(&m.payload).is_ok_and(|j| j.job_id == job.job_id) => {
                    if i64::from(job.attempts) >= max_deliver {
                        if self.dead.bury(job.job_id, job.attempts as u32).await? {
                            swept.dead += 1;
                        }
                        stream.delete_message(seq as u64).await?;
                    } else {
                        waiting.push(job.job_id);
                    }
                }
                Ok(_) => lost.push(job.job_id),
                Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => {
                    lost.push(job.job_id)
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !waiting.is_empty() {
            sqlx::query("UPDATE jobs SET updated_at = now() WHERE job_id = ANY($1)")
                .bind(&waiting)
                .execute(&self.db)
                .await?;
        }
        swept.waiting = waiting.len();
        if !lost.is_empty() {
            swept.republished =
                publish::republish(&self.db, &self.js, &self.subjects, &lost).await?;
            self.metrics.republished(swept.republished);
            tracing::info!(
                jobs = swept.republished,
                "republished jobs whose message was gone"
            );
        }
        Ok(swept)
    }
}
