//! What a load test measured: per-worker [`Recorder`]s, merged into a [`Summary`]
//! that prints as text and serialises as JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
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
        }
    }
}

/// Latencies (µs) and error counts of one worker; merged at the end, so the
/// hot path takes no lock.
#[derive(Debug)]
pub struct Recorder {
    latency_us: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    requests: u64,
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
        }
    }

    /// Records one finished request. Only successes enter the latency histogram,
    /// so fast failures (429, 503) cannot make the platform look quicker.
    pub fn record(&mut self, outcome: Result<(), ErrorKind>, took: Duration) {
        self.requests += 1;
        match outcome {
            Ok(()) => {
                let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                self.latency_us.saturating_record(us.max(1));
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
    }

    /// Requests finished so far, successful or not.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Summarises a run that took `elapsed` of wall time.
    pub fn summary(&self, run: RunInfo, elapsed: Duration) -> Summary {
        let ms = |us: u64| us as f64 / 1000.0;
        let secs = elapsed.as_secs_f64();
        Summary {
            flow: run.flow,
            lang: run.lang,
            concurrency: run.concurrency,
            duration_s: secs,
            requests: self.requests,
            errors: self.errors.clone(),
            throughput_rps: if secs > 0.0 {
                self.requests as f64 / secs
            } else {
                0.0
            },
            latency_ms: Latency {
                p50: ms(self.latency_us.value_at_quantile(0.50)),
                p90: ms(self.latency_us.value_at_quantile(0.90)),
                p99: ms(self.latency_us.value_at_quantile(0.99)),
                max: ms(self.latency_us.max()),
            },
        }
    }
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
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing summary to {}", path.display()))
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
        writeln!(f, "\nthroughput {:.2} req/s", self.throughput_rps)?;
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
            worker.record(Ok(()), Duration::from_millis(ms));
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
        assert!(text.contains("throughput 51.50 req/s"), "{text}");
        assert!(text.contains("p50 50.0"), "{text}");

        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["flow"], "sync");
        assert_eq!(json["lang"], "nodejs");
        assert_eq!(json["concurrency"], 4);
        assert_eq!(json["duration_s"], 2.0);
        assert_eq!(json["requests"], 103);
        assert_eq!(json["errors"]["http_503"], 2);
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
}
