//! Pulls the jobs of one language from JetStream, runs them on that
//! language's pool and answers them.
//!
//! Backpressure: at most about two jobs per instance are fetched ahead; a
//! fetched job waits for an instance with its ack timer kept alive, and jobs
//! fetched ahead go straight back to JetStream when the worker stops.

use crate::{
    cancel::Cancellations,
    metrics::{Kill, Metrics},
    runtime::{Execution, Invocation, Pool, Reservation},
};
use async_nats::jetstream::{
    self,
    consumer::{pull, PullConsumer},
    AckKind,
};
use futures::StreamExt;
use schemas::{codec, Job, JobResult, Subjects};
use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How long one pull request waits for jobs on the server; also the longest
/// an idle loop takes to notice a shutdown.
const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// Pause before opening the pull stream again after it failed.
const PULL_RETRY: Duration = Duration::from_secs(1);
/// Ack progress this often, well within the consumer's 30 s `ack_wait`.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Redelivery delay of a job this worker could not run, doubled with each
/// delivery up to [`MAX_RETRY_AFTER`].
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(2);
/// The longest delay before a job this worker could not run is tried again.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// An asynchronous job still running after this long is reported started;
/// one that ends sooner reports only its result.
const STARTED_REPORT_AFTER: Duration = Duration::from_millis(100);
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
    /// The acknowledgement of a message delivered for the `delivered`th time:
    /// retries back off exponentially.
    fn ack_kind(self, delivered: i64) -> AckKind {
        match self {
            Self::Ack => AckKind::Ack,
            Self::Retry { after } => {
                let doublings = delivered.saturating_sub(1).clamp(0, 16) as u32;
                let after = after.saturating_mul(1 << doublings).min(MAX_RETRY_AFTER);
                AckKind::Nak(Some(after))
            }
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
    /// The largest message the NATS server takes (its `max_payload`).
    pub(crate) max_payload: usize,
}

/// Pulls until `shutdown`, then waits (bounded) for the jobs it started.
///
/// Pulling and running are decoupled: jobs fetched ahead wait in a small
/// buffer (about two per instance) and a freed instance takes the next one
/// at once, while the next pull is already under way. A new pull goes out
/// when the buffer is half empty, so one pull brings several jobs under
/// load. Jobs in the buffer keep their ack timers alive (progress), and go
/// straight back to JetStream when the worker stops. Each pull ends by
/// itself (expiry, with a client-side deadline behind it), so a server
/// restart never leaves the loop waiting.
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
    let target = (runner.pool.capacity() * 2).max(2);
    let mut buffer: VecDeque<jetstream::Message> = VecDeque::with_capacity(target * 2);
    let mut pulling: Option<pull::Batch> = None;
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !shutdown.is_cancelled() {
        if pulling.is_none() && buffer.len() <= target / 2 {
            let messages = consumer
                .batch()
                .max_messages(target - buffer.len())
                .expires(PULL_EXPIRES)
                .messages()
                .await;
            match messages {
                Ok(messages) => pulling = Some(messages),
                Err(e) => {
                    tracing::warn!(error = %e, "pulling jobs; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(PULL_RETRY) => continue,
                    }
                }
            }
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            reservation = runner.pool.reserve(), if !buffer.is_empty() => match reservation {
                Ok(reservation) => {
                    let message = buffer.pop_front().expect("a buffered job");
                    let runner = Arc::clone(&runner);
                    jobs.spawn(async move { runner.process(message, reservation).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no instance for a job; it goes back");
                    if let Some(message) = buffer.pop_front() {
                        runner.settle(&message, Disposition::Retry { after: RETRY_AFTER }).await;
                    }
                    break;
                }
            },
            next = next_pulled(&mut pulling) => match next {
                Some(Ok(message)) => buffer.push_back(message),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "pulling jobs; pulling again");
                    pulling = None;
                }
                None => pulling = None,
            },
            _ = progress.tick(), if !buffer.is_empty() => {
                for message in &buffer {
                    if let Err(e) = message.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "sending progress");
                    }
                }
            }
        }
    }
    let now = Disposition::Retry {
        after: Duration::ZERO,
    };
    for message in buffer.drain(..) {
        runner.settle(&message, now).await;
    }
    if let Some(mut messages) = pulling {
        give_back_fetched(&mut messages, &runner).await;
    }
    jobs.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, jobs.wait())
        .await
        .is_err()
    {
        tracing::warn!(running = jobs.len(), "jobs still running at shutdown");
    }
}

