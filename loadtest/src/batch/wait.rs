//! Waiting for the batches: their unfinished jobs counted every poll
//! interval until none is left, then every record read back.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Deserialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::Live;
use crate::api::{self, CommonArgs};
use crate::jobs::JobRecord;

/// Records read per `GET /api/v1/jobs` page (the API's maximum).
const PAGE: usize = 1000;

#[derive(Deserialize)]
struct Page {
    total: u64,
    #[serde(default)]
    jobs: Vec<JobRecord>,
}

/// A batch being waited for.
struct Waiting {
    batch_id: Uuid,
    accepted: u64,
    terminal: u64,
}

/// What the polls saw.
pub(super) struct Waited {
    /// When the last batch was answered, if submitting ended before the wait.
    pub(super) submitted_at: Option<Instant>,
    /// Jobs the polls saw terminal.
    pub(super) terminal: u64,
    /// The poll that first saw the last of them.
    pub(super) last_terminal: Instant,
}

/// Polls the batches announced on `batches` until submitting has ended and
/// every accepted job is terminal, or no more jobs finished for `timeout`
/// after submitting ended, or `live.stop`. Keeps `live.accepted` and `live.terminal` current.
pub(super) async fn wait_all(
    client: reqwest::Client,
    common: CommonArgs,
    mut batches: mpsc::UnboundedReceiver<(Uuid, u64)>,
    poll_interval: Duration,
    timeout: Duration,
    live: Arc<Live>,
) -> Waited {
    let mut waiting: Vec<Waiting> = Vec::new();
    let mut submitted_at = None;
    let mut last_terminal = Instant::now();
    let mut ticker = tokio::time::interval(poll_interval);
    loop {
        tokio::select! {
            batch = batches.recv(), if submitted_at.is_none() => match batch {
                Some((batch_id, accepted)) => {
                    live.accepted.fetch_add(accepted, Ordering::Relaxed);
                    waiting.push(Waiting { batch_id, accepted, terminal: 0 });
                }
                None => submitted_at = Some(Instant::now()),
            },
            _ = ticker.tick() => {
                if live.stop.load(Ordering::Relaxed) {
                    break;
                }
                if poll(&client, &common, &mut waiting).await {
                    last_terminal = Instant::now();
                }
                let terminal = waiting.iter().map(|w| w.terminal).sum();
                live.terminal.store(terminal, Ordering::Relaxed);
                if let Some(at) = submitted_at {
                    if terminal == live.accepted.load(Ordering::Relaxed) {
                        break;
                    }
                    if at.max(last_terminal).elapsed() >= timeout {
                        eprintln!("batch: no job finished for {timeout:?}; giving up");
                        break;
                    }
                }
            }
        }
    }
    Waited {
        submitted_at,
        terminal: live.terminal.load(Ordering::Relaxed),
        last_terminal,
    }
}

/// Counts the unfinished jobs of every batch not yet done; returns whether
/// any more jobs were seen terminal. A failed count is reported and retried
/// at the next poll.
async fn poll(client: &reqwest::Client, common: &CommonArgs, waiting: &mut [Waiting]) -> bool {
    let mut progressed = false;
    for w in waiting.iter_mut().filter(|w| w.terminal < w.accepted) {
        // Queued before running: a job moving between the two counts is
        // counted twice (never declared done early), not missed.
        let mut unfinished = 0;
        for status in ["queued", "running"] {
            match count(client, common, w.batch_id, status).await {
                Ok(n) => unfinished += n,
                Err(e) => {
                    eprintln!("batch: counting {status} jobs of {}: {e:#}", w.batch_id);
                    return progressed;
                }
            }
        }
        let terminal = w.accepted.saturating_sub(unfinished);
        if terminal > w.terminal {
            (w.terminal, progressed) = (terminal, true);
        }
    }
    progressed
}

/// How many jobs of `batch_id` are in `status`.
async fn count(
    client: &reqwest::Client,
    common: &CommonArgs,
    batch_id: Uuid,
    status: &str,
) -> anyhow::Result<u64> {
    let url = common.endpoint(&format!(
        "/api/v1/jobs?batch_id={batch_id}&status={status}&per_page=1"
    ));
    let response = client.get(&url).send().await?;
    let page: Page = api::success(response, &url).await?.json().await?;
    Ok(page.total)
}

/// Every record of `batch_id`, by job id.
pub(super) async fn read_records(
    client: &reqwest::Client,
    common: &CommonArgs,
    batch_id: Uuid,
) -> anyhow::Result<HashMap<Uuid, JobRecord>> {
    let mut records = HashMap::new();
    for page in 1.. {
        let url = common.endpoint(&format!(
            "/api/v1/jobs?batch_id={batch_id}&per_page={PAGE}&page={page}"
        ));
        let response = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let body: Page = api::success(response, &url)
            .await?
            .json()
            .await
            .with_context(|| format!("GET {url}: not a page of job records"))?;
        let last = body.jobs.len() < PAGE;
        records.extend(body.jobs.into_iter().map(|r| (r.job_id, r)));
        if last || records.len() as u64 >= body.total {
            break;
        }
    }
    Ok(records)
}
