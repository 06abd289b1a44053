//! Asynchronous jobs as the API stores and publishes them.
//!
//! A job row is committed before the caller hears `202`; the job is then
//! published on its language's JetStream subject with `Nats-Msg-Id` = job id.
//! If publishing fails the row stays `queued` and the dispatcher's sweeper
//! publishes it later, so a 202 is never a lost job.

use crate::error::ApiError;
use async_nats::{jetstream, HeaderMap};
use schemas::{callback::CallbackTarget, codec, Job, Language, Subjects};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The most jobs one batch request may carry.
pub const MAX_BATCH: usize = 10_000;

/// A job ready to be stored and published.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub job_id: Uuid,
    pub batch_id: Option<Uuid>,
    pub owner: String,
    pub request_id: Option<Uuid>,
    pub language: Language,
    pub language_title: String,
    pub script_hash: String,
    pub script: String,
    pub params_json: String,
    pub context_json: String,
    pub timeout_ms: u64,
    pub memory_mb: u32,
    pub callback_url: Option<String>,
    pub idempotency_key: Option<String>,
    /// Times the job was published before (0 for a new job).
    pub generation: i32,
}

impl NewJob {
    /// The message a worker receives.
    pub fn message(&self) -> Job {
        Job {
            job_id: self.job_id,
            request_id: self.request_id,
            language: self.language,
            language_title: self.language_title.clone(),
            owner: self.owner.clone(),
            script_hash: self.script_hash.clone(),
            script: self.script.clone(),
            params_json: self.params_json.clone(),
            context_json: self.context_json.clone(),
            timeout_ms: self.timeout_ms,
            memory_mb: self.memory_mb,
            deadline_ms: 0,
            reply_to: None,
            report_events: true,
        }
    }
}

/// Inserts `jobs` in one statement. Jobs whose idempotency key is taken are
/// skipped; returns the ids actually inserted.
pub async fn insert(db: &PgPool, jobs: &[NewJob]) -> Result<Vec<Uuid>, sqlx::Error> {
    let col = |f: fn(&NewJob) -> String| jobs.iter().map(f).collect::<Vec<_>>();
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.job_id).collect();
    let batches: Vec<Option<Uuid>> = jobs.iter().map(|j| j.batch_id).collect();
    let requests: Vec<Option<Uuid>> = jobs.iter().map(|j| j.request_id).collect();
    let timeouts: Vec<i64> = jobs.iter().map(|j| j.timeout_ms as i64).collect();
    let memories: Vec<i32> = jobs.iter().map(|j| j.memory_mb as i32).collect();
    let callbacks: Vec<Option<String>> = jobs.iter().map(|j| j.callback_url.clone()).collect();
    let keys: Vec<Option<String>> = jobs.iter().map(|j| j.idempotency_key.clone()).collect();
    sqlx::query_scalar(
        "INSERT INTO jobs (job_id, batch_id, owner, request_id, language, language_title,
                           script_hash, params, context, timeout_ms, memory_mb,
                           callback_url, idempotency_key)
         SELECT id, batch, owner, request, language, lt, hash, params::json, context::json,
                timeout, memory, callback, key
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::text[], $10::bigint[], $11::int[],
                     $12::text[], $13::text[])
              AS t(id, batch, owner, request, language, lt, hash, params, context,
                   timeout, memory, callback, key)
         ON CONFLICT DO NOTHING
         RETURNING job_id",
    )
    .bind(&ids)
    .bind(&batches)
    .bind(col(|j| j.owner.clone()))
    .bind(&requests)
    .bind(col(|j| j.language.as_str().to_owned()))
    .bind(col(|j| j.language_title.clone()))
    .bind(col(|j| j.script_hash.clone()))
    .bind(col(|j| j.params_json.clone()))
    .bind(col(|j| j.context_json.clone()))
    .bind(&timeouts)
    .bind(&memories)
    .bind(&callbacks)
    .bind(&keys)
    .fetch_all(db)
    .await
}

/// Inserts one job under an `Idempotency-Key`: returns the job id and whether
/// it is new. A key used in the last 24 h returns that first job; an older
/// use of the key is released.
pub async fn insert_idempotent(db: &PgPool, job: &NewJob) -> Result<(Uuid, bool), sqlx::Error> {
    let Some(key) = &job.idempotency_key else {
        insert(db, std::slice::from_ref(job)).await?;
        return Ok((job.job_id, true));
    };
    for _ in 0..2 {
        if insert(db, std::slice::from_ref(job))
            .await?
            .contains(&job.job_id)
        {
            return Ok((job.job_id, true));
        }
        let first: Option<(Uuid, bool)> = sqlx::query_as(
            "SELECT job_id, created_at > now() - interval '24 hours' FROM jobs
             WHERE owner = $1 AND idempotency_key = $2",
        )
        .bind(&job.owner)
        .bind(key)
        .fetch_optional(db)
        .await?;
        match first {
            Some((id, true)) => return Ok((id, false)),
            Some((id, false)) => {
                sqlx::query("UPDATE jobs SET idempotency_key = NULL WHERE job_id = $1")
                    .bind(id)
                    .execute(db)
                    .await?;
            }
            None => {}
        }
    }
    Err(sqlx::Error::Protocol(
        "idempotency key kept changing".into(),
    ))
}

