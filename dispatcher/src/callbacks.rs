//! Callbacks: a job's terminal record is POSTed to its callback URL.
//!
//! A job becomes due (`callback_state = 'pending'`) in the same statement that
//! makes it terminal. A dispatcher claims due jobs with a lease (so two
//! dispatchers never deliver one job at the same time) and POSTs the record,
//! retrying with exponential backoff (the `backoff` crate) until a 2xx answer
//! or `CALLBACK_RETRY_SECONDS`; every attempt is recorded in
//! `callback_attempts`, and a unique index admits one successful delivery per
//! job. Bodies are signed: `X-Lambda-Signature: sha256=<hex HMAC-SHA256 of the
//! body keyed with CALLBACK_SECRET>`.

use crate::metrics::Metrics;
use backoff::{future::retry, ExponentialBackoffBuilder};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};
use uuid::Uuid;

/// Most callbacks claimed at once.
const CLAIM: i64 = 64;

/// The signature header of `body` under `secret`: `sha256=<hex>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A callback to deliver.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Due {
    pub job_id: Uuid,
    pub callback_url: String,
    pub record: Value,
}

/// Delivers callbacks.
#[derive(Clone)]
pub struct Callbacks {
    pub db: PgPool,
    pub http: reqwest::Client,
    pub secret: Option<Vec<u8>>,
    /// First pause between attempts; it doubles up to a minute.
    pub first_backoff: Duration,
    /// How long to keep trying one callback.
    pub give_up_after: Duration,
    pub metrics: Arc<Metrics>,
}

impl Callbacks {
    /// An HTTP client for callbacks: bounded time, no redirects (a redirect
    /// could lead to an address the URL check never saw).
    pub fn client() -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
    }

    /// Claims the callbacks due now, leasing them for as long as their
    /// delivery may take.
    pub async fn claim_due(&self) -> sqlx::Result<Vec<Due>> {
        let lease = self.give_up_after + Duration::from_secs(60);
        sqlx::query_as(
            "UPDATE jobs SET next_callback_at = now() + make_interval(secs => $1)
             WHERE job_id IN (SELECT job_id FROM jobs
                              WHERE callback_state = 'pending' AND next_callback_at <= now()
                              ORDER BY next_callback_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING job_id, callback_url, job_record(jobs) AS record",
        )
        .bind(lease.as_secs_f64())
        .bind(CLAIM)
        .fetch_all(&self.db)
        .await
    }

    /// Delivers one callback, retrying with backoff; returns whether it arrived.
    pub async fn deliver(&self, due: Due) -> bool {
        let body = due.record.to_string().into_bytes();
        let policy = ExponentialBackoffBuilder::new()
            .with_initial_interval(self.first_backoff)
            .with_max_interval(Duration::from_secs(60))
            .with_max_elapsed_time(Some(self.give_up_after))
            .build();
        let delivered = retry(policy, || async {
            match self.attempt(&due, &body).await {
                Ok(()) => Ok(()),
                Err(e) => Err(backoff::Error::transient(e)),
            }
        })
        .await
        .is_ok();
        self.metrics.callback_settled(delivered);
        let state = if delivered { "delivered" } else { "failed" };
        let settled = sqlx::query(
            "UPDATE jobs SET callback_state = $2, next_callback_at = NULL
             WHERE job_id = $1 AND callback_state = 'pending'",
        )
        .bind(due.job_id)
        .bind(state)
        .execute(&self.db)
        .await;
        if let Err(e) = settled {
            tracing::warn!(error = %e, job_id = %due.job_id, "callback state not recorded");
        }
        if !delivered {
            tracing::warn!(job_id = %due.job_id, "callback given up");
        }
        delivered
    }

    /// Gives a claimed callback back, due now.
    pub async fn release(&self, job_id: Uuid) {
        let released = sqlx::query(
            "UPDATE jobs SET next_callback_at = now() WHERE job_id = $1 AND callback_state = 'pending'",
        )
        .bind(job_id)
        .execute(&self.db)
        .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, %job_id, "callback not released; its lease will expire");
        }
    }

    /// One POST; recorded whatever its outcome.
    async fn attempt(&self, due: &Due, body: &[u8]) -> Result<(), String> {
        let mut request = self
            .http
            .post(&due.callback_url)
            .header("Content-Type", "application/json")
            .header("X-Lambda-Job-Id", due.job_id.to_string())
            .body(body.to_vec());
        if let Some(secret) = &self.secret {
            request = request.header("X-Lambda-Signature", signature(secret, body));
        }
        let outcome = match request.send().await {
            Ok(r) if r.status().is_success() => Ok(r.status().as_u16()),
            Ok(r) => Err((
                Some(r.status().as_u16()),
                format!("answered {}", r.status()),
            )),
            Err(e) => Err((None, e.without_url().to_string())),
        };
        self.metrics.callback_attempt(outcome.is_ok());
        let (status, error, delivered) = match &outcome {
            Ok(status) => (Some(*status as i32), None, true),
            Err((status, e)) => (status.map(i32::from), Some(e.clone()), false),
        };
        sqlx::query(
            "WITH n AS (UPDATE jobs SET callback_attempts = callback_attempts + 1
                        WHERE job_id = $1 RETURNING callback_attempts)
             INSERT INTO callback_attempts (job_id, attempt, status_code, error, delivered)
             SELECT $1, callback_attempts, $2, $3, $4 FROM n",
        )
        .bind(due.job_id)
        .bind(status)
        .bind(&error)
        .bind(delivered)
        .execute(&self.db)
        .await
        .map_err(|e| e.to_string())?;
        outcome.map(drop).map_err(|(_, e)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
