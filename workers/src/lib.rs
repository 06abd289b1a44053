//! The language worker of lambda-microservice: pulls execute jobs from the
//! per-language JetStream subjects, runs each script in a warm runtime and
//! publishes the result to the job's reply subject.
//!
//! - [`App`] (`app`): built from a [`Config`], runs until cancelled.
//! - `compile`: answers compile requests for `rust` and `wasm` at initialize.
//! - `consumer`: the pull loop and what becomes of each job message.
//! - `cancel`: stops or skips asynchronous jobs cancelled through the API.
//! - `report`: started events and results of asynchronous jobs, for the dispatcher.
//! - `heartbeat`: announces the worker's runtimes and load.
//! - [`metrics`]: Prometheus series of executions and pools, served at
//!   `/metrics` on `WORKER_METRICS_ADDR`.
//! - [`runtime`]: the pool of warm instances, the Node.js runtime, and the
//!   wasmtime engine that runs `wasm` and `rust` (compiled by `runtime::rust`).
//! - [`sandbox`]: the OS sandbox every runtime process runs in.
//! - `supervisor`: starting, watching and stopping runtime processes.

mod app;
mod cancel;
mod compile;
mod config;
mod consumer;
mod heartbeat;
pub mod metrics;
mod report;
pub mod runtime;
pub mod sandbox;
mod supervisor;

pub use app::{App, AppHandle};
pub use config::{Config, SandboxMode};
