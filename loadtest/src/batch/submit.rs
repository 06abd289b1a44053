//! Submitting the batches: `POST /api/v1/jobs/batch`, `--concurrency` at a time.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use schemas::ErrorCode;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{BatchArgs, Live};
use crate::report::{ErrorKind, Recorder};
use crate::script;

/// One batch the API accepted: its id and each accepted job with its expected result.
#[derive(Debug)]
pub(super) struct Submitted {
    pub(super) batch_id: Uuid,
    pub(super) jobs: Vec<(Uuid, u64)>,
}

#[derive(Deserialize)]
struct BatchAnswer {
    batch_id: Uuid,
    jobs: Vec<Handle>,
    #[serde(default)]
    rejected: Vec<Rejected>,
}

#[derive(Deserialize)]
struct Handle {
    index: usize,
    job_id: Uuid,
}

#[derive(Deserialize)]
struct Rejected {
    code: ErrorCode,
}

/// The job numbers of each batch: `jobs` split into runs of `size`.
pub fn plan(jobs: u64, size: u64) -> Vec<Range<u64>> {
    (0..jobs.div_ceil(size))
        .map(|i| i * size..((i + 1) * size).min(jobs))
        .collect()
}

/// Submits every batch until done or stopped, announcing each accepted one
/// (id, job count) on `tx`; returns the failed submissions and the accepted batches.
pub(super) async fn submit_all(
    client: reqwest::Client,
    args: BatchArgs,
    tx: mpsc::UnboundedSender<(Uuid, u64)>,
    live: Arc<Live>,
) -> (Recorder, Vec<Submitted>) {
    let url = args.common.endpoint("/api/v1/jobs/batch");
    let title = args.lang.language_title();
    let mut recorder = Recorder::new();
    let mut accepted = Vec::new();
    let same = args.cache;
    let mut answers = futures::stream::iter(plan(args.jobs, args.batch_size))
        .take_while(|_| std::future::ready(!live.stop.load(Ordering::Relaxed)))
        .map(|range| {
            let (client, url, title) = (&client, &url, &title);
            async move {
                let len = range.end - range.start;
                (len, submit(client, url, title, range, same).await)
            }
        })
        .buffer_unordered(usize::from(args.concurrency));
    while let Some((len, answer)) = answers.next().await {
        match answer {
            Ok((batch, codes)) => {
                live.refused
                    .fetch_add(codes.len() as u64, Ordering::Relaxed);
                for code in codes {
                    recorder.record(Err(ErrorKind::Refused(code)), Duration::ZERO);
                }
                let _ = tx.send((batch.batch_id, batch.jobs.len() as u64));
                accepted.push(batch);
            }
            Err(kind) => {
                eprintln!("batch: a batch of {len} jobs failed: {kind}");
                live.refused.fetch_add(len, Ordering::Relaxed);
                for _ in 0..len {
                    recorder.record(Err(kind), Duration::ZERO);
                }
            }
        }
    }
    (recorder, accepted)
}

/// One `POST /api/v1/jobs/batch` of the jobs numbered `range`; the accepted
/// batch and the codes of the jobs it refused.
async fn submit(
    client: &reqwest::Client,
    url: &str,
    title: &str,
    range: Range<u64>,
    same: bool,
) -> Result<(Submitted, Vec<ErrorCode>), ErrorKind> {
    let (items, expected): (Vec<_>, Vec<_>) = range
        .map(|n| {
            let (params, expected) = script::params(n, same);
            (json!({"language_title": title, "params": params}), expected)
        })
        .unzip();
    let response = client
        .post(url)
        .json(&json!({ "jobs": items }))
        .send()
        .await
        .map_err(|e| ErrorKind::from_reqwest(&e))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        eprintln!("batch: {url} answered {status}: {body}");
        return Err(ErrorKind::Status(status.as_u16()));
    }
    let answer: BatchAnswer = response.json().await.map_err(|_| ErrorKind::BadBody)?;
    let jobs = answer
        .jobs
        .iter()
        .map(|h| Ok((h.job_id, *expected.get(h.index).ok_or(ErrorKind::BadBody)?)))
        .collect::<Result<_, _>>()?;
    let refused = answer.rejected.iter().map(|r| r.code).collect();
    let batch = Submitted {
        batch_id: answer.batch_id,
        jobs,
    };
    Ok((batch, refused))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_split_into_batches_of_the_size_asked() {
        assert_eq!(plan(25, 10), vec![0..10, 10..20, 20..25]);
        assert_eq!(plan(10, 10), vec![0..10]);
        assert_eq!(plan(3, 10_000), vec![0..3]);
        assert_eq!(plan(100_000, 10_000).len(), 10);
        assert_eq!(plan(1, 1), vec![0..1]);
    }
}