/// Publishes the jobs on JetStream and records where the stream put them.
/// Failures are logged, not returned: the rows are committed and the sweeper
/// publishes whatever did not make it.
pub async fn publish(js: &jetstream::Context, subjects: &Subjects, db: &PgPool, jobs: &[NewJob]) {
    let mut acks = Vec::with_capacity(jobs.len());
    for job in jobs {
        let payload = match codec::encode(&job.message()) {
            Ok(payload) => payload,
            Err(e) => return tracing::error!(error = %e, "encoding a job"),
        };
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id(job.job_id, job.generation).as_str());
        let subject = subjects.jobs(job.language);
        match js
            .publish_with_headers(subject, headers, payload.into())
            .await
        {
            Ok(ack) => acks.push((job.job_id, ack)),
            Err(e) => {
                tracing::warn!(error = %e, "jobs not published now; the sweeper will");
                break;
            }
        }
    }
    let acked = futures::future::join_all(
        acks.into_iter()
            .map(|(id, ack)| async move { ack.await.ok().map(|ack| (id, ack.sequence as i64)) }),
    )
    .await;
    let (ids, seqs): (Vec<Uuid>, Vec<i64>) = acked.into_iter().flatten().unzip();
    if ids.len() < jobs.len() {
        tracing::warn!(
            unpublished = jobs.len() - ids.len(),
            "jobs not acknowledged by JetStream; the sweeper will republish them"
        );
    }
    let recorded = sqlx::query(
        "UPDATE jobs j SET published_seq = t.seq
         FROM unnest($1::uuid[], $2::bigint[]) AS t(id, seq)
         WHERE j.job_id = t.id AND j.published_seq IS NULL",
    )
    .bind(&ids)
    .bind(&seqs)
    .execute(db)
    .await;
    if let Err(e) = recorded {
        tracing::warn!(error = %e, "stream positions of published jobs not recorded");
    }
}

/// The `Nats-Msg-Id` of publish number `generation` of a job: the job id
/// itself the first time, so duplicate publishes of one generation collapse.
pub fn msg_id(job_id: Uuid, generation: i32) -> String {
    match generation {
        0 => job_id.to_string(),
        n => format!("{job_id}.{n}"),
    }
}

/// Loads a stored job back into a publishable [`NewJob`].
pub async fn load(db: &PgPool, id: Uuid) -> Result<Option<NewJob>, sqlx::Error> {
    let row: Option<StoredJob> = sqlx::query_as(
        "SELECT j.job_id, j.batch_id, j.owner, j.request_id, j.language, j.language_title,
                j.script_hash, s.content AS script, j.params::text AS params_json,
                j.context::text AS context_json, j.timeout_ms, j.memory_mb, j.generation
         FROM jobs j JOIN scripts s ON s.hash = j.script_hash WHERE j.job_id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(row.and_then(|r| {
        Some(NewJob {
            job_id: r.job_id,
            batch_id: r.batch_id,
            owner: r.owner,
            request_id: r.request_id,
            language: r.language.parse().ok()?,
            language_title: r.language_title,
            script_hash: r.script_hash,
            script: r.script,
            params_json: r.params_json,
            context_json: r.context_json,
            timeout_ms: r.timeout_ms as u64,
            memory_mb: r.memory_mb as u32,
            callback_url: None,
            idempotency_key: None,
            generation: r.generation,
        })
    }))
}

#[derive(sqlx::FromRow)]
struct StoredJob {
    job_id: Uuid,
    batch_id: Option<Uuid>,
    owner: String,
    request_id: Option<Uuid>,
    language: String,
    language_title: String,
    script_hash: String,
    script: String,
    params_json: String,
    context_json: String,
    timeout_ms: i64,
    memory_mb: i32,
    generation: i32,
}

/// The record of job `id` as callers see it, if it exists.
pub async fn record(db: &PgPool, owner: &str, id: Uuid) -> Result<Option<Value>, sqlx::Error> {
    sqlx::query_scalar("SELECT job_record(j) FROM jobs j WHERE job_id = $1 AND owner = $2")
        .bind(id)
        .bind(owner)
        .fetch_optional(db)
        .await
}

/// Checks a callback URL: well formed and, unless `allow_private`, resolving
/// only to public addresses.
pub async fn check_callback_url(url: &str, allow_private: bool) -> Result<(), ApiError> {
    let target = CallbackTarget::parse(url).map_err(ApiError::invalid_request)?;
    if allow_private {
        return Ok(());
    }
    let addrs: Vec<_> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|_| ApiError::invalid_request(format!("cannot resolve {}", target.host)))?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !schemas::callback::is_public(a.ip())) {
        return Err(ApiError::invalid_request(
            "callback_url must resolve to public addresses only",
        ));
    }
    Ok(())
}
