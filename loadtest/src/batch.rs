//! The `batch` flow: `--jobs` jobs submitted with `POST /api/v1/jobs/batch` in
//! batches of `--batch-size`, their unfinished jobs counted with
//! `GET /api/v1/jobs?batch_id=&status=` until none is left, then every
//! record read back for its outcome and its latency (`finished_at - created_at`).

mod submit;
mod wait;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::api::{self, CommonArgs};
use crate::duration::parse_duration;
use crate::jobs::{self, JobsRun, JobsSummary, RateMeter};
use crate::report::ErrorKind;
use crate::script::Lang;

pub use submit::plan;

/// The most jobs the API takes in one batch.
pub const MAX_BATCH: u64 = 10_000;

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
    /// Once every batch is submitted, give up when no more jobs finished for
    /// this long; the unfinished ones count as `missing`. Keep it above the
    /// dispatcher's `SWEEP_AFTER_SECONDS`, after which unpublished jobs are republished.
    #[arg(long, env = "LOADTEST_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// What the submitter, the poller and the progress line share.
#[derive(Debug, Default)]
struct Live {
    /// Set by Ctrl-C: submit no more batches, stop polling.
    stop: AtomicBool,
    accepted: AtomicU64,
    refused: AtomicU64,
    terminal: AtomicU64,
}

/// Submits, waits, reads the records back; prints the summary (and writes
/// `--json`) before returning it.
pub async fn run(args: BatchArgs) -> anyhow::Result<JobsSummary> {
    let client = args.common.client(usize::from(args.concurrency) + 1)?;
    api::register(&client, &args.common, args.lang).await?;
    eprintln!("function {} registered", args.lang.language_title());

    let live = Arc::new(Live::default());
    let (tx, rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let started_wall = Utc::now();
    let submitter = tokio::spawn(submit::submit_all(
        client.clone(),
        args.clone(),
        tx,
        live.clone(),
    ));
    let mut waiter = tokio::spawn(wait::wait_all(
        client.clone(),
        args.common.clone(),
        rx,
        args.poll_interval,
        args.timeout,
        live.clone(),
    ));

    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await; // the first tick is immediate
    let mut meter = RateMeter::new();
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let waited = loop {
        tokio::select! {
            waited = &mut waiter => break waited.context("the poller panicked")?,
            _ = &mut ctrl_c, if !interrupted => {
                eprintln!("batch: interrupted; reading the records of what was submitted");
                interrupted = true;
                live.stop.store(true, Ordering::Relaxed);
            }
            _ = ticker.tick() => {
                let terminal = live.terminal.load(Ordering::Relaxed);
                let counts = [("accepted", live.accepted.load(Ordering::Relaxed)), ("terminal", terminal)];
                let errors = live.refused.load(Ordering::Relaxed);
                jobs::progress("batch", started, &counts, meter.rate(terminal), errors);
            }
        }
    };
    let (mut recorder, batches) = submitter.await.context("the submitter panicked")?;
    let submitted_at = waited.submitted_at.unwrap_or_else(Instant::now);

    let mut run = JobsRun {
        flow: "batch",
        lang: args.lang,
        jobs: args.jobs,
        accepted: batches.iter().map(|b| b.jobs.len() as u64).sum(),
        terminal: 0,
        submit: submitted_at - started,
        end_to_end: waited.last_terminal.saturating_duration_since(started),
        latency_basis: "created_at to finished_at of each job record",
        interrupted,
    };
    let mut last_finished: Option<DateTime<Utc>> = None;
    for batch in &batches {
        let records = wait::read_records(&client, &args.common, batch.batch_id).await?;
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
    if run.terminal > waited.terminal {
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
