//! Pulls the jobs of one language from JetStream, runs them on that
//! language's pool and answers them.
//!
//! Backpressure: a free instance is reserved before a message is pulled, so
//! no job waits in this process while its ack timer runs.

use crate::{
    cancel::Cancellations,
    metrics::{Kill, Metrics},
    runtime::{Execution, Invocation, Pool, Reservation, RuntimeError},
};
use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures::StreamExt;
use schemas::{codec, Job, JobResult, Subjects};
use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Most jobs pulled in one request.
const MAX_BATCH: usize = 8;
/// How long one pull request waits for jobs; also the longest delay before
/// a cancelled loop notices.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// Ack progress this often, well within the consumer's 30 s `ack_wait`.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Redelivery delay of a job this worker could not run.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(2);
/// How long in-flight jobs may take to finish on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What becomes of a job message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Answered, or nobody waits for it any more: remove it.
    Ack,
    /// Not run because of this worker's trouble: deliver it again later.
    Retry { after: Duration },
    /// Can never be run (undecodable): drop it without retries.
    Term,
}

impl Disposition {
    fn ack_kind(self) -> AckKind {
        match self {
            Self::Ack => AckKind::Ack,
            Self::Retry { after } => AckKind::Nak(Some(after)),
            Self::Term => AckKind::Term,
        }
    }

    /// The kind of acknowledgement, as a metrics label.
    fn kind(self) -> &'static str {
        match self {
            Self::Ack => "ack",
            Self::Retry { .. } => "nak",
            Self::Term => "term",
        }
    }
}

/// Runs jobs of one language and answers them.
pub(crate) struct JobRunner {
    pub(crate) pool: Pool,
    pub(crate) client: async_nats::Client,
    pub(crate) worker_id: Arc<str>,
    /// Timeout of a job that sets none.
    pub(crate) default_timeout: Duration,
    pub(crate) subjects: Subjects,
    /// Asynchronous jobs running here, and those cancelled before they came.
    pub(crate) cancels: Cancellations,
    pub(crate) metrics: Arc<Metrics>,
}

/// Pulls until `shutdown`, then waits (bounded) for the jobs it started.
pub(crate) async fn run(consumer: PullConsumer, runner: JobRunner, shutdown: CancellationToken) {
    let followed = runner
        .cancels
        .follow(&runner.client, runner.subjects.cancel(), shutdown.clone())
        .await;
    if let Err(e) = followed {
        tracing::warn!(error = %e, "not following job cancellations");
    }
    let runner = Arc::new(runner);
    let jobs = TaskTracker::new();
    loop {
        let reserved = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            reserved = reserve_batch(&runner.pool) => reserved,
        };
        let Ok(reserved) = reserved else { break };
        let batch = consumer
            .batch()
            .max_messages(reserved.len())
            .expires(PULL_WAIT)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "pulling jobs; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(PULL_WAIT) => continue,
                }
            }
        };
        let mut reserved = reserved.into_iter();
        while let Some(message) = batch.next().await {
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(error = %e, "receiving jobs");
                    break;
                }
            };
            match reserved.next() {
                Some(reservation) => {
                    let runner = Arc::clone(&runner);
                    jobs.spawn(async move { runner.process(message, reservation).await });
                }
                None => {
                    let disposition = Disposition::Retry {
                        after: Duration::ZERO,
                    };
                    runner.settled(disposition);
                    settle(&message, disposition).await
                }
            }
        }
    }
    jobs.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, jobs.wait())
        .await
        .is_err()
    {
        tracing::warn!(running = jobs.len(), "jobs still running at shutdown");
    }
}

/// Waits for one free instance, then takes up to [`MAX_BATCH`] that are free.
async fn reserve_batch(pool: &Pool) -> Result<Vec<Reservation>, RuntimeError> {
    let mut reserved = vec![pool.reserve().await?];
    while reserved.len() < MAX_BATCH {
        match pool.try_reserve() {
            Some(reservation) => reserved.push(reservation),
            None => break,
        }
    }
    Ok(reserved)
}

async fn settle(message: &jetstream::Message, disposition: Disposition) {
    if let Err(e) = message.ack_with(disposition.ack_kind()).await {
        tracing::warn!(error = %e, ?disposition, "acknowledging a job");
    }
}

