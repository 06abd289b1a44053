//! The WebAssembly runtime: one wasmtime [`Engine`] per process, with the
//! pooling allocator and epoch interruption, running WASI preview 1 command
//! modules (SPEC §4 `wasm`, and `rust` compiled to wasm).
//!
//! The hot path is lean: modules are compiled once per content hash and kept
//! as [`wasmtime::InstancePre`] (imports resolved against a WASI linker built
//! once); each job gets a fresh `Store` with its own deadline, memory limit
//! and in-memory stdio, and is instantiated from a pre-allocated pool slot.
//!
//! - `module`: turning a script (WAT, base64 binary, or Rust source through
//!   [`crate::runtime::rust`]) into a cached, linked module.
//! - `job`: one run of a module: the store, the limits, the outcome.

mod job;
mod module;

use super::{
    rust::RustCompiler, Instance, Invocation, LaunchError, Launcher, Report, RuntimeError,
};
use futures::future::BoxFuture;
pub use module::CompileError;
use module::ModuleCache;
use schemas::{ErrorCode, JobError, Language};
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; the granularity of job timeouts.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Compiled modules kept in memory.
const MODULE_CACHE_SIZE: usize = 256;
/// Memory of a job that sets none, in MiB.
pub const DEFAULT_MEMORY_MB: u32 = 128;

/// How to set up the engine.
#[derive(Debug, Clone)]
pub struct WasmOptions {
    /// Jobs that may run at once, over every language the engine serves;
    /// sizes the pooling allocator.
    pub concurrency: usize,
    /// The most linear memory a job may ask for (`memory_mb` is capped to it).
    pub max_memory_mb: u32,
    /// Bound on a job's stdout (its result) and, separately, its stderr.
    pub max_output_bytes: usize,
}

impl Default for WasmOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            max_memory_mb: 1024,
            max_output_bytes: 1024 * 1024,
        }
    }
}

/// The process's wasmtime engine, its module cache and its epoch ticker.
pub struct WasmEngine {
    engine: Engine,
    modules: ModuleCache,
    rust: Option<Arc<RustCompiler>>,
    options: WasmOptions,
    ticker_stop: Arc<AtomicBool>,
}

impl WasmEngine {
    /// Creates the engine and starts the epoch ticker thread. With `rust`,
    /// the engine also runs Rust sources, compiled by it.
    pub fn new(options: WasmOptions, rust: Option<Arc<RustCompiler>>) -> anyhow::Result<Arc<Self>> {
        // A job's store, and with it its slot, is gone when the job answers,
        // timed out or not: one slot per job that may run at once.
        let slots = u32::try_from(options.concurrency.max(1))?;
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_core_instances(slots)
            .total_stacks(slots)
            .total_memories(slots)
            .total_tables(slots)
            .max_memory_size(usize::try_from(options.max_memory_mb)? << 20);
        let mut config = wasmtime::Config::new();
        config
            .epoch_interruption(true)
            // Each module compiles on its own blocking thread: in parallel,
            // one tenant's large module would fill the shared compile pool
            // and every other module would wait behind it.
            .parallel_compilation(false)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&config)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (ticking, stop) = (engine.clone(), Arc::clone(&ticker_stop));
        std::thread::Builder::new()
            .name("wasm-epoch".to_owned())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticking.increment_epoch();
                }
            })?;
        Ok(Arc::new(Self {
            modules: ModuleCache::new(&engine, MODULE_CACHE_SIZE)?,
            engine,
            rust,
            options,
            ticker_stop,
        }))
    }

    /// Compiles `script` of `language` (and keeps it, so that the first run
    /// is warm), or says why it does not compile.
    pub async fn compile(
        &self,
        language: Language,
        script_hash: &str,
        script: &str,
        context_json: &str,
    ) -> Result<(), CompileError> {
        self.modules
            .get_or_compile(self, language, script_hash, script, context_json)
            .await
            .map(drop)
    }

    /// The Rust compiler this engine uses, if it serves Rust.
    pub fn rust(&self) -> Option<&Arc<RustCompiler>> {
        self.rust.as_ref()
    }

    /// Runs `invocation` of `language` to completion.
    pub async fn run(&self, language: Language, invocation: &Invocation) -> Report {
        let pre = match self
            .modules
            .get_or_compile(
                self,
                language,
                &invocation.script_hash,
                &invocation.script,
                invocation.context.get(),
            )
            .await
        {
            Ok(pre) => pre,
            Err(error) => {
                return Report {
                    outcome: Err(error.into_job_error()),
                    logs: Vec::new(),
                    reusable: true,
                }
            }
        };
        let memory_mb = match invocation.memory_mb {
            0 => DEFAULT_MEMORY_MB,
            mb => mb,
        }
        .min(self.options.max_memory_mb);
        let input = format!(
            r#"{{"params":{},"context":{}}}"#,
            invocation.params.get(),
            invocation.context.get()
        );
        let spec = job::JobSpec {
            engine: self.engine.clone(),
            input: input.into_bytes(),
            timeout: invocation.timeout,
            epoch_tick: EPOCH_TICK,
            memory_bytes: usize::try_from(memory_mb).unwrap_or(usize::MAX) << 20,
            max_output_bytes: self.options.max_output_bytes,
        };
        // The job computes on a blocking thread; its host calls (a WASI
        // sleep) and its deadline are served by the runtime's timers.
        let runtime = tokio::runtime::Handle::current();
        let running =
            tokio::task::spawn_blocking(move || runtime.block_on(job::run(&pre, spec))).await;
        running.unwrap_or_else(|e| Report {
            outcome: Err(JobError::new(
                ErrorCode::InternalError,
                format!("the wasm job failed: {e}"),
            )),
            logs: Vec::new(),
            reusable: true,
        })
    }
}

impl Drop for WasmEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Hands out slots of a [`WasmEngine`] for one language: a pool of these
/// bounds how many jobs of that language run at once.
pub struct WasmLauncher {
    engine: Arc<WasmEngine>,
    language: Language,
}

impl WasmLauncher {
    /// A launcher for `language`, which must be `wasm` or `rust` (the latter
    /// only on an engine created with a Rust compiler).
    pub fn new(engine: Arc<WasmEngine>, language: Language) -> anyhow::Result<Self> {
        match language {
            Language::Wasm => {}
            Language::Rust if engine.rust.is_some() => {}
            other => anyhow::bail!("the wasm engine cannot run {other}"),
        }
        Ok(Self { engine, language })
    }
}

impl Launcher for WasmLauncher {
    fn language(&self) -> Language {
        self.language
    }

    fn launch(&self) -> BoxFuture<'_, Result<Box<dyn Instance>, LaunchError>> {
        let slot = WasmSlot {
            engine: Arc::clone(&self.engine),
            language: self.language,
        };
        Box::pin(async move { Ok(Box::new(slot) as Box<dyn Instance>) })
    }
}

/// The right to run one job at a time on the engine.
struct WasmSlot {
    engine: Arc<WasmEngine>,
    language: Language,
}

impl Instance for WasmSlot {
    fn pid(&self) -> Option<u32> {
        None
    }

    fn run<'a>(
        &'a mut self,
        invocation: &'a Invocation,
    ) -> BoxFuture<'a, Result<Report, RuntimeError>> {
        Box::pin(async move { Ok(self.engine.run(self.language, invocation).await) })
    }

    fn stop(self: Box<Self>, _grace: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}
