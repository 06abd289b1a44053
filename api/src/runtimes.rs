//! Which languages can be served right now, from the heartbeats workers publish.

use futures::StreamExt;
use schemas::{codec, Language, RuntimeStatus, Subjects, WorkerHeartbeat};
use serde::Serialize;
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Per worker id: when its last heartbeat goes stale, and its pools.
type Workers = HashMap<String, (Instant, Vec<RuntimeStatus>)>;

/// The live workers and their runtime pools.
#[derive(Clone, Default)]
pub struct Runtimes {
    workers: Arc<Mutex<Workers>>,
}

/// A language's pools summed over live workers, as `/health` shows them.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RuntimeSummary {
    pub status: &'static str,
    pub workers: u32,
    pub capacity: u32,
    pub busy: u32,
}

impl Runtimes {
    /// Starts following heartbeats on `subjects.heartbeat()`.
    pub async fn follow(
        client: &async_nats::Client,
        subjects: &Subjects,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let mut beats = client.subscribe(subjects.heartbeat()).await?;
        client.flush().await?;
        let runtimes = Self::default();
        let workers = runtimes.workers.clone();
        tracker.spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    message = beats.next() => match message { Some(m) => m, None => break },
                };
                let Ok(beat) = codec::decode::<WorkerHeartbeat>(&message.payload) else {
                    tracing::warn!("undecodable worker heartbeat");
                    continue;
                };
                let mut workers = workers.lock().expect("runtimes lock");
                if beat.stopping {
                    workers.remove(&beat.worker_id);
                } else {
                    let expires = Instant::now() + Duration::from_millis(beat.ttl_ms);
                    workers.insert(beat.worker_id, (expires, beat.runtimes));
                }
            }
        });
        Ok(runtimes)
    }

    /// Whether some live worker runs `language`.
    pub fn available(&self, language: Language) -> bool {
        let now = Instant::now();
        self.workers
            .lock()
            .expect("runtimes lock")
            .values()
            .any(|(expires, pools)| *expires > now && pools.iter().any(|p| p.language == language))
    }

    /// Every language of the contract with its live capacity.
    pub fn summary(&self) -> BTreeMap<Language, RuntimeSummary> {
        let now = Instant::now();
        let mut summary: BTreeMap<Language, RuntimeSummary> = Language::ALL
            .into_iter()
            .map(|l| {
                (
                    l,
                    RuntimeSummary {
                        status: "unavailable",
                        ..Default::default()
                    },
                )
            })
            .collect();
        let mut workers = self.workers.lock().expect("runtimes lock");
        workers.retain(|_, (expires, _)| *expires > now);
        for (_, pools) in workers.values() {
            for pool in pools {
                let entry = summary.entry(pool.language).or_default();
                entry.status = "ok";
                entry.workers += 1;
                entry.capacity += pool.capacity;
                entry.busy += pool.busy;
            }
        }
        summary
    }
}