/// The next message of the pull under way; never ready when none is.
async fn next_pulled(
    pulling: &mut Option<pull::Batch>,
) -> Option<Result<jetstream::Message, Box<dyn std::error::Error + Send + Sync>>> {
    match pulling {
        Some(messages) => messages.next().await,
        None => std::future::pending().await,
    }
}

/// Hands the jobs fetched ahead back to JetStream at once, so that another
/// worker takes them without waiting out their ack timers.
async fn give_back_fetched(messages: &mut pull::Batch, runner: &JobRunner) {
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(20), messages.next()).await
    {
        let now = Disposition::Retry {
            after: Duration::ZERO,
        };
        runner.settle(&message, now).await;
    }
}

async fn settle(message: &jetstream::Message, disposition: Disposition) {
    let delivered = message.info().map(|info| info.delivered).unwrap_or(1);
    if let Err(e) = message.ack_with(disposition.ack_kind(delivered)).await {
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
        self.settle(&message, disposition).await;
    }

    /// Acknowledges `message` as `disposition` says, and counts it.
    async fn settle(&self, message: &jetstream::Message, disposition: Disposition) {
        self.metrics
            .settled(self.pool.language(), disposition.kind());
        settle(message, disposition).await;
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
            Some(running)
        } else {
            None
        };
        // A session's runs share the script's globals; jobs without one
        // share those of their script (of this owner), as the runs of a
        // warm function do.
        let scope = match job.request_id {
            Some(session) => session.to_string(),
            None => format!("script:{}", job.script_hash),
        };
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
                    Some(running) => {
                        // A job that ends quickly reports only its result
                        // (which also records when it started); a longer one
                        // is reported running once it has run a while, and a
                        // redelivered one at once (the dispatcher counts it).
                        tokio::pin!(run);
                        let after = if crate::report::delivery(message) > 1 {
                            Duration::ZERO
                        } else {
                            STARTED_REPORT_AFTER
                        };
                        let report_started = tokio::time::sleep(after);
                        tokio::pin!(report_started);
                        let mut reported = false;
                        loop {
                            tokio::select! {
                                outcome = &mut run => break outcome,
                                () = running.cancelled() => {
                                    self.metrics.killed(self.pool.language(), Kill::Cancelled);
                                    tracing::debug!("cancelled while running; its instance is replaced");
                                    return Disposition::Ack;
                                }
                                () = &mut report_started, if !reported => {
                                    reported = true;
                                    self.report_started(message, job.job_id).await;
                                }
                            }
                        }
                    }
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
        let published = match crate::report::encode_within(&mut result, |r| r, self.max_payload) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn delay(disposition: Disposition, delivered: i64) -> Option<Duration> {
        match disposition.ack_kind(delivered) {
            AckKind::Nak(after) => after,
            other => panic!("not a nak: {other:?}"),
        }
    }

    #[test]
    fn retries_back_off_exponentially_up_to_a_cap() {
        let retry = Disposition::Retry { after: RETRY_AFTER };
        let delays: Vec<_> = (1..=8).map(|n| delay(retry, n).unwrap()).collect();
        assert_eq!(delays[0], RETRY_AFTER);
        assert_eq!(delays[1], RETRY_AFTER * 2);
        assert_eq!(delays[2], RETRY_AFTER * 4);
        assert_eq!(delays[7], MAX_RETRY_AFTER);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        // A job handed back at once (no free instance) stays immediate.
        let now = Disposition::Retry {
            after: Duration::ZERO,
        };
        assert_eq!(delay(now, 4), Some(Duration::ZERO));
    }
}
