//! What the asynchronous flows (`batch`, `nats`) share: the job record they
//! read, how a record counts, and the [`JobsSummary`] they print and write.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use schemas::JobStatus;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::report::{self, Answer, ErrorKind, Latency, Recorder};
use crate::script::{self, Lang};

/// The fields of a terminal job record (`GET /api/v1/jobs/{id}`,
/// `<prefix>.results.<language_title>`) a load test looks at.
#[derive(Debug, Clone, Deserialize)]
pub struct JobRecord {
    pub job_id: Uuid,
    pub status: JobStatus,
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
}

impl JobRecord {
    /// How the job counts: a success only when it succeeded with `expected`.
    pub fn outcome(&self, expected: u64) -> Result<Answer, ErrorKind> {
        match self.status {
            JobStatus::Succeeded => match &self.result {
                Some(result) if script::is_expected(result, expected) => Ok(Answer::default()),
                _ => Err(ErrorKind::WrongResult),
            },
            status => Err(ErrorKind::Ended(status)),
        }
    }

    /// `finished_at - created_at`, both from the server's clock.
    pub fn server_latency(&self) -> Duration {
        self.finished_at
            .and_then(|end| (end - self.created_at).to_std().ok())
            .unwrap_or_default()
    }
}

/// What an asynchronous run measured, besides the per-job outcomes.
#[derive(Debug, Clone)]
pub struct JobsRun {
    pub flow: &'static str,
    pub lang: Lang,
    /// Jobs asked for.
    pub jobs: u64,
    /// Jobs the system accepted (gave a job id).
    pub accepted: u64,
    /// Accepted jobs seen in a terminal state.
    pub terminal: u64,
    /// From the first submission sent to the last one answered.
    pub submit: Duration,
    /// From the first submission sent to the last terminal state.
    pub end_to_end: Duration,
    /// What the latency percentiles measure.
    pub latency_basis: &'static str,
    /// Cut short by Ctrl-C.
    pub interrupted: bool,
}

impl JobsRun {
    /// The summary of this run, whose per-job outcomes `recorder` holds.
    pub fn summary(&self, recorder: &Recorder) -> JobsSummary {
        JobsSummary {
            flow: self.flow.to_owned(),
            lang: self.lang.to_string(),
            jobs: self.jobs,
            accepted: self.accepted,
            terminal: self.terminal,
            succeeded: recorder.successes(),
            errors: recorder.errors().clone(),
            submit_s: self.submit.as_secs_f64(),
            submit_rate_jobs_s: report::rate(self.accepted, self.submit),
            end_to_end_s: self.end_to_end.as_secs_f64(),
            throughput_jobs_s: report::rate(self.terminal, self.end_to_end),
            latency_basis: self.latency_basis.to_owned(),
            latency_ms: recorder.latency(),
            interrupted: self.interrupted,
        }
    }
}

/// The result of an asynchronous load test, as printed and as written by `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobsSummary {
    pub flow: String,
    pub lang: String,
    /// Jobs asked for.
    pub jobs: u64,
    /// Jobs the system accepted (with `nats --no-reply`: jobs published).
    pub accepted: u64,
    /// Accepted jobs that reached a terminal state before the wait ended.
    pub terminal: u64,
    /// Jobs that succeeded with the right result.
    pub succeeded: u64,
    /// Everything else, by kind: refused or failed submissions (`refused_not_found`,
    /// `http_503`, `timeout`), terminal statuses (`failed`, `timed_out`, `dead`,
    /// `cancelled`), `wrong_result`, and `missing` (no terminal state in time).
    pub errors: BTreeMap<String, u64>,
    /// From the first submission sent to the last one answered.
    pub submit_s: f64,
    /// `accepted / submit_s`.
    pub submit_rate_jobs_s: f64,
    /// From the first submission sent to the last terminal state.
    pub end_to_end_s: f64,
    /// `terminal / end_to_end_s`.
    pub throughput_jobs_s: f64,
    /// What `latency_ms` measures per succeeded job.
    pub latency_basis: String,
    pub latency_ms: Latency,
    /// Cut short by Ctrl-C.
    pub interrupted: bool,
}

impl JobsSummary {
    /// Jobs that did not succeed with the right result.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Writes the summary as pretty JSON to `path`.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        report::write_json(self, path)
    }
}

impl fmt::Display for JobsSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.latency_ms;
        writeln!(
            f,
            "flow {} lang {} jobs {}{}",
            self.flow,
            self.lang,
            self.jobs,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "accepted   {} in {:.2}s ({:.2} jobs/s submitted)",
            self.accepted, self.submit_s, self.submit_rate_jobs_s
        )?;
        writeln!(
            f,
            "terminal   {} in {:.2}s end to end ({:.2} jobs/s)",
            self.terminal, self.end_to_end_s, self.throughput_jobs_s
        )?;
        writeln!(f, "succeeded  {}", self.succeeded)?;
        write!(f, "errors     {}", self.error_count())?;
        let kinds: Vec<String> = self
            .errors
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        if !kinds.is_empty() {
            write!(f, " ({})", kinds.join(", "))?;
        }
        write!(
            f,
            "\nlatency ms p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  ({})",
            l.p50, l.p90, l.p99, l.max, self.latency_basis
        )
    }
}

