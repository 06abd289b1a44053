//! What becomes of an asynchronous job: the events workers report on
//! `<prefix>.events.<language>`, the statuses a job moves through, and the
//! terminal record published on `<prefix>.results.<language_title>`, answered
//! by `GET /api/v1/jobs/{job_id}` and POSTed to callbacks.

use crate::{ErrorCode, JobResult};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One report of a worker about an asynchronous job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub job_id: Uuid,
    /// JetStream's delivery count of the job message this report is about.
    pub attempt: u32,
    pub worker_id: String,
    /// `None`: the job started; `Some`: it finished with this result.
    #[serde(default)]
    pub result: Option<JobResult>,
}

/// Where a job is in its life: `queued → running → succeeded | failed |
/// timed_out | cancelled | dead`. Terminal statuses never change again
/// (except `dead`, which an explicit retry puts back to `queued`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Dead,
}

impl JobStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [JobStatus; 7] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::TimedOut,
        Self::Cancelled,
        Self::Dead,
    ];

    /// The name stored in PostgreSQL and shown to callers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::Dead => "dead",
        }
    }

    /// Whether the job is over.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    /// The terminal status a worker's result puts a job in.
    pub fn of_result(result: &JobResult) -> Self {
        match &result.error {
            None => Self::Succeeded,
            Some(e) if e.code == ErrorCode::Timeout => Self::TimedOut,
            Some(_) => Self::Failed,
        }
    }
}

impl std::str::FromStr for JobStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown job status '{s}'"))
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        codec::{decode, encode},
        JobError,
    };

    #[test]
    fn events_round_trip() {
        let started = JobEvent {
            job_id: Uuid::now_v7(),
            attempt: 1,
            worker_id: "w".into(),
            result: None,
        };
        assert_eq!(
            decode::<JobEvent>(&encode(&started).unwrap()).unwrap(),
            started
        );
        let finished = JobEvent {
            result: Some(JobResult::success(started.job_id, "8".into(), 1.5, vec![])),
            ..started
        };
        assert_eq!(
            decode::<JobEvent>(&encode(&finished).unwrap()).unwrap(),
            finished
        );
    }

    #[test]
    fn statuses_name_and_classify() {
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>().unwrap(), status);
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{status}\""));
        }
        assert!(!JobStatus::Running.is_terminal());
        assert!(JobStatus::Dead.is_terminal());
        let id = Uuid::nil();
        let timeout = JobResult::failure(id, JobError::new(ErrorCode::Timeout, "t"), 1.0, vec![]);
        assert_eq!(JobStatus::of_result(&timeout), JobStatus::TimedOut);
        let thrown =
            JobResult::failure(id, JobError::new(ErrorCode::RuntimeError, "x"), 1.0, vec![]);
        assert_eq!(JobStatus::of_result(&thrown), JobStatus::Failed);
        let ok = JobResult::success(id, "1".into(), 1.0, vec![]);
        assert_eq!(JobStatus::of_result(&ok), JobStatus::Succeeded);
    }
}
