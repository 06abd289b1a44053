//! What a load test measured: per-worker [`Recorder`]s, merged into a [`Summary`]
//! that prints as text and serialises as JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use schemas::{ErrorCode, JobStatus};
use serde::Serialize;

/// Why one request did not count as a success; the key of [`Summary::errors`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The API answered with a non-2xx status.
    Status(u16),
    /// No answer within the request timeout.
    Timeout,
    /// The connection could not be made.
    Connect,
    /// Any other transport failure (reset, closed mid-body, ...).
    Transport,
    /// A 2xx whose body was not the expected JSON.
    BadBody,
    /// A well-formed answer with the wrong `result`.
    WrongResult,
    /// A submission refused with this error code of the contract.
    Refused(ErrorCode),
    /// A job that ended in this terminal status other than `succeeded`.
    Ended(JobStatus),
    /// No dispatcher listens on the NATS submit subject.
    NoResponders,
    /// An accepted job with no terminal record when the wait ended.
    Missing,
}

impl ErrorKind {
    /// Classifies a reqwest failure that has no HTTP status.
    pub fn from_reqwest(err: &reqwest::Error) -> Self {
        if err.is_timeout() {
            ErrorKind::Timeout
        } else if err.is_connect() {
            ErrorKind::Connect
        } else if err.is_decode() {
            ErrorKind::BadBody
        } else {
            ErrorKind::Transport
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Status(code) => write!(f, "http_{code}"),
            ErrorKind::Timeout => f.write_str("timeout"),
            ErrorKind::Connect => f.write_str("connect"),
            ErrorKind::Transport => f.write_str("transport"),
            ErrorKind::BadBody => f.write_str("bad_body"),
            ErrorKind::WrongResult => f.write_str("wrong_result"),
            ErrorKind::Refused(code) => write!(f, "refused_{}", code.as_str().to_lowercase()),
            ErrorKind::Ended(status) => f.write_str(status.as_str()),
            ErrorKind::NoResponders => f.write_str("no_responders"),
            ErrorKind::Missing => f.write_str("missing"),
        }
    }
}

/// What a successful request got back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Answer {
    /// Served from the API's result cache.
    pub cached: bool,
}

/// Latencies (µs) and error counts of one worker; merged at the end, so the
/// hot path takes no lock.
#[derive(Debug)]
pub struct Recorder {
    latency_us: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    requests: u64,
    cached: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// Tracks 1 µs to 1 h at 3 significant digits (0.1% error).
    pub fn new() -> Self {
        let latency_us = Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .expect("static histogram bounds are valid");
        Self {
            latency_us,
            errors: BTreeMap::new(),
            requests: 0,
            cached: 0,
        }
    }

    /// Records one finished request (or job). Only successes enter the latency
    /// histogram, so fast failures (429, 503) cannot make the platform look quicker.
    pub fn record(&mut self, outcome: Result<Answer, ErrorKind>, took: Duration) {
        self.requests += 1;
        match outcome {
            Ok(answer) => {
                let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                self.latency_us.saturating_record(us.max(1));
                self.cached += u64::from(answer.cached);
            }
            Err(kind) => *self.errors.entry(kind.to_string()).or_default() += 1,
        }
    }

    /// Adds another worker's measurements to this one.
    pub fn merge(&mut self, other: &Recorder) {
        self.latency_us
            .add(&other.latency_us)
            .expect("recorders share the same bounds");
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
        self.requests += other.requests;
        self.cached += other.cached;
    }

    /// Requests finished so far, successful or not.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Successful requests so far.
    pub fn successes(&self) -> u64 {
        self.latency_us.len()
    }

    /// Failed requests by kind.
    pub fn errors(&self) -> &BTreeMap<String, u64> {
        &self.errors
    }

    /// Percentiles of the successful requests' latencies.
    pub fn latency(&self) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(self.latency_us.value_at_quantile(0.50)),
            p90: ms(self.latency_us.value_at_quantile(0.90)),
            p99: ms(self.latency_us.value_at_quantile(0.99)),
            max: ms(self.latency_us.max()),
        }
    }

    /// Summarises a run that took `elapsed` of wall time.
    pub fn summary(&self, run: RunInfo, elapsed: Duration) -> Summary {
        let secs = elapsed.as_secs_f64();
        Summary {
            flow: run.flow,
            lang: run.lang,
            concurrency: run.concurrency,
            duration_s: secs,
            requests: self.requests,
            errors: self.errors.clone(),
            cached: self.cached,
            throughput_rps: rate(self.requests, elapsed),
            latency_ms: self.latency(),
        }
    }
}

/// `n / elapsed` per second; 0 for an empty interval.
pub fn rate(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(value: &impl Serialize, path: &Path) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    std::fs::write(path, json + "\n")
        .with_context(|| format!("writing summary to {}", path.display()))
}

/// What was run, for the summary's header.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub flow: String,
    pub lang: String,
    pub concurrency: usize,
}

