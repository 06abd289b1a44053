//! Terminal transitions of jobs and the records they produce.
//!
//! Every transition to a terminal status goes through [`finish`]: one
//! statement per batch, guarded by `status IN ('queued', 'running')`, so a
//! job commits exactly one terminal result however often it was run or
//! reported. The records that did transition are then published on
//! `<prefix>.results.<language_title>`.

use schemas::{ErrorCode, JobResult, JobStatus, Subjects};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::HashSet;
use uuid::Uuid;

/// How a job ends.
#[derive(Debug, Clone)]
pub struct Terminal {
    pub job_id: Uuid,
    pub status: JobStatus,
    pub attempt: u32,
    pub worker_id: Option<String>,
    pub result_json: Option<String>,
    pub error: Option<Value>,
    pub logs: Option<Value>,
    pub execution_time_ms: Option<f64>,
}

impl Terminal {
    /// The end a worker's result gives a job.
    pub fn from_result(result: JobResult, attempt: u32, worker_id: String) -> Self {
        let status = JobStatus::of_result(&result);
        let error = result.error.map(|e| {
            let details = e
                .details_json
                .as_deref()
                .and_then(|d| serde_json::from_str::<Value>(d).ok())
                .unwrap_or(Value::Null);
            json!({"code": e.code, "message": e.message, "details": details})
        });
        Self {
            job_id: result.job_id,
            status,
            attempt,
            worker_id: Some(worker_id),
            result_json: result.result_json,
            error,
            logs: Some(json!(result.logs)),
            execution_time_ms: Some(result.execution_time_ms),
        }
    }
}

impl Terminal {
    /// The end of a job whose reported end PostgreSQL refused to hold: the
    /// job fails with the reason, and what could not be stored is dropped.
    fn unstorable(&self, reason: &str) -> Self {
        Self {
            status: JobStatus::Failed,
            result_json: None,
            logs: None,
            error: Some(json!({
                "code": ErrorCode::RuntimeError,
                "message": format!("the job's result could not be stored: {reason}"),
                "details": Value::Null,
            })),
            ..self.clone()
        }
    }
}

/// A job that reached its terminal status in this call.
#[derive(Debug, Clone)]
pub struct Finished {
    pub job_id: Uuid,
    pub language_title: String,
    pub record: Value,
}

/// Applies `ends` (one per job; later duplicates are ignored) in one
/// statement; returns the jobs that actually transitioned.
pub async fn finish(db: &PgPool, ends: &[Terminal]) -> Result<Vec<Finished>, sqlx::Error> {
    let mut seen = HashSet::new();
    let ends: Vec<&Terminal> = ends.iter().filter(|t| seen.insert(t.job_id)).collect();
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = ends.iter().map(|t| t.job_id).collect();
    let statuses: Vec<&str> = ends.iter().map(|t| t.status.as_str()).collect();
    let attempts: Vec<i32> = ends.iter().map(|t| t.attempt as i32).collect();
    let workers: Vec<Option<String>> = ends.iter().map(|t| t.worker_id.clone()).collect();
    let results: Vec<Option<String>> = ends.iter().map(|t| t.result_json.clone()).collect();
    let errors: Vec<Option<String>> = ends
        .iter()
        .map(|t| t.error.as_ref().map(Value::to_string))
        .collect();
    let logs: Vec<Option<String>> = ends
        .iter()
        .map(|t| t.logs.as_ref().map(Value::to_string))
        .collect();
    let times: Vec<Option<f64>> = ends.iter().map(|t| t.execution_time_ms).collect();
    let rows: Vec<(Uuid, String, Value)> = sqlx::query_as(
        "UPDATE jobs j SET status = t.status, attempts = GREATEST(j.attempts, t.attempt),
                worker_id = COALESCE(t.worker, j.worker_id),
                result = t.result::json, error = t.error::json, logs = t.logs::json,
                execution_time_ms = t.ms, finished_at = now(), updated_at = now(),
                started_at = COALESCE(j.started_at,
                    CASE WHEN t.ms IS NULL THEN NULL
                         ELSE now() - make_interval(secs => t.ms / 1000.0) END),
                callback_state = CASE WHEN j.callback_url IS NULL THEN NULL ELSE 'pending' END,
                next_callback_at = now()
         FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::float8[]) AS t(id, status, attempt, worker, result, error, logs, ms)
         WHERE j.job_id = t.id AND j.status IN ('queued', 'running')
         RETURNING j.job_id, j.language_title, job_record(j)",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&attempts)
    .bind(&workers)
    .bind(&results)
    .bind(&errors)
    .bind(&logs)
    .bind(&times)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(job_id, language_title, record)| Finished {
            job_id,
            language_title,
            record,
        })
        .collect())
}

/// [`finish`], where one end that PostgreSQL refuses (text it cannot hold, a
/// value past one of its limits) does not hold back the others: the batch
/// is retried one end at a time, and an end refused on its own is recorded
/// as the job's failure, with the reason. Other errors (the database is
/// away) are returned, for the whole batch to be tried again later.
pub async fn finish_each(db: &PgPool, ends: &[Terminal]) -> Result<Vec<Finished>, sqlx::Error> {
    let error = match finish(db, ends).await {
        Ok(done) => return Ok(done),
        Err(error) => error,
    };
    let Some(reason) = refused_value(&error) else {
        return Err(error);
    };
    if let [end] = ends {
        tracing::warn!(job_id = %end.job_id, %reason, "a job's end could not be stored");
        return finish(db, &[end.unstorable(&reason)]).await;
    }
    let mut finished = Vec::new();
    for end in ends {
        match finish(db, std::slice::from_ref(end)).await {
            Ok(done) => finished.extend(done),
            Err(e) => match refused_value(&e) {
                Some(reason) => {
                    tracing::warn!(job_id = %end.job_id, %reason, "a job's end could not be stored");
                    finished.extend(finish(db, &[end.unstorable(&reason)]).await?);
                }
                None => return Err(e),
            },
        }
    }
    Ok(finished)
}

/// Why PostgreSQL refused a value (SQLSTATE class 22, data exception, or
/// 54, program limit exceeded), or `None` for any other error.
fn refused_value(error: &sqlx::Error) -> Option<String> {
    let db = error.as_database_error()?;
    let code = db.code()?;
    (code.starts_with("22") || code.starts_with("54")).then(|| db.message().to_owned())
}

/// Publishes terminal records on `<prefix>.results.<language_title>` (core
/// NATS: for live listeners; the record itself stays readable in PostgreSQL).
pub async fn publish(client: &async_nats::Client, subjects: &Subjects, finished: &[Finished]) {
    for f in finished {
        let subject = subjects.results(&f.language_title);
        if let Err(e) = client.publish(subject, f.record.to_string().into()).await {
            tracing::warn!(error = %e, job_id = %f.job_id, "terminal record not published");
        }
    }
}
