//! Runtimes: where a script actually runs.
//!
//! A [`Pool`] keeps a fixed number of warm [`Instance`]s of one language,
//! hands each to one job at a time and replaces any that break. What an
//! instance is comes from a [`Launcher`]: [`node::NodeLauncher`] starts
//! Node.js processes, [`python::PythonLauncher`] Python processes, both
//! through the shared runner `process` and line `protocol` modules;
//! [`wasm::WasmLauncher`] hands out slots of the process's wasmtime engine
//! (for `wasm`, and `rust` compiled by [`rust`]).

pub mod node;
mod pool;
mod process;
mod protocol;
pub mod python;
pub mod rust;
pub mod wasm;

pub use pool::{Pool, PoolPolicy, PoolStats, Reservation};

use futures::future::BoxFuture;
use schemas::{ErrorCode, JobError, Language};
use serde_json::value::RawValue;
use std::time::Duration;

/// One script run, validated and ready for a runtime.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// `schemas::script_hash` of the script, computed here rather than
    /// trusted from the job, because runtimes cache compiled code by it.
    pub script_hash: String,
    pub script: String,
    /// The `params` JSON text, checked to be valid JSON.
    pub params: Box<RawValue>,
    /// The `context` JSON text, checked to be valid JSON.
    pub context: Box<RawValue>,
    pub timeout: Duration,
    /// Whose code this is: an instance never runs two owners' code.
    pub owner: String,
    /// What the script's globals are kept for: runs with the same scope
    /// (a session) share them, other scopes never see them.
    pub scope: String,
    /// Memory limit of the job in MiB; 0 leaves it to the runtime.
    pub memory_mb: u32,
}

impl Invocation {
    /// Checks that `params_json` and `context_json` are JSON; an invalid one
    /// is the caller's error (`INVALID_PARAMS`).
    pub fn new(
        language: Language,
        script: String,
        params_json: String,
        context_json: String,
        timeout: Duration,
    ) -> Result<Self, JobError> {
        let json = |text: String, what: &str| {
            RawValue::from_string(text).map_err(|e| {
                JobError::new(ErrorCode::InvalidParams, format!("{what} is not JSON: {e}"))
            })
        };
        Ok(Self {
            script_hash: schemas::script_hash(language, &script),
            params: json(params_json, "params")?,
            context: json(context_json, "context")?,
            script,
            timeout,
            owner: String::new(),
            scope: String::new(),
            memory_mb: 0,
        })
    }

    /// Sets the owner and the scope of the script's globals.
    pub fn for_owner(mut self, owner: impl Into<String>, scope: impl Into<String>) -> Self {
        self.owner = owner.into();
        self.scope = scope.into();
        self
    }

    /// Sets the job's memory limit (0: the runtime's default).
    pub fn with_memory_mb(mut self, memory_mb: u32) -> Self {
        self.memory_mb = memory_mb;
        self
    }
}

/// What a script run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    /// The result as JSON text, or why there is none.
    pub outcome: Result<String, JobError>,
    /// What the script printed, bounded.
    pub logs: Vec<String>,
    /// Wall-clock time around the runtime call.
    pub elapsed: Duration,
}

/// What an [`Instance`] reports after a run.
#[derive(Debug)]
pub struct Report {
    pub outcome: Result<String, JobError>,
    pub logs: Vec<String>,
    /// False when the instance must not run another job (it was killed, it
    /// exited, its output could not be trusted); the pool replaces it.
    pub reusable: bool,
}

/// Why a job could not be run at all. Unlike a script failure this is no
/// answer for the job: it should be retried later, maybe elsewhere.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the {0} pool is shutting down")]
    ShuttingDown(Language),
    #[error("could not hand the job to the runtime: {0}")]
    NotStarted(#[source] std::io::Error),
    #[error(transparent)]
    NotLaunched(#[from] LaunchError),
}

/// Why a runtime instance could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start a {language} runtime: {message}")]
pub struct LaunchError {
    pub language: Language,
    pub message: String,
}

/// Starts instances of one runtime.
pub trait Launcher: Send + Sync + 'static {
    fn language(&self) -> Language;

    /// Starts one warm instance, ready to run a job when this resolves.
    fn launch(&self) -> BoxFuture<'_, Result<Box<dyn Instance>, LaunchError>>;
}

/// One warm runtime: runs one job at a time.
pub trait Instance: Send {
    /// The OS process id, for instances that are processes.
    fn pid(&self) -> Option<u32>;

    /// Runs one job, killing whatever it runs once `invocation.timeout` is up.
    /// An error means the job was not handed over and the instance is broken.
    fn run<'a>(
        &'a mut self,
        invocation: &'a Invocation,
    ) -> BoxFuture<'a, Result<Report, RuntimeError>>;

    /// Stops the instance, waiting up to `grace` for it to end by itself.
    fn stop(self: Box<Self>, grace: Duration) -> BoxFuture<'static, ()>;
}
