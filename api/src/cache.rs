//! The cache in front of PostgreSQL: Redis when configured, else in-process.
//!
//! Redis is an accelerator, never a dependency: every operation is bounded by
//! a short timeout and a failure is logged and treated as a miss, so requests
//! keep being served from PostgreSQL while Redis is away.

use deadpool_redis::{PoolConfig, Runtime, Timeouts};
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

const REDIS_OP_TIMEOUT: Duration = Duration::from_millis(250);
const LOCAL_CAPACITY: usize = 10_000;

/// A byte cache with per-entry expiry.
pub enum Cache {
    Redis(deadpool_redis::Pool),
    Local(Mutex<HashMap<String, (Vec<u8>, Instant)>>),
}

/// What `/health` reports for the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheHealth {
    Ok,
    Unavailable,
    InProcess,
}

impl Cache {
    /// Redis at `url`, or an in-process map when `url` is `None`.
    pub fn new(url: Option<&str>) -> anyhow::Result<Self> {
        let Some(url) = url else {
            return Ok(Self::Local(Mutex::new(HashMap::new())));
        };
        let mut config = deadpool_redis::Config::from_url(url);
        config.pool = Some(PoolConfig {
            max_size: 64,
            timeouts: Timeouts {
                wait: Some(REDIS_OP_TIMEOUT),
                create: Some(REDIS_OP_TIMEOUT),
                recycle: Some(REDIS_OP_TIMEOUT),
            },
            ..PoolConfig::default()
        });
        Ok(Self::Redis(config.create_pool(Some(Runtime::Tokio1))?))
    }

    /// The cached value, or `None` on a miss or when the cache is unreachable.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self {
            Self::Redis(pool) => {
                let mut cmd = redis::cmd("GET");
                cmd.arg(key);
                redis_query::<Option<Vec<u8>>>(pool, cmd).await.flatten()
            }
            Self::Local(map) => {
                let map = map.lock().expect("cache lock");
                map.get(key)
                    .filter(|(_, expires)| *expires > Instant::now())
                    .map(|(value, _)| value.clone())
            }
        }
    }

    /// Stores `value` for `ttl`; failures are logged and otherwise ignored.
    pub async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        match self {
            Self::Redis(pool) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(ttl.as_millis() as u64);
                redis_query::<()>(pool, cmd).await;
            }
            Self::Local(map) => {
                let mut map = map.lock().expect("cache lock");
                if map.len() >= LOCAL_CAPACITY {
                    let now = Instant::now();
                    map.retain(|_, (_, expires)| *expires > now);
                    if map.len() >= LOCAL_CAPACITY {
                        map.clear();
                    }
                }
                map.insert(key.to_owned(), (value, Instant::now() + ttl));
            }
        }
    }

    /// Whether the cache answers right now.
    pub async fn health(&self) -> CacheHealth {
        match self {
            Self::Redis(pool) => match redis_query::<String>(pool, redis::cmd("PING")).await {
                Some(_) => CacheHealth::Ok,
                None => CacheHealth::Unavailable,
            },
            Self::Local(_) => CacheHealth::InProcess,
        }
    }
}

async fn redis_query<T: redis::FromRedisValue>(
    pool: &deadpool_redis::Pool,
    cmd: redis::Cmd,
) -> Option<T> {
    let attempt = async {
        let mut conn = pool.get().await.map_err(|e| e.to_string())?;
        cmd.query_async::<T>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(REDIS_OP_TIMEOUT, attempt).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "redis unavailable; continuing without cache");
            None
        }
        Err(_) => {
            tracing::warn!("redis timed out; continuing without cache");
            None
        }
    }
}
