//! Jobs published straight onto NATS by producers (`<prefix>.submit.<language_title>`).
//!
//! Dispatchers share the subscription (queue group `dispatchers`). A valid
//! submission is stored as a job and published like any other; the reply (when
//! the message has a reply subject) is `{"job_id","status"}`. An invalid one is
//! answered with `{"error":{code,message}}` and kept in `rejected_submissions`,
//! never silently dropped. `job_id` or a `Nats-Msg-Id` header makes a
//! resubmission return the first job.

mod resolve;

use crate::{metrics::Metrics, publish};
use async_nats::{jetstream, Message};
use backoff::{future::retry, ExponentialBackoffBuilder};
use schemas::{
    codec,
    submit::{SubmitError, SubmitReply, SubmitRequest, MSGPACK_CONTENT_TYPE},
    ErrorCode, LanguageTitle, Subjects,
};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

pub use resolve::Limits;

/// Queue group of the dispatchers' submit subscription.
pub const QUEUE_GROUP: &str = "dispatchers";

/// How long a submission waits for PostgreSQL before it is refused.
const STORE_PATIENCE: Duration = Duration::from_secs(30);

/// Handles direct submissions; drive it with [`Submissions::handle`].
#[derive(Clone)]
pub struct Submissions {
    pub db: PgPool,
    pub js: jetstream::Context,
    pub client: async_nats::Client,
    pub subjects: Subjects,
    pub limits: Limits,
    pub callback_allow_private: bool,
    /// Whose jobs, sessions and functions direct submissions are (`SUBMIT_OWNER`).
    pub owner: String,
    pub metrics: Arc<Metrics>,
}

/// Why a submission was refused.
#[derive(Clone)]
pub(crate) struct Refusal {
    code: ErrorCode,
    message: String,
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<sqlx::Error> for Refusal {
    fn from(err: sqlx::Error) -> Self {
        tracing::error!(error = %err, "storing a submission");
        Self::new(
            ErrorCode::Unavailable,
            "the job could not be stored; submit it again",
        )
    }
}

impl Submissions {
    /// Handles submissions that arrived together: stores their jobs in one
    /// statement and publishes them, or records the refusals; replies to
    /// those that ask for it. Returns the replies, in order.
    pub async fn handle_batch(&self, messages: &[Message]) -> Vec<SubmitReply> {
        let functions = Mutex::new(HashMap::new());
        let mut prepared = Vec::with_capacity(messages.len());
        for message in messages {
            prepared.push(patiently(|| self.prepare(message, &functions)).await);
        }
        let ready: Vec<&resolve::Submission> =
            prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
        let stored =
            patiently(|| async { Ok::<_, Refusal>(resolve::insert(&self.db, &ready).await?) })
                .await
                .map(|ids| ids.into_iter().collect::<HashSet<Uuid>>());
        let mut outcomes = Vec::with_capacity(messages.len());
        let mut published = Vec::new();
        for submission in prepared {
            let outcome = match (submission, &stored) {
                (Err(refusal), _) => Err(refusal),
                (Ok(_), Err(refusal)) => Err(refusal.clone()),
                (Ok(job), Ok(inserted)) if inserted.contains(&job.job_id) => {
                    published.push(job.job_id);
                    Ok((job.job_id, "queued".to_owned()))
                }
                (Ok(job), Ok(_)) => patiently(|| self.first_of(&job)).await,
            };
            outcomes.push(outcome);
        }
        if !published.is_empty() {
            let sent = publish::republish(&self.db, &self.js, &self.subjects, &published).await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "submitted jobs not published now; the sweeper will");
            }
        }
        let mut replies = Vec::with_capacity(messages.len());
        for (message, outcome) in messages.iter().zip(outcomes) {
            let reply = match outcome {
                Ok((job_id, status)) => {
                    self.metrics.submission(None);
                    SubmitReply::Accepted { job_id, status }
                }
                Err(refusal) => {
                    self.metrics.submission(Some(refusal.code));
                    self.record_refusal(message, &refusal).await;
                    SubmitReply::Refused {
                        error: SubmitError {
                            code: refusal.code,
                            message: refusal.message,
                        },
                    }
                }
            };
            if let Some(reply_to) = &message.reply {
                let body = serde_json::to_vec(&reply).unwrap_or_default();
                if let Err(e) = self.client.publish(reply_to.clone(), body.into()).await {
                    tracing::warn!(error = %e, "submission reply not sent");
                }
            }
            replies.push(reply);
        }
        replies
    }

    /// Handles one submission (see [`Submissions::handle_batch`]).
    pub async fn handle(&self, message: &Message) -> SubmitReply {
        let mut replies = self.handle_batch(std::slice::from_ref(message)).await;
        replies.pop().expect("one reply per submission")
    }

    /// The job a submission asks for, not yet stored.
    async fn prepare(
        &self,
        message: &Message,
        functions: &Mutex<HashMap<String, String>>,
    ) -> Result<resolve::Submission, Refusal> {
        let prefix = format!("{}.submit.", self.subjects.prefix());
        let title: LanguageTitle = message
            .subject
            .as_str()
            .strip_prefix(&prefix)
            .unwrap_or_default()
            .parse()
            .map_err(|e: schemas::LanguageTitleError| {
                Refusal::new(ErrorCode::InvalidRequest, e.to_string())
            })?;
        let request = decode(message)?;
        let msg_id = header(message, "Nats-Msg-Id");
        let job_id = request
            .job_id
            .or_else(|| msg_id.as_deref().and_then(|m| m.parse().ok()))
            .unwrap_or_else(Uuid::now_v7);
        let key = msg_id
            .filter(|m| m.parse::<Uuid>().is_err())
            .map(|m| format!("nats:{m}"));
        self.resolve(&title, request, job_id, key, functions).await
    }

    /// The job stored first for a resubmission (same id or idempotency key).
    async fn first_of(&self, job: &resolve::Submission) -> Result<(Uuid, String), Refusal> {
        let first: Option<(Uuid, String)> = sqlx::query_as(
            "SELECT job_id, status FROM jobs
             WHERE job_id = $1 OR (owner = $2 AND idempotency_key = $3)
             ORDER BY job_id = $1 DESC LIMIT 1",
        )
        .bind(job.job_id)
        .bind(&job.owner)
        .bind(&job.idempotency_key)
        .fetch_optional(&self.db)
        .await?;
        first.ok_or_else(|| Refusal::new(ErrorCode::Unavailable, "submit it again"))
    }

    async fn record_refusal(&self, message: &Message, refusal: &Refusal) {
        tracing::info!(subject = %message.subject, code = %refusal.code, "submission refused");
        let stored = sqlx::query(
            "INSERT INTO rejected_submissions (subject, payload, code, message) VALUES ($1, $2, $3, $4)",
        )
        .bind(message.subject.as_str())
        .bind(message.payload.as_ref())
        .bind(refusal.code.as_str())
        .bind(&refusal.message)
        .execute(&self.db)
        .await;
        if let Err(e) = stored {
            tracing::error!(error = %e, subject = %message.subject, "refused submission not recorded");
        }
    }
}

