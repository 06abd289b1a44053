//! The dispatcher's configuration: command-line flags or environment variables.

use clap::Parser;

/// Everything the dispatcher can be told; every default works for the local start.
#[derive(Debug, Clone, Parser)]
#[command(name = "dispatcher", version, about = "lambda-microservice dispatcher")]
pub struct Config {
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/lambda"
    )]
    pub database_url: String,

    #[arg(
        long,
        env = "NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// Prefix of every NATS subject and stream of this deployment.
    #[arg(long, env = "NATS_PREFIX", default_value = "lambda")]
    pub nats_prefix: String,

    /// How long an expired session stays readable (status `expired`) before
    /// it is removed.
    #[arg(long, env = "SESSION_RETENTION_SECONDS", default_value_t = 86_400)]
    pub session_retention_seconds: u64,

    /// How often expired sessions, unused scripts and old request logs are
    /// looked for.
    #[arg(long, env = "REAP_INTERVAL_SECONDS", default_value_t = 60)]
    pub reap_interval_seconds: u64,

    /// Most job events recorded in one database statement.
    #[arg(long, env = "EVENTS_BATCH", default_value_t = 500)]
    pub events_batch: usize,

    /// How often the sweeper looks for stuck jobs, in milliseconds.
    #[arg(long, env = "SWEEP_INTERVAL_MS", default_value_t = 5000)]
    pub sweep_interval_ms: u64,

    /// How long a queued job (or a running one, past its timeout) may see no
    /// progress before the sweeper checks on it.
    #[arg(long, env = "SWEEP_AFTER_SECONDS", default_value_t = 60)]
    pub sweep_after_seconds: u64,

    /// Timeout of a submitted job whose context names none.
    #[arg(long, env = "RUNTIME_TIMEOUT_SECONDS", default_value_t = 30)]
    pub runtime_timeout_seconds: u64,

    /// The longest `timeout_ms` a submitted job's context may ask for.
    #[arg(long, env = "MAX_TIMEOUT_SECONDS", default_value_t = 300)]
    pub max_timeout_seconds: u64,

    /// Memory limit of a submitted job whose context names none.
    #[arg(long, env = "RUNTIME_MEMORY_MB", default_value_t = 128)]
    pub runtime_memory_mb: u32,

    /// The largest `memory_mb` a submitted job's context may ask for.
    #[arg(long, env = "MAX_MEMORY_MB", default_value_t = 1024)]
    pub max_memory_mb: u32,

    /// Accept callback URLs that resolve to private, loopback or link-local
    /// addresses (local development only).
    #[arg(long, env = "CALLBACK_ALLOW_PRIVATE", default_value_t = false)]
    pub callback_allow_private: bool,

    /// Key of the `X-Lambda-Signature` HMAC on callbacks; unset, callbacks
    /// go unsigned.
    #[arg(long, env = "CALLBACK_SECRET", hide_env_values = true)]
    pub callback_secret: Option<String>,

    /// First pause between callback attempts, in milliseconds; it doubles
    /// (with jitter) up to a minute.
    #[arg(long, env = "CALLBACK_BACKOFF_MS", default_value_t = 500)]
    pub callback_backoff_ms: u64,

    /// How long one callback is retried before it is given up.
    #[arg(long, env = "CALLBACK_RETRY_SECONDS", default_value_t = 3600)]
    pub callback_retry_seconds: u64,

    /// Where to serve Prometheus metrics (`GET /metrics`), e.g.
    /// `127.0.0.1:9091`; unset, they are not served.
    #[arg(long, env = "DISPATCHER_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Days request and error logs are kept; older rows are deleted.
    #[arg(long, env = "REQUEST_LOG_RETENTION_DAYS", default_value_t = 7)]
    pub request_log_retention_days: u64,

    /// The owner of jobs published straight onto NATS: they run that owner's
    /// sessions and functions, and that owner (a JWT `sub` or an API key's
    /// owner) reads them over REST.
    #[arg(long, env = "SUBMIT_OWNER", default_value = "anonymous")]
    pub submit_owner: String,
}

impl Config {
    /// The defaults, as if no flag were given.
    pub fn from_defaults() -> Self {
        Self::parse_from(["dispatcher"])
    }
}
