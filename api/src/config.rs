//! The API's configuration: command-line flags or environment variables.

use clap::Parser;
use secrecy::SecretString;
use std::{net::SocketAddr, time::Duration};

/// Everything the API can be told; every default works for the local start.
#[derive(Debug, Clone, Parser)]
#[command(name = "api", version, about = "lambda-microservice REST API")]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8080")]
    pub bind_addr: SocketAddr,

    /// PostgreSQL: sessions, scripts and functions.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/lambda"
    )]
    pub database_url: String,

    /// Redis cache; without it an in-process cache is used.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

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

    /// How long a session lives after `initialize`.
    #[arg(long, env = "SESSION_EXPIRY_SECONDS", default_value_t = 3600)]
    pub session_expiry_seconds: u64,

    /// A script's timeout when its context names none.
    #[arg(long, env = "RUNTIME_TIMEOUT_SECONDS", default_value_t = 30)]
    pub runtime_timeout_seconds: u64,

    /// The longest `timeout_ms` a context may ask for.
    #[arg(long, env = "MAX_TIMEOUT_SECONDS", default_value_t = 300)]
    pub max_timeout_seconds: u64,

    /// A script's memory limit when its context names none.
    #[arg(long, env = "RUNTIME_MEMORY_MB", default_value_t = 128)]
    pub runtime_memory_mb: u32,

    /// The largest `memory_mb` a context may ask for.
    #[arg(long, env = "MAX_MEMORY_MB", default_value_t = 1024)]
    pub max_memory_mb: u32,

    /// Largest script accepted, in bytes.
    #[arg(long, env = "MAX_SCRIPT_SIZE", default_value_t = 1024 * 1024)]
    pub max_script_size: usize,

    /// Largest request body accepted, in bytes (a JSON-escaped script grows).
    #[arg(long, env = "MAX_BODY_SIZE", default_value_t = 4 * 1024 * 1024)]
    pub max_body_size: usize,

    /// The predefined functions' manifest folder, loaded at start.
    #[arg(long, env = "FUNCTIONS_DIR", default_value = crate::catalogue::DEFAULT_DIR)]
    pub functions_dir: std::path::PathBuf,

    /// How long a synchronous execute may wait for a free worker on top of
    /// the script's own timeout.
    #[arg(long, env = "QUEUE_WAIT_MS", default_value_t = 5000)]
    pub queue_wait_ms: u64,

    /// Accept callback URLs that resolve to private, loopback or link-local
    /// addresses (local development only).
    #[arg(long, env = "CALLBACK_ALLOW_PRIVATE", default_value_t = false)]
    pub callback_allow_private: bool,

    /// Turn every rate limit off (the local start does, loudly).
    #[arg(long, env = "RATE_LIMIT_DISABLED", default_value_t = false)]
    pub rate_limit_disabled: bool,

    /// Execute-class requests (initialize, execute, job submission) per minute
    /// of an authenticated caller; 0: unlimited.
    #[arg(long, env = "RATE_LIMIT_EXECUTE_PER_MINUTE", default_value_t = 100)]
    pub rate_limit_execute_per_minute: u32,

    /// Execute-class requests per minute of an anonymous caller, per client
    /// address; 0: unlimited.
    #[arg(
        long,
        env = "RATE_LIMIT_ANONYMOUS_EXECUTE_PER_MINUTE",
        default_value_t = 10
    )]
    pub rate_limit_anonymous_execute_per_minute: u32,

    /// `GET /functions…` requests per minute of a caller; 0: unlimited.
    #[arg(long, env = "RATE_LIMIT_FUNCTIONS_PER_MINUTE", default_value_t = 60)]
    pub rate_limit_functions_per_minute: u32,

    /// Reads of sessions and jobs (and cancels) per minute of a caller; 0: unlimited.
    #[arg(long, env = "RATE_LIMIT_READ_PER_MINUTE", default_value_t = 1200)]
    pub rate_limit_read_per_minute: u32,

    /// When Redis cannot be asked, serve without limits (true) or answer 503 (false).
    #[arg(
        long,
        env = "RATE_LIMIT_FAIL_OPEN",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub rate_limit_fail_open: bool,

    /// Identify anonymous callers by the last `X-Forwarded-For` address (set
    /// only behind a proxy that appends it); otherwise by the peer address.
    #[arg(long, env = "RATE_LIMIT_TRUST_FORWARDED_FOR", default_value_t = false)]
    pub rate_limit_trust_forwarded_for: bool,

    /// Seconds a successful synchronous result stays in the result cache; 0: no cache.
    #[arg(long, env = "CACHE_TTL", default_value_t = 300)]
    pub cache_ttl: u64,
    /// MiB of sessions (scripts and contexts) each API process keeps in its
    /// own memory for execute; 0 keeps none.
    #[arg(long, env = "SESSION_MEMORY_CACHE_MB", default_value_t = 32)]
    pub session_memory_cache_mb: usize,
    /// Log every request to PostgreSQL (`request_logs`, `error_logs`).
    #[arg(
        long,
        env = "REQUEST_LOG_ENABLED",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub request_log_enabled: bool,

    /// Request log entries kept in memory while PostgreSQL is away; beyond
    /// it the oldest are dropped (and counted).
    #[arg(long, env = "REQUEST_LOG_BUFFER", default_value_t = 10_000)]
    pub request_log_buffer: usize,
    /// Serve every request as the anonymous caller, without credentials
    /// (local development only).
    #[arg(long, env = "AUTH_DISABLED", default_value_t = false)]
    pub auth_disabled: bool,

    /// JWT algorithms accepted, comma-separated (HS256, HS384, HS512, RS256,
    /// RS384, RS512); empty: HS256 when a secret is set, RS256 when a public key is.
    #[arg(long, env = "AUTH_JWT_ALGORITHMS", value_delimiter = ',')]
    pub auth_jwt_algorithms: Vec<String>,

    /// The shared secret of HS* tokens.
    #[arg(long, env = "AUTH_JWT_SECRET", value_parser = secret, hide_env_values = true)]
    pub auth_jwt_secret: Option<SecretString>,

    /// The PEM public key of RS* tokens.
    #[arg(long, env = "AUTH_JWT_PUBLIC_KEY")]
    pub auth_jwt_public_key: Option<String>,

    /// A file holding the PEM public key of RS* tokens.
    #[arg(long, env = "AUTH_JWT_PUBLIC_KEY_FILE")]
    pub auth_jwt_public_key_file: Option<std::path::PathBuf>,

    /// Audiences accepted, comma-separated; when set, tokens must carry one of them.
    #[arg(long, env = "AUTH_JWT_AUDIENCE", value_delimiter = ',')]
    pub auth_jwt_audience: Vec<String>,

    /// Issuers accepted, comma-separated; when set, tokens must carry one of them.
    #[arg(long, env = "AUTH_JWT_ISSUER", value_delimiter = ',')]
    pub auth_jwt_issuer: Vec<String>,

    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[arg(long, env = "AUTH_JWT_LEEWAY_SECONDS", default_value_t = 30)]
    pub auth_jwt_leeway_seconds: u64,

    /// How long a looked-up API key is trusted before it is looked up again
    /// (a revocation takes effect within this time).
    #[arg(long, env = "AUTH_API_KEY_CACHE_SECONDS", default_value_t = 10)]
    pub auth_api_key_cache_seconds: u64,
}

fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value.to_owned()))
}

impl Config {
    /// The defaults, as if no flag or variable were set.
    pub fn from_defaults() -> Self {
        Self::parse_from(["api"])
    }

    pub(crate) fn default_timeout(&self) -> Duration {
        Duration::from_secs(self.runtime_timeout_seconds)
    }
}
