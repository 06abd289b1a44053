//! The `batch` flow: `--jobs` jobs submitted with `POST /api/v1/jobs/batch` in
//! batches of `--batch-size`, their unfinished jobs counted with
//! `GET /api/v1/jobs?batch_id=&status=` until none is left, then every
//! record read back for its outcome and its latency (`finished_at - created_at`).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use schemas::ErrorCode;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::api::{self, CommonArgs};
use crate::duration::parse_duration;
use crate::jobs::{self, JobRecord, JobsRun, JobsSummary, RateMeter};
use crate::report::{ErrorKind, Recorder};
use crate::script::{self, Lang};

/// The most jobs the API takes in one batch.
pub const MAX_BATCH: u64 = 10_000;

/// Records read per `GET /api/v1/jobs` page (the API's maximum).
const PAGE: usize = 1000;

/// Options of `loadtest batch`.
#[derive(Debug, Clone, clap::Args)]
pub struct BatchArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Runtime to load; its script returns `params.a + params.b`.
    #[arg(long, env = "LOADTEST_LANG", value_enum, default_value_t = Lang::Nodejs)]
    pub lang: Lang,
    /// Jobs to submit in all.
    #[arg(long, env = "LOADTEST_JOBS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs: u64,
    /// Jobs per `POST /api/v1/jobs/batch` (at most 10,000).
    #[arg(long, env = "LOADTEST_BATCH_SIZE", default_value_t = MAX_BATCH,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BATCH))]
    pub batch_size: u64,
    /// Batch requests in flight at once.
    #[arg(long, env = "LOADTEST_CONCURRENCY", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Give every job the same params (the async path runs each job regardless).
    #[arg(long, alias = "same-params", env = "LOADTEST_CACHE")]
    pub cache: bool,
    /// How often to count the batches' unfinished jobs.
    #[arg(long, env = "LOADTEST_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// How long to wait for the last job once every batch is submitted.
    #[arg(long, env = "LOADTEST_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// The job numbers of each batch: `jobs` split into runs of `size`.
pub fn plan(jobs: u64, size: u64) -> Vec<Range<u64>> {
    (0..jobs.div_ceil(size))
        .map(|i| i * size..((i + 1) * size).min(jobs))
        .collect()
}

