//! `X-API-Key`: long random keys, of which only the SHA-256 is stored (table
//! `api_keys`). A key is shown once, when it is created (`api keys create`);
//! a looked-up key is trusted for `AUTH_API_KEY_CACHE_SECONDS` before it is
//! looked up again, so a revocation takes effect within that time.

use super::Caller;
use chrono::{DateTime, Utc};
use schemas::Language;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};
use uuid::Uuid;

/// Every key starts with this, so a leaked one is easy to recognise.
pub const KEY_PREFIX: &str = "lmk_";
/// Looked-up keys kept at most; past that the cache starts over.
const CACHE_CAPACITY: usize = 10_000;

/// API keys in PostgreSQL, with a short-lived cache of the ones seen.
pub struct ApiKeys {
    db: PgPool,
    ttl: Duration,
    seen: Mutex<HashMap<String, (Caller, Instant)>>,
}

impl ApiKeys {
    pub fn new(db: PgPool, ttl: Duration) -> Self {
        Self {
            db,
            ttl,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The caller a key belongs to; `None` when it is unknown or revoked.
    pub async fn lookup(&self, key: &str) -> Result<Option<Caller>, sqlx::Error> {
        if !key.starts_with(KEY_PREFIX) || key.len() > 128 {
            return Ok(None);
        }
        let hash = hash_key(key);
        if let Some(caller) = self.cached(&hash) {
            return Ok(Some(caller));
        }
        let row: Option<(String, Vec<String>)> = sqlx::query_as(
            "SELECT owner, scopes FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(&hash)
        .fetch_optional(&self.db)
        .await?;
        let Some((owner, scopes)) = row else {
            return Ok(None);
        };
        let caller = Caller {
            owner,
            scopes,
            authenticated: true,
        };
        if !self.ttl.is_zero() {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.len() >= CACHE_CAPACITY {
                seen.clear();
            }
            seen.insert(hash, (caller.clone(), Instant::now() + self.ttl));
        }
        Ok(Some(caller))
    }

    fn cached(&self, hash: &str) -> Option<Caller> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get(hash) {
            Some((caller, until)) if *until > Instant::now() => Some(caller.clone()),
            Some(_) => {
                seen.remove(hash);
                None
            }
            None => None,
        }
    }
}

/// The hex SHA-256 of a key: what the table holds.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A stored key, as listings show it (never the key itself).
#[derive(Debug, sqlx::FromRow)]
pub struct KeyInfo {
    pub id: Uuid,
    pub prefix: String,
    pub owner: String,
    pub scopes: Vec<String>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Checks a scope's spelling: `execute:all`, `execute:<language>` or `read:functions`.
pub fn check_scope(scope: &str) -> anyhow::Result<()> {
    let known = scope == super::SCOPE_EXECUTE_ALL
        || scope == super::SCOPE_READ_FUNCTIONS
        || scope
            .strip_prefix("execute:")
            .is_some_and(|l| l.parse::<Language>().is_ok());
    anyhow::ensure!(
        known,
        "unknown scope {scope:?}: use execute:all, execute:<nodejs|python|rust|wasm> or read:functions"
    );
    Ok(())
}

/// Creates a key for `owner` with `scopes`; returns its record and the key,
/// which is not kept anywhere.
pub async fn create(
    db: &PgPool,
    owner: &str,
    scopes: &[String],
    description: Option<&str>,
) -> anyhow::Result<(KeyInfo, String)> {
    anyhow::ensure!(!owner.trim().is_empty(), "the owner must not be empty");
    anyhow::ensure!(!scopes.is_empty(), "a key needs at least one scope");
    for scope in scopes {
        check_scope(scope)?;
    }
    // Two version-4 UUIDs: 244 bits from the operating system's generator.
    let key = format!(
        "{KEY_PREFIX}{}{}",
        Uuid::new_v4().simple(),
        Uuid::new_v4().simple()
    );
    let info = sqlx::query_as::<_, KeyInfo>(
        "INSERT INTO api_keys (id, key_hash, prefix, owner, scopes, description)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, prefix, owner, scopes, description, created_at, revoked_at",
    )
    .bind(Uuid::now_v7())
    .bind(hash_key(&key))
    .bind(&key[..KEY_PREFIX.len() + 8])
    .bind(owner)
    .bind(scopes)
    .bind(description)
    .fetch_one(db)
    .await?;
    Ok((info, key))
}

/// The keys of `owner`, or all of them.
pub async fn list(db: &PgPool, owner: Option<&str>) -> anyhow::Result<Vec<KeyInfo>> {
    Ok(sqlx::query_as::<_, KeyInfo>(
        "SELECT id, prefix, owner, scopes, description, created_at, revoked_at
         FROM api_keys WHERE $1::text IS NULL OR owner = $1 ORDER BY created_at, id",
    )
    .bind(owner)
    .fetch_all(db)
    .await?)
}

/// Revokes a key; false when there is no such key or it was already revoked.
pub async fn revoke(db: &PgPool, id: Uuid) -> anyhow::Result<bool> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .execute(db)
            .await?;
    Ok(done.rows_affected() == 1)
}
