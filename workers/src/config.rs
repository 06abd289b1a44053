//! The worker's configuration: command-line flags, each also read from the
//! environment variable named beside it.

use crate::sandbox::{Sandbox, SandboxSettings, UidRange};
use clap::{Parser, ValueEnum};
use schemas::{Language, Subjects};

/// Settings of one worker process.
#[derive(Debug, Clone, Parser)]
#[command(name = "workers", version, about)]
pub struct Config {
    /// NATS server to pull jobs from.
    #[arg(
        long,
        env = "NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// Prefix of every subject and stream name.
    #[arg(long, env = "NATS_PREFIX", default_value = Subjects::DEFAULT_PREFIX)]
    pub nats_prefix: String,

    /// Languages to serve, comma separated.
    #[arg(
        long,
        env = "WORKER_LANGUAGES",
        value_delimiter = ',',
        default_value = "nodejs,python,wasm,rust"
    )]
    pub languages: Vec<Language>,

    /// Warm Node.js processes to keep (default: two per core, which hides
    /// the hops around each job better than one per core).
    #[arg(long, env = "WORKER_NODEJS_POOL_SIZE", default_value_t = two_per_core())]
    pub nodejs_pool_size: usize,

    /// Jobs a runtime process runs before it is replaced by a fresh one.
    #[arg(long, env = "WORKER_MAX_USES", default_value_t = 10_000)]
    pub max_uses: u64,

    /// Seconds a warm runtime may sit idle before it is stopped; it is
    /// started again when a job needs it.
    #[arg(long, env = "IDLE_TIMEOUT", default_value_t = 300)]
    pub idle_timeout_seconds: u64,

    /// Fresh runtime processes each pool keeps ready beside its busy and
    /// warm ones: a warm process runs one function only, so a function
    /// without one takes a spare instead of waiting for a start.
    #[arg(long, env = "WORKER_SPARE_PROCESSES", default_value_t = 1)]
    pub spare_processes: usize,

    /// Start every runtime process at start-up (else on the first job).
    #[arg(long, env = "WORKER_PREWARM", default_value_t = true, action = clap::ArgAction::Set)]
    pub prewarm: bool,

    /// The `node` executable, a name on PATH or a path.
    #[arg(long, env = "WORKER_NODE_BIN", default_value = "node")]
    pub node_bin: String,

    /// V8 heap limit of each Node.js process, in MiB. Sandboxed, the whole
    /// process (heap, buffers, threads, scratch files) is limited to this
    /// plus 96 MiB plus WORKER_SCRATCH_MB.
    #[arg(long, env = "WORKER_NODEJS_MEMORY_MB", default_value_t = 128)]
    pub nodejs_memory_mb: u32,

    /// Warm Python processes to keep (default: two per core).
    #[arg(long, env = "WORKER_PYTHON_POOL_SIZE", default_value_t = two_per_core())]
    pub python_pool_size: usize,

    /// The Python 3 interpreter, a name (looked up in /usr/bin, then on PATH)
    /// or a path; resolved to its real path once at start.
    #[arg(long, env = "WORKER_PYTHON_BIN", default_value = "python3")]
    pub python_bin: String,

    /// Memory a Python script may allocate beyond the interpreter's own, in MiB.
    #[arg(long, env = "WORKER_PYTHON_MEMORY_MB", default_value_t = 128)]
    pub python_memory_mb: u32,

    /// `on`: every runtime process runs in the OS sandbox (bubblewrap,
    /// seccomp, cgroups). `off`: unconfined, for development machines without
    /// user namespaces only.
    #[arg(long, env = "WORKER_SANDBOX", value_enum, default_value_t = SandboxMode::On)]
    pub sandbox: SandboxMode,

    /// First uid (and gid) of the range sandboxed processes run as, one
    /// uid per process at a time (when the worker is root).
    #[arg(long, env = "WORKER_SANDBOX_UID_BASE", default_value_t = UidRange::default().first)]
    pub sandbox_uid_base: u32,

    /// How many uids the range holds: at least the processes a worker (or
    /// all workers of a machine) may run at once.
    #[arg(long, env = "WORKER_SANDBOX_UID_COUNT", default_value_t = UidRange::default().count)]
    pub sandbox_uid_count: u32,

    /// CPU time each sandboxed process may use, in cores (a cgroup quota);
    /// 0 sets none.
    #[arg(long, env = "WORKER_CPU_LIMIT", default_value_t = 1.0)]
    pub cpu_limit: f64,

    /// Size of each runtime process's private scratch directory (/tmp), in MiB.
    #[arg(long, env = "WORKER_SCRATCH_MB", default_value_t = 64)]
    pub scratch_mb: u32,

    /// wasm (and rust) jobs that may run at once, per language.
    #[arg(long, env = "WORKER_WASM_CONCURRENCY", default_value_t = two_per_core())]
    pub wasm_concurrency: usize,

    /// The most memory a wasm or rust job may be given (`memory_mb` is capped to it), in MiB.
    #[arg(long, env = "WORKER_WASM_MAX_MEMORY_MB", default_value_t = 1024)]
    pub wasm_max_memory_mb: u32,

    /// The Rust compiler handlers are compiled with.
    #[arg(long, env = "WORKER_RUSTC", default_value = "/usr/bin/rustc")]
    pub rustc: String,

    /// The WASI preview 1 target the compiler builds for (`wasm32-wasip1` on newer toolchains).
    #[arg(long, env = "WORKER_RUST_TARGET", default_value = "wasm32-wasi")]
    pub rust_target: String,

    /// Where the crate sources handlers may use (serde_json and its dependencies) are.
    #[arg(
        long,
        env = "WORKER_RUST_CRATES_DIR",
        default_value = "/usr/share/cargo/registry"
    )]
    pub rust_crates_dir: std::path::PathBuf,

    /// Longest a Rust compilation may take, in seconds.
    #[arg(
        long,
        env = "WORKER_RUST_COMPILE_TIMEOUT_SECONDS",
        default_value_t = 60
    )]
    pub rust_compile_timeout_seconds: u64,

    /// Where compiled artifacts are kept across restarts.
    #[arg(
        long,
        env = "WORKER_CACHE_DIR",
        default_value = "/var/tmp/lambda-worker-cache"
    )]
    pub cache_dir: std::path::PathBuf,

    /// Bound on a script's result, and on the logs captured from it, in bytes.
    #[arg(long, env = "WORKER_MAX_OUTPUT_BYTES", default_value_t = 1024 * 1024)]
    pub max_output_bytes: usize,

    /// Timeout of a job that does not set one, in seconds.
    #[arg(long, env = "RUNTIME_TIMEOUT_SECONDS", default_value_t = 30)]
    pub runtime_timeout_seconds: u64,

    /// How this worker names itself in heartbeats and results.
    #[arg(long, env = "WORKER_ID", default_value_t = default_worker_id())]
    pub worker_id: String,

    /// Interval between heartbeats, in milliseconds.
    #[arg(long, env = "WORKER_HEARTBEAT_MS", default_value_t = 2000)]
    pub heartbeat_ms: u64,

    /// Where to serve Prometheus metrics (`GET /metrics`), e.g.
    /// `127.0.0.1:9092`; unset, they are not served.
    #[arg(long, env = "WORKER_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Config {
    /// The defaults, overridden by the environment: a starting point for tests.
    pub fn from_env() -> Self {
        Self::parse_from(["workers"])
    }

    /// The sandbox the runtimes run in.
    pub fn sandbox(&self) -> Sandbox {
        match self.sandbox {
            SandboxMode::On => Sandbox::new(SandboxSettings {
                uids: UidRange {
                    first: self.sandbox_uid_base,
                    count: self.sandbox_uid_count,
                },
                scratch_mb: self.scratch_mb,
                // Whole thousandths of a core; negative and NaN count as 0.
                cpu_millis: (self.cpu_limit * 1000.0).clamp(0.0, f64::from(u32::MAX)) as u32,
            }),
            SandboxMode::Off => Sandbox::disabled(),
        }
    }
}

