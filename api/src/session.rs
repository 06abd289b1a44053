//! Sessions: a script, its context and its limits, created by `initialize` and
//! run by `execute`. Stored in PostgreSQL, read through the cache.
//!
//! A session expires at `expires_at`; a retained one (`retain_session`) has
//! it moved to `SESSION_EXPIRY_SECONDS` after its latest use, recorded in
//! memory and written in batches ([`crate::executions`]). A cached copy
//! never outlives the session: its entry expires with it, and a copy that
//! looks expired is checked against PostgreSQL before the answer is 404.
//! Each API process also keeps the sessions it read in memory
//! ([`LocalSessions`]), so that executing a session costs no round trip.

mod local;

pub use local::LocalSessions;

use crate::{cache::Cache, error::ApiError, metrics::Metrics};
use chrono::{DateTime, Utc};
use schemas::{codec, Language};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

/// A session as `execute` needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub request_id: Uuid,
    pub owner: String,
    pub language: Language,
    pub language_title: String,
    pub script_hash: String,
    pub script: String,
    pub context_json: String,
    pub timeout_ms: u64,
    pub memory_mb: u32,
    pub retain: bool,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl Session {
    /// Whether the session can still be executed.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.expires_at > now
    }
}

fn cache_key(prefix: &str, id: Uuid) -> String {
    format!("{prefix}:session:{id}")
}

/// Loads a session of `owner` that can still be executed: 404 when it is
/// unknown, another owner's (whose sessions are not even said to exist) or
/// has expired. `raw` is the id as the caller wrote it, for the message. A
/// retained session's expiry moves forward.
pub async fn load_active(
    state: &crate::AppState,
    owner: &str,
    id: Uuid,
    raw: &str,
) -> Result<Session, ApiError> {
    let prefix = state.subjects.prefix();
    let not_found = || ApiError::not_found(format!("session {raw} not found"));
    let mut session = match state.sessions.get(id) {
        Some(held) => {
            state.metrics.cache_lookup("session", true);
            Some(Session::clone(&held))
        }
        None => {
            let loaded = load(&state.db, &state.cache, &state.metrics, prefix, id).await?;
            if let Some(loaded) = &loaded {
                state.sessions.put(Arc::new(loaded.clone()));
            }
            loaded
        }
    }
    .filter(|s| s.owner == owner)
    .ok_or_else(not_found)?;
    let now = Utc::now();
    if let Some(until) = state.executions.extended_until(id) {
        session.expires_at = session.expires_at.max(until);
    }
    if !session.is_active(now) {
        // The cached copy may predate an extension written by another process.
        session = select(&state.db, id).await?.ok_or_else(not_found)?;
        if !session.is_active(now) {
            return Err(ApiError::not_found(format!("session {raw} has expired")));
        }
        remember(&state.cache, prefix, &session).await;
        state.sessions.put(Arc::new(session.clone()));
    }
    if session.retain {
        let until = now + chrono::Duration::seconds(state.config.session_expiry_seconds as i64);
        state.executions.extend(id, until);
        session.expires_at = session.expires_at.max(until);
    }
    Ok(session)
}

/// Loads a session, from the cache when possible.
pub async fn load(
    db: &PgPool,
    cache: &Cache,
    metrics: &Metrics,
    prefix: &str,
    id: Uuid,
) -> Result<Option<Session>, ApiError> {
    let key = cache_key(prefix, id);
    if let Some(bytes) = cache.get(&key).await {
        if let Ok(session) = codec::decode::<Session>(&bytes) {
            metrics.cache_lookup("session", true);
            return Ok(Some(session));
        }
    }
    metrics.cache_lookup("session", false);
    let Some(session) = select(db, id).await? else {
        return Ok(None);
    };
    remember(cache, prefix, &session).await;
    Ok(Some(session))
}

/// Puts a session in the cache until it expires.
pub async fn remember(cache: &Cache, prefix: &str, session: &Session) {
    let ttl = (session.expires_at - Utc::now())
        .to_std()
        .unwrap_or_default();
    if let Ok(bytes) = codec::encode(session) {
        cache
            .set(&cache_key(prefix, session.request_id), bytes, ttl)
            .await;
    }
}

async fn select(db: &PgPool, id: Uuid) -> Result<Option<Session>, ApiError> {
    let row = sqlx::query_as::<_, SessionRow>(
        "SELECT s.request_id, s.owner, s.language, s.language_title, s.script_hash,
                sc.content AS script, s.context::text AS context_json, s.timeout_ms,
                s.memory_mb, s.retain, s.created_at, s.expires_at
         FROM sessions s JOIN scripts sc ON sc.hash = s.script_hash
         WHERE s.request_id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    row.map(Session::try_from)
        .transpose()
        .map_err(ApiError::internal)
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    request_id: Uuid,
    owner: String,
    language: String,
    language_title: String,
    script_hash: String,
    script: String,
    context_json: String,
    timeout_ms: i64,
    memory_mb: i32,
    retain: bool,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl TryFrom<SessionRow> for Session {
    type Error = anyhow::Error;

    fn try_from(row: SessionRow) -> anyhow::Result<Self> {
        Ok(Self {
            request_id: row.request_id,
            owner: row.owner,
            language: row.language.parse()?,
            language_title: row.language_title,
            script_hash: row.script_hash,
            script: row.script,
            context_json: row.context_json,
            timeout_ms: u64::try_from(row.timeout_ms)?,
            memory_mb: u32::try_from(row.memory_mb)?,
            retain: row.retain,
            created_at: row.created_at,
            expires_at: row.expires_at,
        })
    }
}
