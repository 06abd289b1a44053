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
        assert_eq!(s.compile(Language::Rust), "lambda.compile.rust");
    }
}