/// Runs `step`, trying again while PostgreSQL is unavailable (for up to
/// [`STORE_PATIENCE`]): a submission is refused for what it is, not lost to
/// a passing outage.
async fn patiently<T, F, Fut>(mut step: F) -> Result<T, Refusal>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Refusal>>,
{
    let policy = ExponentialBackoffBuilder::new()
        .with_initial_interval(Duration::from_millis(100))
        .with_max_interval(Duration::from_secs(2))
        .with_max_elapsed_time(Some(STORE_PATIENCE))
        .build();
    retry(policy, || {
        let attempt = step();
        async move {
            attempt.await.map_err(|refusal| {
                if refusal.code == ErrorCode::Unavailable {
                    backoff::Error::transient(refusal)
                } else {
                    backoff::Error::permanent(refusal)
                }
            })
        }
    })
    .await
}

fn decode(message: &Message) -> Result<SubmitRequest, Refusal> {
    let msgpack = header(message, "Content-Type")
        .is_some_and(|v| v.eq_ignore_ascii_case(MSGPACK_CONTENT_TYPE));
    let decoded = if msgpack {
        codec::decode::<SubmitRequest>(&message.payload).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<SubmitRequest>(&message.payload).map_err(|e| e.to_string())
    };
    decoded.map_err(|e| {
        Refusal::new(
            ErrorCode::InvalidRequest,
            format!("invalid submission: {e}"),
        )
    })
}

/// A header's value, its name compared without regard to case.
fn header(message: &Message, name: &str) -> Option<String> {
    let (_, values) = message
        .headers
        .as_ref()?
        .iter()
        .find(|(n, _)| AsRef::<str>::as_ref(*n).eq_ignore_ascii_case(name))?;
    values.first().map(|v| v.as_str().to_owned())
}
