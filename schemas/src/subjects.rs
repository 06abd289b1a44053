//! NATS names. Everything lives under one prefix (`lambda` by default) so that
//! several deployments, or parallel test runs, share a server without meeting.

use crate::Language;

/// The subject and stream names for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// The prefix used when none is configured.
    pub const DEFAULT_PREFIX: &'static str = "lambda";

    /// Names under `prefix`, which must be a valid subject token sequence.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where execute jobs for `language` are published.
    pub fn jobs(&self, language: Language) -> String {
        format!("{}.jobs.{}", self.prefix, language)
    }

    /// Every job subject (the stream's subject filter).
    pub fn all_jobs(&self) -> String {
        format!("{}.jobs.>", self.prefix)
    }

    /// The JetStream stream holding jobs.
    pub fn jobs_stream(&self) -> String {
        format!("{}_JOBS", self.stream_token())
    }

    /// The durable consumer workers of `language` share.
    pub fn worker_consumer(&self, language: Language) -> String {
        format!("workers-{language}")
    }

    /// Where workers announce themselves.
    pub fn heartbeat(&self) -> String {
        format!("{}.workers.heartbeat", self.prefix)
    }

    /// Where compile requests for `language` go (core NATS request/reply).
    pub fn compile(&self, language: Language) -> String {
        format!("{}.compile.{}", self.prefix, language)
    }

    /// The queue group workers answer compile requests in, one answer each.
    pub fn compile_queue_group(&self) -> &'static str {
        "workers-compile"
    }

    /// The inbox of one API instance, where workers publish results it waits for.
    pub fn replies(&self, instance: &str) -> String {
        format!("{}.replies.{}", self.prefix, instance)
    }

    /// Where workers report what became of asynchronous jobs of `language`.
    pub fn events(&self, language: Language) -> String {
        format!("{}.events.{}", self.prefix, language)
    }

    /// Every event subject (the events stream's subject filter).
    pub fn all_events(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// The JetStream stream holding job events until the dispatcher records them.
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.stream_token())
    }

    /// The durable consumer dispatchers share on the events stream.
    pub fn events_consumer(&self) -> String {
        "dispatcher-events".to_owned()
    }

    /// Where terminal job records of `language_title` are published.
    pub fn results(&self, language_title: &str) -> String {
        format!("{}.results.{}", self.prefix, language_title)
    }

    /// Where direct producers submit jobs for `language_title`.
    pub fn submit(&self, language_title: &str) -> String {
        format!("{}.submit.{}", self.prefix, language_title)
    }

    /// Every submit subject.
    pub fn all_submit(&self) -> String {
        format!("{}.submit.>", self.prefix)
    }

    /// Core NATS subject on which cancelled job ids are announced to workers.
    pub fn cancel(&self) -> String {
        format!("{}.cancel", self.prefix)
    }

    /// The advisory JetStream sends when a job of `language` ran out of deliveries.
    pub fn max_deliveries_advisory(&self, language: Language) -> String {
        format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
            self.jobs_stream(),
            self.worker_consumer(language)
        )
    }

    /// The prefix as a stream name token: upper case, `.`/`-` turned into `_`.
    fn stream_token(&self) -> String {
        self.prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new(Self::DEFAULT_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let s = Subjects::default();
        assert_eq!(s.jobs(Language::Nodejs), "lambda.jobs.nodejs");
        assert_eq!(s.all_jobs(), "lambda.jobs.>");
        assert_eq!(s.jobs_stream(), "LAMBDA_JOBS");
        let t = Subjects::new("t-1a.x");
        assert_eq!(t.jobs_stream(), "T_1A_X_JOBS");
        assert_eq!(t.heartbeat(), "t-1a.x.workers.heartbeat");
        assert_eq!(s.events(Language::Nodejs), "lambda.events.nodejs");
        assert_eq!(s.events_stream(), "LAMBDA_EVENTS");
        assert_eq!(
            s.results("nodejs-calculator"),
            "lambda.results.nodejs-calculator"
        );
        assert_eq!(s.submit("nodejs-calc"), "lambda.submit.nodejs-calc");
        assert_eq!(s.all_submit(), "lambda.submit.>");
        assert_eq!(
            s.max_deliveries_advisory(Language::Nodejs),
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.LAMBDA_JOBS.workers-nodejs"
        );
        assert_eq!(s.compile(Language::Rust), "lambda.compile.rust");
    }
}