/// Whether runtime processes are sandboxed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxMode {
    On,
    Off,
}

/// Twice the available cores: wasm jobs run on threads, and many wait on nothing.
fn two_per_core() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

/// `<hostname>-<pid>`, or a random id when the host name is unknown.
fn default_worker_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .map_or_else(
            || uuid::Uuid::new_v4().simple().to_string(),
            |host| format!("{host}-{}", std::process::id()),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags_and_defaults() {
        let config = Config::parse_from([
            "workers",
            "--languages",
            "nodejs,python",
            "--nodejs-pool-size",
            "4",
        ]);
        assert_eq!(config.languages, [Language::Nodejs, Language::Python]);
        assert_eq!(config.nodejs_pool_size, 4);
        assert_eq!(config.python_pool_size, two_per_core());
        assert_eq!(config.python_bin, "python3");
        assert_eq!(config.max_output_bytes, 1024 * 1024);
        assert_eq!(config.sandbox, SandboxMode::On);
        assert!(config.sandbox().is_enabled());
        let off = Config::parse_from(["workers", "--sandbox", "off"]);
        assert!(!off.sandbox().is_enabled());
        assert!(config
            .worker_id
            .ends_with(&format!("-{}", std::process::id())));
        assert!(Config::try_parse_from(["workers", "--languages", "ruby"]).is_err());
    }
}
