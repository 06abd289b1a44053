//! The closed-loop driver every flow shares: `concurrency` workers each send one
//! request after another until the phase ends, while a ticker prints progress.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::task::JoinSet;

use crate::duration::parse_duration;
use crate::report::{Answer, ErrorKind, Recorder};

/// Options of the closed-loop flows.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Requests in flight at once (one worker task each).
    #[arg(long, env = "LOADTEST_CONCURRENCY", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// How long to measure: 500ms, 30s, 2m, 1h.
    #[arg(long, env = "LOADTEST_DURATION", default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load to run first, unrecorded, so connections and runtimes are warm.
    #[arg(long, env = "LOADTEST_WARMUP", default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
}

/// What one phase measured.
#[derive(Debug)]
pub struct Phase {
    pub recorder: Recorder,
    /// From the first request to the last worker's last answer.
    pub elapsed: Duration,
    /// Cut short by Ctrl-C.
    pub interrupted: bool,
}

/// Runs `op` from `concurrency` workers for `duration` (or until Ctrl-C).
///
/// `op` gets a sequence number unique across the whole process (`seq` is shared
/// between phases), so flows can make every request distinct. Progress goes to
/// stderr once a second, prefixed by `label`.
pub async fn run_phase<F, Fut>(
    label: &str,
    concurrency: u16,
    duration: Duration,
    seq: Arc<AtomicU64>,
    op: F,
) -> anyhow::Result<Phase>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Answer, ErrorKind>> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let live = Arc::new(Live::default());
    let started = Instant::now();

    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (op, stop, live, seq) = (op.clone(), stop.clone(), live.clone(), seq.clone());
        workers.spawn(async move {
            let mut recorder = Recorder::new();
            while !stop.load(Ordering::Relaxed) {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                let outcome = op(n).await;
                recorder.record(outcome, sent.elapsed());
                live.requests.fetch_add(1, Ordering::Relaxed);
                if outcome.is_err() {
                    live.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            recorder
        });
    }

    let interrupted = tick_until(label, started, duration, &live).await;
    stop.store(true, Ordering::Relaxed);

    let mut recorder = Recorder::new();
    while let Some(worker) = workers.join_next().await {
        recorder.merge(&worker.context("a load worker panicked")?);
    }
    Ok(Phase {
        recorder,
        elapsed: started.elapsed(),
        interrupted,
    })
}

/// Counters the ticker reads while workers run.
#[derive(Debug, Default)]
struct Live {
    requests: AtomicU64,
    errors: AtomicU64,
}

/// Prints a progress line every second until `duration` has passed; returns
/// whether Ctrl-C ended the phase early.
async fn tick_until(label: &str, started: Instant, duration: Duration, live: &Live) -> bool {
    let deadline = tokio::time::Instant::from_std(started + duration);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await; // the first tick is immediate
    let (mut last_requests, mut last_at) = (0, Instant::now());
    // Created once, so a Ctrl-C between two ticks is not missed.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return false,
            _ = &mut ctrl_c => {
                eprintln!("{label}: interrupted, finishing in-flight requests");
                return true;
            }
            _ = ticker.tick() => {
                let requests = live.requests.load(Ordering::Relaxed);
                let errors = live.errors.load(Ordering::Relaxed);
                let rate = (requests - last_requests) as f64 / last_at.elapsed().as_secs_f64();
                (last_requests, last_at) = (requests, Instant::now());
                eprintln!(
                    "{label} {:>6.1}s  {requests:>9} requests  {rate:>9.1} req/s  {errors} errors",
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_request_gets_a_distinct_number_and_is_recorded() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen_by_op = seen.clone();
        let phase = run_phase(
            "test",
            4,
            Duration::from_millis(200),
            Arc::new(AtomicU64::new(0)),
            move |n| {
                seen_by_op.lock().unwrap().push(n);
                async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if n % 10 == 0 {
                        Err(ErrorKind::WrongResult)
                    } else {
                        Ok(Answer::default())
                    }
                }
            },
        )
        .await
        .unwrap();

        let mut seen = seen.lock().unwrap().clone();
        let total = seen.len() as u64;
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len() as u64, total, "sequence numbers repeat");
        assert!(total >= 8, "only {total} requests in 200ms from 4 workers");
        assert_eq!(phase.recorder.requests(), total);
        assert!(!phase.interrupted);
        assert!(phase.elapsed >= Duration::from_millis(200));
    }
}
