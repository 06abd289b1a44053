//! The way to the workers: publishes execute jobs on JetStream and routes the
//! results, which workers publish on this instance's reply subject, back to
//! the request waiting for each.

use crate::error::ApiError;
use async_nats::jetstream;
use futures::StreamExt;
use schemas::{codec, ErrorCode, Job, JobResult, Language, Subjects};
use std::{
    collections::HashMap,
    future::IntoFuture,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::oneshot;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

type Pending = Arc<Mutex<HashMap<Uuid, oneshot::Sender<JobResult>>>>;

/// Publishes jobs and awaits their results.
#[derive(Clone)]
pub struct Queue {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    reply_subject: String,
    pending: Pending,
}

impl Queue {
    /// Creates the jobs stream if needed and starts routing replies.
    pub async fn start(
        client: async_nats::Client,
        subjects: Subjects,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let js = jetstream::new(client.clone());
        schemas::jetstream::ensure_jobs_stream(&js, &subjects).await?;
        let reply_subject = subjects.replies(&Uuid::new_v4().simple().to_string());
        let mut replies = client.subscribe(reply_subject.clone()).await?;
        client.flush().await?;
        let pending = Pending::default();
        let routes = pending.clone();
        tracker.spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    message = replies.next() => match message { Some(m) => m, None => break },
                };
                match codec::decode::<JobResult>(&message.payload) {
                    Ok(result) => {
                        let waiter = routes.lock().expect("pending lock").remove(&result.job_id);
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(result);
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "undecodable job result"),
                }
            }
        });
        Ok(Self {
            client,
            js,
            subjects,
            reply_subject,
            pending,
        })
    }

    /// Publishes `job` and waits up to `wait` for its result.
    pub async fn execute(&self, mut job: Job, wait: Duration) -> Result<JobResult, ApiError> {
        job.reply_to = Some(self.reply_subject.clone());
        let payload = codec::encode(&job).map_err(ApiError::internal)?;
        let max_payload = self.client.server_info().max_payload;
        if payload.len() > max_payload {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the job is {} bytes; the queue takes at most {max_payload}",
                    payload.len()
                ),
            ));
        }
        let (tx, rx) = oneshot::channel();
        let _waiting = Waiting::register(&self.pending, job.job_id, tx);
        // No Nats-Msg-Id: a synchronous job is published once and never
        // again, so JetStream need not remember its id for deduplication.
        let subject = self.subjects.jobs(job.language);
        let ack = self
            .js
            .publish(subject, payload.into())
            .await
            .map_err(queue_refused)?;
        // The result may come before JetStream's acknowledgement does; a
        // refusal still fails the request.
        let mut ack = std::pin::pin!(ack.into_future());
        let mut acked = false;
        let timeout = tokio::time::sleep(wait);
        let mut timeout = std::pin::pin!(timeout);
        let mut rx = rx;
        loop {
            tokio::select! {
                stored = &mut ack, if !acked => {
                    stored.map_err(queue_refused)?;
                    acked = true;
                }
                result = &mut rx => return match result {
                    Ok(result) => Ok(result),
                    Err(_) => Err(ApiError::unavailable("the service is shutting down", 1)),
                },
                () = &mut timeout => return Err(ApiError::new(
                    ErrorCode::Timeout,
                    format!("no result within {} ms", wait.as_millis()),
                )),
            }
        }
    }

    /// Where the consumer of `language`'s workers stands, if it exists.
    pub async fn consumer_stats(&self, language: Language) -> Option<ConsumerStats> {
        let info = self
            .js
            .get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(
                self.subjects.worker_consumer(language),
                self.subjects.jobs_stream(),
            )
            .await
            .ok()?
            .cached_info()
            .clone();
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        Some(ConsumerStats {
            pending: count(info.num_pending),
            ack_pending: count(info.num_ack_pending as u64),
            redelivered: count(info.num_redelivered as u64),
        })
    }

    /// The NATS connection, for core request/reply (compile requests).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Whether the NATS connection is up.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// Jobs of one language in JetStream.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerStats {
    /// Waiting for a worker.
    pub pending: i64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: i64,
    /// Delivered more than once, not yet acknowledged.
    pub redelivered: i64,
}

fn queue_refused(err: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %err, "job not accepted by JetStream");
    ApiError::unavailable(format!("the job queue did not accept the job: {err}"), 1)
}

/// A registered waiter, removed when the request finishes or is abandoned.
struct Waiting<'a> {
    pending: &'a Pending,
    job_id: Uuid,
}

impl<'a> Waiting<'a> {
    fn register(pending: &'a Pending, job_id: Uuid, tx: oneshot::Sender<JobResult>) -> Self {
        pending.lock().expect("pending lock").insert(job_id, tx);
        Self { pending, job_id }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.pending
            .lock()
            .expect("pending lock")
            .remove(&self.job_id);
    }
}
