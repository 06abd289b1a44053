//! What a worker reports about asynchronous jobs (`report_events`): a
//! `started` event, best effort and only for a job that runs a while or was
//! delivered again, and the result, stored on the events stream
//! (`<prefix>.events.<language>`) before the job is acknowledged, so that a
//! result is never lost between the worker and the dispatcher.

use crate::consumer::{Disposition, JobRunner, RETRY_AFTER};
use async_nats::jetstream;
use schemas::{codec, JobEvent, JobResult};

impl JobRunner {
    /// Tells the dispatcher an asynchronous job started; best effort, since
    /// the result alone also completes the job.
    pub(crate) async fn report_started(&self, message: &jetstream::Message, job_id: uuid::Uuid) {
        let event = JobEvent {
            job_id,
            attempt: delivery(message),
            worker_id: self.worker_id.to_string(),
            result: None,
        };
        let published = match codec::encode(&event) {
            Ok(payload) => jetstream::new(self.client.clone())
                .publish(self.subjects.events(self.pool.language()), payload.into())
                .await
                .map(drop),
            Err(e) => return tracing::error!(error = %e, "encoding a started event"),
        };
        if let Err(e) = published {
            tracing::debug!(error = %e, "started event not sent");
        }
    }

    /// Stores an asynchronous job's result on the events stream; the job is
    /// acknowledged only once JetStream has it, so a result is never lost.
    pub(crate) async fn report_finished(
        &self,
        message: &jetstream::Message,
        result: JobResult,
    ) -> Disposition {
        let event = JobEvent {
            job_id: result.job_id,
            attempt: delivery(message),
            worker_id: self.worker_id.to_string(),
            result: Some(result),
        };
        let payload = match codec::encode(&event) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::error!(error = %e, "encoding a result");
                return Disposition::Term;
            }
        };
        let js = jetstream::new(self.client.clone());
        let subject = self.subjects.events(self.pool.language());
        let stored = match js.publish(subject, payload.into()).await {
            Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match stored {
            Ok(()) => Disposition::Ack,
            Err(e) => {
                tracing::warn!(error = %e, "storing a result; the job will be retried");
                Disposition::Retry { after: RETRY_AFTER }
            }
        }
    }
}

/// JetStream's delivery count of `message` (1 on the first delivery).
pub(crate) fn delivery(message: &jetstream::Message) -> u32 {
    message
        .info()
        .map(|info| u32::try_from(info.delivered).unwrap_or(u32::MAX))
        .unwrap_or(1)
}