/// Prints one progress line of an asynchronous flow on stderr.
pub fn progress(label: &str, started: Instant, counts: &[(&str, u64)], rate: f64, errors: u64) {
    let counts: Vec<String> = counts.iter().map(|(k, n)| format!("{n:>8} {k}")).collect();
    eprintln!(
        "{label} {:>6.1}s {}  {rate:>8.1} jobs/s  {errors} errors",
        started.elapsed().as_secs_f64(),
        counts.join(" ")
    );
}

/// Terminal jobs per second between two progress lines.
#[derive(Debug)]
pub struct RateMeter {
    last: u64,
    at: Instant,
}

impl RateMeter {
    pub fn new() -> Self {
        Self {
            last: 0,
            at: Instant::now(),
        }
    }

    /// The rate since the previous call (or since creation).
    pub fn rate(&mut self, now_total: u64) -> f64 {
        let rate = report::rate(now_total.saturating_sub(self.last), self.at.elapsed());
        (self.last, self.at) = (now_total, Instant::now());
        rate
    }
}

impl Default for RateMeter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(status: &str, result: serde_json::Value) -> JobRecord {
        serde_json::from_value(json!({
            "job_id": Uuid::nil(),
            "batch_id": null,
            "status": status,
            "attempts": 1,
            "created_at": "2026-11-22T10:00:00.100000+00:00",
            "started_at": "2026-11-22T10:00:00.150000+00:00",
            "finished_at": "2026-11-22T10:00:00.352500+00:00",
            "execution_time": 0.4,
            "result": result,
        }))
        .unwrap()
    }

    #[test]
    fn records_count_by_status_and_result() {
        assert_eq!(
            record("succeeded", json!(8)).outcome(8),
            Ok(Answer::default())
        );
        assert_eq!(
            record("succeeded", json!(9)).outcome(8),
            Err(ErrorKind::WrongResult)
        );
        assert_eq!(
            record("timed_out", json!(null)).outcome(8),
            Err(ErrorKind::Ended(JobStatus::TimedOut))
        );
        let mut no_result = record("succeeded", json!(8));
        no_result.result = None;
        assert_eq!(no_result.outcome(8), Err(ErrorKind::WrongResult));
    }

    #[test]
    fn latency_comes_from_the_records_timestamps() {
        let r = record("succeeded", json!(8));
        assert_eq!(r.server_latency(), Duration::from_micros(252_500));
        let mut unfinished = r.clone();
        unfinished.finished_at = None;
        assert_eq!(unfinished.server_latency(), Duration::ZERO);
    }

    #[test]
    fn a_summary_prints_and_serialises_the_same_numbers() {
        let mut recorder = Recorder::new();
        for ms in 1..=100u64 {
            recorder.record(Ok(Answer::default()), Duration::from_millis(ms));
        }
        recorder.record(Err(ErrorKind::Missing), Duration::ZERO);
        recorder.record(Err(ErrorKind::Ended(JobStatus::Failed)), Duration::ZERO);
        let run = JobsRun {
            flow: "batch",
            lang: Lang::Python,
            jobs: 103,
            accepted: 102,
            terminal: 101,
            submit: Duration::from_millis(500),
            end_to_end: Duration::from_secs(2),
            latency_basis: "created_at to finished_at",
            interrupted: false,
        };
        let s = run.summary(&recorder);
        assert_eq!((s.succeeded, s.error_count()), (100, 2));
        assert_eq!(s.submit_rate_jobs_s, 204.0);
        assert_eq!(s.throughput_jobs_s, 50.5);

        let text = s.to_string();
        assert!(
            text.starts_with("flow batch lang python jobs 103\n"),
            "{text}"
        );
        assert!(
            text.contains("accepted   102 in 0.50s (204.00 jobs/s submitted)"),
            "{text}"
        );
        assert!(
            text.contains("terminal   101 in 2.00s end to end (50.50 jobs/s)"),
            "{text}"
        );
        assert!(
            text.contains("errors     2 (failed: 1, missing: 1)"),
            "{text}"
        );
        assert!(text.contains("(created_at to finished_at)"), "{text}");

        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["accepted"], 102);
        assert_eq!(json["errors"]["missing"], 1);
        assert_eq!(json["throughput_jobs_s"], 50.5);
        assert!(json["latency_ms"]["p99"].as_f64().unwrap() >= 99.0);
        assert_eq!(json["interrupted"], false);
    }
}
