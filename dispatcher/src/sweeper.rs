//! The sweeper: no accepted job stays `queued` or `running` forever.
//!
//! It looks at open jobs nothing happened to for a while (`SWEEP_AFTER_SECONDS`,
//! plus the job's timeout when it runs). A job whose message is still in the
//! jobs stream is JetStream's to redeliver — unless it has used up its
//! deliveries, then it is dead. A job whose message is gone (never published,
//! lost with the stream, or run by a worker that vanished) is published again.
//! While the events stream holds unrecorded events the sweep waits, for at
//! most `SWEEP_AFTER_SECONDS`: a job's result may be among them. A system that
//! is never idle still gets swept; a job republished while its result was on
//! its way runs twice at worst, and only one result is committed.

use crate::{dead::DeadLetters, metrics::Metrics, publish};
use async_nats::jetstream::{
    self, consumer::PullConsumer, context::ConsumerInfoErrorKind, stream::LastRawMessageErrorKind,
};
use schemas::{codec, streams::Definitions, Job, Language, Subjects};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
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
    /// Since when sweeps have waited for the events consumer to catch up.
    pub deferred_since: Option<std::time::Instant>,
}

#[derive(sqlx::FromRow)]
struct Open {
    job_id: Uuid,
    published_seq: Option<i64>,
    attempts: i32,
    language: String,
}

impl Sweeper {
    /// One sweep.
    pub async fn sweep_once(&mut self) -> anyhow::Result<Swept> {
        let info = self.events.info().await?;
        if info.num_pending > 0 || info.num_ack_pending > 0 {
            let since = *self
                .deferred_since
                .get_or_insert_with(std::time::Instant::now);
            if since.elapsed() < self.after {
                return Ok(Swept::default());
            }
            tracing::debug!("events keep coming; sweeping without waiting for them");
        }
        self.deferred_since = None;
        let open: Vec<Open> = sqlx::query_as(
            "SELECT job_id, published_seq, attempts, language FROM jobs
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
        let mut stream = self.js.get_stream(self.subjects.jobs_stream()).await?;
        let last_seq = stream.info().await?.state.last_sequence;
        // Per language, the highest stream sequence its workers were given:
        // a job above it is in the backlog, waiting its turn.
        let mut delivered: HashMap<String, u64> = HashMap::new();
        let mut swept = Swept::default();
        let (mut lost, mut waiting) = (Vec::new(), Vec::new());
        for job in open {
            let Some(seq) = job.published_seq else {
                lost.push(job.job_id);
                continue;
            };
            if seq as u64 > last_seq {
                // The stream was created again since: its message is gone.
                lost.push(job.job_id);
                continue;
            }
            let floor = match delivered.get(&job.language) {
                Some(floor) => *floor,
                None => {
                    let floor = self.delivered_up_to(&stream, &job.language).await?;
                    delivered.insert(job.language.clone(), floor);
                    floor
                }
            };
            if seq as u64 > floor && i64::from(job.attempts) < max_deliver {
                waiting.push(job.job_id);
                continue;
            }
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

    /// The highest stream sequence the workers of `language` have been given.
    async fn delivered_up_to(
        &self,
        stream: &jetstream::stream::Stream,
        language: &str,
    ) -> anyhow::Result<u64> {
        let Ok(language) = language.parse::<Language>() else {
            return Ok(u64::MAX);
        };
        let name = self.subjects.worker_consumer(language);
        match stream.consumer_info(&name).await {
            Ok(info) => Ok(info.delivered.stream_sequence),
            // No worker ever served it: everything is still waiting.
            Err(e) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}
