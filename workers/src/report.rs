//! What a worker reports about asynchronous jobs (`report_events`): a
//! `started` event, best effort and only for a job that runs a while or was
//! delivered again, and the result, stored on the events stream
//! (`<prefix>.events.<language>`) before the job is acknowledged, so that a
//! result is never lost between the worker and the dispatcher.
//!
//! Every reply and result event is made to fit NATS's `max_payload` before it
//! is published ([`encode_within`]): a message the server refuses would only
//! fail, be retried and run the script again.

use crate::consumer::{Disposition, JobRunner, RETRY_AFTER};
use async_nats::jetstream;
use schemas::{codec, codec::CodecError, ErrorCode, JobError, JobEvent, JobResult};
use serde::Serialize;

/// Encodes `message`, which holds `result`, within `max_bytes`: when it is
/// larger, the logs give way first (replaced by a note), then the result
/// (replaced by a `RUNTIME_ERROR` saying how large it was).
pub(crate) fn encode_within<T: Serialize>(
    message: &mut T,
    result: fn(&mut T) -> &mut JobResult,
    max_bytes: usize,
) -> Result<Vec<u8>, CodecError> {
    let payload = codec::encode(message)?;
    if payload.len() <= max_bytes {
        return Ok(payload);
    }
    let size = payload.len();
    let job = result(message);
    if !job.logs.is_empty() {
        job.logs = vec![format!(
            "[logs dropped: with them the answer was {size} bytes, more than the {max_bytes} \
             a NATS message may carry]"
        )];
        let payload = codec::encode(message)?;
        if payload.len() <= max_bytes {
            return Ok(payload);
        }
    }
    let job = result(message);
    if job.result_json.take().is_some() {
        tracing::info!(job_id = %job.job_id, size, max_bytes, "result too large for NATS");
        job.error = Some(JobError::new(
            ErrorCode::RuntimeError,
            format!(
                "result too large: the answer is {size} bytes, more than the {max_bytes} \
                 a NATS message may carry"
            ),
        ));
    } else if let Some(error) = &mut job.error {
        // An error whose details are that large: keep its code and message.
        error.details_json = None;
        let mut end = error.message.len().min(4096);
        while !error.message.is_char_boundary(end) {
            end -= 1;
        }
        error.message.truncate(end);
    }
    codec::encode(message)
}

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
        let mut event = JobEvent {
            job_id: result.job_id,
            attempt: delivery(message),
            worker_id: self.worker_id.to_string(),
            result: Some(result),
        };
        let fitting: fn(&mut JobEvent) -> &mut JobResult =
            |event| event.result.as_mut().expect("set above");
        let payload = match encode_within(&mut event, fitting, self.max_payload) {
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
