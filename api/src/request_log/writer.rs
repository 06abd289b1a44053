//! The background writer of request logs: takes entries from the channel
//! into a bounded buffer and inserts them in batches, one statement per batch
//! for both tables. A failed batch goes back to the front of the buffer and is
//! retried with backoff while entries keep arriving; beyond the buffer's
//! capacity the oldest entries are dropped and counted.

use super::entry::Entry;
use crate::metrics::Metrics;
use futures::future::BoxFuture;
use sqlx::PgPool;
use std::{collections::VecDeque, sync::Arc, time::Duration};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

/// Most entries inserted by one statement.
const BATCH: usize = 1000;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

type Write = BoxFuture<'static, (Vec<Entry>, Result<(), sqlx::Error>)>;

struct Buffer {
    entries: VecDeque<Entry>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl Buffer {
    fn push(&mut self, entry: Entry) {
        self.entries.push_back(entry);
        self.trim();
    }

    /// Puts a batch that was not written back in front, in order.
    fn requeue(&mut self, batch: Vec<Entry>) {
        for entry in batch.into_iter().rev() {
            self.entries.push_front(entry);
        }
        self.trim();
    }

    /// Drops the oldest entries beyond the capacity.
    fn trim(&mut self) {
        let excess = self.entries.len().saturating_sub(self.capacity);
        if excess > 0 {
            self.entries.drain(..excess);
            self.metrics.request_logs_dropped(excess as u64);
        }
    }

    fn take_batch(&mut self) -> Vec<Entry> {
        let n = self.entries.len().min(BATCH);
        self.entries.drain(..n).collect()
    }
}

/// Writes until `shutdown`, then writes what is left once.
pub(super) async fn run(
    mut receiver: mpsc::Receiver<Entry>,
    db: PgPool,
    capacity: usize,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut buffer = Buffer {
        entries: VecDeque::new(),
        capacity,
        metrics,
    };
    let mut writing: Option<Write> = None;
    let mut retry_at: Option<Instant> = None;
    let mut failures = 0u32;
    loop {
        if writing.is_none() && retry_at.is_none() && !buffer.entries.is_empty() {
            writing = Some(start_write(db.clone(), buffer.take_batch()));
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            received = receiver.recv() => match received {
                Some(entry) => {
                    buffer.push(entry);
                    while let Ok(entry) = receiver.try_recv() {
                        buffer.push(entry);
                    }
                }
                None => break,
            },
            (batch, result) = async {
                match writing.as_mut() {
                    Some(write) => write.await,
                    None => std::future::pending().await,
                }
            } => {
                writing = None;
                match result {
                    Ok(()) => {
                        if failures > 0 {
                            tracing::info!(pending = buffer.entries.len(), "request logs written again");
                        }
                        failures = 0;
                    }
                    Err(err) if is_permanent(&err) => {
                        tracing::error!(error = %err, entries = batch.len(), "request logs refused; dropped");
                        buffer.metrics.request_logs_dropped(batch.len() as u64);
                    }
                    Err(err) => {
                        failures = failures.saturating_add(1);
                        if failures == 1 {
                            tracing::warn!(error = %err, "request logs not written; buffering and retrying");
                        }
                        buffer.requeue(batch);
                        retry_at = Some(Instant::now() + backoff(failures));
                    }
                }
            },
            () = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => retry_at = None,
        }
    }
    finish(receiver, db, buffer, writing).await;
}

/// At shutdown: the batch in flight, then what is buffered and queued, each
/// tried once; whatever cannot be written is counted as dropped.
async fn finish(
    mut receiver: mpsc::Receiver<Entry>,
    db: PgPool,
    mut buffer: Buffer,
    writing: Option<Write>,
) {
    if let Some(write) = writing {
        let (batch, result) = write.await;
        if result.is_err() {
            buffer.requeue(batch);
        }
    }
    receiver.close();
    while let Ok(entry) = receiver.try_recv() {
        buffer.push(entry);
    }
    while !buffer.entries.is_empty() {
        let batch = buffer.take_batch();
        if let Err(err) = insert(&db, &batch).await {
            let lost = batch.len() + buffer.entries.len();
            tracing::warn!(error = %err, entries = lost, "request logs lost at shutdown");
            buffer.metrics.request_logs_dropped(lost as u64);
            return;
        }
    }
}

fn start_write(db: PgPool, batch: Vec<Entry>) -> Write {
    Box::pin(async move {
        let result = insert(&db, &batch).await;
        (batch, result)
    })
}

fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// Errors retrying cannot cure: the rows themselves are refused.
fn is_permanent(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(e) => e
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        _ => false,
    }
}

