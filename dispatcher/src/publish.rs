//! (Re)publishes stored jobs on their language's JetStream subject.
//!
//! Each publish of a job bumps its `generation`, which is part of the
//! `Nats-Msg-Id` (`<job_id>` the first time, `<job_id>.<n>` after), so that
//! a republish is not dropped as a duplicate of an earlier publish, while a
//! repeated publish of the same generation is.

use async_nats::{jetstream, HeaderMap};
use schemas::{codec, Job, Subjects};
use sqlx::PgPool;
use uuid::Uuid;

/// The `Nats-Msg-Id` of publish number `generation` of a job.
pub fn msg_id(job_id: Uuid, generation: i32) -> String {
    match generation {
        0 => job_id.to_string(),
        n => format!("{job_id}.{n}"),
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    job_id: Uuid,
    generation: i32,
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
}

impl Row {
    fn job(self) -> Option<Job> {
        Some(Job {
            job_id: self.job_id,
            request_id: self.request_id,
            language: self.language.parse().ok()?,
            language_title: self.language_title,
            owner: self.owner,
            script_hash: self.script_hash,
            script: self.script,
            params_json: self.params_json,
            context_json: self.context_json,
            timeout_ms: u64::try_from(self.timeout_ms).unwrap_or(0),
            memory_mb: u32::try_from(self.memory_mb).unwrap_or(0),
            deadline_ms: 0,
            reply_to: None,
            report_events: true,
        })
    }
}

/// Publishes the next generation of each of `ids` that is still open, and
/// records the stream position; returns how many JetStream accepted.
pub async fn republish(
    db: &PgPool,
    js: &jetstream::Context,
    subjects: &Subjects,
    ids: &[Uuid],
) -> anyhow::Result<usize> {
    let rows: Vec<Row> = sqlx::query_as(
        "WITH bumped AS (
             UPDATE jobs SET generation = generation + 1, updated_at = now()
             WHERE job_id = ANY($1) AND status IN ('queued', 'running')
             RETURNING *)
         SELECT b.job_id, b.generation, b.owner, b.request_id, b.language, b.language_title,
                b.script_hash, s.content AS script, b.params::text AS params_json,
                b.context::text AS context_json, b.timeout_ms, b.memory_mb
         FROM bumped b JOIN scripts s ON s.hash = b.script_hash",
    )
    .bind(ids)
    .fetch_all(db)
    .await?;
    let mut acks = Vec::new();
    for row in rows {
        let generation = row.generation;
        let Some(job) = row.job() else { continue };
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id(job.job_id, generation).as_str());
        let payload = codec::encode(&job)?;
        let ack = js
            .publish_with_headers(subjects.jobs(job.language), headers, payload.into())
            .await?;
        acks.push((job.job_id, ack));
    }
    let acked = futures::future::join_all(
        acks.into_iter()
            .map(|(id, ack)| async move { ack.await.ok().map(|a| (id, a.sequence as i64)) }),
    )
    .await;
    let (ids, seqs): (Vec<Uuid>, Vec<i64>) = acked.into_iter().flatten().unzip();
    sqlx::query(
        "UPDATE jobs j SET published_seq = t.seq FROM unnest($1::uuid[], $2::bigint[]) AS t(id, seq)
         WHERE j.job_id = t.id",
    )
    .bind(&ids)
    .bind(&seqs)
    .execute(db)
    .await?;
    Ok(ids.len())
}
