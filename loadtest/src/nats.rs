//! The `nats` flow: a producer that never touches REST. It publishes `--jobs`
//! submissions to `<prefix>.submit.<lang>-loadtest` (core NATS, which the
//! dispatchers' queue group consumes), each a request answered with the job
//! handle (or, with `--no-reply`, fire and forget), and collects the terminal
//! records the dispatcher publishes on `<prefix>.results.<lang>-loadtest`.

mod publish;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use schemas::Subjects;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::api::{self, CommonArgs};
use crate::duration::parse_duration;
use crate::jobs::{self, JobRecord, JobsRun, JobsSummary, RateMeter};
use crate::report::{ErrorKind, Recorder};
use crate::script::Lang;

pub use publish::submission;

/// Terminal records the client may hold before we read them; a burst larger
/// than this would be dropped by the client as a slow consumer.
const RESULTS_CAPACITY: usize = 1 << 20;

/// Options of `loadtest nats`.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The NATS server the dispatchers listen on.
    #[arg(
        long,
        env = "LOADTEST_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// The system's subject prefix (its `NATS_PREFIX`).
    #[arg(long, env = "LOADTEST_NATS_PREFIX", default_value = Subjects::DEFAULT_PREFIX)]
    pub nats_prefix: String,
    /// Runtime to load; its script returns `params.a + params.b`.
    #[arg(long, env = "LOADTEST_LANG", value_enum, default_value_t = Lang::Nodejs)]
    pub lang: Lang,
    /// Jobs to publish in all.
    #[arg(long, env = "LOADTEST_JOBS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs: u64,
    /// Submissions waiting for their reply at once.
    #[arg(long, env = "LOADTEST_CONCURRENCY", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Publish without a reply subject, as fast as the client sends; every
    /// publish then counts as accepted, and lost submissions show up as `missing`.
    #[arg(long, env = "LOADTEST_NO_REPLY")]
    pub no_reply: bool,
    /// Give every job the same params (the async path runs each job regardless).
    #[arg(long, alias = "same-params", env = "LOADTEST_CACHE")]
    pub cache: bool,
    /// Name the session `initialize` opened (`request_id`) in each submission
    /// instead of the registered function's Language-Title.
    #[arg(long, env = "LOADTEST_SESSION")]
    pub session: bool,
    /// Once everything is published, give up when no terminal record came for
    /// this long; the jobs without one count as `missing`. Keep it above the
    /// dispatcher's `SWEEP_AFTER_SECONDS`, after which unpublished jobs are republished.
    #[arg(long, env = "LOADTEST_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// A published job whose terminal record has not arrived yet.
struct Pending {
    sent: Instant,
    expected: u64,
}