/// Inserts a batch into `request_logs` and its failures into `error_logs`,
/// in one statement; rows already there (a retry after an answer that was
/// lost) are skipped.
async fn insert(db: &PgPool, batch: &[Entry]) -> Result<(), sqlx::Error> {
    let col = |f: fn(&Entry) -> Option<String>| batch.iter().map(f).collect::<Vec<_>>();
    let errors: Vec<(&Entry, &super::entry::ErrorEntry)> = batch
        .iter()
        .filter_map(|e| Some((e, e.error.as_ref().filter(|err| err.server_side)?)))
        .collect();
    sqlx::query(
        "WITH r AS (
             INSERT INTO request_logs (id, created_at, method, route, path, status_code,
                 duration_ms, owner, request_id, job_id, language_title, client_ip, user_agent,
                 request_headers, error_code, error_message)
             SELECT id, at, method, route, path, status, ms, owner, rid, jid, lt, ip, ua,
                    h::jsonb, code, msg
             FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
                         $6::int[], $7::float8[], $8::text[], $9::uuid[], $10::uuid[],
                         $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
                         $16::text[])
                  AS t(id, at, method, route, path, status, ms, owner, rid, jid, lt, ip, ua,
                       h, code, msg)
             ON CONFLICT (id) DO NOTHING
         )
         INSERT INTO error_logs (id, request_log_id, created_at, error_code, error_message,
                                 stack_trace, details)
         SELECT id, rid, at, code, msg, stack, d::jsonb
         FROM unnest($17::uuid[], $18::uuid[], $19::timestamptz[], $20::text[], $21::text[],
                     $22::text[], $23::text[]) AS e(id, rid, at, code, msg, stack, d)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(batch.iter().map(|e| e.id).collect::<Vec<_>>())
    .bind(batch.iter().map(|e| e.created_at).collect::<Vec<_>>())
    .bind(col(|e| Some(e.method.clone())))
    .bind(col(|e| Some(e.route.clone())))
    .bind(col(|e| Some(e.path.clone())))
    .bind(batch.iter().map(|e| e.status).collect::<Vec<_>>())
    .bind(batch.iter().map(|e| e.duration_ms).collect::<Vec<_>>())
    .bind(col(|e| e.owner.clone()))
    .bind(batch.iter().map(|e| e.request_id).collect::<Vec<_>>())
    .bind(batch.iter().map(|e| e.job_id).collect::<Vec<_>>())
    .bind(col(|e| e.language_title.clone()))
    .bind(col(|e| e.client_ip.clone()))
    .bind(col(|e| e.user_agent.clone()))
    .bind(col(|e| Some(e.headers_json.clone())))
    .bind(col(|e| e.error.as_ref().map(|err| err.code.clone())))
    .bind(col(|e| e.error.as_ref().map(|err| err.message.clone())))
    .bind(errors.iter().map(|(_, err)| err.id).collect::<Vec<_>>())
    .bind(errors.iter().map(|(e, _)| e.id).collect::<Vec<_>>())
    .bind(errors.iter().map(|(e, _)| e.created_at).collect::<Vec<_>>())
    .bind(
        errors
            .iter()
            .map(|(_, err)| err.code.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        errors
            .iter()
            .map(|(_, err)| err.message.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        errors
            .iter()
            .map(|(_, err)| err.stack.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        errors
            .iter()
            .map(|(_, err)| err.details_json.clone())
            .collect::<Vec<_>>(),
    )
    .execute(db)
    .await?;
    Ok(())
}