impl JobRunner {
    async fn process(&self, message: jetstream::Message, reservation: Reservation) {
        let disposition = match codec::decode::<Job>(&message.payload) {
            Ok(job) => self.run_job(&message, job, reservation).await,
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "undecodable job dropped");
                Disposition::Term
            }
        };
        self.settled(disposition);
        settle(&message, disposition).await;
    }

    fn settled(&self, disposition: Disposition) {
        self.metrics
            .settled(self.pool.language(), disposition.kind());
    }

    #[tracing::instrument(skip_all, fields(job_id = %job.job_id))]
    async fn run_job(
        &self,
        message: &jetstream::Message,
        job: Job,
        reservation: Reservation,
    ) -> Disposition {
        let mut timeout = match job.timeout_ms {
            0 => self.default_timeout,
            ms => Duration::from_millis(ms),
        };
        if job.deadline_ms != 0 {
            let Some(left) = job.deadline_ms.checked_sub(unix_ms()) else {
                tracing::debug!("deadline passed before the job started; dropped");
                return Disposition::Ack;
            };
            timeout = timeout.min(Duration::from_millis(left));
        }
        let running = if job.report_events {
            let Some(running) = self.cancels.start(job.job_id) else {
                tracing::debug!("cancelled before it started; skipped");
                return Disposition::Ack;
            };
            self.report_started(message, job.job_id).await;
            Some(running)
        } else {
            None
        };
        // A session's runs share the script's globals; a job without one
        // gets globals of its own.
        let scope = job.request_id.unwrap_or(job.job_id).to_string();
        let invocation = Invocation::new(
            self.pool.language(),
            job.script,
            job.params_json,
            job.context_json,
            timeout,
        )
        .map(|invocation| {
            invocation
                .for_owner(job.owner, scope)
                .with_memory_mb(job.memory_mb)
        });
        let mut result = match invocation {
            Err(error) => JobResult::failure(job.job_id, error, 0.0, Vec::new()),
            Ok(invocation) => {
                let run = with_progress(message, reservation.execute(&invocation));
                let outcome = match &running {
                    None => run.await,
                    Some(running) => tokio::select! {
                        outcome = run => outcome,
                        () = running.cancelled() => {
                            self.metrics.killed(self.pool.language(), Kill::Cancelled);
                            tracing::debug!("cancelled while running; its instance is replaced");
                            return Disposition::Ack;
                        }
                    },
                };
                match outcome {
                    Ok(execution) => {
                        self.metrics.executed(self.pool.language(), &execution);
                        job_result(job.job_id, execution)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "job not run; it will be retried");
                        return Disposition::Retry { after: RETRY_AFTER };
                    }
                }
            }
        };
        result.worker_id = self.worker_id.to_string();
        if job.report_events {
            return self.report_finished(message, result).await;
        }
        let Some(reply_to) = job.reply_to else {
            return Disposition::Ack;
        };
        let published = match codec::encode(&result) {
            Ok(payload) => self.client.publish(reply_to, payload.into()).await,
            Err(e) => {
                tracing::error!(error = %e, "encoding a result");
                return Disposition::Ack;
            }
        };
        match published {
            Ok(()) => Disposition::Ack,
            Err(e) => {
                tracing::warn!(error = %e, "publishing a result; the job will be retried");
                Disposition::Retry { after: RETRY_AFTER }
            }
        }
    }
}

/// Awaits `run`, telling JetStream every [`PROGRESS_EVERY`] that the job is
/// still being worked on.
async fn with_progress<T>(
    message: &jetstream::Message,
    run: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(run);
    let start = tokio::time::Instant::now() + PROGRESS_EVERY;
    let mut progress = tokio::time::interval_at(start, PROGRESS_EVERY);
    loop {
        tokio::select! {
            output = &mut run => return output,
            _ = progress.tick() => {
                if let Err(e) = message.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %e, "sending progress");
                }
            }
        }
    }
}

fn job_result(job_id: uuid::Uuid, execution: Execution) -> JobResult {
    let ms = execution.elapsed.as_secs_f64() * 1000.0;
    match execution.outcome {
        Ok(result_json) => JobResult::success(job_id, result_json, ms, execution.logs),
        Err(error) => JobResult::failure(job_id, error, ms, execution.logs),
    }
}

fn unix_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}
