//! The worker's Prometheus metrics, served at `GET /metrics` on
//! `WORKER_METRICS_ADDR` (when set).
//!
//! Executions by language and outcome and their time, scripts stopped for
//! exceeding a limit, what became of each job message, and the runtime
//! pools: warm and busy instances, instances started and stopped (read from
//! the pools at scrape time). Every label value is bounded: languages, error
//! codes and fixed names — never a job, session or worker id (Prometheus
//! tells instances apart by their scrape target).

use crate::runtime::{Execution, Pool, PoolStats};
use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec};
use schemas::{
    service::metrics::{encode, Registrar},
    ErrorCode, Language,
};
use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

/// Every series of a worker.
pub struct Metrics {
    registrar: Registrar,
    executions: IntCounterVec,
    execution_duration: HistogramVec,
    kills: IntCounterVec,
    acks: IntCounterVec,
    runtimes: IntGaugeVec,
    capacity: IntGaugeVec,
    starts: IntCounterVec,
    stops: IntCounterVec,
    /// The pool counts already added to `starts` and `stops`.
    synced: Mutex<HashMap<Language, PoolStats>>,
}

/// Why a running script was stopped, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    Timeout,
    Memory,
    Cancelled,
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registrar::new();
        Self {
            executions: r.counter(
                "worker_executions_total",
                "Scripts run, by language and outcome (ok or the error code)",
                &["language", "outcome"],
            ),
            execution_duration: r.seconds(
                "worker_execution_duration_seconds",
                "Time scripts ran, by language",
                &["language"],
            ),
            kills: r.counter(
                "worker_sandbox_kills_total",
                "Scripts stopped while running, by language and reason (timeout, memory, cancelled)",
                &["language", "reason"],
            ),
            acks: r.counter(
                "worker_job_acks_total",
                "Job messages settled, by language and kind (ack, nak: delivered again, term: dropped)",
                &["language", "kind"],
            ),
            runtimes: r.gauge(
                "worker_runtimes",
                "Runtime instances, by language and state (warm: idle and ready, busy: running a job)",
                &["language", "state"],
            ),
            capacity: r.gauge(
                "worker_runtime_capacity",
                "Jobs the pool runs at once, by language",
                &["language"],
            ),
            starts: r.counter(
                "worker_runtime_starts_total",
                "Runtime instances started, by language",
                &["language"],
            ),
            stops: r.counter(
                "worker_runtime_stops_total",
                "Runtime instances stopped, by language and reason \
                 (recycled: max uses, replaced: broken or killed, evicted: room for another function, idle, surplus)",
                &["language", "reason"],
            ),
            synced: Mutex::default(),
            registrar: r,
        }
    }

    /// Full names of every series this process exports.
    pub fn names(&self) -> Vec<String> {
        self.registrar.names()
    }

    /// Creates the series of `language` at zero, so that they are there
    /// before the first job.
    pub fn serve(&self, language: Language) {
        let l = language.as_str();
        self.executions.with_label_values(&[l, "ok"]);
        self.execution_duration.with_label_values(&[l]);
        for kill in [Kill::Timeout, Kill::Memory, Kill::Cancelled] {
            self.kills.with_label_values(&[l, kill.as_str()]);
        }
        for kind in ["ack", "nak", "term"] {
            self.acks.with_label_values(&[l, kind]);
        }
        self.starts.with_label_values(&[l]);
        for reason in ["recycled", "replaced", "evicted", "idle", "surplus"] {
            self.stops.with_label_values(&[l, reason]);
        }
    }

    /// Counts a script run and its time; a timeout or an exhausted memory
    /// limit also counts as a kill.
    pub fn executed(&self, language: Language, execution: &Execution) {
        let l = language.as_str();
        let code = execution.outcome.as_ref().err().map(|e| e.code);
        let outcome = code.map_or("ok", ErrorCode::as_str);
        self.executions.with_label_values(&[l, outcome]).inc();
        self.execution_duration
            .with_label_values(&[l])
            .observe(execution.elapsed.as_secs_f64());
        match code {
            Some(ErrorCode::Timeout) => self.killed(language, Kill::Timeout),
            Some(ErrorCode::MemoryLimit) => self.killed(language, Kill::Memory),
            _ => {}
        }
    }

    pub fn killed(&self, language: Language, kill: Kill) {
        self.kills
            .with_label_values(&[language.as_str(), kill.as_str()])
            .inc();
    }

    /// Counts a settled job message: `ack`, `nak` or `term`.
    pub fn settled(&self, language: Language, kind: &'static str) {
        self.acks
            .with_label_values(&[language.as_str(), kind])
            .inc();
    }

    /// The text exposition, with the pools as they are now.
    pub fn render(&self, pools: &[Pool]) -> String {
        for pool in pools {
            self.sync_pool(pool);
        }
        encode(self.registrar.registry())
    }

    fn sync_pool(&self, pool: &Pool) {
        let language = pool.language();
        let l = language.as_str();
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.runtimes
            .with_label_values(&[l, "warm"])
            .set(gauge(pool.warm()));
        self.runtimes
            .with_label_values(&[l, "busy"])
            .set(gauge(pool.busy()));
        self.capacity
            .with_label_values(&[l])
            .set(gauge(pool.capacity()));
        let now = pool.stats();
        let mut synced = self.synced.lock().unwrap_or_else(PoisonError::into_inner);
        let before = synced.entry(language).or_default();
        self.starts
            .with_label_values(&[l])
            .inc_by(now.started.saturating_sub(before.started));
        for (reason, now, before) in [
            ("recycled", now.recycled, before.recycled),
            ("replaced", now.replaced, before.replaced),
            ("evicted", now.evicted, before.evicted),
            ("idle", now.idle, before.idle),
            ("surplus", now.surplus, before.surplus),
        ] {
            self.stops
                .with_label_values(&[l, reason])
                .inc_by(now.saturating_sub(before));
        }
        *before = now;
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Kill {
    fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Memory => "memory",
            Self::Cancelled => "cancelled",
        }
    }
}