/// What the publisher, the collector and the progress line share.
#[derive(Default)]
struct Shared {
    pending: Mutex<HashMap<Uuid, Pending>>,
    published: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    terminal: AtomicU64,
    /// When the last terminal record came, in ms after the start.
    last_terminal_ms: AtomicU64,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Registers the function, publishes, collects; prints the summary (and
/// writes `--json`) before returning it.
pub async fn run(args: NatsArgs) -> anyhow::Result<JobsSummary> {
    let http = args.common.client(1)?;
    let request_id = api::register(&http, &args.common, args.lang).await?;
    let session = match args.session {
        true => Some(request_id.parse().context("the request_id is not a UUID")?),
        false => None,
    };
    let title = args.lang.language_title();
    let subjects = Subjects::new(args.nats_prefix.clone());
    let nats = async_nats::ConnectOptions::new()
        .subscription_capacity(RESULTS_CAPACITY)
        .request_timeout(Some(args.common.request_timeout))
        .connect(args.nats_url.as_str())
        .await
        .with_context(|| format!("connecting to NATS at {}", args.nats_url))?;
    let results = nats
        .subscribe(subjects.results(&title))
        .await
        .context("subscribing to the terminal records")?;
    // The subscription is in place on the server before the first job can end.
    nats.flush().await.context("flushing to NATS")?;
    eprintln!(
        "function {title} registered; publishing to {}",
        subjects.submit(&title)
    );

    let shared = Arc::new(Shared::default());
    let started = Instant::now();
    let (end_collecting, collecting_ended) = oneshot::channel();
    let collector = tokio::spawn(collect(results, shared.clone(), started, collecting_ended));
    let stop = Arc::new(AtomicBool::new(false));
    let mut publisher = tokio::spawn(publish::publish_all(
        nats.clone(),
        subjects.submit(&title),
        args.clone(),
        session,
        shared.clone(),
        stop.clone(),
    ));

    let mut published: Option<(Recorder, Instant)> = None;
    let mut meter = RateMeter::new();
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await; // the first tick is immediate
    let mut check = tokio::time::interval(Duration::from_millis(100));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let interrupted = loop {
        tokio::select! {
            done = &mut publisher, if published.is_none() => {
                published = Some((done.context("the publisher panicked")?, Instant::now()));
            }
            _ = &mut ctrl_c => {
                eprintln!("nats: interrupted");
                break true;
            }
            _ = progress.tick() => {
                let terminal = shared.terminal.load(Ordering::Relaxed);
                let counts = [
                    ("published", shared.published.load(Ordering::Relaxed)),
                    ("accepted", shared.accepted.load(Ordering::Relaxed)),
                    ("terminal", terminal),
                ];
                let refused = shared.refused.load(Ordering::Relaxed);
                jobs::progress("nats", started, &counts, meter.rate(terminal), refused);
            }
            _ = check.tick() => {
                if let Some((_, at)) = &published {
                    if shared.pending().is_empty() {
                        break false;
                    }
                    let last_ms = shared.last_terminal_ms.load(Ordering::Relaxed);
                    let last = started + Duration::from_millis(last_ms);
                    if (*at).max(last).elapsed() >= args.timeout {
                        eprintln!("nats: no terminal record for {:?}; giving up", args.timeout);
                        break false;
                    }
                }
            }
        }
    };
    stop.store(true, Ordering::Relaxed);
    let (mut recorder, published_at) = match published {
        Some(done) => done,
        None => (
            publisher.await.context("the publisher panicked")?,
            Instant::now(),
        ),
    };
    let _ = end_collecting.send(());
    let (collected, last_terminal) = collector.await.context("the collector panicked")?;
    recorder.merge(&collected);
    for _ in shared.pending().drain() {
        recorder.record(Err(ErrorKind::Missing), Duration::ZERO);
    }

    let run = JobsRun {
        flow: "nats",
        lang: args.lang,
        jobs: args.jobs,
        accepted: shared.accepted.load(Ordering::Relaxed),
        terminal: shared.terminal.load(Ordering::Relaxed),
        submit: published_at - started,
        end_to_end: last_terminal - started,
        latency_basis: "publish to terminal record received",
        interrupted,
    };
    let summary = run.summary(&recorder);
    println!("{summary}");
    if let Some(path) = &args.common.json {
        summary.write_json(path)?;
    }
    Ok(summary)
}

/// Reads terminal records until told to stop, scoring those of pending jobs;
/// returns their outcomes and when the last one came.
async fn collect(
    mut results: async_nats::Subscriber,
    shared: Arc<Shared>,
    started: Instant,
    mut stop: oneshot::Receiver<()>,
) -> (Recorder, Instant) {
    let mut recorder = Recorder::new();
    let mut last = started;
    loop {
        let message = tokio::select! {
            _ = &mut stop => break,
            message = results.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        // Records of other producers' jobs on the same subject are not ours.
        let Ok(record) = serde_json::from_slice::<JobRecord>(&message.payload) else {
            continue;
        };
        let Some(pending) = shared.pending().remove(&record.job_id) else {
            continue;
        };
        last = Instant::now();
        recorder.record(record.outcome(pending.expected), pending.sent.elapsed());
        shared.terminal.fetch_add(1, Ordering::Relaxed);
        let ms = u64::try_from((last - started).as_millis()).unwrap_or(u64::MAX);
        shared.last_terminal_ms.store(ms, Ordering::Relaxed);
    }
    (recorder, last)
}
