//! Hostile scripts against a real, sandboxed pool (no NATS): each case
//! asserts the defined error or a harmless result, that nothing was left
//! running outside the pool's sandboxes, that the worker's secrets never
//! appear in a result or a log, and that the next normal job on the same
//! pool is answered correctly.
//!
//! The helpers here are language-neutral: a [`Fixture`] per runtime with the
//! process names its sandboxes hold and a script that adds
//! `params.a + params.b`; the cases are in one module per language.

#[path = "../common/mod.rs"]
mod common;
mod isolation;
mod node;
mod python;
mod wasm;

use common::descendants;
use schemas::{ErrorCode, JobError, Language};
use serde_json::{json, Value};
use std::{
    net::{IpAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    sync::Once,
    time::Duration,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use workers::runtime::{
    node::{NodeLauncher, NodeOptions},
    python::{PythonLauncher, PythonOptions},
    Execution, Invocation, Pool,
};

/// A secret planted in the worker's own environment; no script may see it.
const CANARY: &str = "postgres://canary:s3cret-canary-7f3a@db.internal/prod";
/// Heap limit of the node pools here, small so memory bombs end quickly.
const NODE_MEMORY_MB: u32 = 64;
/// Memory a python script may allocate in the pools here.
const PYTHON_MEMORY_MB: u32 = 64;
/// The sandbox's scratch size (the default).
const SCRATCH_MB: usize = 64;
const TIMEOUT_MS: u64 = 30_000;

fn plant_canary() {
    static PLANTED: Once = Once::new();
    PLANTED.call_once(|| std::env::set_var("CANARY_DATABASE_URL", CANARY));
}

/// A pool of one runtime, with what a healthy sandbox of it looks like.
struct Fixture {
    pool: Pool,
    language: Language,
    size: usize,
    /// Process names allowed in a sandbox: the launcher and the runtime.
    processes: &'static [&'static str],
    /// A script returning `params.a + params.b`.
    add: &'static str,
}

impl Fixture {
    async fn node(size: usize) -> Self {
        Self::node_with_memory(size, NODE_MEMORY_MB).await
    }

    async fn node_with_memory(size: usize, memory_mb: u32) -> Self {
        plant_canary();
        let options = NodeOptions {
            memory_mb,
            ..NodeOptions::default()
        };
        let launcher = NodeLauncher::new(&options).expect("node is installed");
        let pool = Pool::start(Box::new(launcher), size)
            .await
            .expect("the sandboxed pool starts");
        Self {
            pool,
            language: Language::Nodejs,
            size,
            processes: &["bwrap", "node"],
            add: "return event.params.a + event.params.b;",
        }
    }

    async fn python(size: usize) -> Self {
        plant_canary();
        let options = PythonOptions {
            memory_mb: PYTHON_MEMORY_MB,
            ..PythonOptions::default()
        };
        let launcher = PythonLauncher::new(&options).expect("python3 is installed");
        let pool = Pool::start(Box::new(launcher), size)
            .await
            .expect("the sandboxed pool starts");
        Self {
            pool,
            language: Language::Python,
            size,
            processes: &["bwrap", "python3", "python3.11"],
            add: "result = params['a'] + params['b']",
        }
    }

    async fn run(&self, script: &str, params: Value) -> Execution {
        self.run_for(script, params, TIMEOUT_MS).await
    }

    /// Runs one job; whatever it produced must not hold the canary.
    async fn run_for(&self, script: &str, params: Value, timeout_ms: u64) -> Execution {
        let invocation = Invocation::new(
            self.language,
            script.to_owned(),
            params.to_string(),
            "{}".to_owned(),
            Duration::from_millis(timeout_ms),
        )
        .unwrap();
        let execution = self.pool.execute(&invocation).await.unwrap();
        let seen = format!("{:?} {:?}", execution.outcome, execution.logs);
        assert!(!seen.contains("s3cret-canary"), "the canary leaked: {seen}");
        execution
    }

    /// After a hostile job: the pool is full again, every sandbox holds only
    /// its launcher and runtime, and a normal job gets the right answer.
    async fn still_works(&self) {
        tokio::time::timeout(Duration::from_secs(20), async {
            while self.pool.pids().len() < self.size {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the pool refills");
        for pid in self.pool.pids() {
            let tree = descendants(pid);
            let names: Vec<String> = tree.iter().filter_map(|&p| name_of(p)).collect();
            assert!(
                names.iter().all(|n| self.processes.contains(&n.as_str())) && tree.len() <= 3,
                "sandbox {pid} holds {names:?}"
            );
        }
        let execution = self.run(self.add, json!({"a": 5, "b": 3})).await;
        assert_eq!(result(&execution), json!(8));
    }

    /// Host pids of the runtimes themselves (inside the sandboxes).
    fn runtime_pids(&self) -> Vec<u32> {
        let runtime = self.processes[self.processes.len() - 1];
        self.pool
            .pids()
            .into_iter()
            .flat_map(descendants)
            .filter(|&p| name_of(p).as_deref() == Some(runtime))
            .collect()
    }
}

fn result(execution: &Execution) -> Value {
    match &execution.outcome {
        Ok(json) => serde_json::from_str(json).unwrap(),
        Err(e) => panic!("the script failed: {e:?}"),
    }
}

fn error(execution: &Execution) -> &JobError {
    execution.outcome.as_ref().expect_err("the script failed")
}

fn name_of(pid: u32) -> Option<String> {
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(name.trim().to_owned())
}

/// A field of /proc/<pid>/status, e.g. `Uid`.
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap()
        .trim()
        .to_owned()
}

/// This machine's address on its network (not loopback), if it has one.
fn host_ip() -> Option<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    Some(socket.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback())
}

/// Node: tries a TCP connection to each of `event.params.targets`
/// (`[host, port]`) and reports `connected` or the error code.
const NODE_CONNECT: &str = "const net = require('net');
const attempt = ([host, port]) => new Promise((resolve) => {
  const socket = net.connect({ host, port });
  socket.setTimeout(3000, () => { socket.destroy(); resolve('timeout'); });
  socket.on('connect', () => { socket.destroy(); resolve('connected'); });
  socket.on('error', (e) => resolve(e.code));
});
return Promise.all(event.params.targets.map(attempt));";
