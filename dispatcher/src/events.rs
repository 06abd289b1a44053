//! Records what workers report about asynchronous jobs.
//!
//! Events are pulled from the durable consumer on `<PREFIX>_EVENTS` in batches
//! and applied with one statement per kind per batch; they are acknowledged
//! only after the batch committed, so a dispatcher that dies (or a database
//! that goes away) loses nothing: the events are delivered again and the
//! status guards make reapplying them harmless.

use crate::{
    metrics::Metrics,
    records::{self, Terminal},
};
use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures::StreamExt;
use schemas::{codec, JobEvent, Subjects};
use sqlx::PgPool;
use std::{collections::HashMap, sync::Arc, time::Duration};
use uuid::Uuid;

/// When events that could not be recorded are delivered again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long past its own expiry a pull may wait for the server's answer.
const PULL_GRACE: Duration = Duration::from_secs(2);

/// Records job events; drive it with [`EventRecorder::process_next`].
pub struct EventRecorder {
    consumer: PullConsumer,
    db: PgPool,
    client: async_nats::Client,
    subjects: Subjects,
    batch: usize,
    metrics: Arc<Metrics>,
}

impl EventRecorder {
    pub fn new(
        consumer: PullConsumer,
        db: PgPool,
        client: async_nats::Client,
        subjects: Subjects,
        batch: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            consumer,
            db,
            client,
            subjects,
            batch: batch.max(1),
            metrics,
        }
    }

    /// Pulls up to one batch of events (waiting at most `wait` for the
    /// first), records them and acknowledges them; returns how many it took.
    /// On a database error the events are given back (redelivered after a
    /// second) and the error is returned.
    pub async fn process_next(&self, wait: Duration) -> anyhow::Result<usize> {
        // Take what is there without waiting; when nothing is, wait for the
        // first event only, then take what came with it.
        let mut batch = self.pull(self.batch, None).await?;
        if batch.is_empty() {
            batch = self.pull(1, Some(wait)).await?;
            if !batch.is_empty() && self.batch > 1 {
                batch.extend(self.pull(self.batch - 1, None).await?);
            }
        }
        if batch.is_empty() {
            return Ok(0);
        }
        let events: Vec<JobEvent> = batch
            .iter()
            .filter_map(|m| match codec::decode::<JobEvent>(&m.payload) {
                Ok(event) => Some(event),
                Err(e) => {
                    tracing::warn!(subject = %m.subject, error = %e, "undecodable job event dropped");
                    None
                }
            })
            .collect();
        if let Err(e) = self.apply(events).await {
            for message in &batch {
                let _ = message.ack_with(AckKind::Nak(Some(RETRY_AFTER))).await;
            }
            return Err(e);
        }
        for message in &batch {
            if let Err(e) = message.ack().await {
                tracing::debug!(error = %e, "acknowledging an event");
            }
        }
        Ok(batch.len())
    }

    /// Up to `max` events: those there now, or (with `wait`) as many as
    /// arrive within it.
    ///
    /// A pull whose answer never comes (the server restarted between the
    /// request and its reply) ends at a deadline with what it got: a `fetch`
    /// has no expiry of its own and would otherwise wait forever.
    async fn pull(
        &self,
        max: usize,
        wait: Option<Duration>,
    ) -> anyhow::Result<Vec<jetstream::Message>> {
        let deadline = tokio::time::Instant::now() + wait.unwrap_or_default() + PULL_GRACE;
        let messages = match wait {
            None => {
                let fetch = self.consumer.fetch().max_messages(max).messages();
                tokio::time::timeout_at(deadline, fetch).await
            }
            Some(wait) => {
                let batch = self.consumer.batch().max_messages(max).expires(wait);
                tokio::time::timeout_at(deadline, batch.messages()).await
            }
        };
        let Ok(messages) = messages else {
            return Ok(Vec::new());
        };
        let mut messages = messages?;
        let mut batch = Vec::new();
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, messages.next()).await {
            batch.push(message.map_err(|e| anyhow::anyhow!(e))?);
        }
        Ok(batch)
    }

    async fn apply(&self, events: Vec<JobEvent>) -> anyhow::Result<()> {
        let mut started: HashMap<Uuid, (u32, String)> = HashMap::new();
        let mut ends = Vec::new();
        for event in events {
            match event.result {
                None => {
                    let entry = started.entry(event.job_id).or_insert((0, String::new()));
                    if event.attempt >= entry.0 {
                        *entry = (event.attempt, event.worker_id);
                    }
                }
                Some(result) => ends.push(Terminal::from_result(
                    result,
                    event.attempt,
                    event.worker_id,
                )),
            }
        }
        // A job whose result is in this batch too skips `running`: its
        // terminal update sets `started_at` from the execution time.
        let mut rerun = Vec::new();
        for end in &ends {
            if let Some((attempt, _)) = started.remove(&end.job_id) {
                if attempt > 1 {
                    rerun.push(end.job_id);
                }
            }
        }
        if !started.is_empty() {
            let (ids, rest): (Vec<Uuid>, Vec<(u32, String)>) = started.into_iter().unzip();
            let (attempts, workers): (Vec<i32>, Vec<String>) =
                rest.into_iter().map(|(a, w)| (a as i32, w)).unzip();
            let applied: Vec<(String, i32)> = sqlx::query_as(
                "UPDATE jobs j SET status = 'running', attempts = GREATEST(j.attempts, t.attempt),
                        started_at = now(), updated_at = now(), worker_id = t.worker
                 FROM unnest($1::uuid[], $2::int[], $3::text[]) AS t(id, attempt, worker)
                 WHERE j.job_id = t.id AND j.status IN ('queued', 'running')
                   AND j.attempts <= t.attempt
                 RETURNING j.language, t.attempt",
            )
            .bind(&ids)
            .bind(&attempts)
            .bind(&workers)
            .fetch_all(&self.db)
            .await?;
            for (language, _) in applied.iter().filter(|(_, attempt)| *attempt > 1) {
                self.metrics.redelivered(language);
            }
        }
        let finished = records::finish_each(&self.db, &ends).await?;
        self.metrics.finished(&finished);
        for f in finished.iter().filter(|f| rerun.contains(&f.job_id)) {
            self.metrics.redelivered_title(&f.language_title);
        }
        records::publish(&self.client, &self.subjects, &finished).await;
        Ok(())
    }
}

/// Creates the events stream and the dispatchers' durable consumer.
pub async fn consumer(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> anyhow::Result<PullConsumer> {
    schemas::jetstream::ensure_events_consumer(js, subjects).await
}
