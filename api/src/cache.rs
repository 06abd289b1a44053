//! The cache in front of PostgreSQL: Redis when configured, else in-process.
//!
//! Redis is an accelerator, never a dependency: every operation is bounded by
//! a short timeout and a failure is logged and treated as a miss, so requests
//! keep being served from PostgreSQL while Redis is away.
//!
//! Every request shares one multiplexed Redis connection (commands from all
//! requests are pipelined on it). The deadpool pool only makes and checks
//! that connection: checking a pooled connection out costs an `UNWATCH` and
//! a `PING` each time, which tripled the round trips of a cache lookup.

use deadpool_redis::{PoolConfig, Runtime, Timeouts};
use redis::aio::MultiplexedConnection;
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

const REDIS_OP_TIMEOUT: Duration = Duration::from_millis(250);
const LOCAL_CAPACITY: usize = 10_000;

/// A byte cache with per-entry expiry.
pub enum Cache {
    Redis(Redis),
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
        Ok(Self::Redis(Redis {
            pool: config.create_pool(Some(Runtime::Tokio1))?,
            shared: Mutex::new(None),
        }))
    }

    /// The cached value, or `None` on a miss or when the cache is unreachable.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self {
            Self::Redis(redis) => {
                let mut cmd = redis::cmd("GET");
                cmd.arg(key);
                redis_query::<Option<Vec<u8>>>(redis, cmd).await.flatten()
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
            Self::Redis(redis) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(ttl.as_millis() as u64);
                redis_query::<()>(redis, cmd).await;
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
            Self::Redis(redis) => match redis_query::<String>(redis, redis::cmd("PING")).await {
                Some(_) => CacheHealth::Ok,
                None => CacheHealth::Unavailable,
            },
            Self::Local(_) => CacheHealth::InProcess,
        }
    }
}

/// Redis: one multiplexed connection shared by every request, made (and
/// made again after it failed) through a deadpool pool.
pub struct Redis {
    pool: deadpool_redis::Pool,
    shared: Mutex<Option<MultiplexedConnection>>,
}

impl Redis {
    /// Runs `cmd` on the shared connection, within [`REDIS_OP_TIMEOUT`].
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, String> {
        self.run(|mut conn| async move { cmd.query_async::<T>(&mut conn).await })
            .await
    }

    /// Runs `op` on the shared connection within [`REDIS_OP_TIMEOUT`]; a
    /// connection that failed or timed out is dropped, and the next call
    /// gets a new one.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, String>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let attempt = async {
            let conn = self.connection().await?;
            op(conn).await.map_err(|e| {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    self.forget();
                }
                e.to_string()
            })
        };
        match tokio::time::timeout(REDIS_OP_TIMEOUT, attempt).await {
            Ok(result) => result,
            Err(_) => {
                self.forget();
                Err("timed out".to_owned())
            }
        }
    }

    async fn connection(&self) -> Result<MultiplexedConnection, String> {
        if let Some(conn) = self.shared.lock().expect("redis lock").as_ref() {
            return Ok(conn.clone());
        }
        let pooled = self.pool.get().await.map_err(|e| e.to_string())?;
        let conn = (*pooled).clone();
        *self.shared.lock().expect("redis lock") = Some(conn.clone());
        Ok(conn)
    }

    fn forget(&self) {
        self.shared.lock().expect("redis lock").take();
    }
}

async fn redis_query<T: redis::FromRedisValue>(redis: &Redis, cmd: redis::Cmd) -> Option<T> {
    match redis.query::<T>(&cmd).await {
        Ok(value) => Some(value),
        Err(err) => {
            tracing::warn!(error = %err, "redis unavailable; continuing without cache");
            None
        }
    }
}
