//! Cancellation of asynchronous jobs: the API announces a cancelled job id on
//! `<prefix>.cancel` (core NATS). A job already running here is stopped (its
//! instance is killed and replaced); one that arrives later is skipped.

use futures::StreamExt;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a cancelled id is remembered for a job that has not arrived yet.
const REMEMBER: Duration = Duration::from_secs(3600);

enum Entry {
    Running(CancellationToken),
    Cancelled(Instant),
}

/// Running asynchronous jobs and recently cancelled ids; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Cancellations {
    entries: Arc<Mutex<HashMap<Uuid, Entry>>>,
}

impl Cancellations {
    /// Follows `subject` until `shutdown`.
    pub(crate) async fn follow(
        &self,
        client: &async_nats::Client,
        subject: String,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut messages = client.subscribe(subject).await?;
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = shutdown.cancelled() => break,
                    message = messages.next() => match message { Some(m) => m, None => break },
                };
                match std::str::from_utf8(&message.payload).map(str::parse::<Uuid>) {
                    Ok(Ok(id)) => this.cancel(id),
                    _ => tracing::warn!("malformed cancel message ignored"),
                }
            }
        });
        Ok(())
    }

    /// Stops job `id` if it runs here, and skips it if it comes later.
    pub(crate) fn cancel(&self, id: Uuid) {
        let mut entries = self.lock();
        if let Some(Entry::Running(token)) = entries.get(&id) {
            token.cancel();
        }
        let now = Instant::now();
        entries.retain(|_, e| !matches!(e, Entry::Cancelled(at) if now - *at > REMEMBER));
        entries.insert(id, Entry::Cancelled(now));
    }

    /// Registers job `id` as running here; `None` when it was cancelled already.
    pub(crate) fn start(&self, id: Uuid) -> Option<Running> {
        let mut entries = self.lock();
        if matches!(entries.get(&id), Some(Entry::Cancelled(_))) {
            return None;
        }
        let token = CancellationToken::new();
        entries.insert(id, Entry::Running(token.clone()));
        Some(Running {
            owner: self.clone(),
            id,
            token,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A job running here; forgotten when dropped.
pub(crate) struct Running {
    owner: Cancellations,
    id: Uuid,
    token: CancellationToken,
}

impl Running {
    /// Completes when the job is cancelled.
    pub(crate) async fn cancelled(&self) {
        self.token.cancelled().await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut entries = self.owner.lock();
        if matches!(entries.get(&self.id), Some(Entry::Running(_))) {
            entries.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancels_running_jobs_and_skips_later_ones() {
        let cancels = Cancellations::default();
        let id = Uuid::now_v7();
        let running = cancels.start(id).expect("not cancelled yet");
        cancels.cancel(id);
        tokio::time::timeout(Duration::from_secs(1), running.cancelled())
            .await
            .expect("cancelled");
        drop(running);
        assert!(cancels.start(id).is_none(), "a cancelled job is skipped");
        let other = Uuid::now_v7();
        drop(cancels.start(other).expect("runs"));
        assert!(
            cancels.start(other).is_some(),
            "a finished job is forgotten"
        );
    }
}
