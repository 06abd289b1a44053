//! The dispatcher's Prometheus metrics, served at `GET /metrics` on
//! `DISPATCHER_METRICS_ADDR` (when set).
//!
//! What happens to jobs off the request path: terminal transitions by
//! language and status, redeliveries and republishes, dead letters,
//! callbacks and direct submissions. Every label value is bounded: languages,
//! job statuses, error codes and fixed outcome names — never a job id or a
//! Language-Title.

use crate::records::Finished;
use prometheus::{IntCounter, IntCounterVec};
use schemas::{
    service::metrics::{encode, Registrar},
    JobStatus, Language, LanguageTitle,
};

/// Every series of the dispatcher.
pub struct Metrics {
    registrar: Registrar,
    jobs_finished: IntCounterVec,
    redeliveries: IntCounterVec,
    republished: IntCounter,
    dead_letters: IntCounterVec,
    callbacks: IntCounterVec,
    callback_attempts: IntCounterVec,
    submissions: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registrar::new();
        let metrics = Self {
            jobs_finished: r.counter(
                "jobs_finished_total",
                "Jobs that reached a terminal status, by language and status",
                &["language", "status"],
            ),
            redeliveries: r.counter(
                "job_redeliveries_total",
                "Jobs a worker started again after an earlier delivery, by language",
                &["language"],
            ),
            republished: r.single_counter(
                "jobs_republished_total",
                "Jobs the sweeper published again because their message was gone",
            ),
            dead_letters: r.counter(
                "dead_letters_total",
                "Jobs buried as dead after JetStream's last delivery, by language",
                &["language"],
            ),
            callbacks: r.counter(
                "callbacks_total",
                "Callbacks settled, by outcome (delivered or failed)",
                &["outcome"],
            ),
            callback_attempts: r.counter(
                "callback_attempts_total",
                "Callback POSTs, by result (ok or error)",
                &["result"],
            ),
            submissions: r.counter(
                "submissions_total",
                "Direct NATS submissions, by outcome (accepted or the error code)",
                &["outcome"],
            ),
            registrar: r,
        };
        for language in Language::ALL {
            let l = language.as_str();
            metrics.redeliveries.with_label_values(&[l]);
            metrics.dead_letters.with_label_values(&[l]);
            for status in JobStatus::ALL.iter().filter(|s| s.is_terminal()) {
                metrics
                    .jobs_finished
                    .with_label_values(&[l, status.as_str()]);
            }
        }
        for outcome in ["delivered", "failed"] {
            metrics.callbacks.with_label_values(&[outcome]);
        }
        for result in ["ok", "error"] {
            metrics.callback_attempts.with_label_values(&[result]);
        }
        metrics.submissions.with_label_values(&["accepted"]);
        metrics
    }

    /// Full names of every series this process exports.
    pub fn names(&self) -> Vec<String> {
        self.registrar.names()
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        encode(self.registrar.registry())
    }

    /// Counts jobs that just reached their terminal status.
    pub fn finished(&self, finished: &[Finished]) {
        for f in finished {
            let status = f.record["status"].as_str().unwrap_or("unknown");
            let status = status
                .parse::<JobStatus>()
                .map_or("unknown", JobStatus::as_str);
            self.jobs_finished
                .with_label_values(&[language_of(&f.language_title), status])
                .inc();
        }
    }

    /// Counts a job of `language_title` run again on delivery number two
    /// or later (its start and its result recorded together).
    pub fn redelivered_title(&self, language_title: &str) {
        self.redeliveries
            .with_label_values(&[language_of(language_title)])
            .inc();
    }

    /// Counts a job started again on delivery number two or later.
    pub fn redelivered(&self, language: &str) {
        let language = language
            .parse::<Language>()
            .map_or("unknown", Language::as_str);
        self.redeliveries.with_label_values(&[language]).inc();
    }

    pub fn republished(&self, jobs: usize) {
        self.republished.inc_by(jobs as u64);
    }

    /// Counts jobs just buried as dead.
    pub fn buried(&self, finished: &[Finished]) {
        for f in finished {
            self.dead_letters
                .with_label_values(&[language_of(&f.language_title)])
                .inc();
        }
    }

    pub fn callback_settled(&self, delivered: bool) {
        let outcome = if delivered { "delivered" } else { "failed" };
        self.callbacks.with_label_values(&[outcome]).inc();
    }

    pub fn callback_attempt(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.callback_attempts.with_label_values(&[result]).inc();
    }

    /// Counts a submission: `None` when accepted, else the refusal's code.
    pub fn submission(&self, refused: Option<schemas::ErrorCode>) {
        let outcome = refused.map_or("accepted", schemas::ErrorCode::as_str);
        self.submissions.with_label_values(&[outcome]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The language of a Language-Title, the one part of it fit for a label.
fn language_of(language_title: &str) -> &'static str {
    language_title
        .parse::<LanguageTitle>()
        .map_or("unknown", |lt| lt.language.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finished_jobs_are_counted_by_language_and_status_only() {
        let metrics = Metrics::new();
        let finished = |status: &str| Finished {
            job_id: uuid::Uuid::now_v7(),
            language_title: "python-textprocessor".into(),
            record: json!({"status": status}),
        };
        metrics.finished(&[
            finished("succeeded"),
            finished("succeeded"),
            finished("dead"),
        ]);
        metrics.buried(&[finished("dead")]);
        let text = metrics.render();
        assert!(
            text.contains(r#"lambda_jobs_finished_total{language="python",status="succeeded"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"lambda_dead_letters_total{language="python"} 1"#));
        assert!(
            !text.contains("textprocessor"),
            "no title in labels: {text}"
        );
    }
}
