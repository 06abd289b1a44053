//! The dispatcher's long-running loops, each around a one-step function of
//! its module, stopping when the shutdown token fires.

use crate::{
    callbacks::Callbacks, dead::DeadLetters, events::EventRecorder, reaper, submit::Submissions,
    sweeper::Sweeper, Config,
};
use futures::{FutureExt, StreamExt};
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How long one pull for events waits.
const EVENTS_WAIT: Duration = Duration::from_millis(500);
/// Most batches of direct submissions being stored at once: well within the
/// database pool's size, so that none waits out its connection timeout.
const MAX_SUBMISSION_BATCHES: usize = 4;
/// Most direct submissions stored in one statement.
const SUBMISSION_BATCH: usize = 500;
/// Most callbacks being delivered at once.
const MAX_DELIVERIES: usize = 256;

pub(crate) async fn record_events(recorder: EventRecorder, shutdown: CancellationToken) {
    let mut failures = 0u32;
    // A step is never cut short: events it took are recorded and acknowledged
    // (or given back) before the loop stops.
    while !shutdown.is_cancelled() {
        match recorder.process_next(EVENTS_WAIT).await {
            Ok(_) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                let pause = Duration::from_millis(100 << failures.min(5));
                tracing::warn!(error = %e, "recording job events failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

pub(crate) async fn sweep(mut sweeper: Sweeper, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = sweeper.sweep_once().await {
            tracing::warn!(error = %e, "sweep failed; will retry");
        }
    }
}

pub(crate) async fn follow_dead_letters(
    dead: DeadLetters,
    mut messages: async_nats::Subscriber,
    shutdown: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            message = messages.next() => match message { Some(m) => m, None => break },
        };
        if let Err(e) = dead.handle_advisory(&message.payload).await {
            tracing::warn!(error = %e, "max-deliveries advisory not handled; the sweeper will");
        }
    }
}

pub(crate) async fn serve_submissions(
    submissions: Submissions,
    mut messages: async_nats::Subscriber,
    shutdown: CancellationToken,
) {
    let running = TaskTracker::new();
    // Bounded: beyond it, submissions wait in the subscription's buffer
    // instead of piling up on the database pool. What arrived while the
    // batches in hand were stored is handled together, in one statement.
    let permits = Arc::new(Semaphore::new(MAX_SUBMISSION_BATCHES));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("never closed"),
        };
        let first = tokio::select! {
            () = shutdown.cancelled() => break,
            message = messages.next() => match message { Some(m) => m, None => break },
        };
        let mut batch = vec![first];
        while batch.len() < SUBMISSION_BATCH {
            match messages.next().now_or_never() {
                Some(Some(message)) => batch.push(message),
                _ => break,
            }
        }
        let submissions = submissions.clone();
        running.spawn(async move {
            submissions.handle_batch(&batch).await;
            drop(permit);
        });
    }
    running.close();
    running.wait().await;
}

pub(crate) async fn deliver_callbacks(callbacks: Callbacks, shutdown: CancellationToken) {
    let deliveries = TaskTracker::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if deliveries.len() >= MAX_DELIVERIES {
            continue;
        }
        match callbacks.claim_due().await {
            Ok(due) => {
                for due in due {
                    let callbacks = callbacks.clone();
                    let stop = shutdown.clone();
                    // Cut short at shutdown and released, so that another
                    // dispatcher (or this one, restarted) delivers it.
                    deliveries.spawn(async move {
                        let job_id = due.job_id;
                        tokio::select! {
                            () = stop.cancelled() => callbacks.release(job_id).await,
                            _ = callbacks.deliver(due) => {}
                        }
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "claiming callbacks failed; will retry"),
        }
    }
    deliveries.close();
    deliveries.wait().await;
}

pub(crate) async fn reap(db: PgPool, config: Config, shutdown: CancellationToken) {
    let sessions = Duration::from_secs(config.session_retention_seconds);
    let logs = Duration::from_secs(config.request_log_retention_days.saturating_mul(86_400));
    let mut tick = tokio::time::interval(Duration::from_secs(config.reap_interval_seconds.max(1)));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match reaper::reap_once(&db, sessions, logs).await {
            Ok(reaper::Reaped {
                sessions: 0,
                scripts: 0,
                request_logs: 0,
            }) => {}
            Ok(reaped) => tracing::info!(
                sessions = reaped.sessions,
                scripts = reaped.scripts,
                request_logs = reaped.request_logs,
                "removed expired sessions, unused scripts and old request logs"
            ),
            Err(err) => tracing::warn!(error = %err, "clean-up failed; will retry"),
        }
    }
}