/// The result of a load test, as printed and as written by `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub flow: String,
    pub lang: String,
    pub concurrency: usize,
    /// Wall time of the measured phase, including the last in-flight requests.
    pub duration_s: f64,
    /// Finished requests, successful or not.
    pub requests: u64,
    /// Failed requests by kind (`http_503`, `timeout`, `wrong_result`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Successful requests the API answered from its result cache.
    pub cached: u64,
    /// `requests / duration_s`.
    pub throughput_rps: f64,
    /// Latency of successful requests.
    pub latency_ms: Latency,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// Total failed requests.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Writes the summary as pretty JSON to `path`.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        write_json(self, path)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.latency_ms;
        writeln!(
            f,
            "flow {} lang {} concurrency {} duration {:.2}s",
            self.flow, self.lang, self.concurrency, self.duration_s
        )?;
        write!(
            f,
            "requests   {}\nerrors     {}",
            self.requests,
            self.error_count()
        )?;
        let kinds: Vec<String> = self
            .errors
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        if !kinds.is_empty() {
            write!(f, " ({})", kinds.join(", "))?;
        }
        writeln!(f, "\ncached     {}", self.cached)?;
        writeln!(f, "throughput {:.2} req/s", self.throughput_rps)?;
        write!(
            f,
            "latency ms p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            l.p50, l.p90, l.p99, l.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_info() -> RunInfo {
        RunInfo {
            flow: "sync".into(),
            lang: "nodejs".into(),
            concurrency: 4,
        }
    }

    /// Two workers, 1..=100 ms between them, plus three failures.
    fn known_samples() -> Recorder {
        let (mut a, mut b) = (Recorder::new(), Recorder::new());
        for ms in 1..=100u64 {
            let worker = if ms % 2 == 0 { &mut a } else { &mut b };
            let answer = Answer { cached: ms > 95 };
            worker.record(Ok(answer), Duration::from_millis(ms));
        }
        a.record(Err(ErrorKind::Status(503)), Duration::from_millis(1));
        b.record(Err(ErrorKind::Status(503)), Duration::from_millis(1));
        b.record(Err(ErrorKind::WrongResult), Duration::from_millis(1));
        a.merge(&b);
        a
    }

    fn assert_close(actual: f64, expected: f64) {
        // 3 significant digits: HDR reports the bucket's upper edge, within 0.1%.
        let tolerance = expected * 0.001;
        assert!(
            (actual - expected).abs() <= tolerance,
            "{actual} not within {tolerance} of {expected}"
        );
    }

    #[test]
    fn percentiles_come_from_successful_requests() {
        let s = known_samples().summary(run_info(), Duration::from_secs(2));
        assert_eq!(s.requests, 103);
        assert_eq!(s.error_count(), 3);
        assert_eq!(s.errors["http_503"], 2);
        assert_eq!(s.errors["wrong_result"], 1);
        assert_eq!(s.cached, 5);
        assert_close(s.throughput_rps, 51.5);
        assert_close(s.latency_ms.p50, 50.0);
        assert_close(s.latency_ms.p90, 90.0);
        assert_close(s.latency_ms.p99, 99.0);
        assert_close(s.latency_ms.max, 100.0);
    }

    #[test]
    fn prints_and_serialises_the_same_numbers() {
        let s = known_samples().summary(run_info(), Duration::from_secs(2));
        let text = s.to_string();
        assert!(text.contains("requests   103"), "{text}");
        assert!(
            text.contains("errors     3 (http_503: 2, wrong_result: 1)"),
            "{text}"
        );
        assert!(text.contains("cached     5\n"), "{text}");
        assert!(text.contains("throughput 51.50 req/s"), "{text}");
        assert!(text.contains("p50 50.0"), "{text}");

        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["flow"], "sync");
        assert_eq!(json["lang"], "nodejs");
        assert_eq!(json["concurrency"], 4);
        assert_eq!(json["duration_s"], 2.0);
        assert_eq!(json["requests"], 103);
        assert_eq!(json["errors"]["http_503"], 2);
        assert_eq!(json["cached"], 5);
        for field in ["p50", "p90", "p99", "max"] {
            assert!(json["latency_ms"][field].is_f64(), "latency_ms.{field}");
        }
    }

    #[test]
    fn an_empty_run_reports_zeros() {
        let s = Recorder::new().summary(run_info(), Duration::ZERO);
        assert_eq!(s.requests, 0);
        assert_eq!(s.throughput_rps, 0.0);
        assert_eq!(s.latency_ms.max, 0.0);
        assert!(s.errors.is_empty());
    }

    #[test]
    fn job_failures_are_named_after_their_code_or_status() {
        let names: Vec<String> = [
            ErrorKind::Refused(ErrorCode::NotFound),
            ErrorKind::Ended(JobStatus::TimedOut),
            ErrorKind::Ended(JobStatus::Dead),
            ErrorKind::NoResponders,
            ErrorKind::Missing,
            ErrorKind::Status(429),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            names,
            [
                "refused_not_found",
                "timed_out",
                "dead",
                "no_responders",
                "missing",
                "http_429"
            ]
        );
    }
}
