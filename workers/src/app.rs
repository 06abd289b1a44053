//! The worker process: builds the runtime pools and the NATS consumers from
//! a [`Config`], then runs until told to stop.

use crate::{
    compile::CompileService,
    consumer::{self, JobRunner},
    heartbeat,
    metrics::Metrics,
    runtime::{
        node::{NodeLauncher, NodeOptions},
        python::{PythonLauncher, PythonOptions},
        rust::{RustCompiler, RustOptions},
        wasm::{WasmEngine, WasmLauncher, WasmOptions},
        Launcher, Pool, PoolPolicy,
    },
    sandbox::Sandbox,
    Config,
};
use anyhow::{bail, Context as _};
use async_nats::jetstream::consumer::PullConsumer;
use schemas::{service::metrics::MetricsEndpoint, Language, RuntimeStatus, Subjects};
use std::{sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;

/// How long each runtime may take to exit by itself at shutdown.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// Room in a NATS message for what travels beside a result: the job id,
/// the worker id, the timing, the framing.
const REPLY_HEADROOM: usize = 4096;

/// A worker, connected and with its runtimes warm.
pub struct App {
    client: async_nats::Client,
    subjects: Subjects,
    consumers: Vec<(PullConsumer, JobRunner)>,
    compile: Option<CompileService>,
    heartbeat_interval: Duration,
    handle: AppHandle,
    metrics_endpoint: Option<MetricsEndpoint>,
}

/// A cheap, cloneable view of a running [`App`], usable while it runs.
#[derive(Clone)]
pub struct AppHandle {
    worker_id: Arc<str>,
    pools: Arc<[Pool]>,
    metrics: Arc<Metrics>,
}

impl App {
    /// Starts the runtime pools (every process is up when this returns),
    /// connects to NATS and creates the job consumers.
    pub async fn build(mut config: Config) -> anyhow::Result<Self> {
        if config.heartbeat_ms == 0 {
            bail!("WORKER_HEARTBEAT_MS must be positive");
        }
        let client = async_nats::ConnectOptions::new()
            .name(format!("workers {}", config.worker_id))
            .connect(&config.nats_url)
            .await
            .with_context(|| {
                format!(
                    "connecting to NATS at {}",
                    schemas::redact::text(&config.nats_url)
                )
            })?;
        // A result must fit in one NATS message with its envelope.
        let max_payload = client.server_info().max_payload;
        let travels = max_payload.saturating_sub(REPLY_HEADROOM);
        if config.max_output_bytes > travels {
            tracing::warn!(
                max_payload,
                "WORKER_MAX_OUTPUT_BYTES={} is more than a NATS message carries: results are \
                 limited to {travels} bytes (raise max_payload in the NATS configuration)",
                config.max_output_bytes
            );
            config.max_output_bytes = travels;
        }
        let mut languages = config.languages.clone();
        languages.sort_unstable();
        languages.dedup();
        if languages.is_empty() {
            bail!("WORKER_LANGUAGES is empty");
        }
        let sandbox = config.sandbox();
        if sandbox.is_enabled() {
            sandbox.check().await?;
        } else {
            tracing::warn!(
                "WORKER_SANDBOX=off: scripts run UNCONFINED, with the worker's file system, \
                 network and privileges; never do this outside development"
            );
        }
        let wasm = wasm_engine(&languages, &config).await?;
        let launchers = languages
            .iter()
            .map(|&language| launcher(language, &config, &sandbox, wasm.as_ref()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut pools = Vec::new();
        for (launcher, size) in launchers {
            let policy = PoolPolicy {
                capacity: size,
                prewarm: if config.prewarm { size } else { 0 },
                spare: config.spare_processes,
                max_uses: config.max_uses.max(1),
                idle_timeout: Duration::from_secs(config.idle_timeout_seconds.max(1)),
            };
            pools.push(Pool::start_with(launcher, policy).await?);
        }

        let js = async_nats::jetstream::new(client.clone());
        let subjects = Subjects::new(config.nats_prefix.clone());
        let worker_id: Arc<str> = config.worker_id.into();
        let metrics = Arc::new(Metrics::new());
        let metrics_endpoint = match config.metrics_addr {
            Some(addr) => Some(
                MetricsEndpoint::bind(addr)
                    .await
                    .with_context(|| format!("binding WORKER_METRICS_ADDR {addr}"))?,
            ),
            None => None,
        };
        schemas::jetstream::ensure_events_stream(&js, &subjects).await?;
        let mut consumers = Vec::new();
        for pool in &pools {
            let consumer =
                schemas::jetstream::ensure_worker_consumer(&js, &subjects, pool.language()).await?;
            let runner = JobRunner {
                pool: pool.clone(),
                client: client.clone(),
                worker_id: Arc::clone(&worker_id),
                default_timeout: Duration::from_secs(config.runtime_timeout_seconds),
                subjects: subjects.clone(),
                cancels: Default::default(),
                metrics: Arc::clone(&metrics),
                max_payload,
            };
            metrics.serve(pool.language());
            consumers.push((consumer, runner));
        }
        let compile = match wasm {
            Some(engine) => {
                let compiled: Vec<_> = languages
                    .iter()
                    .copied()
                    .filter(|l| matches!(l, Language::Rust | Language::Wasm))
                    .collect();
                let service = CompileService::subscribe(
                    client.clone(),
                    &subjects,
                    engine,
                    Arc::clone(&worker_id),
                    &compiled,
                );
                Some(service.await?)
            }
            None => None,
        };
        tracing::info!(%worker_id, ?languages, "worker ready");
        Ok(Self {
            client,
            subjects,
            consumers,
            compile,
            heartbeat_interval: Duration::from_millis(config.heartbeat_ms),
            handle: AppHandle {
                worker_id,
                pools: pools.into(),
                metrics,
            },
            metrics_endpoint,
        })
    }

    pub fn worker_id(&self) -> &str {
        self.handle.worker_id()
    }

    /// The port `/metrics` is served on, when `metrics_addr` is set.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_endpoint.as_ref().map(MetricsEndpoint::port)
    }

    /// A handle that stays usable while [`App::run`] runs.
    pub fn handle(&self) -> AppHandle {
        self.handle.clone()
    }

    /// Runs jobs and heartbeats until `shutdown` is cancelled; then stops
    /// pulling, lets running jobs finish (for up to 10 s), says goodbye with a
    /// last heartbeat and stops the runtimes.
    pub async fn run(self, shutdown: CancellationToken) {
        let subject = self.subjects.heartbeat();
        let metrics_server = self.metrics_endpoint.map(|endpoint| {
            let handle = self.handle.clone();
            tokio::spawn(endpoint.serve(move || handle.metrics_text(), shutdown.clone()))
        });
        let stop_heartbeats = CancellationToken::new();
        let heartbeats = tokio::spawn(heartbeat::run(
            self.client.clone(),
            subject.clone(),
            self.handle.clone(),
            self.heartbeat_interval,
            stop_heartbeats.clone(),
        ));
        let compiles = self
            .compile
            .map(|service| tokio::spawn(service.run(shutdown.clone())));
        let consumers = self
            .consumers
            .into_iter()
            .map(|(consumer, runner)| consumer::run(consumer, runner, shutdown.clone()));
        futures::future::join_all(consumers).await;
        if let Some(Err(e)) = futures::future::OptionFuture::from(compiles).await {
            tracing::error!(error = %e, "compile service failed");
        }

        stop_heartbeats.cancel();
        if let Err(e) = heartbeats.await {
            tracing::error!(error = %e, "heartbeat task failed");
        }
        heartbeat::publish(
            &self.client,
            &subject,
            &self.handle,
            self.heartbeat_interval,
            true,
        )
        .await;
        futures::future::join_all(self.handle.pools.iter().map(|p| p.shutdown(STOP_GRACE))).await;
        if let Err(e) = self.client.flush().await {
            tracing::warn!(error = %e, "flushing NATS at shutdown");
        }
        if let Some(server) = metrics_server {
            let _ = server.await;
        }
        tracing::info!("worker stopped");
    }
}

impl AppHandle {
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The Prometheus text exposition of this worker's metrics, as
    /// `/metrics` serves it.
    pub fn metrics_text(&self) -> String {
        self.metrics.render(&self.pools)
    }

    /// Process ids of the live runtime processes of `language`.
    pub fn runtime_pids(&self, language: Language) -> Vec<u32> {
        self.pool(language).map(Pool::pids).unwrap_or_default()
    }

    /// Capacity and load of every pool, as announced in heartbeats.
    pub fn runtime_status(&self) -> Vec<RuntimeStatus> {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.pools
            .iter()
            .map(|pool| RuntimeStatus {
                language: pool.language(),
                capacity: count(pool.capacity()),
                busy: count(pool.busy()),
            })
            .collect()
    }

    fn pool(&self, language: Language) -> Option<&Pool> {
        self.pools.iter().find(|p| p.language() == language)
    }
}

/// The wasmtime engine, when the worker serves `wasm` or `rust`; serving
/// `rust` also starts building the crates handlers use, in the background.
async fn wasm_engine(
    languages: &[Language],
    config: &Config,
) -> anyhow::Result<Option<Arc<WasmEngine>>> {
    let serves = |l| languages.contains(&l);
    if !serves(Language::Wasm) && !serves(Language::Rust) {
        return Ok(None);
    }
    if config.wasm_concurrency == 0 {
        bail!("WORKER_WASM_CONCURRENCY must be at least 1");
    }
    let rust = if serves(Language::Rust) {
        let compiler = RustCompiler::new(RustOptions {
            rustc: config.rustc.clone(),
            target: config.rust_target.clone(),
            cache_dir: config.cache_dir.clone(),
            crates_dir: config.rust_crates_dir.clone(),
            timeout: Duration::from_secs(config.rust_compile_timeout_seconds),
            sandbox: config.sandbox(),
            ..RustOptions::default()
        })
        .await?;
        let compiler = Arc::new(compiler);
        let preparing = Arc::clone(&compiler);
        tokio::spawn(async move {
            if let Err(e) = preparing.prepare().await {
                tracing::error!(error = %e, "building the crates rust handlers use");
            }
        });
        Some(compiler)
    } else {
        None
    };
    let served = usize::from(serves(Language::Wasm)) + usize::from(serves(Language::Rust));
    let engine = WasmEngine::new(
        WasmOptions {
            concurrency: config.wasm_concurrency * served,
            max_memory_mb: config.wasm_max_memory_mb,
            max_output_bytes: config.max_output_bytes,
        },
        rust,
    )?;
    Ok(Some(engine))
}

/// What starts the runtimes of `language`, and how many to keep.
fn launcher(
    language: Language,
    config: &Config,
    sandbox: &Sandbox,
    wasm: Option<&Arc<WasmEngine>>,
) -> anyhow::Result<(Box<dyn Launcher>, usize)> {
    match language {
        Language::Nodejs => {
            if config.nodejs_pool_size == 0 {
                bail!("WORKER_NODEJS_POOL_SIZE must be at least 1");
            }
            let launcher = NodeLauncher::new(&NodeOptions {
                node_bin: config.node_bin.clone(),
                memory_mb: config.nodejs_memory_mb,
                max_output_bytes: config.max_output_bytes,
                sandbox: sandbox.clone(),
            })
            .with_context(|| format!("WORKER_NODE_BIN={}", config.node_bin))?;
            Ok((Box::new(launcher), config.nodejs_pool_size))
        }
        Language::Python => {
            if config.python_pool_size == 0 {
                bail!("WORKER_PYTHON_POOL_SIZE must be at least 1");
            }
            let launcher = PythonLauncher::new(&PythonOptions {
                python_bin: config.python_bin.clone(),
                memory_mb: config.python_memory_mb,
                max_output_bytes: config.max_output_bytes,
                sandbox: sandbox.clone(),
            })
            .with_context(|| format!("WORKER_PYTHON_BIN={}", config.python_bin))?;
            Ok((Box::new(launcher), config.python_pool_size))
        }
        Language::Rust | Language::Wasm => {
            let engine = wasm.context("the wasm engine is not running")?;
            let launcher = WasmLauncher::new(Arc::clone(engine), language)?;
            Ok((Box::new(launcher), config.wasm_concurrency))
        }
    }
}
