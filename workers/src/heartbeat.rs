//! Tells the API, every few seconds, which runtimes this worker serves and
//! how busy they are.

use crate::app::AppHandle;
use schemas::{codec, WorkerHeartbeat};
use std::time::Duration;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Publishes heartbeats on `subject` every `interval`, the first one at once,
/// until `stop` is cancelled.
pub(crate) async fn run(
    client: async_nats::Client,
    subject: String,
    handle: AppHandle,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => publish(&client, &subject, &handle, interval, false).await,
        }
    }
}

/// Publishes one heartbeat; `stopping` marks the last one.
pub(crate) async fn publish(
    client: &async_nats::Client,
    subject: &str,
    handle: &AppHandle,
    interval: Duration,
    stopping: bool,
) {
    let heartbeat = WorkerHeartbeat {
        worker_id: handle.worker_id().to_owned(),
        runtimes: handle.runtime_status(),
        ttl_ms: u64::try_from(interval.as_millis() * 3).unwrap_or(u64::MAX),
        stopping,
    };
    let published = match codec::encode(&heartbeat) {
        Ok(payload) => client
            .publish(subject.to_owned(), payload.into())
            .await
            .map_err(anyhow::Error::from),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = published {
        tracing::warn!(error = %e, "publishing a heartbeat");
    }
}