/// One batch the API accepted: its id and each accepted job with its expected result.
#[derive(Debug)]
struct Submitted {
    batch_id: Uuid,
    jobs: Vec<(Uuid, u64)>,
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

/// Submits, waits, reads the records back; prints the summary (and writes
/// `--json`) before returning it.
pub async fn run(args: BatchArgs) -> anyhow::Result<JobsSummary> {
    let client = args.common.client(usize::from(args.concurrency) + 1)?;
    api::register(&client, &args.common, args.lang).await?;
    eprintln!("function {} registered", args.lang.language_title());

    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let started_wall = Utc::now();
    let submitter = tokio::spawn(submit_all(
        client.clone(),
        args.clone(),
        tx,
        stop.clone(),
        refused.clone(),
    ));

    let mut waiting: Vec<Waiting> = Vec::new();
    let (mut submitting, mut submitted_at) = (true, started);
    let mut last_terminal = started;
    let (mut meter, mut printed) = (RateMeter::new(), started);
    let mut ticker = tokio::time::interval(args.poll_interval);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let interrupted = loop {
        tokio::select! {
            batch = rx.recv(), if submitting => match batch {
                Some(w) => waiting.push(w),
                None => (submitting, submitted_at) = (false, Instant::now()),
            },
            _ = &mut ctrl_c => {
                eprintln!("batch: interrupted; reading the records of what was submitted");
                break true;
            }
            _ = ticker.tick() => {
                if poll(&client, &args.common, &mut waiting).await {
                    last_terminal = Instant::now();
                }
                let accepted: u64 = waiting.iter().map(|w| w.accepted).sum();
                let terminal: u64 = waiting.iter().map(|w| w.terminal).sum();
                if printed.elapsed() >= Duration::from_secs(1) {
                    printed = Instant::now();
                    let counts = [("accepted", accepted), ("terminal", terminal)];
                    let errors = refused.load(Ordering::Relaxed);
                    jobs::progress("batch", started, &counts, meter.rate(terminal), errors);
                }
                if !submitting && terminal == accepted {
                    break false;
                }
                if !submitting && submitted_at.elapsed() >= args.timeout {
                    eprintln!("batch: gave up waiting after {:?}", args.timeout);
                    break false;
                }
            }
        }
    };
    stop.store(true, Ordering::Relaxed);
    let polled_terminal: u64 = waiting.iter().map(|w| w.terminal).sum();
    let (mut recorder, batches) = submitter.await.context("the submitter panicked")?;
    if submitting {
        submitted_at = Instant::now();
    }

    let mut run = JobsRun {
        flow: "batch",
        lang: args.lang,
        jobs: args.jobs,
        accepted: batches.iter().map(|b| b.jobs.len() as u64).sum(),
        terminal: 0,
        submit: submitted_at - started,
        end_to_end: last_terminal - started,
        latency_basis: "created_at to finished_at of each job record",
        interrupted,
    };
    let mut last_finished: Option<DateTime<Utc>> = None;
    for batch in &batches {
        let records = read_records(&client, &args.common, batch.batch_id).await?;
        for &(job_id, expected) in &batch.jobs {
            match records.get(&job_id).filter(|r| r.status.is_terminal()) {
                Some(record) => {
                    run.terminal += 1;
                    last_finished = last_finished.max(record.finished_at);
                    recorder.record(record.outcome(expected), record.server_latency());
                }
                None => recorder.record(Err(ErrorKind::Missing), Duration::ZERO),
            }
        }
    }
    // A poll sees the last terminal state up to a poll interval late; the
    // records say when it happened, on the server's clock. That is trusted
    // within what this side saw: no later than the poll that found every
    // job done (or, if some finished after the last poll, than now).
    if run.terminal > polled_terminal {
        run.end_to_end = started.elapsed();
    }
    if let Some(exact) = last_finished.and_then(|end| (end - started_wall).to_std().ok()) {
        run.end_to_end = run.end_to_end.min(exact);
    }

    let summary = run.summary(&recorder);
    println!("{summary}");
    if let Some(path) = &args.common.json {
        summary.write_json(path)?;
    }
    Ok(summary)
}

/// Submits every batch, `--concurrency` at a time, announcing each accepted
/// one on `tx` and counting refused jobs in `refused`; returns the submission
/// failures and the accepted batches.
async fn submit_all(
    client: reqwest::Client,
    args: BatchArgs,
    tx: mpsc::UnboundedSender<Waiting>,
    stop: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
) -> (Recorder, Vec<Submitted>) {
    let url = args.common.endpoint("/api/v1/jobs/batch");
    let title = args.lang.language_title();
    let mut recorder = Recorder::new();
    let mut accepted = Vec::new();
    let same = args.cache;
    let mut answers = futures::stream::iter(plan(args.jobs, args.batch_size))
        .take_while(|_| std::future::ready(!stop.load(Ordering::Relaxed)))
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
                refused.fetch_add(codes.len() as u64, Ordering::Relaxed);
                for code in codes {
                    recorder.record(Err(ErrorKind::Refused(code)), Duration::ZERO);
                }
                let _ = tx.send(Waiting {
                    batch_id: batch.batch_id,
                    accepted: batch.jobs.len() as u64,
                    terminal: 0,
                });
                accepted.push(batch);
            }
            Err(kind) => {
                eprintln!("batch: a batch of {len} jobs failed: {kind}");
                refused.fetch_add(len, Ordering::Relaxed);
                for _ in 0..len {
                    recorder.record(Err(kind), Duration::ZERO);
                }
            }
        }
    }
    (recorder, accepted)
}

/// One `POST /api/v1/jobs/batch` of the jobs numbered `range`.
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
async fn read_records(
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
