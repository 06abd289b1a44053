//! The execute job and its result.
//!
//! Parameters, context and results travel as JSON text: the API already holds
//! them as JSON and the runtimes speak JSON, so nothing re-encodes them on the way.

use crate::{ErrorCode, Language};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// One execution of a script, as published on `<prefix>.jobs.<language>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub job_id: Uuid,
    /// The session the job runs in, when it came through one.
    #[serde(default)]
    pub request_id: Option<Uuid>,
    pub language: Language,
    pub language_title: String,
    /// Who the script belongs to: a warm process never runs two owners' code.
    pub owner: String,
    /// `script_hash(language, script)`: runtimes cache compiled scripts by it.
    pub script_hash: String,
    pub script: String,
    /// The execute body's `params`, as JSON text.
    pub params_json: String,
    /// The session's context, as JSON text.
    pub context_json: String,
    pub timeout_ms: u64,
    pub memory_mb: u32,
    /// Unix time in milliseconds after which nobody waits for the result any
    /// more; a worker drops a job it receives later than that. 0: no deadline.
    #[serde(default)]
    pub deadline_ms: u64,
    /// Core NATS subject the result is published to, for a caller that waits.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// An asynchronous job: the worker reports a `started` event and its
    /// result on the events stream (`<prefix>.events.<language>`) for the
    /// dispatcher to record, and acks the job only once the result is stored.
    #[serde(default)]
    pub report_events: bool,
}

/// What a worker answers for a job: exactly one of `result_json` and `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub job_id: Uuid,
    /// The script's result as JSON text, when it succeeded.
    #[serde(default)]
    pub result_json: Option<String>,
    #[serde(default)]
    pub error: Option<JobError>,
    /// Wall-clock time the script ran, in milliseconds.
    pub execution_time_ms: f64,
    /// What the script printed, bounded.
    #[serde(default)]
    pub logs: Vec<String>,
    #[serde(default)]
    pub worker_id: String,
}

impl JobResult {
    /// A successful result.
    pub fn success(
        job_id: Uuid,
        result_json: String,
        execution_time_ms: f64,
        logs: Vec<String>,
    ) -> Self {
        Self {
            job_id,
            result_json: Some(result_json),
            error: None,
            execution_time_ms,
            logs,
            worker_id: String::new(),
        }
    }

    /// A failed result.
    pub fn failure(
        job_id: Uuid,
        error: JobError,
        execution_time_ms: f64,
        logs: Vec<String>,
    ) -> Self {
        Self {
            job_id,
            result_json: None,
            error: Some(error),
            execution_time_ms,
            logs,
            worker_id: String::new(),
        }
    }
}

/// Why a job failed, in the terms of the REST contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub code: ErrorCode,
    pub message: String,
    /// Message, line, stack and the like, as JSON text.
    #[serde(default)]
    pub details_json: Option<String>,
}

impl JobError {
    /// An error without details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details_json: None,
        }
    }

    /// Attaches details.
    pub fn with_details(mut self, details: &serde_json::Value) -> Self {
        self.details_json = Some(details.to_string());
        self
    }
}

/// The content hash runtimes cache compiled scripts by: SHA-256 over the
/// language and the source, hex encoded.
pub fn script_hash(language: Language, script: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(language.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(script.as_bytes());
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    fn job() -> Job {
        Job {
            job_id: Uuid::now_v7(),
            request_id: Some(Uuid::new_v4()),
            language: Language::Nodejs,
            language_title: "nodejs-calculator".into(),
            owner: "anonymous".into(),
            script_hash: script_hash(Language::Nodejs, "return 1;"),
            script: "return 1;".into(),
            params_json: r#"{"a":5,"b":3}"#.into(),
            context_json: r#"{"env":"production"}"#.into(),
            timeout_ms: 30_000,
            memory_mb: 128,
            deadline_ms: 1_700_000_000_000,
            reply_to: Some("lambda.replies.x".into()),
            report_events: true,
        }
    }

    #[test]
    fn job_round_trips() {
        let job = job();
        assert_eq!(decode::<Job>(&encode(&job).unwrap()).unwrap(), job);
    }

    #[test]
    fn results_round_trip() {
        let ok = JobResult::success(Uuid::now_v7(), "8".into(), 0.4, vec!["hi".into()]);
        assert_eq!(decode::<JobResult>(&encode(&ok).unwrap()).unwrap(), ok);
        let err = JobResult::failure(
            Uuid::now_v7(),
            JobError::new(ErrorCode::RuntimeError, "boom")
                .with_details(&serde_json::json!({"line": 3})),
            1.0,
            vec![],
        );
        assert_eq!(decode::<JobResult>(&encode(&err).unwrap()).unwrap(), err);
    }

    #[test]
    fn older_readers_and_writers_interoperate() {
        // A job without the optional fields (an older producer) still decodes.
        #[derive(Serialize)]
        struct Minimal<'a> {
            job_id: Uuid,
            language: &'a str,
            language_title: &'a str,
            owner: &'a str,
            script_hash: &'a str,
            script: &'a str,
            params_json: &'a str,
            context_json: &'a str,
            timeout_ms: u64,
            memory_mb: u32,
            added_later: bool,
        }
        let bytes = encode(&Minimal {
            job_id: Uuid::nil(),
            language: "python",
            language_title: "python-x",
            owner: "o",
            script_hash: "h",
            script: "result = 1",
            params_json: "{}",
            context_json: "{}",
            timeout_ms: 1,
            memory_mb: 1,
            added_later: true,
        })
        .unwrap();
        let job: Job = decode(&bytes).unwrap();
        assert_eq!(job.language, Language::Python);
        assert_eq!(job.deadline_ms, 0);
        assert_eq!(job.reply_to, None);
        assert!(!job.report_events);
    }

    #[test]
    fn hash_depends_on_language_and_source() {
        let a = script_hash(Language::Nodejs, "x");
        assert_eq!(a.len(), 64);
        assert_ne!(a, script_hash(Language::Python, "x"));
        assert_ne!(a, script_hash(Language::Nodejs, "y"));
        assert_eq!(a, script_hash(Language::Nodejs, "x"));
    }
}
