//! Dead letters: jobs JetStream gave up on after `max_deliver` deliveries
//! (workers died or never answered). They become `dead` — visible through the
//! API and re-drivable with `POST /api/v1/jobs/{job_id}/retry` — and their
//! message is removed from the jobs stream.

use crate::{
    metrics::Metrics,
    records::{self, Terminal},
};
use async_nats::jetstream;
use schemas::{codec, Job, JobStatus, Language, Subjects};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

/// The part of JetStream's max-deliveries advisory that matters here.
#[derive(Debug, Deserialize)]
pub struct MaxDeliveries {
    pub stream_seq: u64,
    pub deliveries: u32,
}

/// Marks dead letters `dead`.
#[derive(Clone)]
pub struct DeadLetters {
    pub db: PgPool,
    pub js: jetstream::Context,
    pub client: async_nats::Client,
    pub subjects: Subjects,
    pub metrics: Arc<Metrics>,
}

impl DeadLetters {
    /// The advisory subjects to follow, one per language.
    pub fn advisories(&self) -> Vec<String> {
        Language::ALL
            .iter()
            .map(|&l| self.subjects.max_deliveries_advisory(l))
            .collect()
    }

    /// Handles one advisory: the job at `stream_seq` is dead.
    pub async fn handle_advisory(&self, payload: &[u8]) -> anyhow::Result<()> {
        let advisory: MaxDeliveries = serde_json::from_slice(payload)?;
        let stream = self.js.get_stream(self.subjects.jobs_stream()).await?;
        let message = match stream.get_raw_message(advisory.stream_seq).await {
            Ok(message) => message,
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                ) =>
            {
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let job: Job = codec::decode(&message.payload)?;
        self.bury(job.job_id, advisory.deliveries).await?;
        stream.delete_message(advisory.stream_seq).await?;
        Ok(())
    }

    /// Marks job `id` dead after `deliveries` and publishes its record.
    pub async fn bury(&self, id: Uuid, deliveries: u32) -> anyhow::Result<bool> {
        let end = Terminal {
            job_id: id,
            status: JobStatus::Dead,
            attempt: deliveries,
            worker_id: None,
            result_json: None,
            error: Some(json!({
                "code": "INTERNAL_ERROR",
                "message": format!("no worker completed the job in {deliveries} deliveries"),
                "details": null,
            })),
            logs: None,
            execution_time_ms: None,
        };
        let finished = records::finish(&self.db, &[end]).await?;
        self.metrics.finished(&finished);
        self.metrics.buried(&finished);
        if !finished.is_empty() {
            tracing::warn!(job_id = %id, deliveries, "job is dead");
        }
        records::publish(&self.client, &self.subjects, &finished).await;
        Ok(!finished.is_empty())
    }
}
